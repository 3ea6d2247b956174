import numpy as np
import pytest
from metaworld.policies import ENV_POLICY_MAP

from common.envs.metaworld import (MT10, MT50, DemoSpec, EvalConfig, MetaWorldEnv, collect_demos, evaluate,
                                   format_results, instruction_for, resolve_tasks)
from common.envs.metaworld_instructions import INSTRUCTIONS
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
    env = MetaWorldEnv("drawer-close", image_size=64, camera="corner")
    obs = env.reset(seed=0, episode=0)
    image = obs["image"].astype(int)
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
    assert again.root == ds.root and len(list(tmp_path.iterdir())) == 1
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
