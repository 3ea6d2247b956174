"""offline_rl: losses against hand-computed values, IQL, TD3+BC and CQL updates against CORL's (a fixture), the
dataset layouts, learning beats the behaviour policy, resume, the generation protocol end to end at a toy budget,
and the results table."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from offline_rl import bc, cql, dt, generate, iql, runner, table, td3_bc
from offline_rl.data import (ARRAYS, OfflineDataset, load_dataset, observation_stats, scale_rewards_by_return_range,
                             write_d4rl)
from offline_rl.networks import EnsembleLinear, TanhGaussianPolicy, TwinQ

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------- losses by hand
def test_expectile_loss_by_hand():
    # u = [1, −2], τ = 0.7: (0.7·1 + 0.3·4) / 2
    assert iql.expectile_loss(torch.tensor([1.0, -2.0]), 0.7).item() == pytest.approx(0.95)
    # τ = 0.5 is half the mean squared error
    u = torch.randn(7)
    assert iql.expectile_loss(u, 0.5).item() == pytest.approx(0.5 * u.pow(2).mean().item(), rel=1e-6)


def test_awr_policy_loss_by_hand():
    log_prob, adv = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([0.0, 1.0, 2.0])
    # weights exp(3·A) = [1, e³, e⁶ → clipped to 100]
    expected = -(1 * -1.0 + math.exp(3) * -2.0 + 100 * -0.5) / 3
    assert iql.awr_policy_loss(log_prob, adv, beta=3.0, max_weight=100.0).item() == pytest.approx(expected)
    adv.requires_grad_(True)
    iql.awr_policy_loss(log_prob.requires_grad_(True), adv, 3.0, 100.0).backward()
    assert adv.grad is None or torch.all(adv.grad == 0)  # the weights carry no gradient


def test_iql_q_loss_by_hand():
    qs, target = torch.tensor([[1.0, 2.0], [0.0, 4.0]]), torch.tensor([1.0, 3.0])
    assert iql.q_loss(qs, target).item() == pytest.approx((0 + 1 + 1 + 1) / 4)


def test_td3_bc_actor_loss_by_hand():
    q, pi, a = torch.tensor([1.0, -3.0]), torch.tensor([[0.5], [0.0]]), torch.zeros(2, 1)
    # λ = 2.5 / mean|Q| = 1.25; −λ·mean Q = 1.25; mean (π − a)² = 0.125
    assert td3_bc.td3_bc_actor_loss(q, pi, a, alpha=2.5).item() == pytest.approx(1.375)


def test_td3_target_without_noise_by_hand():
    torch.manual_seed(0)
    q = TwinQ(3, 1, 8)
    actor = torch.nn.Linear(3, 1)
    next_obs, rewards, dones = torch.randn(4, 3), torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0, 0, 1, 0.0])
    y = td3_bc.td3_target(q, actor, next_obs, rewards, dones, 0.9, policy_noise=0.0, noise_clip=0.5)
    next_q = q(next_obs, actor(next_obs).clamp(-1, 1)).min(0).values
    assert torch.allclose(y, rewards + 0.9 * (1 - dones) * next_q)
    assert y[2] == 2.0  # a terminal transition does not bootstrap


def test_conservative_gap_by_hand():
    q_data = torch.tensor([[1.0], [2.0]])  # (2 critics, B = 1)
    q_sampled = torch.tensor([[[0.0, 1.0, 2.0]], [[1.0, 1.0, 1.0]]])  # (2, 1, 3 samples)
    log_density = torch.tensor([[[math.log(0.5), 0.0, -1.0]]])
    gap = cql.conservative_gap(q_data, q_sampled, log_density, temperature=1.0)
    by_hand = [math.log(math.exp(0 - math.log(0.5)) + math.exp(1) + math.exp(3)) - 1,
               math.log(math.exp(1 - math.log(0.5)) + math.exp(1) + math.exp(2)) - 2]
    assert gap.tolist() == pytest.approx(by_hand, rel=1e-6)


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(5, 3, 16)
    obs = torch.randn(6, 5)
    actions, log_prob = policy(obs)
    mu, raw = policy.net(obs).chunk(2, dim=-1)
    log_std = (policy.log_std_multiplier * raw + policy.log_std_offset).clamp(-20, 2)
    reference = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform()])
    assert torch.allclose(log_prob, reference.log_prob(actions).sum(-1), atol=1e-3)
    assert torch.allclose(policy.log_prob(obs, actions), log_prob, atol=1e-3)
    # several samples per state from one network pass (CQL's importance samples): each is a draw of π(·|s)
    many, many_log_prob = policy(obs, samples=4)
    assert many.shape == (6, 4, 3) and many_log_prob.shape == (6, 4)
    assert (many[:, 0] != many[:, 1]).all()
    reference = TransformedDistribution(Normal(mu[:, None], log_std.exp()[:, None]), [TanhTransform()])
    assert torch.allclose(many_log_prob, reference.log_prob(many).sum(-1), atol=1e-3)


def test_twin_q_members_are_independent_mlps():
    torch.manual_seed(0)
    q = TwinQ(4, 2, 8)
    obs, act = torch.randn(5, 4), torch.randn(5, 2)
    out = q(obs, act)
    for i in range(2):  # member i by hand, layer by layer
        x = torch.cat([obs, act], -1)
        for j, layer in enumerate(m for m in q.net if hasattr(m, "weight")):
            x = x @ layer.weight[i] + layer.bias[i]
            x = torch.relu(x) if j < 2 else x
        assert torch.allclose(out[i], x[:, 0], atol=1e-6)
    assert q(obs[:, None].expand(-1, 3, -1), act[:, None].expand(-1, 3, -1)).shape == (2, 5, 3)


def test_decision_transformer_is_causal_and_returns_to_go():
    assert dt.returns_to_go(np.array([1.0, 2.0, 3.0])).tolist() == [6.0, 5.0, 3.0]
    torch.manual_seed(0)
    cfg = dt.DTConfig(context=4, embed_dim=16, layers=2, heads=2, dropout=0.0)
    model = dt.DecisionTransformer(3, 2, cfg, episode_len=10).eval()
    rtg, states, actions, steps = torch.randn(2, 4), torch.randn(2, 4, 3), torch.randn(2, 4, 2), torch.arange(4)[None]
    out = model(rtg, states, actions, steps.expand(2, -1))
    actions2 = actions.clone()
    actions2[:, 2] += 1.0  # a₃ may change predictions after it only
    out2 = model(rtg, states, actions2, steps.expand(2, -1))
    assert torch.allclose(out[:, :3], out2[:, :3], atol=1e-6) and not torch.allclose(out[:, 3], out2[:, 3])
    assert torch.allclose(model(rtg[:, :2], states[:, :2], actions[:, :2], steps[:, :2].expand(2, -1)),
                          out[:, :2], atol=1e-5)  # a right-truncated window predicts the same first actions


# ------------------------------------------------------------------------------------------------ dataset layouts
def _episodes_arrays():
    """Two episodes: one terminal after 3 steps, one cut by a time limit after 2."""
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((7, 2)).astype(np.float32)  # o0..o3 (ep 1), o4..o6 (ep 2)
    return obs, rng.uniform(-1, 1, (5, 1)).astype(np.float32), np.array([1, 2, 3, 4, 5], np.float32)


def test_d4rl_layout_with_and_without_next_observations(tmp_path):
    obs, act, rew = _episodes_arrays()
    rows_obs = np.concatenate([obs[0:3], obs[4:6]])
    rows_next = np.concatenate([obs[1:4], obs[5:7]])
    terminals, timeouts = np.array([0, 0, 1, 0, 0], bool), np.array([0, 0, 0, 0, 1], bool)
    with h5py.File(tmp_path / "v2.hdf5", "w") as f:
        for k, v in dict(observations=rows_obs, actions=act, rewards=rew, terminals=terminals, timeouts=timeouts,
                         next_observations=rows_next).items():
            f[k] = v
    ds = load_dataset(tmp_path / "v2.hdf5", env_id="InvertedPendulum-v5")
    assert len(ds) == 5 and np.array_equal(ds.next_observations, rows_next)
    assert [(s.start, s.stop) for s in ds.episode_slices()] == [(0, 3), (3, 5)]
    assert ds.episode_returns().tolist() == [6.0, 9.0] and ds.env_id == "InvertedPendulum-v5"
    # the old layout: s' is the next row; the timed-out last step is dropped, the step before ends the episode
    with h5py.File(tmp_path / "v0.hdf5", "w") as f:
        for k, v in dict(observations=rows_obs, actions=act, rewards=rew, terminals=terminals,
                         timeouts=timeouts).items():
            f[k] = v
    old = load_dataset(tmp_path / "v0.hdf5")
    assert len(old) == 4 and np.array_equal(old.next_observations[3], rows_obs[4])
    assert np.array_equal(old.next_observations[:2], rows_obs[1:3])
    assert old.terminals.tolist() == [False, False, True, False] and old.timeouts.tolist()[-1]
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f["observations"] = rows_obs
    with pytest.raises(KeyError, match="missing"):
        load_dataset(tmp_path / "bad.hdf5")


def test_minari_layout(tmp_path):
    """The layout minari 0.5.4's DataCollector writes (checked against its output): episode_<i> groups with T + 1
    observations, and data/metadata.json with the env spec and optional reference scores."""
    obs, act, rew = _episodes_arrays()
    root = tmp_path / "mujoco" / "toy-v0" / "data"
    root.mkdir(parents=True)
    with h5py.File(root / "main_data.hdf5", "w") as f:
        for i, (o, a, r, term, trunc) in enumerate([(obs[0:4], act[0:3], rew[0:3], [0, 0, 1], [0, 0, 0]),
                                                   (obs[4:7], act[3:5], rew[3:5], [0, 0], [0, 1])]):
            g = f.create_group(f"episode_{i}")
            g.attrs.update(id=i, total_steps=len(a))
            g["observations"], g["actions"], g["rewards"] = o, a, r
            g["terminations"], g["truncations"] = np.array(term, bool), np.array(trunc, bool)
            g.create_group("infos")
    spec = json.dumps({"id": "InvertedPendulum-v5", "max_episode_steps": 1000})
    (root / "metadata.json").write_text(json.dumps(dict(env_spec=spec, ref_min_score=0.0, ref_max_score=10.0,
                                                        total_episodes=2, total_steps=5)))
    ds = load_dataset(tmp_path / "mujoco" / "toy-v0")
    assert len(ds) == 5 and ds.env_id == "InvertedPendulum-v5"
    assert np.array_equal(ds.next_observations[:3], obs[1:4]) and np.array_equal(ds.next_observations[3:], obs[5:7])
    assert ds.terminals.tolist() == [0, 0, 1, 0, 0] and ds.timeouts.tolist() == [0, 0, 0, 0, 1]
    assert ds.normalized_score(np.array([5.0])).tolist() == [50.0]


def test_write_d4rl_round_trip_and_normalisation(tmp_path):
    obs, act, rew = _episodes_arrays()
    ds = OfflineDataset(observations=obs[:5], actions=act, rewards=rew, next_observations=obs[1:6],
                        terminals=np.array([0, 0, 1, 0, 0], bool), timeouts=np.array([0, 0, 0, 0, 1], bool),
                        env_id="InvertedPendulum-v5", ref_min_score=1.0, ref_max_score=3.0)
    write_d4rl(tmp_path / "x.hdf5", ds)
    back = load_dataset(tmp_path / "x.hdf5")
    for k in ARRAYS:
        assert np.array_equal(getattr(back, k), getattr(ds, k)), k
    assert (back.env_id, back.ref_min_score, back.ref_max_score) == ("InvertedPendulum-v5", 1.0, 3.0)
    mean, std = observation_stats(ds)
    assert np.allclose(std, obs[:5].std(0) + 1e-3)
    # IQL's reward scaling: episode returns 6 and 9 → rewards × 1000 / 3
    assert np.allclose(scale_rewards_by_return_range(ds).rewards, rew * 1000 / 3)
    top = bc.top_episodes(ds, 0.5)
    assert np.array_equal(top.rewards, [4.0, 5.0])  # the better episode only


# ----------------------------------------------------------------------------------------------- parity with CORL
CORL_FIXTURE = Path(__file__).parent / "fixtures" / "corl_updates.safetensors"


def _part(tensors: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix + "."): v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _twin_from_corl(q: TwinQ, critics: list[dict]) -> None:
    """CORL's critics are separate MLPs (`net.0/2/4`, nn.Linear weights (out, in)); ours one stacked ensemble."""
    with torch.no_grad():
        for i, layer in enumerate(m for m in q.net if isinstance(m, EnsembleLinear)):
            for member, critic in enumerate(critics):
                layer.weight[member] = critic[f"net.{2 * i}.weight"].T
                layer.bias[member, 0] = critic[f"net.{2 * i}.bias"]


