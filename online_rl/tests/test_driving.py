"""Online RL on the driving benchmark (online_rl/driving.py): the envs' observations feed the driving policy exactly
as its closed-loop evaluation does, a plan is followed in time (one step of it is the evaluation's tracking), the
reward is the benchmark's episode score on the last chunk, the envs in worker processes equal those in-process, the
config refuses what cannot work, and one PPO iteration runs end to end and moves the weights it trains."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from common.envs import highway as hw
from common.policy import load_policy
from common.tests import demo_cache
from common.train import last_checkpoint, read_metrics

from driving_vla import train as dv_train
from driving_vla.config import PRESETS
from driving_vla.model import observation_batch

from online_rl import driving, grpo, loop, ppo, sac
from online_rl.driving import DrivingEnvs, Plan, PlanEnv

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke driving-VLA runs with the flow head and the MLP head (behaviour cloning only), their demos in a
    private cache."""
    root = tmp_path_factory.mktemp("runs")
    with demo_cache.private_cache(root / "cache"):
        for head in ("flow", "mlp"):
            dv_train.train(dataclasses.replace(PRESETS["smoke"], run_dir=str(root / head), head=head, dagger_rounds=0,
                                               eval_seeds=0, gif=False))
        yield root


def quick(tmp_path, run, **overrides) -> ppo.PPOConfig:
    return ppo.PPOConfig(**{**dict(policy=str(run), run_dir=str(tmp_path / "ppo"), env="driving", tasks=("highway",),
                                   envs_per_task=2, iterations=1, max_steps=20, reward="score", minibatch_size=8,
                                   update_epochs=2, critic_warmup=0, lr=1e-3, eval_episodes=0, save_every=1,
                                   workers=0, threads=1), **overrides})


def test_observations_feed_the_policy_as_its_closed_loop_evaluation(runs):
    envs = DrivingEnvs(["highway", "merge"], horizon=2.0, plan_steps=5, workers=0)
    try:
        current = envs.reset(5000, [0, 1])
    finally:
        envs.close()
    obs = envs.observations(current)
    assert obs["bev"].shape == (2, 64, 64, 5) and obs["proprio"].shape == (2, 7) and obs["command"].shape == (2,)
    policy = load_policy(runs / "flow")
    for i, o in enumerate(current):
        torch.manual_seed(i)
        expected = policy.policy.predict_waypoints(observation_batch(o))
        torch.manual_seed(i)
        assert torch.equal(policy.predict(obs[i:i + 1]), expected)


def test_a_plan_is_followed_in_time():
    # one step of a plan is the evaluation's tracking: hw.waypoints_to_controls of the plan itself
    a, b = PlanEnv("highway", 2.0, plan_steps=1), hw.make_scenario("highway", 7, horizon_s=2.0)
    a.reset(7, 0)
    plan = np.array([[6.0 * (k + 1), 0.3 * k ** 2] for k in range(5)])
    a.step(plan)
    b.step(hw.waypoints_to_controls(plan, b.ego.speed))
    np.testing.assert_allclose(a.env.ego.position, b.ego.position, rtol=0, atol=1e-9)
    assert a.env.ego.heading == pytest.approx(b.ego.heading, abs=1e-12)
    assert a.env.ego.speed == pytest.approx(b.ego.speed, abs=1e-12)
    # the expert's own plan (cruising at 25 m/s) followed for 0.5 s brings the ego to the plan's first waypoint: the
    # plan is re-read at the time elapsed since it was made (read as if made now, its waypoints would seem ever
    # nearer: the ego would brake to 23 m/s and stop 0.34 m short)
    env = PlanEnv("highway", 2.0, plan_steps=5)
    env.reset(3, 0)
    state, expert = env.env.ego_state(), hw.expert_waypoints(env.env)
    first = Plan(expert, state).points[1]
    env.step(expert)
    assert np.hypot(*(env.env.ego.position - first)) < 0.05
    assert env.env.ego.speed > 0.99 * state[3]


