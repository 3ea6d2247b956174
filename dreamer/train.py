"""Train DreamerV3 from pixels: act, store, replay sequences, update; checkpoints, resume, a return curve.

    python train.py                                    # tiny preset, gymnasium CartPole-v1 from 64 px renders, CPU
    python train.py --task dmc/walker-walk --preset small --steps 500000   # the paper's DMC setting
    python train.py --resume                           # continue run_dir's last checkpoint (exactly)
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python train.py     # data-parallel over 2 CPU devices

Every agent step: the policy filters the new observation through the RSSM and samples an action; the step is
stored; after `prefill` steps of a random policy, `train_ratio / (batch_size · batch_length)` updates run per agent
step on uniformly replayed sequences. The batch is sharded over `jax.devices()` along its batch axis and the
parameters are replicated, so `jax.jit` runs the update data-parallel with the gradient all-reduce inserted by XLA.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
import flax.serialization  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from common.config import parse_config, to_dict  # noqa: E402
from common.train import Logger  # noqa: E402

from dreamer.agent import (Networks, init_state, make_networks, observation_shape, train_step,  # noqa: E402
                           zero_state)
from dreamer.config import PRESETS, DreamerConfig  # noqa: E402
from dreamer.envs import make_env  # noqa: E402
from dreamer.networks import WorldModel, features  # noqa: E402
from dreamer.replay import Replay  # noqa: E402


def policy_step(nets: Networks, wm_params, actor_params, carry, obs: dict, key: jax.Array, explore: bool):
    """Filter one observation through the RSSM (posterior from the previous state and action) and act: a sample
    of π while training, its mode (tanh mean / argmax) when evaluating."""
    state, prev_action = carry
    k_obs, k_act = jax.random.split(key)
    embed = nets.wm.apply({"params": wm_params}, obs[nets.obs_key][None], method=WorldModel.encode)
    post, _ = nets.wm.apply({"params": wm_params}, state, prev_action, embed, jnp.asarray([obs["is_first"]]), k_obs,
                            method=WorldModel.obs_step)
    out, std = nets.actor.apply({"params": actor_params}, features(post))
    if nets.discrete:
        index = jax.random.categorical(k_act, out) if explore else out.argmax(-1)
        action = jax.nn.one_hot(index, nets.action_dim)
    else:
        action = jnp.clip(out + std * jax.random.normal(k_act, out.shape), -1, 1) if explore else out
    return action[0], (post, action)


def initial_carry(cfg: DreamerConfig, action_dim: int):
    """A zero state and action; `is_first` on the first observation replaces them with the learned initial state."""
    return zero_state(cfg, 1), jnp.zeros((1, action_dim))


def random_action(rng: np.random.Generator, action_dim: int, discrete: bool) -> np.ndarray:
    if discrete:
        return np.eye(action_dim, dtype=np.float32)[rng.integers(action_dim)]
    return rng.uniform(-1, 1, action_dim).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- checkpoints
def save(run_dir: Path, state, replay: Replay, meta: dict) -> Path:
    """checkpoints/<step>/{state.msgpack, replay.npz, meta.json}, written into a temporary directory and renamed,
    so an interruption never leaves a half-written checkpoint; older checkpoints are removed."""
    final = run_dir / "checkpoints" / f"{meta['step']:09d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "state.msgpack").write_bytes(flax.serialization.to_bytes(jax.device_get(state)))
    replay.save(tmp / "replay.npz")
    (tmp / "meta.json").write_text(json.dumps(meta))
    os.replace(tmp, final)
    for old in sorted((run_dir / "checkpoints").glob("[0-9]*")):
        if old != final and not old.name.endswith(".tmp"):
            shutil.rmtree(old)
    return final


def last_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in (Path(run_dir) / "checkpoints").glob("[0-9]*") if not p.name.endswith(".tmp"))
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------------------- train
def train(cfg: DreamerConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    env = make_env(cfg.task, cfg.image_size, cfg.action_repeat, cfg.time_limit, cfg.seed, cfg.fast_render, cfg.obs)
    nets = make_networks(cfg, env.action_dim, env.discrete, env.vector_dim if cfg.obs == "vector" else 0)
    key = jax.random.PRNGKey(cfg.seed)
    state = init_state(nets, key)
    replay = Replay(min(cfg.replay_size, cfg.steps), nets.obs_key, observation_shape(nets), env.action_dim)
    meta = dict(step=0, updates=0, updates_due=0.0, episode=0, saved=0, returns=[])
    if cfg.resume:
        checkpoint = last_checkpoint(run_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir}/checkpoints")
        state = flax.serialization.from_bytes(state, (checkpoint / "state.msgpack").read_bytes())
        replay.load(checkpoint / "replay.npz")
        meta = json.loads((checkpoint / "meta.json").read_text())
        env.episode = meta["episode"]
        print(f"resumed from {checkpoint} at agent step {meta['step']}")

    devices = jax.devices()
    if cfg.batch_size % len(devices):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {len(devices)} devices")
    mesh = Mesh(np.array(devices), ("data",))
    batch_sharding, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    state = jax.device_put(state, replicated)
    update = jax.jit(functools.partial(train_step, nets), donate_argnums=0)
    act = jax.jit(functools.partial(policy_step, nets), static_argnames="explore")
    updates_per_step = cfg.train_ratio / (cfg.batch_size * cfg.batch_length)
    params = sum(x.size for x in jax.tree.leaves((state.wm, state.actor, state.critic)))
    print(f"DreamerV3 {cfg.task}: {params / 1e6:.2f}M parameters; {cfg.steps} agent steps (x{cfg.action_repeat} "
          f"env steps), {updates_per_step:.3g} updates per agent step on {len(devices)} x {devices[0].platform}")

    logger = Logger(run_dir, cfg.steps, meta["step"], to_dict(cfg), desc="agent steps")
    obs, carry, episode_return = env.reset(), initial_carry(cfg, env.action_dim), 0.0
    metrics = {}
    while meta["step"] < cfg.steps:
        step = meta["step"]
        if step < cfg.prefill:
            action = random_action(np.random.default_rng([cfg.seed, step]), env.action_dim, env.discrete)
        else:
            action, carry = act(state.wm, state.actor, carry, obs, jax.random.fold_in(key, step), explore=True)
            action = np.asarray(action)
        replay.add(dict(obs, action=action))
        episode_return += obs["reward"]
        episode_over = obs["is_last"]
        if episode_over:  # the last observation is stored (its action is never executed), then a new episode
            meta["returns"].append((step * cfg.action_repeat, episode_return))
            logger.log(step, {"return": episode_return, **metrics})
            obs, carry, episode_return = env.reset(), initial_carry(cfg, env.action_dim), 0.0
            meta["episode"] = env.episode - 1  # the episode `obs` belongs to: a resumed run resets into it
        else:
            obs = env.step(action)
        meta["step"] = step + 1
        logger.advance()
        if meta["step"] >= cfg.prefill:
            meta["updates_due"] += updates_per_step
            while meta["updates_due"] >= 1:
                batch = replay.sample(np.random.default_rng([cfg.seed, meta["updates"]]), cfg.batch_size,
                                      cfg.batch_length)
                state, out = update(state, jax.device_put(batch, batch_sharding),
                                    jax.random.fold_in(key, 10**9 + meta["updates"]))
                meta["updates"] += 1
                meta["updates_due"] -= 1
                if meta["updates"] % 50 == 0:
                    metrics = {k: float(v) for k, v in out.items()
                               if k in ("wm_loss", "actor_loss", "critic_loss", "imag_return", "entropy")}
        # checkpoints at episode boundaries only: a resumed run starts a fresh episode, as the uninterrupted one does
        if episode_over and (meta["step"] - meta["saved"] >= cfg.save_every or meta["step"] >= cfg.steps):
            meta["saved"] = meta["step"]
            save(run_dir, state, replay, meta)
    logger.close()
    if meta["saved"] != meta["step"]:
        save(run_dir, state, replay, meta)
    results = evaluate(cfg, nets, state, act)
    (run_dir / "eval.json").write_text(json.dumps(results, indent=1))
    print(f"return curve: {plot_returns(run_dir, meta['returns'], results)}")
    print(json.dumps(results))
    return results


def evaluate(cfg: DreamerConfig, nets: Networks, state, act) -> dict:
    """Mean return of the policy's mode and of a uniform random policy over the same `eval_episodes` episodes
    (seeds never used in training)."""
    returns = {}
    for name in ("dreamer", "random"):
        env = make_env(cfg.task, cfg.image_size, cfg.action_repeat, cfg.time_limit, cfg.seed + 10_000,
                       cfg.fast_render, cfg.obs)
        totals = []
        for episode in range(cfg.eval_episodes):
            obs, carry, total, step = env.reset(), initial_carry(cfg, env.action_dim), 0.0, 0
            while not obs["is_last"]:
                if name == "random":
                    action = random_action(np.random.default_rng([cfg.seed, episode, step]), env.action_dim,
                                           env.discrete)
                else:
                    action, carry = act(state.wm, state.actor, carry, obs, jax.random.PRNGKey(step), explore=False)
                obs = env.step(np.asarray(action))
                total += obs["reward"]
                step += 1
            totals.append(total)
        returns[name] = dict(mean=float(np.mean(totals)), std=float(np.std(totals)), episodes=totals)
    return returns


def plot_returns(run_dir: Path, returns: list, results: dict) -> Path:
    """returns.png: training episode returns against environment steps, with the final evaluation of the policy
    and of a random policy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    if returns:
        ax.plot(*zip(*returns), ".-", label="training episodes")
    for name, style in (("dreamer", "tab:green"), ("random", "tab:red")):
        ax.axhline(results[name]["mean"], color=style, ls="--", label=f"eval: {name} ({results[name]['mean']:.0f})")
    ax.set(xlabel="environment steps", ylabel="episode return", title="DreamerV3")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / "returns.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    train(parse_config(PRESETS, sys.argv[1:], description=__doc__))
