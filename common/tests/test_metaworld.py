import numpy as np
import pytest
from metaworld.policies import ENV_POLICY_MAP

import mujoco
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

from common.envs.metaworld import (GOAL_MARKER_RGBA, MT10, MT50, PRIVILEGED_DIMS, DemoSpec, EvalConfig, MetaWorldEnv,
                                   collect_demos, evaluate, format_results, instruction_for, other_task,
                                   resolve_tasks)
from common.envs.metaworld_instructions import HELD_OUT_INSTRUCTIONS, INSTRUCTIONS
from common.metrics import wilson_interval


class Expert:
    """The scripted policy as a closed-loop policy callable (it reads Meta-World's full state)."""

    def __init__(self, task, chunk=1):
        self.policy, self.chunk = ENV_POLICY_MAP[task](), chunk
        self.resets = 0

    def reset(self):
        self.resets += 1

    def __call__(self, obs):
        action = np.clip(self.policy.get_action(obs["env_state"].astype(np.float64)), -1, 1)
        return np.repeat(action[None], self.chunk, 0)  # a (k, 4) chunk is executed open loop


def test_images_are_upright_and_not_empty():
    env = MetaWorldEnv("drawer-close", image_size=64, cameras=("corner",))
    obs = env.reset(seed=0, episode=0)
    image = obs["images"]["corner"].astype(int)
    assert image.shape == (64, 64, 3) and image.dtype == np.int64 and image.std() > 20
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    wood = (r > g + 10) & (g > b) & (r - b > 30)  # the table top (and the red robot) are warm colours
    rows = np.nonzero(wood)[0]
    assert wood.mean() > 0.1 and rows.mean() > 32  # the table lies in the lower half: the image is upright
    assert obs["state"].shape == (4,) and obs["env_state"].shape == (39,)
    np.testing.assert_array_equal(obs["state"], obs["env_state"][:4])
    assert obs["instruction"] == INSTRUCTIONS["drawer-close-v3"][0]
    env.close()


def test_episodes_are_reproducible_and_placements_differ():
    env = MetaWorldEnv("reach", image_size=32)
    a = env.reset(seed=0, episode=3)["env_state"]
    b = env.reset(seed=0, episode=4)["env_state"]
    c = env.reset(seed=0, episode=3)["env_state"]
    d = env.reset(seed=1, episode=3)["env_state"]
    np.testing.assert_array_equal(a, c)
    assert not np.allclose(a[-3:], b[-3:]) and not np.allclose(a[-3:], d[-3:])  # goals differ
    env.close()


def test_expert_demos_succeed_and_are_cached(tmp_path):
    spec = DemoSpec(tasks=("reach-v3", "button-press-topdown-v3"), episodes_per_task=2, image_size=32)
    ds = collect_demos(spec, workers=2, cache_dir=tmp_path, progress=False)
    assert len(ds.episodes) == 4 and [e["task"] for e in ds.episodes] == ["reach-v3"] * 2 + ["button-press-topdown-v3"] * 2
    assert ds.meta["info"]["expert_successes"] == 4 and ds.meta["info"]["expert_attempts"] >= 4
    assert all(e["success"] and e["instruction"] in INSTRUCTIONS[e["task"]] for e in ds.episodes)
    ep = ds.episode(0)
    assert ep["observation.images.corner"].shape[1:] == (32, 32, 3) and np.abs(ep["action"]).max() <= 1
    assert 10 < len(ep["action"]) < 200  # ends at the first success step
    assert ds.stats["action"]["q01"] < ds.stats["action"]["q99"]
    again = collect_demos(spec, workers=2, cache_dir=tmp_path, progress=False)  # cache hit: same directory
    assert again.root == ds.root and len(list(tmp_path.glob("metaworld-*"))) == 1
    other = collect_demos(DemoSpec(tasks=("reach-v3",), episodes_per_task=1, image_size=32), workers=1,
                          cache_dir=tmp_path, progress=False)
    assert other.root != ds.root  # another spec, another cache entry
    np.testing.assert_array_equal(other.episode(0)["action"], ep["action"])  # same episode, same demo, any worker count


def test_evaluator_scores_trivial_policies(tmp_path):
    cfg = EvalConfig(tasks=("reach-v3",), episodes_per_task=3, image_size=32, max_steps=60,
                     video_dir=str(tmp_path), video_episodes=1, video_format="gif")
    expert = Expert("reach-v3", chunk=4)
    good = evaluate(expert, cfg, progress=False)["reach-v3"]
    assert (good.successes, good.episodes, expert.resets) == (3, 3, 3) and good.mean_length < 60
    still = evaluate(lambda obs: np.zeros(4), cfg, progress=False)["reach-v3"]
    assert (still.successes, still.mean_length) == (0, 60)  # never moves, so runs to the step limit
    videos = sorted(p.name for p in tmp_path.iterdir())
    assert videos == ["reach-v3_ep000_failure.gif", "reach-v3_ep000_success.gif"]
    table = format_results({"reach-v3": good})
    assert "3/3 (100%)" in table and "[0.44, 1.00]" in table


def test_wilson_interval():
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_task_names_and_instructions():
    assert resolve_tasks("mt10") == MT10 and len(MT10) == 10 and len(MT50) == 50
    assert resolve_tasks("reach,drawer-close-v3") == ("reach-v3", "drawer-close-v3")
    with pytest.raises(ValueError, match="reech-v3"):
        resolve_tasks(["reech"])
    assert set(INSTRUCTIONS) == set(MT50) and all(len(set(p)) >= 3 for p in INSTRUCTIONS.values())
    assert len({instruction_for("reach-v3", 0, e) for e in range(20)}) > 1