def _twin_to_corl(q: TwinQ) -> list[dict]:
    layers = [m for m in q.net if isinstance(m, EnsembleLinear)]
    return [{k: v for i, layer in enumerate(layers) for k, v in ((f"net.{2 * i}.weight", layer.weight[member].T),
                                                                  (f"net.{2 * i}.bias", layer.bias[member, 0]))}
            for member in range(q.size)]


def _assert_close(ours: dict, theirs: dict, what: str) -> None:
    assert ours.keys() == theirs.keys(), (what, sorted(ours), sorted(theirs))
    for k in theirs:
        assert torch.allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6), (what, k, (ours[k] - theirs[k]).abs().max())


def _fixture_agent(module, cfg, tensors: dict, prefix: str):
    """Our agent at the fixture's sizes, its batches replaced by the fixture's (in order)."""
    n = sum(k.startswith(f"{prefix}.batch") and k.endswith(".obs") for k in tensors)
    batches = [tuple(tensors[f"{prefix}.batch{k}.{name}"]
                     for name in ("obs", "actions", "rewards", "next_obs", "dones")) for k in range(n)]
    obs, actions, rewards = (x.numpy() for x in batches[0][:3])  # only the sizes matter: the buffer is bypassed
    ds = OfflineDataset(observations=obs, actions=actions, rewards=rewards, next_observations=obs,
                        terminals=np.zeros(len(rewards), bool), timeouts=np.zeros(len(rewards), bool))
    agent = module(cfg, ds)
    fixture_batches = iter(batches)
    agent.buffer.sample = lambda batch_size: next(fixture_batches)
    return agent


