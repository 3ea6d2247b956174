"""Online RL through the policy contract: GAE and the PPO loss on hand cases, the contract on a BC checkpoint (log-probs
recomputed exactly, closed-form entropy, a value head that leaves `predict` alone, load_policy round trips), one
update raising a positively-advantaged chunk's probability, envs identical in and out of worker processes, exact
resume, and the end-to-end run."""

import csv
import dataclasses
import json
import math
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from common.envs.metaworld import MetaWorldEnv, demo_spec
from common.metrics import wilson_interval
from common.policy import Policy, load_policy, observations
from common.tests import contract, demo_cache, resume
from common.train import last_checkpoint, read_metrics

from bc.config import PRESETS
from bc.train import train as train_bc
from gr00t.config import PRESETS as GR00T_PRESETS
from gr00t.train import train as train_gr00t
from openvla.config import PRESETS as OPENVLA_PRESETS
from openvla.train import train as train_openvla
from pi0.config import PRESETS as PI0_PRESETS
from pi0.policy import NOISE_LEVEL
from pi0.train import train as train_pi0

from online_rl import grpo, loop, ppo, sac
from online_rl.envs import ChunkEnvs
from online_rl.ppo import PPOConfig, gae, ppo_losses

torch.set_num_threads(1)
TASKS = PRESETS["smoke"].tasks  # reach, drawer-close: the smoke BC policy's tasks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke training runs of BC, π0 and π0.5 on the same two tasks (their demos in a private cache)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = dataclasses.replace(PRESETS["smoke"], run_dir=str(root / "bc"), eval_episodes=0)
    assert PI0_PRESETS["smoke"].tasks == GR00T_PRESETS["smoke"].tasks == OPENVLA_PRESETS["smoke"].tasks == cfg.tasks
    with demo_cache.private_cache(root / "cache", demo_spec(cfg)):
        train_bc(cfg)
        for variant in ("pi0", "pi05"):
            train_pi0(dataclasses.replace(PI0_PRESETS["smoke"], variant=variant, run_dir=str(root / variant),
                                          eval_episodes=0, demo_image_size=32))
        train_gr00t(dataclasses.replace(GR00T_PRESETS["smoke"], run_dir=str(root / "gr00t"), eval_episodes=0,
                                        demo_image_size=32))
        for variant in ("openvla", "oft"):
            train_openvla(dataclasses.replace(OPENVLA_PRESETS["smoke"], variant=variant, run_dir=str(root / variant),
                                              eval_episodes=0))
        yield root


@pytest.fixture(scope="module")
def bc_run(runs):
    return runs / "bc"


METHODS = ("bc", "pi0", "pi05", "gr00t", "openvla", "oft")


def quick(tmp_path, bc_run, **overrides) -> PPOConfig:
    return dataclasses.replace(PPOConfig(policy=str(bc_run), run_dir=str(tmp_path / "ppo"), tasks=TASKS,
                                         envs_per_task=2, iterations=3, max_steps=12, minibatch_size=8, update_epochs=2,
                                         critic_warmup=1, eval_episodes=0, save_every=1, workers=0, threads=1),
                               **overrides)


def obs_batch(n=3, image_size=32):
    env = MetaWorldEnv("reach-v3", image_size=image_size)
    try:
        return observations([env.reset(7, e) for e in range(n)], ("corner",))
    finally:
        env.close()


# ------------------------------------------------------------------------------------------------ the maths
def test_gae_on_a_hand_case():
    # one env, three chunks, success on the last (terminal: nothing after it is bootstrapped)
    rewards, values = torch.tensor([[0.0], [0.0], [1.0]]), torch.tensor([[0.5], [0.6], [0.7]])
    next_values, goes_on = torch.tensor([[0.6], [0.7], [0.0]]), torch.tensor([[True], [True], [False]])
    adv, ret = gae(rewards, values, next_values, goes_on, gamma=0.9, lam=0.8)
    d = [0 + 0.9 * 0.6 - 0.5, 0 + 0.9 * 0.7 - 0.6, 1 - 0.7]
    expected = [d[0] + 0.72 * (d[1] + 0.72 * d[2]), d[1] + 0.72 * d[2], d[2]]
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected))
    torch.testing.assert_close(ret, adv + values)
    # truncated by the step limit after chunk 0 (bootstrap with V(s_final) = 2), a new episode does not leak back
    adv, _ = gae(torch.tensor([[0.0], [5.0]]), torch.tensor([[1.0], [1.0]]), torch.tensor([[2.0], [0.0]]),
                 torch.tensor([[False], [False]]), gamma=0.5, lam=1.0)
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.5 * 2 - 1, 5.0 - 1]))


