"""Make D4RL-style datasets from scratch: train an SAC behaviour policy online, then roll out its snapshots.

The protocol of D4RL (Fu et al., 2020, Sec. 5 "Gym-MuJoCo"): an SAC agent is trained online; the *expert* policy is
its final snapshot and the *medium* policy the snapshot whose return is about a third of the expert's. Then

    random         rollouts of a uniformly random policy
    medium         rollouts of the medium policy (stochastic actions, as D4RL sampled them)
    expert         rollouts of the expert policy
    medium-replay  the replay buffer of the training run up to the medium snapshot
    medium-expert  medium and expert concatenated

are written in the D4RL hdf5 layout to `offline_rl/datasets/<task>-<kind>.hdf5`, with the random and expert
policies' mean returns as `ref_min_score` / `ref_max_score` (D4RL's REF_MIN_SCORE / REF_MAX_SCORE), so scores
normalise the same way D4RL's do. SAC's state (networks, optimizers, replay buffer, RNGs) is saved every
`checkpoint_every` steps: an interrupted run resumes where it stopped, and finished datasets are not made again.

    python offline_rl/generate.py                          # the default cheap task (minutes on a CPU)
    python offline_rl/generate.py --preset hopper          # D4RL's Hopper protocol: hours on a CPU, resumable

SAC (Haarnoja et al., 2018, arXiv:1812.05905) is written here rather than taken from a library: one file, twin
critics batched as one ensemble, no per-step host syncs; it is the behaviour policy only.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.config import parse_config, to_dict
from common.train import rng_state, seed_everything, set_rng_state
from offline_rl.data import ARRAYS, OfflineDataset, evaluate, write_d4rl
from offline_rl.networks import TanhGaussianPolicy, TwinQ, soft_update
from offline_rl.runner import DATASETS, sgd_step

KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert")


@dataclass
class TaskConfig:
    task: str = "inverted_double_pendulum"  # dataset name prefix
    env_id: str = "InvertedDoublePendulum-v5"  # gymnasium MuJoCo environment
    sac_steps: int = 30_000  # online SAC environment steps (the expert is the last snapshot)
    learning_starts: int = 2_000  # uniformly random actions before SAC starts updating
    snapshot_every: int = 2_000  # steps between policy snapshots (each evaluated, candidates for "medium")
    snapshot_episodes: int = 5  # evaluation episodes per snapshot (deterministic actions)
    medium_fraction: float = 1 / 3  # the medium snapshot's return ≈ this fraction of the expert's (D4RL)
    dataset_steps: int = 100_000  # transitions in each rolled-out dataset (D4RL: 1M)
    reference_episodes: int = 50  # episodes for the random / expert reference returns
    hidden: int = 256  # SAC network width (two hidden layers)
    lr: float = 3e-4  # Adam for actor, critics and temperature
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critics
    checkpoint_every: int = 10_000  # steps between SAC checkpoints (resume point)
    out_dir: str = ""  # "" = offline_rl/datasets
    seed: int = 0
    threads: int = 1  # torch CPU threads
    overwrite: bool = False  # remake datasets that already exist
    kinds: tuple[str, ...] = field(default_factory=lambda: KINDS)  # which datasets to write


PRESETS = {
    # cheap: SAC reaches the 9.36k maximum in tens of thousands of steps (minutes on one core)
    "inverted_double_pendulum": TaskConfig(),
    # D4RL's Gym-MuJoCo tasks, with its 1M-transition datasets; the SAC expert costs hours on a CPU
    "hopper": TaskConfig(task="hopper", env_id="Hopper-v5", sac_steps=1_000_000, learning_starts=10_000,
                         snapshot_every=10_000, dataset_steps=1_000_000),
    "halfcheetah": TaskConfig(task="halfcheetah", env_id="HalfCheetah-v5", sac_steps=1_000_000,
                              learning_starts=10_000, snapshot_every=10_000, dataset_steps=1_000_000),
    "walker2d": TaskConfig(task="walker2d", env_id="Walker2d-v5", sac_steps=1_000_000, learning_starts=10_000,
                           snapshot_every=10_000, dataset_steps=1_000_000),
}


# ------------------------------------------------------------------------------------------------------------ SAC
class SAC(torch.nn.Module):
    """Soft actor-critic with automatic entropy tuning (target entropy −|A|), actions in [−1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TaskConfig):
        super().__init__()
        self.actor = TanhGaussianPolicy(obs_dim, act_dim, cfg.hidden)
        self.q = TwinQ(obs_dim, act_dim, cfg.hidden)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.zeros(()))
        self.target_entropy = -float(act_dim)
        self.cfg = cfg
        self.optimizers = dict(actor=torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, fused=True),
                               q=torch.optim.Adam(self.q.parameters(), lr=cfg.lr, fused=True),
                               alpha=torch.optim.Adam([self.log_alpha], lr=cfg.lr, fused=True))

    def update(self, obs, actions, rewards, next_obs, dones) -> None:
        cfg, alpha = self.cfg, self.log_alpha.exp().detach()
        with torch.no_grad():  # soft Bellman target with the entropy bonus (SAC Eq. 3)
            next_actions, next_log_prob = self.actor(next_obs)
            next_q = self.q_target(next_obs, next_actions).min(0).values - alpha * next_log_prob
            target = rewards + cfg.discount * (1 - dones) * next_q
        sgd_step(self.optimizers["q"], F.mse_loss(self.q(obs, actions), target.expand(2, -1), reduction="none")
                 .mean(1).sum())
        new_actions, log_prob = self.actor(obs)  # policy: minimise α log π − min Q (SAC Eq. 7)
        sgd_step(self.optimizers["actor"], (alpha * log_prob - self.q(obs, new_actions).min(0).values).mean())
        sgd_step(self.optimizers["alpha"], -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean())
        soft_update(self.q_target, self.q, cfg.tau)