def test_iql_updates_match_corl():
    """Three IQL updates from the same weights on the same batches: every loss and every parameter afterwards
    (the target critics included) equal CORL's `ImplicitQLearning.train` to float precision. The fixture is
    written by offline_rl/tools/corl_reference.py from a CORL checkout (fixtures/README.md)."""
    t = load_file(CORL_FIXTURE)
    agent = _fixture_agent(iql.IQL, replace(iql.PRESETS["default"], hidden=32, updates=3, normalize_reward=False),
                           t, "iql")
    _twin_from_corl(agent.q, [_part(t, "iql.init.q.q1"), _part(t, "iql.init.q.q2")])
    agent.q_target.load_state_dict(agent.q.state_dict())
    agent.v.load_state_dict({k.removeprefix("v.net."): v for k, v in _part(t, "iql.init.v").items()})
    agent.actor.load_state_dict({k.replace("net.net.", "net."): v for k, v in _part(t, "iql.init.actor").items()})
    losses = [[float(m[k]) for k in ("loss_v", "loss_q", "loss_pi")] for m in (agent.update() for _ in range(3))]
    assert np.allclose(losses, t["iql.losses"].numpy(), rtol=1e-5, atol=0), (losses, t["iql.losses"])
    for name, q in (("q", agent.q), ("q_target", agent.q_target)):
        ours = {f"q{i + 1}.{k}": v for i, member in enumerate(_twin_to_corl(q)) for k, v in member.items()}
        _assert_close(ours, _part(t, f"iql.final.{name}"), name)
    _assert_close({f"v.net.{k}": v for k, v in agent.v.state_dict().items()}, _part(t, "iql.final.v"), "v")
    _assert_close({k.replace("net.", "net.net.", 1): v for k, v in agent.actor.state_dict().items()},
                  _part(t, "iql.final.actor"), "actor")