def test_ppo_losses_on_a_hand_case():
    old = torch.zeros(3)
    log_prob = torch.log(torch.tensor([1.5, 0.5, 1.1]))  # ratios 1.5 (clipped to 1.2), 0.5 (to 0.8), 1.1
    adv = torch.tensor([1.0, -2.0, 3.0])
    out = ppo_losses(log_prob, old, adv, value=torch.tensor([1.0, 0.0, 2.0]), old_value=torch.tensor([0.0, 0.0, 1.0]),
                     returns=torch.tensor([0.0, 1.0, 2.0]), clip=0.2, value_clip=0.5)
    # -min(r A, clip(r) A): 1.2 * 1 (clipped), 0.8 * -2 is smaller than 0.5 * -2 -> -1.6, 1.1 * 3
    torch.testing.assert_close(out["policy"], -torch.tensor((1.2 - 1.6 + 3.3) / 3))
    # value: max((V-R)^2, (V_old + clip(V - V_old) - R)^2) = max(1, 0.25), max(1, 1), max(0, 0.25)
    torch.testing.assert_close(out["value"], torch.tensor(0.5 * (1 + 1 + 0.25) / 3))
    assert out["clip_fraction"] == pytest.approx(2 / 3)


def test_micro_batches_accumulate_the_minibatch_gradient():
    x, y = torch.randn(12, generator=torch.Generator().manual_seed(0)), torch.arange(12.0)
    weights = []
    for micro in (12, 5, 1):
        w = torch.nn.Parameter(torch.tensor(0.5))
        optimizer = torch.optim.SGD([w], lr=0.01)
        cfg = loop.RLConfig(update_epochs=2, minibatch_size=12, micro_batch_size=micro, max_grad_norm=1e9)
        stats = loop.epochs_of_steps(cfg, 12, optimizer, torch.Generator().manual_seed(1),
                                     lambda i: (((w * x[i] - y[i]) ** 2).mean(), {}))
        weights.append(w.item())
        assert set(stats) == {"grad_norm"}
    assert weights[0] == pytest.approx(weights[1], abs=1e-6) and weights[0] == pytest.approx(weights[2], abs=1e-6)


def test_grpo_advantages_and_dynamic_sampling_on_a_hand_case():
    outcomes = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    adv, keep = grpo.grpo_advantages(outcomes, group)
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # the sample std of (1, 0, 0)
    torch.testing.assert_close(adv, torch.tensor([(2 / 3) / std, -(1 / 3) / std, -(1 / 3) / std, 0, 0, 0, 0, 0]),
                               atol=1e-5, rtol=1e-5)
    assert keep.tolist() == [True] * 3 + [False] * 5  # all-success and all-failure groups are dropped


def test_grpo_loss_clips_asymmetrically():
    log_prob = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))  # ratios
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = grpo.grpo_loss(log_prob, torch.zeros(4), adv, clip_low=0.2, clip_high=0.28)
    # -min(r A, clip(r) A): 1.28 (clipped high), -1.5 (unclipped is smaller), 0.5, -0.8 (clipped low)
    torch.testing.assert_close(out["policy"], -torch.tensor((1.28 - 1.5 + 0.5 - 0.8) / 4))


def test_grpo_groups_share_a_placement_and_tasks_alternate():
    cfg = grpo.GRPOConfig(tasks=("reach-v3", "push-v3"), envs_per_task=4, group_size=2)
    assert cfg.env_tasks() == ["reach-v3", "push-v3"] * 4
    assert grpo.groups(cfg).tolist() == [0, 2, 0, 2, 1, 3, 1, 3]
    assert grpo.placements(cfg, 3) == [6, 6, 6, 6, 7, 7, 7, 7]  # per task: a group's envs share one placement
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo.GRPOConfig(envs_per_task=6, group_size=4)