def rollout(env_id: str, policy, steps: int, seed: int, desc: str) -> OfflineDataset:
    """`steps` transitions of `policy(obs) -> action`, episodes seeded seed, seed + 1, …"""
    env = gym.make(env_id)
    rows = {k: [] for k in ARRAYS}  # filled in ARRAYS order: s, a, r, s', terminal, timeout
    episode = 0
    obs, _ = env.reset(seed=seed)
    for t in tqdm(range(steps), desc=desc, leave=False, mininterval=2):
        action = policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for k, v in zip(rows, (obs, action, reward, next_obs, terminated, truncated or t == steps - 1)):
            rows[k].append(v)
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    return OfflineDataset(**{k: np.asarray(v, dtype=bool if k in ("terminals", "timeouts") else np.float32)
                             for k, v in rows.items()}, env_id=env_id)


def policy_fn(actor: TanhGaussianPolicy, max_action: float, deterministic: bool):
    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(obs, dtype=torch.float32)[None]
        a = actor.mean_action(x) if deterministic else actor(x)[0]
        return a[0].numpy() * max_action
    return act


def random_policy(env_id: str, seed: int):
    space = gym.make(env_id).action_space
    space.seed(seed)
    return lambda obs: space.sample()


# ------------------------------------------------------------------------------------------------- the protocol
def train_behaviour(cfg: TaskConfig, work: Path) -> dict:
    """Online SAC with evaluated snapshots, resumable from `work/sac.pt` (an episode in progress at the checkpoint
    is cut there, marked a timeout). Returns the snapshots, the replay buffer and the action bound."""
    env = gym.make(cfg.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    max_action = float(env.action_space.high[0])
    agent = SAC(obs_dim, act_dim, cfg)
    buffer = {k: torch.zeros(cfg.sac_steps, d) for k, d in
              (("observations", obs_dim), ("actions", act_dim), ("rewards", 1), ("next_observations", obs_dim),
               ("terminals", 1), ("timeouts", 1))}
    step, episode, snapshots = 0, 0, []
    ckpt = work / "sac.pt"
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        agent.load_state_dict(saved["agent"])
        for k, opt in agent.optimizers.items():
            opt.load_state_dict(saved["optimizers"][k])
        snapshots, step, episode = saved["snapshots"], saved["step"], saved["episode"] + 1
        buffer = {k: torch.cat([v[:cfg.sac_steps], torch.zeros(max(0, cfg.sac_steps - len(v)), v.shape[1])])
                  for k, v in saved["buffer"].items()}  # a longer --sac_steps extends the run
        set_rng_state(saved["rng"])
        if step < cfg.sac_steps:
            buffer["timeouts"][step - 1] = 1.0  # the episode in progress ends at the checkpoint
        print(f"resumed SAC at step {step}")
    obs, _ = env.reset(seed=cfg.seed + episode)
    env.action_space.seed(cfg.seed + step)
    bar = tqdm(total=cfg.sac_steps, initial=step, desc=f"SAC {cfg.env_id}", mininterval=2)
    total = 0.0
    for step in range(step, cfg.sac_steps):
        if step < cfg.learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = agent.actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy() * max_action
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for k, v in zip(buffer, (obs, action / max_action, reward, next_obs, terminated, truncated)):
            buffer[k][step] = torch.as_tensor(np.asarray(v, dtype=np.float32))
        obs, total = next_obs, total + float(reward)
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=cfg.seed + episode)
            bar.set_postfix(episode_return=f"{total:.0f}", refresh=False)
            total = 0.0
        if step >= cfg.learning_starts:
            idx = torch.randint(step + 1, (cfg.batch_size,))
            agent.update(buffer["observations"][idx], buffer["actions"][idx], buffer["rewards"][idx, 0],
                         buffer["next_observations"][idx], buffer["terminals"][idx, 0])
        bar.update()
        done = step + 1
        if done % cfg.snapshot_every == 0 or done == cfg.sac_steps:
            returns = evaluate(cfg.env_id, policy_fn(agent.actor, max_action, True), cfg.snapshot_episodes,
                               cfg.seed + 1_000_000)
            snapshots.append(dict(step=done, return_mean=float(returns.mean()),
                                  actor={k: v.clone() for k, v in agent.actor.state_dict().items()}))
            bar.write(f"step {done}: deterministic return {returns.mean():.1f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.sac_steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save(dict(agent=agent.state_dict(), optimizers={k: o.state_dict() for k, o in
                                                                   agent.optimizers.items()},
                            buffer=buffer, snapshots=snapshots, step=done, episode=episode, rng=rng_state()), tmp)
            os.replace(tmp, ckpt)
    bar.close()
    return dict(snapshots=snapshots, buffer={k: v.numpy() for k, v in buffer.items()}, max_action=max_action)