def test_td3_bc_updates_match_corl():
    """Four TD3+BC updates (two with the delayed actor step) from the same weights, batches and target-smoothing
    noise (the same RNG seed before each): every loss and parameter, targets included, equal CORL's
    `TD3_BC.train`."""
    t = load_file(CORL_FIXTURE)
    agent = _fixture_agent(td3_bc.TD3BC, replace(td3_bc.PRESETS["default"], hidden=32), t, "td3_bc")
    agent.actor.load_state_dict(_part(t, "td3_bc.init.actor"))
    agent.actor_target.load_state_dict(agent.actor.state_dict())
    _twin_from_corl(agent.q, [_part(t, "td3_bc.init.critic_1"), _part(t, "td3_bc.init.critic_2")])
    agent.q_target.load_state_dict(agent.q.state_dict())
    for k, (critic_loss, actor_loss) in enumerate(t["td3_bc.losses"].tolist()):
        torch.manual_seed(100 + k)
        m = agent.update()
        assert m["loss_q"] == pytest.approx(critic_loss, rel=1e-5)
        if not math.isnan(actor_loss):
            assert float(m["loss_pi"]) == pytest.approx(actor_loss, rel=1e-5)
    for ours, theirs in ((agent.actor, "actor"), (agent.actor_target, "actor_target")):
        _assert_close(ours.state_dict(), _part(t, f"td3_bc.final.{theirs}"), theirs)
    for q, names in ((agent.q, ("critic_1", "critic_2")), (agent.q_target, ("critic_1_target", "critic_2_target"))):
        for member, name in zip(_twin_to_corl(q), names):
            _assert_close(member, _part(t, f"td3_bc.final.{name}"), name)