# ------------------------------------------------------------------------------------------------ the contract
def test_load_policy_round_trips_bc_from_run_checkpoint_and_pointer(bc_run):
    from bc.eval import load_policy as load_bc
    trained = load_bc(bc_run)[0].eval()
    obs = obs_batch()
    expected = trained.predict_chunk(feature_for(trained, obs))
    for path in (bc_run, last_checkpoint(bc_run), bc_run / "checkpoints" / "last"):
        policy = load_policy(path)
        assert isinstance(policy, Policy) and type(policy).__name__ == "BCActorCritic"
        assert torch.equal(policy.predict(obs), expected)
    from gr00t.eval import load_policy as load_gr00t
    from openvla.eval import load_policy as load_openvla
    from pi0.eval import load_policy as load_pi0
    for variant, load, name in (("pi0", load_pi0, "Pi0ActorCritic"), ("pi05", load_pi0, "Pi0ActorCritic"),
                                ("gr00t", load_gr00t, "Gr00tActorCritic"), ("openvla", load_openvla,
                                                                            "OpenVLAActorCritic"),
                                ("oft", load_openvla, "OFTActorCritic")):
        trained = load(bc_run.parent / variant)[0].eval()
        policy = load_policy(bc_run.parent / variant)
        assert type(policy).__name__ == name
        obs = obs_batch(image_size=32)
        torch.manual_seed(0)
        expected = trained.predict_chunk(feature_for(policy, obs))
        torch.manual_seed(0)
        assert torch.equal(policy.predict(obs), expected)
    with pytest.raises(ValueError, match="unknown method"):
        load_policy(bc_run, method="no_such_method")


@pytest.mark.parametrize("method", METHODS)
def test_recomputed_log_prob_equals_the_rollouts(runs, method):
    policy = load_policy(runs / method)
    obs = obs_batch(image_size=policy.cfg.demo_image_size)
    torch.manual_seed(0)
    with torch.no_grad():
        out = policy(obs)
    assert out["action"].shape == (3, policy.cfg.n_action_steps, 4) and out["log_prob"].shape == (3,)
    assert out["value"].shape == (3, 1) and torch.isfinite(out["log_prob"]).all()
    policy.train()  # the RL update's mode: must not switch on the imitation policy's augmentation
    log_prob, entropy = policy.evaluate_actions(obs, out)
    assert torch.equal(log_prob, out["log_prob"])  # PPO's ratio is exactly 1 before an update
    assert entropy.shape == (3,) and torch.isfinite(entropy).all()
    # deterministic: the mean / the ODE, in environment units; the first K actions of the policy as trained
    torch.manual_seed(1)
    deterministic = policy(obs, deterministic=True)["action"]
    torch.manual_seed(1)
    torch.testing.assert_close(deterministic, policy.predict(obs)[:, :out["action"].shape[1]])


def test_bc_log_prob_and_entropy_are_the_gaussians(bc_run):
    policy = load_policy(bc_run)
    obs = obs_batch()
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-1.0, -2.0, 0.5, 0.0]))
        out = policy(obs)
        log_prob, entropy = policy.evaluate_actions(obs, out)
        mean = policy.policy(feature_for(policy, obs))[:, :policy.cfg.n_action_steps]
    k, var = policy.cfg.n_action_steps, policy.log_std.exp() ** 2
    torch.testing.assert_close(entropy, (k * 0.5 * torch.log(2 * math.pi * math.e * var).sum()).expand(3))
    manual = -0.5 * ((out["sample"] - mean) ** 2 / var + torch.log(2 * math.pi * var))
    torch.testing.assert_close(log_prob, manual.sum((1, 2)))


def test_openvla_samples_action_bins_and_scores_them_in_closed_form(runs):
    policy = load_policy(runs / "openvla")
    obs = obs_batch(image_size=32)
    torch.manual_seed(0)
    with torch.no_grad():
        out = policy(obs)
        log_prob, entropy = policy.evaluate_actions(obs, out)
        tokens = out["tokens"]
        assert tokens.shape == (3, 4) and ((tokens >= policy.bins.start) & (tokens < policy.bins.stop)).all()
        logits = policy.policy.model(*policy._inputs(obs), tokens)[..., policy.bins]  # teacher forcing
    p = logits.softmax(-1)
    torch.testing.assert_close(entropy, -(p * p.log()).sum((-1, -2)))
    torch.testing.assert_close(log_prob, p.gather(-1, (tokens - policy.bins.start)[..., None]).log().sum((1, 2)))
    assert (entropy <= 4 * math.log(256) + 1e-4).all()


def feature_for(policy, obs):
    return {"observation.images.corner": obs["rgb"][:, 0], policy.cfg.state_key: obs["proprio"],
            "instruction": list(obs["language"])}