def test_the_reward_is_the_episodes_score_on_its_last_chunk():
    envs = DrivingEnvs(["highway"] * 2, horizon=1.2, plan_steps=5, workers=0)  # 12 steps: plans of 5, 5, 2
    try:
        envs.reset(5000, [0, 1])
        plans = np.stack([np.array([[9.0 * (k + 1), 0.0] for k in range(5)])] * 2).astype(np.float32)
        results = [envs.step(plans, np.ones(2, bool)) for _ in range(3)]
        logs = [env.env.log for env in envs.local]
    finally:
        envs.close()
    assert [list(r.steps) for r in results] == [[5, 5], [5, 5], [2, 2]]
    assert [list(r.done) for r in results] == [[False, False], [False, False], [True, True]]
    assert not any(r.truncated.any() for r in results)  # the horizon is the task's: nothing is bootstrapped
    cfg = ppo.PPOConfig(env="driving", tasks=("highway",), policy="run", reward="score")
    for i, log in enumerate(logs):
        expert = hw.expert_reference("highway", 5000 + i, 1.2)
        score = hw.episode_metrics(log, expert["progress"])["score"]
        assert [envs.reward(r, cfg)[i] for r in results] == [0.0, 0.0, score] and score > 0
        assert results[-1].success[i] == log.arrived and results[-1].events["collision"][i] == log.collision
    arrival = dataclasses.replace(cfg, reward="success")
    assert list(envs.reward(results[-1], arrival)) == list(results[-1].success.astype(float))


def test_envs_in_worker_processes_equal_envs_in_process():
    plans = np.stack([np.array([[5.0 * (k + 1), 0.2 * k] for k in range(5)])] * 3).astype(np.float32)
    outcomes = []
    for workers in (0, 1):
        envs = DrivingEnvs(["highway", "intersection-left", "highway"], horizon=1.0, plan_steps=4, workers=workers)
        try:
            first = envs.reset(5000, [0, 0, 1])
            outcomes.append((first, envs.step(plans, np.ones(3, bool)), envs.step(plans, np.array([1, 0, 1], bool))))
        finally:
            envs.close()
    (f0, a0, b0), (f1, a1, b1) = outcomes
    assert all(np.array_equal(x["bev"], y["bev"]) and x["text"] == y["text"] for x, y in zip(f0, f1))
    for x, y in ((a0, a1), (b0, b1)):
        np.testing.assert_array_equal(x.dense, y.dense)
        np.testing.assert_array_equal(x.steps, y.steps)
        np.testing.assert_array_equal(x.done, y.done)
        np.testing.assert_array_equal(x.events["collision"], y.events["collision"])
    assert list(b0.steps) == [4, 0, 4] and b0.obs[1] is None


def test_config_refuses_what_cannot_work(runs):
    with pytest.raises(ValueError, match="pass --tasks"):
        ppo.PPOConfig(env="driving", policy=str(runs / "flow"))  # Meta-World's tasks
    with pytest.raises(ValueError, match="pass --policy"):
        ppo.PPOConfig(env="driving", tasks=("highway",))  # π0's Meta-World run
    with pytest.raises(ValueError, match="reward must be one of"):
        ppo.PPOConfig(env="driving", tasks=("highway",), policy=str(runs / "flow"), reward="dense")
    with pytest.raises(ValueError, match="reward must be one of"):
        ppo.PPOConfig(reward="score")  # a driving reward on Meta-World
    with pytest.raises(ValueError, match="Meta-World only"):
        sac.SACConfig(env="driving", tasks=("highway",), policy=str(runs / "mlp"))