def test_task_names_and_held_out_instructions():
    """Every task has held-out paraphrases, none of them a training paraphrase."""
    assert set(HELD_OUT_INSTRUCTIONS) == set(MT50)
    for task, phrasings in HELD_OUT_INSTRUCTIONS.items():
        assert len(set(phrasings)) >= 2 and not set(phrasings) & set(INSTRUCTIONS[task]), task


def test_goal_markers_share_one_colour():
    """Meta-World colours reach's goal red and push's green; ours draws every goal marker in one colour."""
    for task in ("reach-v3", "push-v3", "pick-place-v3", "drawer-open-v3"):
        original = ALL_V3_ENVIRONMENTS[task]()
        goal = mujoco.mj_name2id(original.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        env = MetaWorldEnv(task, image_size=32)
        np.testing.assert_allclose(env.env.model.site_rgba[goal], GOAL_MARKER_RGBA, atol=1e-6)
        if task == "reach-v3":
            assert tuple(original.model.site_rgba[goal][:3]) != GOAL_MARKER_RGBA[:3]
        original.close()
        env.close()


class Recorder:
    """A policy that records what it is shown and returns a chunk of k zero actions."""

    def __init__(self, chunk=4):
        self.chunk, self.seen = chunk, []

    def __call__(self, obs):
        self.seen.append(obs)
        return np.zeros((self.chunk, 4))


def test_probes_change_only_what_the_policy_is_shown():
    tasks = ("reach-v3", "pick-place-v3", "drawer-close-v3")
    assert other_task("reach-v3", tasks) == "pick-place-v3" and other_task("pick-place-v3", tasks) == "reach-v3"
    assert other_task("drawer-close-v3", tasks) == "reach-v3"  # in no group: the next task, cyclically
    assert other_task("reach-v3", ("reach-v3", "push-v3", "door-open-v3")) == "push-v3"  # its group is absent
    base = dict(tasks=tasks, episodes_per_task=2, image_size=32, max_steps=12)
    told = {}
    for mode in ("canonical", "held_out", "other_task", "empty"):
        policy = Recorder()
        evaluate(policy, EvalConfig(**base, instruction=mode), progress=False)
        assert len(policy.seen) == 3 * 2 * 3  # 12 steps in chunks of 4, images rendered for every call
        assert all(o["images"]["corner"].shape == (32, 32, 3) and o["images"]["corner"].std() > 10 for o in policy.seen)
        told[mode] = [o["instruction"] for o in policy.seen[::3]]
    assert told["canonical"] == [INSTRUCTIONS[t][0] for t in tasks for _ in range(2)]
    assert told["held_out"] == [HELD_OUT_INSTRUCTIONS[t][e] for t in tasks for e in range(2)]
    assert told["other_task"] == [INSTRUCTIONS[t][0] for t in ("pick-place-v3", "reach-v3", "reach-v3")
                                  for _ in range(2)]
    assert told["empty"] == [""] * 6
    plain, probed = Recorder(), Recorder()
    fill = tuple(float(i) for i in range(39))
    evaluate(plain, EvalConfig(**base), progress=False)
    evaluate(probed, EvalConfig(**base, blank_images=True, privileged_fill=fill), progress=False)
    for a, b in zip(plain.seen, probed.seen):
        assert not b["images"]["corner"].any() and a["images"]["corner"].any()
        np.testing.assert_array_equal(b["state"], a["state"])  # the proprioception is kept
        kept = [i for i in range(39) if i not in PRIVILEGED_DIMS]
        np.testing.assert_array_equal(b["env_state"][kept], a["env_state"][kept])
        np.testing.assert_array_equal(b["env_state"][list(PRIVILEGED_DIMS)], np.array(fill)[list(PRIVILEGED_DIMS)])
    with pytest.raises(ValueError, match="instruction"):
        EvalConfig(instruction="shuffled")


def test_cached_demos_with_more_cameras_serve_fewer(tmp_path):
    spec = DemoSpec(tasks=("reach-v3",), episodes_per_task=1, image_size=32, cameras=("corner", "gripperPOV"))
    both = collect_demos(spec, workers=1, cache_dir=tmp_path, progress=False)
    assert {"observation.images.corner", "observation.images.gripperPOV"} <= set(both.features)
    one = collect_demos(DemoSpec(tasks=("reach-v3",), episodes_per_task=1, image_size=32, cameras=("corner",)),
                        workers=1, cache_dir=tmp_path, progress=False)
    assert one.root == both.root
    other = collect_demos(DemoSpec(tasks=("reach-v3",), episodes_per_task=1, image_size=32, cameras=("corner3",)),
                          workers=1, cache_dir=tmp_path, progress=False)
    assert other.root != both.root and set(other.features) >= {"observation.images.corner3"}


def test_a_stochastic_policy_draws_the_same_numbers_in_every_evaluation():
    """The evaluator seeds NumPy and torch per episode: what ran before in the process does not change the noise."""
    import torch

    class Noisy(Recorder):
        def __call__(self, obs):
            self.seen.append((torch.rand(()).item(), np.random.rand()))
            return np.zeros((4, 4))

    draws = []
    for before in (0, 1):
        torch.manual_seed(before)
        np.random.seed(before)
        policy = Noisy()
        evaluate(policy, EvalConfig(tasks=("reach-v3", "push-v3"), episodes_per_task=2, image_size=32, max_steps=8),
                 progress=False)
        draws.append(policy.seen)
    assert draws[0] == draws[1] and len(set(draws[0])) == len(draws[0])  # the same, and new numbers every call