@pytest.mark.parametrize("step", [0, 3, 9])
def test_flow_sde_step_is_rlinfs(runs, step):
    """μ and s of Flow-SDE's step against RLinf's form of them: x0_pred (1 − (τ − δ)) + x1_pred (τ − δ − σ²δ/2τ) with
    x0_pred = x − τ v, x1_pred = x + (1 − τ) v, s = √δ σ; σ = a √(τ / (1 − τ)), the first step's 1 − τ read as δ."""
    policy = load_policy(runs / "pi0")
    n = policy.cfg.num_inference_steps
    x, v = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(0)).chunk(2)
    mean, std = policy._sde_step(x, v, torch.tensor([step]))
    tau, delta = 1 - step / n, 1 / n
    sigma = NOISE_LEVEL * math.sqrt(tau / (delta if step == 0 else 1 - tau))
    x0, x1 = x - tau * v, x + (1 - tau) * v
    torch.testing.assert_close(mean, x0 * (1 - (tau - delta)) + x1 * (tau - delta - sigma ** 2 * delta / (2 * tau)))
    torch.testing.assert_close(std.flatten(), torch.tensor([math.sqrt(delta) * sigma]))
    if step == 0:
        assert std.item() == pytest.approx(NOISE_LEVEL)


@pytest.mark.parametrize("method", ["pi0", "gr00t"])
def test_flow_sde_without_noise_is_the_samplers_euler_step(runs, method, monkeypatch):
    """a = 0 leaves the ODE's step: π0 x − v/n (openpi time), GR00T x + v/n (its own time, mapped by τ = 1 − t and
    v → −v). This checks each policy's mapping onto `flow_sde_step`."""
    policy = load_policy(runs / method)
    monkeypatch.setattr(sys.modules[type(policy).__module__], "NOISE_LEVEL", 0.0)
    n = policy.cfg.num_inference_steps
    x, v = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(0)).chunk(2)
    for k in range(n):
        mean, std = policy._sde_step(x, v, torch.tensor([k]))
        torch.testing.assert_close(mean, x + (v if method == "gr00t" else -v) / n)
        assert std.item() == 0


@pytest.mark.parametrize("method", ["pi0", "gr00t"])
def test_flow_sde_scores_the_stored_step_and_its_entropy(runs, method):
    policy, obs = load_policy(runs / method), obs_batch(image_size=32)
    out, log_prob = contract.assert_flow_sde_scores_the_stored_step(policy, obs, policy.cfg.n_action_steps * 4)
    outside = out.clone()
    outside["x_next"][:, policy.cfg.n_action_steps:] += 1.0  # entries the robot does not execute do not count
    assert torch.equal(policy.evaluate_actions(obs, outside)[0], log_prob)


def test_flow_policies_train_the_action_model_not_the_vlm(runs):
    for method, trained, frozen in (("pi0", "policy.model.expert_layers.", ("policy.model.vlm_layers.",
                                                                            "policy.model.vision_tower.")),
                                    ("gr00t", "policy.model.action_head.model.", ("policy.model.backbone.",))):
        trainable = {n for n, p in load_policy(runs / method).named_parameters() if p.requires_grad}
        assert any(n.startswith("value_head.") for n in trainable)
        assert any(n.startswith(trained) for n in trainable)
        assert not any(n.startswith(frozen) for n in trainable)


@pytest.mark.parametrize("method", METHODS)
def test_value_head_does_not_change_predict(runs, method):
    policy = load_policy(runs / method)
    contract.assert_value_head_apart(policy, obs_batch(image_size=policy.cfg.demo_image_size), batch=3)


@pytest.mark.parametrize("method", METHODS)
def test_one_update_raises_the_probability_of_a_positively_advantaged_chunk(runs, method):
    policy = load_policy(runs / method)
    obs = obs_batch(2, image_size=policy.cfg.demo_image_size)
    torch.manual_seed(1)
    with torch.no_grad():
        out = policy(obs)
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    log_prob, _ = policy.evaluate_actions(obs, out)
    losses = ppo_losses(log_prob, out["log_prob"], torch.tensor([1.0, -1.0]), policy.get_value(obs)[:, 0],
                        out["value"][:, 0], torch.zeros(2), clip=0.2, value_clip=0.2)
    losses["policy"].backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)  # as the PPO update does: a small step
    optimizer.step()
    with torch.no_grad():
        after, _ = policy.evaluate_actions(obs, out)
    assert after[0] > out["log_prob"][0] and after[1] < out["log_prob"][1]