def test_rollout_ends_with_the_score_and_is_not_bootstrapped(runs, tmp_path):
    cfg = quick(tmp_path, runs / "flow", max_steps=12)
    policy = load_policy(runs / "flow")
    envs = loop.make_envs(cfg, policy)
    try:
        torch.manual_seed(0)
        batch = loop.rollout(policy, envs, cfg, episodes=[0, 1], device="cpu")
    finally:
        envs.close()
    assert batch["valid"].shape == (3, 2) and batch["valid"].all()  # plans of 5, 5 and 2 steps
    assert batch["goes_on"][:2].all() and not batch["goes_on"][2].any()
    assert (batch["next_values"][2] == 0).all() and (batch["rewards"][:2] == 0).all()
    np.testing.assert_allclose(batch["returns"], batch["rewards"][2].numpy())
    assert set(batch["events"]) == {"collision"}
    assert batch["out"]["x_k"].shape == (3, 2, 5, 2)  # the flow chain of each plan, for the update


@pytest.mark.parametrize("head", ["flow", "mlp"])
def test_one_ppo_iteration_on_the_driving_env_moves_the_weights(runs, tmp_path, head):
    cfg = quick(tmp_path, runs / head, eval_episodes=1 if head == "flow" else 0)
    start = load_policy(runs / head).state_dict()
    after = ppo.train(cfg)
    run = tmp_path / "ppo"
    (metrics,) = read_metrics(run)
    assert 0 < metrics["chunks"] <= 8 and 0 <= metrics["collision"] <= 1 and 0 <= metrics["episode_return"] <= 1
    # nothing had moved the actor before the rollout (kl_start reads all chunks in one batch, the rollout two at a
    # time: CPU kernels that depend on the batch size change a log-probability in its last bits, ~1e-6)
    assert metrics["kl_start"] == pytest.approx(0.0, abs=1e-6)
    checkpoint = last_checkpoint(run)
    meta = json.loads((checkpoint / "config.json").read_text())
    assert meta["method"] == "driving_vla" and meta["online_rl"]["algorithm"] == "ppo"
    tuned = load_policy(run)
    saved = load_file(checkpoint / "model.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in tuned.state_dict().items())
    changed = {k for k, v in tuned.state_dict().items() if k in start and not torch.equal(v, start[k])}
    assert any(k.startswith("policy.net.head.") for k in changed)  # the actor moved
    if head == "flow":  # the backbone is frozen
        assert not any(k.startswith(("policy.net.blocks.", "policy.net.bev_encoder.")) for k in changed)
        assert set(after) == {"highway"} and after["highway"]["episodes"] == 1
        for name in ("eval_before/eval.json", "eval_before/summary.json", "eval_after/eval.md"):
            assert (run / name).stat().st_size > 0
    else:
        assert "log_std" in changed and any(k.startswith("policy.net.blocks.") for k in changed)


def test_grpo_runs_on_the_driving_env(runs, tmp_path):
    """GRPO's groups share a seed; the outcome is arrival (`reward="success"`)."""
    shared = {f.name for f in dataclasses.fields(loop.RLConfig)}
    settings = {k: v for k, v in dataclasses.asdict(quick(tmp_path, runs / "flow")).items() if k in shared}
    grpo.train(grpo.GRPOConfig(**dict(settings, reward="success", group_size=2)))
    (metrics,) = read_metrics(tmp_path / "ppo")
    assert metrics["groups_kept"] in (0.0, 1.0) and 0 < metrics["chunks"] <= 8 and "collision" in metrics


def test_evaluation_follows_plans_as_training_does(runs):
    """The evaluation's plan follower drives exactly the training env's episode when the policy is deterministic
    and the flow noise is the same."""
    policy = load_policy(runs / "mlp")
    follower = driving.PlanFollower(policy, plan_steps=5)
    env = hw.make_scenario("highway", 5000, horizon_s=1.0)
    obs, done = env.observation(), False
    follower.reset()
    while not done:
        obs, done, _ = env.step(follower(obs))
    trained = PlanEnv("highway", 1.0, plan_steps=5)
    obs = trained.reset(5000, 0)
    for _ in range(2):
        with torch.no_grad():
            plan = policy(driving.observations([obs]), deterministic=True)["action"][0].numpy()
        obs = trained.step(plan)[0]
    np.testing.assert_array_equal(trained.env.log.x, env.log.x)
    np.testing.assert_array_equal(trained.env.log.speed, env.log.speed)
