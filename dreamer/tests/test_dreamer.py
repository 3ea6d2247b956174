import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.agent import (ReturnNorm, init_state, kl_losses, lambda_returns, make_networks, observe, train_step,
                           update_return_norm, world_model_loss)
from dreamer.config import PRESETS
from dreamer.networks import features, symexp, symlog, twohot, twohot_bins, twohot_loss, twohot_mean, unimix_logits

# A model small enough to compile and run in seconds: 16 px images, short sequences and horizon.
SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16, deter=32, units=32, cnn_depth=4, stoch=4, classes=4,
                            batch_size=2, batch_length=6, imag_horizon=4)


def random_batch(cfg, action_dim: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    b, t, s = cfg.batch_size, cfg.batch_length, cfg.image_size
    is_first = np.zeros((b, t), bool)
    is_first[:, 0] = True
    return dict(image=rng.integers(0, 256, (b, t, s, s, 3)).astype(np.uint8),
                action=rng.uniform(-1, 1, (b, t, action_dim)).astype(np.float32),
                reward=rng.normal(size=(b, t)).astype(np.float32) * 3, is_first=is_first,
                is_terminal=np.zeros((b, t), bool))


# ------------------------------------------------------------------------------------------------ transforms
def test_symlog_symexp_are_inverse():
    x = jnp.array([-1e6, -50.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 50.0, 1e6])
    assert jnp.allclose(symexp(symlog(x)), x, rtol=1e-5, atol=1e-6)
    assert jnp.allclose(symlog(symexp(x[2:-2])), x[2:-2], rtol=1e-5, atol=1e-6)
    assert jnp.allclose(symlog(jnp.array([0.0, np.e - 1, -(np.e - 1)])), jnp.array([0.0, 1.0, -1.0]))


def test_twohot_round_trip_and_weights():
    """twohot(y) puts weight on the two bins around symlog(y) (sum 1, mean symlog(y)); the prediction symexp(pᵀB)
    of p = twohot(y) gives y back; outside the bins' range everything goes to the end bin."""
    bins = twohot_bins(255)
    y = jnp.array([-3000.0, -7.5, -1.0, 0.0, 0.3, 2.0, 123.4, 1e5])
    weights = twohot(y, bins)
    assert weights.shape == (8, 255) and jnp.allclose(weights.sum(-1), 1.0)
    assert ((weights > 0).sum(-1) <= 2).all()
    assert jnp.allclose((weights * bins).sum(-1), symlog(y), atol=1e-5)
    assert jnp.allclose(twohot_mean(jnp.log(weights + 1e-30), bins), y, rtol=1e-4, atol=1e-4)
    assert twohot(jnp.array(1e12), bins)[-1] == 1.0 and twohot(jnp.array(-1e12), bins)[0] == 1.0
    # hand-checked: 5 bins at -20, -10, 0, 10, 20; symlog(y) = 2.5 → 0.75 on bin 0 (value 0), 0.25 on bin 10
    small = jnp.linspace(-20.0, 20.0, 5)
    assert jnp.allclose(twohot(symexp(jnp.array(2.5)), small), jnp.array([0, 0, 0.75, 0.25, 0]), atol=1e-6)
    # the loss is the cross-entropy against these weights
    logits = jnp.linspace(-1, 1, 5)
    expected = -(jnp.array([0, 0, 0.75, 0.25, 0]) * jax.nn.log_softmax(logits)).sum()
    assert jnp.allclose(twohot_loss(logits, symexp(jnp.array(2.5)), small), expected, atol=1e-6)


def test_unimix_floors_every_probability():
    logits = jnp.array([[100.0, 0.0, -100.0, -100.0]])
    probs = jnp.exp(unimix_logits(logits, 0.01))
    assert jnp.allclose(probs.sum(), 1.0) and probs.min() >= 0.01 / 4 - 1e-7
    assert jnp.allclose(probs[0, 0], 0.99 + 0.0025, atol=1e-6)


def test_return_normaliser_tracks_percentiles():
    """low/high are EMAs (decay 0.99, from 0) of the 5th/95th percentiles; S = max(1, high − low)."""
    cfg = PRESETS["tiny"]
    returns = jnp.arange(101.0)  # P5 = 5, P95 = 95
    norm, scale = update_return_norm(ReturnNorm(jnp.zeros(()), jnp.zeros(())), returns, cfg)
    assert jnp.allclose(norm.low, 0.05) and jnp.allclose(norm.high, 0.95) and scale == 1.0  # range 0.9 < 1
    for _ in range(2000):
        norm, scale = update_return_norm(norm, returns, cfg)
    assert jnp.allclose(scale, 90.0, rtol=1e-3)
    _, scale = update_return_norm(norm, returns * 0.001, cfg)  # small returns are not scaled up
    assert scale >= 1.0


def test_lambda_returns_hand_computed():
    """H = 2: R_2 = v_2, R_1 = r_2 + γc_2((1−λ)v_2 + λR_2), R_0 = r_1 + γc_1((1−λ)v_1 + λR_1)."""
    gamma, lam = 0.9, 0.5
    reward, cont, value = jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]), jnp.array([10.0, 20.0, 30.0])
    r1 = 2.0 + gamma * 0.0 * ((1 - lam) * 30 + lam * 30)
    r0 = 1.0 + gamma * 1.0 * ((1 - lam) * 20 + lam * r1)
    assert jnp.allclose(lambda_returns(reward, cont, value, gamma, lam), jnp.array([r0, r1]))
    # λ = 1: discounted reward sums bootstrapped at the end; λ = 0: one-step TD targets
    full = lambda_returns(reward, jnp.ones(2), value, gamma, 1.0)
    assert jnp.allclose(full, jnp.array([1 + gamma * 2 + gamma ** 2 * 30, 2 + gamma * 30]))
    td = lambda_returns(reward, jnp.ones(2), value, gamma, 0.0)
    assert jnp.allclose(td, jnp.array([1 + gamma * 20, 2 + gamma * 30]))