def test_load_policy_reads_an_rl_checkpoint_whole(bc_run, tmp_path):
    ppo.train(quick(tmp_path, bc_run, iterations=2))
    policy = load_policy(tmp_path / "ppo")
    saved = load_file(last_checkpoint(tmp_path / "ppo") / "model.safetensors")
    assert {"log_std", "value_head.0.weight"} <= saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in policy.state_dict().items())
    meta = json.loads((last_checkpoint(tmp_path / "ppo") / "config.json").read_text())
    assert meta["method"] == "bc" and meta["online_rl"]["algorithm"] == "ppo"


# ------------------------------------------------------------------------------------------------ envs and runs
def test_envs_in_worker_processes_equal_envs_in_process():
    tasks = ["reach-v3", "drawer-close-v3", "reach-v3"]
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 4, 4)).astype(np.float32)
    outcomes = []
    for workers in (0, 2):
        envs = ChunkEnvs(tasks, image_size=32, cameras=("corner",), max_steps=6, workers=workers)
        try:
            first = envs.reset(3, [0, 0, 1])
            a = envs.step(actions, np.ones(3, bool))
            b = envs.step(actions, np.array([True, False, True]))  # env 1 idles
            outcomes.append((first, a, b))
        finally:
            envs.close()
    (f0, a0, b0), (f1, a1, b1) = outcomes
    assert all(np.array_equal(x["images"]["corner"], y["images"]["corner"]) for x, y in zip(f0, f1))
    for x, y in ((a0, a1), (b0, b1)):
        np.testing.assert_array_equal(x.dense, y.dense)
        np.testing.assert_array_equal(x.steps, y.steps)
        np.testing.assert_array_equal(x.done, y.done)
    assert list(a0.steps) == [4, 4, 4] and list(b0.steps) == [2, 0, 2] and b0.obs[1] is None
    assert b0.done[0] and b0.truncated[0] and not b0.success[0]  # 6 steps: the limit, not success


def test_ppo_resume_is_exact(bc_run, tmp_path, monkeypatch):
    resume.assert_resume_is_exact(ppo, quick(tmp_path / "a", bc_run), quick(tmp_path / "b", bc_run), monkeypatch,
                                  steps="iterations", metric="policy", saver=loop)


def test_grpo_update_learns_from_a_group_with_signal(bc_run):
    cfg = grpo.GRPOConfig(policy=str(bc_run), tasks=("reach-v3",), envs_per_task=2, group_size=2, max_steps=8,
                          update_epochs=1, minibatch_size=64, lr=1e-5)
    policy = load_policy(bc_run)
    envs = ChunkEnvs(cfg.env_tasks(), 32, ("corner",), cfg.max_steps, workers=0)
    try:
        torch.manual_seed(0)
        batch = loop.rollout(policy, envs, cfg, grpo.placements(cfg, 0), device="cpu")
    finally:
        envs.close()
    batch["success"] = np.array([True, False])  # as if episode 0 of the group had succeeded
    obs, out = batch["obs"].reshape(-1), batch["out"].reshape(-1)
    stats = grpo.update(cfg, policy, policy, grpo.make_optimizer(policy, cfg), None, batch, 0, torch.Generator())
    assert stats["groups_kept"] == 1 and stats["chunks_used"] == int(batch["valid"].sum()) == 4
    with torch.no_grad():
        change = policy.evaluate_actions(obs, out)[0] - out["log_prob"]
    assert change[0::2].mean() > 0 > change[1::2].mean()  # env 0's chunks (rows t * 2) up, env 1's down


def test_grpo_end_to_end(runs, tmp_path):
    shared = {f.name for f in dataclasses.fields(loop.RLConfig)}
    settings = {k: v for k, v in dataclasses.asdict(quick(tmp_path, runs / "bc")).items() if k in shared}
    cfg = grpo.GRPOConfig(**dict(settings, envs_per_task=2, group_size=2, max_steps=40, iterations=2))
    grpo.train(cfg)
    metrics = read_metrics(tmp_path / "ppo")
    assert [m["step"] for m in metrics] == [1, 2] and all("groups_kept" in m for m in metrics)
    policy = load_policy(tmp_path / "ppo")
    meta = json.loads((last_checkpoint(tmp_path / "ppo") / "config.json").read_text())
    assert meta["online_rl"]["algorithm"] == "grpo" and type(policy).__name__ == "BCActorCritic"


