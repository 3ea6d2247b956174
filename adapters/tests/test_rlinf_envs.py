"""Our Meta-World as an RLinf env type (adapters/rlinf_envs.py), against the real RLinf 0.3.0: after the extension
hook, the env worker's lookup gives our class for ENV_TYPE and RLinf's own for its types; observations laid out as
RLinf's Meta-World `_wrap_obs` lays them out (its own code run on the same state); `chunk_step`'s per-step shapes,
and a scripted expert's chunks succeeding on the very steps our own `common.envs.metaworld` rollout succeeds on;
a GRPO group starting from one placement; auto-reset; our policy's chunk through RLinf's action conversion."""

import ast
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rlinf", reason="RLinf is installed by requirements/frameworks.txt (setup.sh)")

import rlinf.config  # noqa: E402
import rlinf.envs  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from rlinf.envs.utils import list_of_dict_to_dict_of_list, to_tensor  # noqa: E402
from rlinf.scheduler.cluster.utils import load_user_extension_module  # noqa: E402
from rlinf.workers.env import env_worker  # noqa: E402

from adapters import rlinf as adapter  # noqa: E402
from adapters.rlinf_envs import TRAIN_PLACEMENT_SEED, RLinfMetaWorldEnv  # noqa: E402
from common.envs.metaworld import INSTRUCTIONS, MetaWorldEnv  # noqa: E402

K = 4  # actions per chunk (the smoke π0's n_action_steps)


@pytest.fixture(scope="module", autouse=True)
def registered():
    """RLinf's own extension hook, as every Ray worker runs it at start-up."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLINF_EXT_MODULE", "adapters.rlinf")
        mp.setattr(env_worker, "get_env_cls", env_worker.get_env_cls)  # put RLinf's names back afterwards
        mp.setattr(env_worker, "prepare_actions", env_worker.prepare_actions)
        mp.setattr(rlinf.config, "validate_embodied_cfg", rlinf.config.validate_embodied_cfg)
        load_user_extension_module()
        yield


def env_cfg(checkpoint, **overrides):
    """An `env.train` section (RLinf's Meta-World keys, plus ours: tasks, model_path)."""
    return OmegaConf.create(dict(dict(
        env_type=adapter.ENV_TYPE, tasks=["reach-v3"], model_path=str(checkpoint), seed=0, group_size=2,
        use_fixed_reset_state_ids=True, use_ordered_reset_state_ids=False, is_eval=False, auto_reset=False,
        ignore_terminations=False, max_episode_steps=200, reward_coef=1.0, use_rel_reward=False,
        video_cfg=dict(save_video=False)), **overrides))


@pytest.fixture
def make_env():
    """`make_env(cfg, num_envs)` builds our env as the env worker does (env_worker.py `_setup_env_and_wrappers`,
    through its own lookup); closed after the test (their GL contexts)."""
    built = []

    def make(cfg, num_envs: int) -> RLinfMetaWorldEnv:
        env_cls = env_worker.get_env_cls(cfg.env_type, cfg)
        built.append(env_cls(cfg=cfg, num_envs=num_envs, seed_offset=0, total_num_processes=1, worker_info=None))
        return built[-1]
    yield make
    for env in built:
        env.close()


def rlinf_metaworld_method(name: str):
    """A method of RLinf's own Meta-World env, compiled from its source: its module does not import here (its
    vector env imports `gym`)."""
    source = Path(rlinf.envs.__file__).parent / "metaworld" / "metaworld_env.py"
    tree = ast.parse(source.read_text())
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "MetaWorldEnv"]
    (function,) = [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == name]
    namespace = dict(np=np, torch=torch, to_tensor=to_tensor, list_of_dict_to_dict_of_list=list_of_dict_to_dict_of_list)
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(source), "exec"), namespace)
    return namespace[name]