def generate(cfg: TaskConfig) -> dict[str, Path]:
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = Path(cfg.out_dir) if cfg.out_dir else DATASETS
    paths = {k: out / f"{cfg.task}-{k}.hdf5" for k in cfg.kinds}
    if not cfg.overwrite and all(p.exists() for p in paths.values()):
        print(f"all {cfg.task} datasets exist in {out} (--overwrite to remake them)")
        return paths
    work = out / f".{cfg.task}-work"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sac = train_behaviour(cfg, work)
    snapshots, max_action = sac["snapshots"], sac["max_action"]
    env = gym.make(cfg.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    expert_actor, medium_actor = (TanhGaussianPolicy(obs_dim, act_dim, cfg.hidden) for _ in range(2))
    expert = snapshots[-1]
    expert_actor.load_state_dict(expert["actor"])
    # the medium snapshot: the one whose return is closest to the target fraction of the expert's
    target = cfg.medium_fraction * expert["return_mean"]
    medium = min(snapshots, key=lambda s: abs(s["return_mean"] - target))
    medium_actor.load_state_dict(medium["actor"])
    seed = cfg.seed + 2_000_000
    ref_min = float(evaluate(cfg.env_id, random_policy(cfg.env_id, seed), cfg.reference_episodes, seed).mean())
    ref_max = float(evaluate(cfg.env_id, policy_fn(expert_actor, max_action, True), cfg.reference_episodes,
                             seed).mean())
    info = dict(env_id=cfg.env_id, ref_min_score=ref_min, ref_max_score=ref_max)
    made: dict[str, OfflineDataset] = {}

    def make(kind: str) -> OfflineDataset:
        if kind in made:
            return made[kind]
        seed = cfg.seed + 3_000_000 + 100_000 * KINDS.index(kind)
        if kind == "random":
            ds = rollout(cfg.env_id, random_policy(cfg.env_id, seed), cfg.dataset_steps, seed, kind)
        elif kind in ("medium", "expert"):
            actor = medium_actor if kind == "medium" else expert_actor
            ds = rollout(cfg.env_id, policy_fn(actor, max_action, False), cfg.dataset_steps, seed, kind)
        elif kind == "medium-replay":  # everything SAC saw until the medium snapshot
            n = medium["step"]
            b = sac["buffer"]
            b_timeouts = b["timeouts"][:n, 0].astype(bool)
            b_timeouts[-1] |= not b["terminals"][n - 1, 0]
            ds = OfflineDataset(observations=b["observations"][:n], actions=b["actions"][:n] * max_action,
                                rewards=b["rewards"][:n, 0], next_observations=b["next_observations"][:n],
                                terminals=b["terminals"][:n, 0].astype(bool), timeouts=b_timeouts)
        else:  # medium-expert
            m, e = make("medium"), make("expert")
            ds = OfflineDataset(**{k: np.concatenate([getattr(m, k), getattr(e, k)]) for k in ARRAYS})
        made[kind] = replace(ds, **info)
        return made[kind]

    for kind, path in paths.items():
        if path.exists() and not cfg.overwrite:
            continue
        ds = make(kind)
        write_d4rl(path, ds)
        print(f"{path.name}: {len(ds)} transitions, {len(ds.episode_slices())} episodes, mean episode return "
              f"{ds.episode_returns().mean():.1f}")
    summary = dict(to_dict(cfg), **info, medium_snapshot=dict(step=medium["step"], return_mean=medium["return_mean"]),
                   expert_snapshot=dict(step=expert["step"], return_mean=expert["return_mean"]),
                   snapshots=[dict(step=s["step"], return_mean=s["return_mean"]) for s in snapshots],
                   minutes=(time.perf_counter() - start) / 60)
    (out / f"{cfg.task}.json").write_text(json.dumps(summary, indent=1))
    print(f"reference returns: random {ref_min:.1f}, expert {ref_max:.1f}; medium = snapshot at step "
          f"{medium['step']} ({medium['return_mean']:.1f})")
    return paths


def main(args: list[str] | None = None) -> dict[str, Path]:
    return generate(parse_config(PRESETS, args, default="inverted_double_pendulum", description=__doc__))


if __name__ == "__main__":
    main()