# ---------------------------------------------------------------------------------------------- world model
@pytest.fixture(scope="module")
def model():
    nets = make_networks(SMALL, action_dim=2, discrete=False)
    return nets, init_state(nets, jax.random.PRNGKey(0))


def test_rssm_shapes_and_kl_balancing(model):
    """Posterior and prior have shape (B, T, ...); the dynamics and representation KLs share their value but
    send gradients to different sides (prior vs posterior); values below the free nat are clipped (no gradient)."""
    nets, state = model
    data = random_batch(SMALL)
    post, prior = observe(nets, state.wm, data, jax.random.PRNGKey(1))
    b, t = SMALL.batch_size, SMALL.batch_length
    assert post["deter"].shape == (b, t, SMALL.deter) and post["stoch"].shape == (b, t, SMALL.stoch, SMALL.classes)
    assert jnp.allclose(post["stoch"].sum(-1), 1.0) and jnp.array_equal(post["deter"], prior["deter"])
    logits_q, logits_p = post["logits"], prior["logits"] * 3.0

    def grads(which):
        f = lambda q, p: kl_losses(dict(logits=q), dict(logits=p), 0.0)[which].sum()  # noqa: E731
        return jax.grad(f, argnums=(0, 1))(logits_q, logits_p)
    (dq, dp), (rq, rp) = grads(0), grads(1)
    dyn, rep = kl_losses(dict(logits=logits_q), dict(logits=logits_p), 0.0)
    assert jnp.allclose(dyn, rep) and (dyn > 0).all()
    assert jnp.abs(dq).max() == 0 and jnp.abs(dp).max() > 0  # L_dyn trains the prior only
    assert jnp.abs(rp).max() == 0 and jnp.abs(rq).max() > 0  # L_rep trains the posterior only
    clipped = jax.grad(lambda q: kl_losses(dict(logits=q), dict(logits=logits_p), 1e6)[1].sum())(logits_q)
    assert jnp.abs(clipped).max() == 0 and (kl_losses(dict(logits=logits_q), dict(logits=logits_p), 1e6)[1] == 1e6).all()