@pytest.mark.parametrize("method", ["bc", "pi0", "gr00t"])
def test_ppo_end_to_end_with_evaluation(runs, tmp_path, method):
    cfg = quick(tmp_path, runs / method, iterations=2, eval_episodes=1, workers=2, reward="dense")
    after = ppo.train(cfg)
    run = tmp_path / "ppo"
    assert set(after) == {*TASKS, "door-open-v3"}  # the trained tasks and the watched one not among them
    assert all(r["episodes"] == 1 for r in after.values())
    for name in ("eval_before/summary.json", "eval_after/summary.json", "eval_after/eval.md"):
        assert (run / name).stat().st_size > 0
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["chunks"] > 0 and math.isfinite(m["value"]) for m in metrics)
    # 4 envs of at most 12 steps; each chunk executes at least one action
    assert all(m["chunks"] <= m["env_steps"] <= 4 * 12 for m in metrics)
    assert metrics[0]["kl_start"] == 0.0  # nothing updated the actor before the first rollout
    assert metrics[1]["kl_start"] == 0.0  # the first iteration was critic warm-up: the actor is unchanged


def test_rollout_masks_ended_episodes_and_bootstraps_truncated_ones(bc_run, tmp_path):
    cfg = quick(tmp_path, bc_run, max_steps=6)  # K = 4 actions per chunk: every episode is cut in its second chunk
    policy = load_policy(bc_run)
    envs = ChunkEnvs(list(TASKS), 32, ("corner",), cfg.max_steps, workers=0)
    try:
        torch.manual_seed(0)
        batch = loop.rollout(policy, envs, cfg, episodes=[0, 0], device="cpu")
    finally:
        envs.close()
    assert batch["valid"].shape == (2, 2) and batch["valid"].all()
    assert batch["goes_on"][0].all() and not batch["goes_on"][1].any()
    torch.testing.assert_close(batch["next_values"][0], batch["values"][1])
    # the truncated chunk bootstraps with V of where the episode stopped: replay its actions in a fresh env
    for i, task in enumerate(TASKS):
        env = MetaWorldEnv(task, image_size=32, max_steps=cfg.max_steps)
        try:
            env.reset(cfg.placement_seed, 0)
            for t in range(2):
                actions = policy.policy.normalizer.unnormalize("action", batch["out"]["sample"][t, i])
                for action in actions.numpy()[: cfg.max_steps - 4 * t]:
                    env.step(action, render=False)
            final = observations([env.observation()], ("corner",))
        finally:
            env.close()
        torch.testing.assert_close(batch["next_values"][1, i], policy.get_value(final)[0, 0])


def test_no_arguments_trains_the_default_pi0_run_first_when_absent(tmp_path, monkeypatch):
    from online_rl import train as entry
    calls = []
    monkeypatch.setattr(entry.subprocess, "run", lambda command, cwd, check: calls.append((command[1:], cwd)))
    (tmp_path / "online_rl").mkdir()
    monkeypatch.setattr(entry, "HERE", tmp_path / "online_rl")
    entry.ensure_default_policy(ppo.PPOConfig())
    assert calls == [(["train.py"], tmp_path / "pi0")]  # `cd pi0 && python train.py`
    (tmp_path / "pi0" / "runs" / "pi0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "pi0" / "runs" / "pi0" / "checkpoints" / "last").write_text("00003000")
    entry.ensure_default_policy(ppo.PPOConfig())
    entry.ensure_default_policy(ppo.PPOConfig(policy="elsewhere"))
    assert len(calls) == 1  # present, or another policy asked for: nothing is trained


def sac_config(tmp_path, run, **overrides) -> sac.SACConfig:
    shared = {f.name for f in dataclasses.fields(loop.RLConfig)}
    settings = {k: v for k, v in dataclasses.asdict(quick(tmp_path, run)).items() if k in shared}
    return sac.SACConfig(**dict(settings, updates=3, minibatch_size=8, critic_warmup=1, **overrides))


def test_sac_runs_and_resumes_exactly(runs, tmp_path, monkeypatch):
    resume.assert_resume_is_exact(sac, sac_config(tmp_path / "a", runs / "bc"), sac_config(tmp_path / "b", runs / "bc"),
                                  monkeypatch, steps="iterations", metric="q_loss", saver=loop)
    metrics = read_metrics(tmp_path / "a" / "ppo")
    assert "actor_loss" not in metrics[0] and "actor_loss" in metrics[1]  # critic warm-up first
    assert metrics[-1]["buffer"] == sum(m["chunks"] for m in metrics)
    assert (last_checkpoint(tmp_path / "a" / "ppo") / "sac_state.pt").exists()
    assert type(load_policy(tmp_path / "a" / "ppo")).__name__ == "BCActorCritic"


def test_sac_state_replay_and_refusal(runs, tmp_path):
    cfg = sac_config(tmp_path, runs / "oft", buffer_size=5)
    policy = load_policy(runs / "oft")
    _, state = sac.setup(cfg, policy)
    obs = obs_batch(3, image_size=32)
    for step in range(3):  # 9 chunks into a buffer of 5: the newest 5 stay
        state.add(obs, obs, torch.full((3, policy.cfg.n_action_steps, 4), float(step)), torch.zeros(3), torch.zeros(3))
    assert state.buffer["sample"][:, 0, 0].tolist() == [1, 1, 2, 2, 2] and len(state.buffer["language"]) == 5
    o, o2, rest = state.draw(4, torch.Generator().manual_seed(0), "cpu")
    assert o["rgb"].shape == (4, 1, 32, 32, 3) and len(list(o2["language"])) == 4
    state.save(tmp_path)
    _, fresh = sac.setup(cfg, policy)
    fresh.load(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), state.state_dict().values()))
    assert torch.equal(fresh.buffer["sample"], state.buffer["sample"])
    with pytest.raises(TypeError, match="Gaussian-head"):
        sac.setup(cfg, load_policy(runs / "pi0"))