def test_cql_updates_match_corl():
    """Three CQL updates from the same weights and batches, with the RNG seeded alike before each: our update draws
    the same random numbers in CORL's order, so the actor, temperature, TD and conservative losses and every
    parameter afterwards (target critics and log α included) equal CORL's `ContinuousCQL.train`."""
    t = load_file(CORL_FIXTURE)
    agent = _fixture_agent(cql.CQL, replace(cql.PRESETS["default"], hidden=32), t, "cql")

    def from_corl(tensors: dict) -> dict:
        return {k.replace("base_network.", "net.").replace("network.", "net.").removesuffix(".constant"): v
                for k, v in tensors.items()}
    agent.actor.load_state_dict(from_corl(_part(t, "cql.init.actor")))
    _twin_from_corl(agent.q, [from_corl(_part(t, "cql.init.critic_1")), from_corl(_part(t, "cql.init.critic_2"))])
    agent.q_target.load_state_dict(agent.q.state_dict())
    for k, theirs in enumerate(t["cql.losses"].tolist()):
        torch.manual_seed(200 + k)
        m = agent.update()
        ours = [float(m[name]) for name in ("loss_pi", "loss_alpha", "loss_q", "gap")]
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-8), (k, ours, theirs)
    _assert_close(agent.actor.state_dict(), from_corl(_part(t, "cql.final.actor")), "actor")
    for q, names in ((agent.q, ("critic_1", "critic_2")), (agent.q_target, ("critic_1_target", "critic_2_target"))):
        for member, name in zip(_twin_to_corl(q), names):
            _assert_close(member, from_corl(_part(t, f"cql.final.{name}")), name)
    assert torch.allclose(agent.log_alpha, t["cql.final.log_alpha.constant"], rtol=1e-5, atol=1e-8)


# -------------------------------------------------------------------------------------------- learning end to end
def _pendulum_dataset(path, steps=4000, noise=0.5, seed=0):
    """InvertedPendulum-v5 rolled out by a stabilising linear controller with Gaussian action noise: the behaviour
    policy is poor (short episodes), its mean action is good."""
    gain = np.array([0.5, 5.0, 0.5, 0.5])
    rng = np.random.default_rng(seed)
    policy = lambda obs: np.clip(gain @ obs + noise * rng.standard_normal(), -3, 3)[None].astype(np.float32)  # noqa: E731
    ds = generate.rollout("InvertedPendulum-v5", policy, steps, seed, "behaviour")
    write_d4rl(path, replace(ds, ref_min_score=0.0, ref_max_score=1000.0))
    return float(ds.episode_returns().mean())


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pendulum.hdf5"
    return path, _pendulum_dataset(path)