def test_initial_predictions_are_zero(model):
    """Zero-initialised output layers: reward and value predictions start at 0 for real model states (the posterior
    features of a batch; zero features would give 0 through any output kernel), up to float rounding of the uniform
    expectation over the symmetric bins; the continue head, initialised like the others, does not."""
    nets, state = model
    data = random_batch(SMALL)
    post, _ = observe(nets, state.wm, data, jax.random.PRNGKey(1))
    feat = features(post)
    assert jnp.abs(feat).max() > 0.1
    reward, cont = nets.wm.apply({"params": state.wm}, feat, method="reward_and_cont")
    value = nets.critic.apply({"params": state.critic}, feat)
    assert jnp.all(reward == 0) and jnp.all(value == 0) and jnp.abs(cont).max() > 1e-3
    assert jnp.abs(twohot_mean(value, nets.bins)).max() < 1e-5
    _, (_, metrics) = world_model_loss(state.wm, nets, data, jax.random.PRNGKey(2))
    assert jnp.isfinite(metrics["wm_loss"])


@pytest.mark.parametrize("discrete, obs", [(False, "image"), (True, "image"), (False, "vector")])
def test_train_step_lowers_the_world_model_loss(discrete, obs):
    """Repeated updates on one fixed batch: the world-model loss falls and every metric stays finite (a higher
    learning rate than the paper's, to see it within 30 updates); images and state vectors."""
    cfg = dataclasses.replace(SMALL, model_lr=1e-3, obs=obs)
    nets = make_networks(cfg, action_dim=2, discrete=discrete, vector_dim=5 if obs == "vector" else 0)
    state = init_state(nets, jax.random.PRNGKey(0))
    data = random_batch(SMALL)
    data["image"][:] = data["image"][:1, :1]  # one image everywhere: a pattern the decoder can learn
    if obs == "vector":  # a fixed vector of large and small entries (symlog makes both learnable)
        data["vector"] = np.broadcast_to(np.float32([100.0, -3.0, 0.5, 0.0, 20.0]), (*data["reward"].shape, 5))
        del data["image"]
    if discrete:
        data["action"] = np.eye(2, dtype=np.float32)[np.random.default_rng(0).integers(0, 2, data["action"].shape[:2])]
    step = jax.jit(functools.partial(train_step, nets))
    losses = []
    for i in range(30):
        state, metrics = step(state, data, jax.random.PRNGKey(i))
        losses.append(float(metrics["wm_loss"]))
        assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    assert losses[-1] < 0.7 * losses[0], losses[::5]
    assert int(state.updates) == 30
    assert f"{obs}_loss" in metrics