def test_sac_soft_target_on_a_hand_case(runs, tmp_path):
    cfg = sac_config(tmp_path, runs / "bc")
    policy = load_policy(runs / "bc")
    _, state = sac.setup(cfg, policy)
    obs = obs_batch(2)
    reward, terminal, alpha = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]), torch.tensor(0.3)
    torch.manual_seed(5)
    target = sac.soft_target(policy, state, obs, reward, terminal, alpha, gamma=0.9)
    torch.manual_seed(5)
    with torch.no_grad():
        gaussian, features = policy.distribution(obs)
        a = gaussian.sample()
        x = torch.cat([features, a.flatten(1)], -1)
        q = torch.min(state.q_target[0](x), state.q_target[1](x))[:, 0]
        soft = q - alpha * gaussian.log_prob(a).sum((1, 2))
    assert target[0] == 1.0  # success is terminal: nothing bootstrapped
    torch.testing.assert_close(target[1], 2.0 + 0.9 * soft[1])


# ------------------------------------------------------------------------------------------------ the table
def summary(rates: dict[str, tuple[int, int]]) -> dict:
    return {task: dict(success_rate=s / n, episodes=n) for task, (s, n) in rates.items()}


def test_table_pools_after_counts_before_once_and_checks_the_bar(tmp_path):
    from online_rl import table
    before = summary({"reach-v3": (10, 50), "push-v3": (20, 50), "door-open-v3": (48, 50)})
    afters = [summary({"reach-v3": (30, 50), "push-v3": (35, 50), "door-open-v3": (47, 50)}),
              summary({"reach-v3": (40, 50), "push-v3": (35, 50), "door-open-v3": (30, 50)})]
    for seed, after in enumerate(afters):
        curve = [dict(iteration=i + 1, env_steps=1000, success=0.3 + 0.1 * i, kl_start=0.0, episode_return=0.0)
                 for i in range(3)]
        (tmp_path / f"pi0-ppo-s{seed}.json").write_text(json.dumps(dict(
            row="pi0-ppo", seed=seed, commit="abc1234", config=dict(tasks=["reach-v3", "push-v3"], env="metaworld",
                                                                    eval_episodes=50),
            minutes=60.0, before=before, after=after, curve=curve)))
    text = table.report(["pi0-ppo", "bc-ppo"], tmp_path)  # a row without result files is left out
    cells = [c.strip() for c in text.splitlines()[-1].split("|")[1:-1]]
    lo, hi = wilson_interval(30, 100)  # before: 30/100, counted once although both seeds hold it
    assert cells[2].startswith(f"**30% [{lo:.2f}, {hi:.2f}] → ")
    lo, hi = wilson_interval(140, 200)  # after: both seeds' 200 episodes pooled
    assert cells[2].endswith(f"70% [{lo:.2f}, {hi:.2f}]**")
    assert cells[3] == "+40 ± 7 pts"  # seed 0: 65% − 30%, seed 1: 75% − 30%
    assert cells[4] == "yes"
    assert "not all inside" in cells[5]  # door-open 96% -> 77%: outside its interval before
    assert "reach 20% → 70%" in cells[6] and "door-open 96% → 77%" in cells[6]
    assert cells[7] == "3,000" and "BC" not in text
    rows = list(csv.DictReader(open(tmp_path / "table.csv")))
    assert len(rows) == 12 and {r["trained"] for r in rows if r["task"] == "door-open-v3"} == {"False"}
    assert (tmp_path / "table.png").stat().st_size > 0
    afters[1]["door-open-v3"] = before["door-open-v3"]
    changed = json.loads((tmp_path / "pi0-ppo-s1.json").read_text())
    changed["after"], changed["before"] = afters[1], summary({"reach-v3": (11, 50), "push-v3": (20, 50),
                                                              "door-open-v3": (48, 50)})
    (tmp_path / "pi0-ppo-s1.json").write_text(json.dumps(changed))
    text = table.report(["pi0-ppo"], tmp_path)
    assert "each inside its interval before" in text and "'before' evaluations differ" in text