@pytest.mark.parametrize("module", [iql, td3_bc])
def test_few_hundred_updates_beat_the_behaviour_policy(module, pendulum, tmp_path):
    path, behaviour = pendulum
    results = module.main(["--dataset", str(path), "--updates", "300", "--eval_every", "300",
                           "--checkpoint_every", "300", "--eval_episodes", "3", "--run_dir", str(tmp_path)])
    assert results["final"]["return_mean"] > 2 * behaviour, (results["final"], behaviour)
    assert (tmp_path / "metrics.png").stat().st_size > 10_000  # the loss and score curves


@pytest.mark.parametrize("module,extra", [(iql, []), (cql, ["--bc_steps", "5", "--lagrange"]), (td3_bc, []), (bc, []),
                                          (dt, ["--warmup_steps", "5", "--context", "5"])])
def test_resume_is_exact(module, extra, pendulum, tmp_path, monkeypatch):
    path, _ = pendulum
    args = ["--dataset", str(path), "--eval_every", "1000", "--eval_episodes", "1", "--checkpoint_every", "6",
            "--batch_size", "16", "--updates", "12"] + extra
    module.main(args + ["--run_dir", str(tmp_path / "straight")])
    save = runner.save_checkpoint

    def save_then_stop(run_dir, step, *a, **k):  # an interruption right after the checkpoint at step 6
        save(run_dir, step, *a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        module.main(args + ["--run_dir", str(tmp_path / "split")])
    monkeypatch.setattr(runner, "save_checkpoint", save)
    module.main(args + ["--run_dir", str(tmp_path / "split"), "--resume"])
    from safetensors.torch import load_file
    a = load_file(tmp_path / "straight/checkpoints/00000012/model.safetensors")
    b = load_file(tmp_path / "split/checkpoints/00000012/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_table_report(pendulum, tmp_path, monkeypatch):
    path, behaviour = pendulum
    rows = [dict(algorithm="iql", dataset=str(path), seed=s, updates=10, score=x, seconds=1.0)
            for s, x in enumerate([10.0, 20.0, 30.0])]
    rows.append(dict(algorithm="bc", dataset="nowhere-medium", seed=0, updates=5, score=7.0, seconds=1.0))
    md = table.report(rows, tmp_path)
    assert "| bc | 5 | — | 7.0 (1 seed) |" in md  # rows in the order of ALGORITHMS, not of the runs
    assert md.index("| bc |") < md.index("| iql | 10 | 20.0 ± 10.0 (3 seeds) | — |")  # the sample std
    assert "Commits of the runs: not recorded: 4 runs" in md
    assert f"| *the data* | | {behaviour / 10:.1f} | — |" in md  # references 0 and 1000: score = return / 10
    assert (tmp_path / "table.md").read_text() == md + "\n" and (tmp_path / "table.png").stat().st_size > 10_000
    # the data's score was recorded beside the table: the same table when no dataset can be read
    monkeypatch.setattr(table, "data_score", lambda dataset: None)
    assert table.report(rows, tmp_path) == md


def test_generate_protocol_at_toy_budget(tmp_path):
    args = ["--env_id", "InvertedPendulum-v5", "--task", "toy", "--learning_starts", "100", "--snapshot_every",
            "100", "--snapshot_episodes", "1", "--dataset_steps", "300", "--reference_episodes", "2",
            "--checkpoint_every", "100", "--batch_size", "32", "--out_dir", str(tmp_path)]
    generate.main(args + ["--sac_steps", "200"])
    for p in tmp_path.glob("toy-*.hdf5"):
        p.unlink()
    paths = generate.main(args + ["--sac_steps", "300"])  # resumes the SAC run at step 200 and extends it
    info = json.loads((tmp_path / "toy.json").read_text())
    assert [s["step"] for s in info["snapshots"]] == [100, 200, 300]
    sizes = {k: len(load_dataset(p)) for k, p in paths.items()}
    assert sizes == {"random": 300, "medium": 300, "expert": 300, "medium-replay": info["medium_snapshot"]["step"],
                     "medium-expert": 600}
    expert = load_dataset(paths["expert"])
    assert expert.ref_max_score == info["ref_max_score"] and expert.env_id == "InvertedPendulum-v5"
    assert np.abs(load_dataset(paths["random"]).actions).max() <= 3.0