def test_env_worker_looks_up_our_type_and_rlinfs_own(checkpoints, monkeypatch):
    assert env_worker.get_env_cls(adapter.ENV_TYPE, env_cfg(checkpoints["pi0"])) is RLinfMetaWorldEnv
    with pytest.raises(ValueError, match=adapter.ENV_TYPE):  # RLinf's own lookup: a closed enum
        rlinf.envs.get_env_cls(adapter.ENV_TYPE)

    # RLinf's Meta-World class, where its module imports (here it needs `gym`: a stand-in module under its name)
    stand_in = types.ModuleType("rlinf.envs.metaworld.metaworld_env")
    stand_in.MetaWorldEnv = type("MetaWorldEnv", (), {})
    monkeypatch.setitem(sys.modules, stand_in.__name__, stand_in)
    assert env_worker.get_env_cls("metaworld", OmegaConf.create({})) is stand_in.MetaWorldEnv
    monkeypatch.delitem(sys.modules, stand_in.__name__)
    for env_type in ("robotwin", "embodichain", "libero", "maniskill"):  # the same answer as RLinf's, or error
        cfg = OmegaConf.create(dict(enable_offload=False))
        try:
            expected = rlinf.envs.get_env_cls(env_type, cfg)
        except ImportError as error:
            with pytest.raises(type(error), match=str(error.name)):
                env_worker.get_env_cls(env_type, cfg)
        else:
            assert env_worker.get_env_cls(env_type, cfg) is expected

    # the env worker's action conversion: ours as RLinf's Meta-World (an OpenVLA's 7-D actions cut to 4)
    chunk = torch.randn(2, K, 7)
    converted = env_worker.prepare_actions(chunk, adapter.ENV_TYPE, "openvla_oft", K, 7)
    np.testing.assert_array_equal(converted, torch.cat([chunk[..., :3], chunk[..., -1:]], -1).numpy())
    converted = env_worker.prepare_actions(chunk[..., :4], adapter.ENV_TYPE, adapter.MODEL_TYPE, K, 4)
    np.testing.assert_array_equal(converted, chunk[..., :4].numpy())
    with pytest.raises(ValueError, match=adapter.ENV_TYPE):
        rlinf.envs.action_utils.prepare_actions(chunk, adapter.ENV_TYPE, adapter.MODEL_TYPE, K, 4)

    # the driver's config check asks the enum for the type (rlinf/config.py:1009-1016); a stand-in that does the same
    def check(cfg):
        rlinf.envs.SupportedEnvType(cfg.env.train.env_type)
        return cfg
    monkeypatch.setattr(adapter, "rlinf_validate_embodied_cfg", check)
    cfg = OmegaConf.create(dict(env=dict(train=dict(env_type=adapter.ENV_TYPE))))
    assert rlinf.config.validate_embodied_cfg(cfg).env.train.env_type == adapter.ENV_TYPE
    with pytest.raises(ValueError, match=adapter.ENV_TYPE):
        check(cfg)


def test_observations_as_rlinfs_metaworld_lays_them_out(checkpoints, make_env):
    env = make_env(env_cfg(checkpoints["pi0"], tasks=["reach-v3", "drawer-close-v3"]), num_envs=2)
    obs, infos = env.reset()
    # RLinf's `_wrap_obs` on the same envs: their rendered images and Meta-World's raw 39-D float64 state
    images = np.stack([e.observation()["images"]["corner"] for e in env.envs])
    raw_state = np.stack([e.observation(render=False)["env_state"].astype(np.float64) for e in env.envs])
    stand_in = types.SimpleNamespace(num_envs=2, task_descriptions=obs["task_descriptions"],
                                     env=types.SimpleNamespace(render=lambda: list(images[:, ::-1, ::-1])))
    expected = rlinf_metaworld_method("_wrap_obs")(stand_in, raw_state)
    assert sorted(obs) == sorted(expected) == ["main_images", "states", "task_descriptions"]
    for key in ("main_images", "states"):
        assert obs[key].dtype == expected[key].dtype and obs[key].shape == expected[key].shape
        torch.testing.assert_close(obs[key], expected[key], atol=0, rtol=0)
    assert obs["main_images"].shape == (2, 32, 32, 3)  # the checkpoint's camera and image size
    tasks = [env.placement(int(r))[0] for r in env.reset_state_ids]
    assert obs["task_descriptions"] == [INSTRUCTIONS[task][0] for task in tasks]  # the canonical instructions
    assert infos == {}


def expert_rollout(task: str, episode: int, steps: int) -> tuple[list[np.ndarray], list[bool], dict]:
    """Our own Meta-World rollout of the scripted expert from placement (TRAIN_PLACEMENT_SEED, episode): its
    actions, per-step success and first observation."""
    env = MetaWorldEnv(task, image_size=32, max_steps=200)
    try:
        first = obs = env.reset(TRAIN_PLACEMENT_SEED, episode)
        expert, actions, success = ENV_POLICY_MAP[task](), [], []
        for _ in range(steps):
            actions.append(np.clip(expert.get_action(obs["env_state"].astype(np.float64)), -1, 1).astype(np.float32))
            obs, _, _, info = env.step(actions[-1], render=False)
            success.append(info["success"])
    finally:
        env.close()
    return actions, success, first