@pytest.mark.parametrize("mode", ["backprop", "reinforce"])
def test_actor_gradient_through_the_rollout(mode, monkeypatch):
    """Backprop (the paper's choice for continuous actions) sends the actor's gradient through the imagined rollout;
    REINFORCE (`actor_grad_cont="reinforce"`) does not: cutting the rollout's gradient (imagining with
    stop-gradient actor parameters) leaves the REINFORCE gradient unchanged and changes the backprop one."""
    from dreamer import agent
    cfg = dataclasses.replace(SMALL, actor_grad_cont=mode)
    nets = make_networks(cfg, action_dim=2, discrete=False)
    state = init_state(nets, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)  # the reward and critic outputs start at zero: perturb them to get advantages
    noisy = lambda tree: jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), tree)  # noqa
    state = state.replace(critic=noisy(state.critic), wm={**state.wm, "reward_head": noisy(state.wm["reward_head"])})
    post, _ = observe(nets, state.wm, random_batch(SMALL), jax.random.PRNGKey(1))
    start = {k: v.reshape(-1, *v.shape[2:]) for k, v in post.items()}
    cont = jnp.ones(start["deter"].shape[0])

    def grad():
        loss = lambda p: agent.actor_loss(p, nets, state.wm, state.critic, start, cont,  # noqa: E731
                                          ReturnNorm(jnp.zeros(()), jnp.zeros(())), jax.random.PRNGKey(2))[0]
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.grad(loss)(state.actor))])

    full = grad()
    imagine = agent.imagine
    monkeypatch.setattr(agent, "imagine", lambda nets, wm, actor, *a: imagine(nets, wm, jax.lax.stop_gradient(actor), *a))
    cut = grad()
    assert np.abs(full).max() > 0
    if mode == "reinforce":
        np.testing.assert_allclose(full, cut, rtol=1e-5, atol=1e-8)
    else:
        assert not np.allclose(full, cut, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------------------------ environments
def test_gym_adapter_on_the_default_task():
    """CartPole-v1 from renders: uint8 frames with the cart in them, one-hot actions, rewards summed over the action
    repeat; pushing one way topples the pole (terminal), a time limit ends an episode without being terminal."""
    from dreamer.envs import make_env
    env = make_env("gym/CartPole-v1", 16, 2, None, seed=0)
    assert (env.action_dim, env.discrete) == (2, True)
    obs = env.reset()
    assert obs["image"].shape == (16, 16, 3) and obs["image"].dtype == np.uint8 and obs["is_first"]
    assert obs["image"].max() == 255 and obs["image"].min() < 200  # the dark cart on the white background
    total, steps = 0.0, 0
    while not obs["is_last"]:
        obs = env.step(np.array([1.0, 0.0]))
        total, steps = total + obs["reward"], steps + 1
    assert obs["is_terminal"] and steps < 30 and total in (2 * steps, 2 * steps - 1)  # +1 per environment step
    env = make_env("gym/CartPole-v1", 16, 2, 10, seed=0)
    env.reset()
    ends = [env.step(np.array([float(i % 2), float(1 - i % 2)])) for i in range(5)]
    assert [o["is_last"] for o in ends] == [False] * 4 + [True] and not ends[-1]["is_terminal"]


# ---------------------------------------------------------------------------------------- the training loop
def loop_config(tmp_path, **overrides):
    """cartpole-balance at 16 px, 10-step episodes, 8 random steps, one update per agent step."""
    return dataclasses.replace(SMALL, task="dmc/cartpole-balance", fast_render=True, time_limit=20, prefill=8,
                               steps=40, train_ratio=12, batch_length=6, save_every=20, eval_episodes=1,
                               run_dir=str(tmp_path / "run"), **overrides)


def test_resume_is_exact(tmp_path, monkeypatch):
    """Killed right after its first checkpoint and resumed, a run ends with the same episode returns, losses and
    bit-identical parameters as an uninterrupted one (checkpoints hold the replay and sit at episode ends)."""
    from dreamer import train as dreamer_train
    straight = loop_config(tmp_path / "a")
    results = dreamer_train.train(straight)
    assert set(results) == {"dreamer", "random"} and (Path(straight.run_dir) / "returns.png").exists()
    interrupted = loop_config(tmp_path / "b")
    save = dreamer_train.save

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(dreamer_train, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        dreamer_train.train(interrupted)
    monkeypatch.undo()
    first = dreamer_train.last_checkpoint(Path(interrupted.run_dir))
    assert 0 < int(first.name) < straight.steps
    dreamer_train.train(dataclasses.replace(interrupted, resume=True))
    a, b = (dreamer_train.last_checkpoint(Path(c.run_dir)) for c in (straight, interrupted))
    meta_a, meta_b = (json.loads((c / "meta.json").read_text()) for c in (a, b))
    assert meta_a == meta_b and meta_a["updates"] > 10
    assert (a / "state.msgpack").read_bytes() == (b / "state.msgpack").read_bytes()


def test_data_parallel_update_matches_one_device():
    """The update with the batch sharded over 2 (host) devices equals the single-device update."""
    script = """
import dataclasses, functools, jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from dreamer.agent import init_state, make_networks, train_step
from dreamer.tests.test_dreamer import SMALL, random_batch
assert len(jax.devices()) == 2
nets = make_networks(SMALL, 2, False)
state = init_state(nets, jax.random.PRNGKey(0))
batch = random_batch(SMALL)
step = jax.jit(functools.partial(train_step, nets))
one, m1 = step(state, batch, jax.random.PRNGKey(1))
mesh = Mesh(np.array(jax.devices()), ("data",))
sharded = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
two, m2 = step(jax.device_put(state, NamedSharding(mesh, PartitionSpec())), sharded, jax.random.PRNGKey(1))
assert len(sharded["image"].sharding.device_set) == 2
np.testing.assert_allclose(float(m1["wm_loss"]), float(m2["wm_loss"]), rtol=1e-5)
for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
print("ok")
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