def test_table_trains_a_start_once_and_resumes_an_interrupted_one(tmp_path, monkeypatch):
    from online_rl import table
    calls = []
    monkeypatch.setattr(table.subprocess, "run", lambda command, cwd, check: calls.append((command[1:], cwd)))
    monkeypatch.setattr(table, "commit_label", lambda: "abc1234")
    row = table.ROWS["oft-grpo"]
    table.ensure_start(row, tmp_path, threads=1)
    run_dir = str((tmp_path / "starts" / "openvla-variant-oft").resolve())
    assert calls == [(["train.py", "--variant", "oft", "--run_dir", run_dir, "--threads", "1"],
                      table.REPO / "openvla")]
    assert json.loads((tmp_path / "starts" / "openvla-variant-oft.json").read_text())["command"].startswith(
        "cd openvla && python train.py --variant oft")
    table.ensure_start(row, tmp_path, threads=1)
    assert len(calls) == 1  # finished (its marker): not trained again
    (tmp_path / "starts" / "openvla-variant-oft.json").unlink()
    (tmp_path / "starts" / "openvla-variant-oft" / "checkpoints").mkdir(parents=True)
    (tmp_path / "starts" / "openvla-variant-oft" / "checkpoints" / "last").write_text("00001000")
    table.ensure_start(row, tmp_path, threads=2)
    assert calls[-1][0][-3:] == ["--threads", "2", "--resume"]  # interrupted: it continues


def test_table_run_end_to_end(bc_run, tmp_path):
    """One (row, seed) through the table's own run: the RL run on its start, the result file with both evaluations
    and the curve, and the report; an existing RL run is resumed, not restarted."""
    import shutil

    from online_rl import table
    shutil.copytree(bc_run, tmp_path / "starts" / "bc")
    (tmp_path / "starts" / "bc.json").write_text(json.dumps(dict(commit="x", command="cd bc && python train.py")))
    extra = ["--tasks", *TASKS, "--envs_per_task", "2", "--iterations", "2", "--max_steps", "12", "--minibatch_size",
             "8", "--update_epochs", "1", "--critic_warmup", "1", "--eval_episodes", "1"]
    table.run("bc-ppo", 0, extra, tmp_path)
    result = json.loads((tmp_path / "bc-ppo-s0.json").read_text())
    assert set(result["before"]) == set(result["after"]) == {*TASKS, "door-open-v3"}
    assert [c["iteration"] for c in result["curve"]] == [1, 2] and all(c["env_steps"] > 0 for c in result["curve"])
    assert result["config"]["seed"] == 0 and result["config"]["eval_episodes"] == 1  # `extra` overrides the table's
    assert result["start"]["command"] == "cd bc && python train.py" and result["command"].startswith(
        "python online_rl/train.py ppo --policy")
    run_dir = tmp_path / "runs" / "bc-ppo-s0"
    assert last_checkpoint(run_dir).name == "00000002"
    table.run("bc-ppo", 0, [*extra, "--iterations", "3"], tmp_path)  # resumed: one more iteration, not three
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]
    assert "BC + PPO" in table.report(["bc-ppo"], tmp_path)