def test_expert_chunks_succeed_on_the_steps_our_rollout_does(checkpoints, make_env):
    """Env 0 replays the expert's actions in chunks of K, env 1 holds still; both from the group's placement."""
    env = make_env(env_cfg(checkpoints["pi0"]), num_envs=2)
    obs, _ = env.reset()  # is_start: the group's fixed reset-state id
    task, episode = env.placement(int(env.reset_state_ids[0]))
    actions, success, first = expert_rollout(task, episode, steps=48)
    assert any(success)  # the expert succeeds within these 48 steps (reach-v3: ~40)
    torch.testing.assert_close(obs["states"][0], torch.from_numpy(first["state"]))  # the same start
    np.testing.assert_array_equal(obs["main_images"][0].numpy(), first["images"]["corner"])

    chunks = torch.stack([torch.from_numpy(np.stack(actions)), torch.zeros(len(actions), 4)]).reshape(2, -1, K, 4)
    terminations, rewards = [], []
    for c in range(chunks.shape[1]):
        obs_list, reward, termination, truncation, infos_list = env.chunk_step(chunks[:, c])
        assert reward.shape == termination.shape == truncation.shape == (2, K) and len(infos_list) == K
        assert reward.dtype == torch.float32 and termination.dtype == truncation.dtype == torch.bool
        assert obs_list[:-1] == [None] * (K - 1) and obs_list[-1]["states"].shape == (2, 4)
        terminations.append(termination)
        rewards.append(reward)
    terminations, rewards = torch.cat(terminations, 1), torch.cat(rewards, 1)
    assert terminations[0].tolist() == success and not terminations[1].any()  # per step, as our own rollout
    torch.testing.assert_close(rewards, terminations.float())  # reward_coef x success
    assert infos_list[-1]["episode"]["success_once"].tolist() == [True, False]
    assert env.elapsed_steps.tolist() == [48, 48]


def test_groups_start_alike_and_auto_reset(checkpoints, make_env):
    cfg = env_cfg(checkpoints["pi0"], tasks=["reach-v3", "drawer-close-v3"], seed=3, auto_reset=True,
                  max_episode_steps=K)
    env = make_env(cfg, num_envs=4)  # two GRPO groups of two
    obs, _ = env.reset()
    ids = env.reset_state_ids.tolist()
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    for a, b in ((0, 1), (2, 3)):  # a group's envs start alike, the groups apart
        assert torch.equal(obs["main_images"][a], obs["main_images"][b])
        assert torch.equal(obs["states"][a], obs["states"][b])
        assert obs["task_descriptions"][a] == obs["task_descriptions"][b]
    assert not torch.equal(obs["main_images"][0], obs["main_images"][2])

    # our policy's chunk, through RLinf's model adapter and the env worker's action conversion; the step limit
    # (max_episode_steps = K) ends every episode on the chunk's last step: auto-reset to the same placements
    model = adapter.build(OmegaConf.create(dict(model_path=str(checkpoints["pi0"]))), None)
    actions, _ = model.predict_action_batch(env_obs=obs, mode="train")
    chunk = env_worker.prepare_actions(actions, adapter.ENV_TYPE, adapter.MODEL_TYPE, K, 4)
    assert chunk.shape == (4, K, 4)
    obs_list, reward, termination, truncation, infos_list = env.chunk_step(chunk)
    assert truncation[:, -1].all() and not truncation[:, :-1].any() and not termination[:, :-1].any()
    final = infos_list[-1]["final_observation"]
    assert not torch.equal(final["states"], obs["states"])  # where the chunk took them
    torch.testing.assert_close(obs_list[-1]["states"], obs["states"])  # reset to the group's placement again
    assert env.elapsed_steps.tolist() == [0] * 4

    # RLinf's env worker after a rollout: new ids for the next one, applied at its first reset (is_start)
    env.update_reset_state_ids()
    env.is_start = True
    env.reset()
    assert env.reset_state_ids.tolist() != ids and env.reset_state_ids[0] == env.reset_state_ids[1]
