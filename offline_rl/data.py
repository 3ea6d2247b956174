"""What every offline-RL algorithm here shares: reading datasets, normalising them, sampling them, and scoring a
policy the D4RL way.

Datasets come in two on-disk layouts, both read with h5py (neither `d4rl` nor `minari` needs to be installed):

* **D4RL hdf5** (Fu et al., 2020; the files `d4rl` downloads): flat arrays `observations`, `actions`, `rewards`,
  `terminals`, `timeouts` and, in the v2 MuJoCo files, `next_observations`. `offline_rl/generate.py` writes this
  layout too, with the reference returns and the environment id as file attributes.
* **Minari** (the Farama successor of D4RL): `<dataset>/data/main_data.hdf5` with one group per episode
  (`episode_<i>/observations` holds T + 1 observations, `actions`, `rewards`, `terminations`, `truncations` hold T)
  and `<dataset>/data/metadata.json` (environment spec, optional `ref_min_score` / `ref_max_score`).

Both become an `OfflineDataset`: one row per transition (s, a, r, s', terminal, timeout). `terminal` means the
environment ended the episode (no bootstrapping from s'); `timeout` means the data stops there (a time limit or
the end of the file) and the value of s' still counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

# D4RL's reference returns for its MuJoCo tasks (d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE: a random policy and
# an SAC expert), used to normalise the scores of the real datasets. Files from `generate.py` carry their own.
D4RL_REFERENCE = {"hopper": (-20.272305, 3234.3), "halfcheetah": (-280.178953, 12135.0),
                  "walker2d": (1.629008, 4592.3)}


# the per-transition arrays of an OfflineDataset, one row each
ARRAYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


@dataclass
class OfflineDataset:
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    next_observations: np.ndarray  # (N, obs_dim) float32
    terminals: np.ndarray  # (N,) bool: the episode ended in the environment (do not bootstrap)
    timeouts: np.ndarray  # (N,) bool: the recorded episode stops here without a terminal state
    env_id: str | None = None  # gymnasium id to evaluate in
    ref_min_score: float | None = None  # return of a random policy (normalised score 0)
    ref_max_score: float | None = None  # return of the expert (normalised score 100)

    def __len__(self) -> int:
        return len(self.rewards)

    def rows(self, idx: np.ndarray) -> OfflineDataset:
        """The transitions at `idx` (the environment and reference returns kept)."""
        return replace(self, **{k: getattr(self, k)[idx] for k in ARRAYS})

    def episode_slices(self) -> list[slice]:
        """Contiguous episodes: each ends at a terminal or a timeout (and the last row always ends one)."""
        ends = np.flatnonzero(self.terminals | self.timeouts)
        if len(ends) == 0 or ends[-1] != len(self) - 1:
            ends = np.append(ends, len(self) - 1)
        starts = np.concatenate([[0], ends[:-1] + 1])
        return [slice(int(s), int(e) + 1) for s, e in zip(starts, ends)]

    def episode_returns(self) -> np.ndarray:
        return np.array([self.rewards[s].sum() for s in self.episode_slices()])

    def normalized_score(self, returns: np.ndarray | float) -> np.ndarray:
        """D4RL-normalised score: 100 · (R − R_random) / (R_expert − R_random)."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise ValueError("this dataset has no reference returns (ref_min_score / ref_max_score): pass them, or "
                             "use a file written by offline_rl/generate.py")
        return 100 * (np.asarray(returns) - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)


# ---------------------------------------------------------------------------------------------------------- reading
def load_dataset(path: str | os.PathLike, env_id: str | None = None) -> OfflineDataset:
    """A D4RL hdf5 file or a Minari dataset directory (or its main_data.hdf5), by what is on disk."""
    path = Path(path)
    if path.is_dir():
        path = path / "data" / "main_data.hdf5" if (path / "data").is_dir() else path / "main_data.hdf5"
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}")
    import h5py

    with h5py.File(path, "r") as f:
        minari = any(k.startswith("episode_") for k in f.keys())
    ds = load_minari(path) if minari else load_d4rl(path)
    return replace(ds, env_id=env_id) if env_id else ds


def load_d4rl(path: str | os.PathLike) -> OfflineDataset:
    """A D4RL hdf5 file. Without `next_observations` (older files) s' is the next row's observation and the last
    step of every timed-out episode is dropped, its s' never recorded (as `d4rl.qlearning_dataset` does); the step
    before it then ends the episode."""
    import h5py

    with h5py.File(path, "r") as f:
        missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
        if missing:
            raise KeyError(f"{path} is not a D4RL hdf5 file: missing {missing} (has {sorted(f.keys())})")
        obs = f["observations"][:].astype(np.float32)
        n = len(obs)
        timeouts = f["timeouts"][:].astype(bool) if "timeouts" in f else np.zeros(n, bool)
        data = dict(observations=obs, actions=f["actions"][:].astype(np.float32),
                    rewards=f["rewards"][:].astype(np.float32).reshape(n), terminals=f["terminals"][:].astype(bool),
                    timeouts=timeouts)
        attrs = dict(f.attrs)
        next_obs = f["next_observations"][:].astype(np.float32) if "next_observations" in f else None
    if next_obs is None:
        keep = ~timeouts
        keep[-1] = False  # the last row has no next row
        prev_of_dropped = np.flatnonzero(~keep)[np.flatnonzero(~keep) > 0] - 1
        data["timeouts"] = data["timeouts"].copy()
        data["timeouts"][prev_of_dropped] = True
        next_obs = np.concatenate([obs[1:], obs[-1:]])
        data = {k: v[keep] for k, v in data.items()}
        next_obs = next_obs[keep]
    for k in ("actions", "rewards", "terminals", "timeouts"):
        if len(data[k]) != len(data["observations"]):
            raise ValueError(f"{path}: '{k}' has {len(data[k])} rows, observations have {len(data['observations'])}")
    return OfflineDataset(**data, next_observations=next_obs, env_id=_str(attrs.get("env_id")),
                          ref_min_score=_float(attrs.get("ref_min_score")),
                          ref_max_score=_float(attrs.get("ref_max_score")))


def load_minari(path: str | os.PathLike, observation_keys: tuple[str, ...] | None = None) -> OfflineDataset:
    """A Minari dataset's main_data.hdf5 (metadata.json beside it is read for the environment and reference
    returns). Dict observations (e.g. PointMaze's observation / achieved_goal / desired_goal) are concatenated in
    `observation_keys` order (default: sorted keys)."""
    import h5py

    path = Path(path)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ARRAYS}
    with h5py.File(path, "r") as f:
        names = sorted((k for k in f.keys() if k.startswith("episode_")), key=lambda k: int(k.split("_")[1]))
        for name in names:
            ep = f[name]
            obs = ep["observations"]
            if isinstance(obs, h5py.Group):
                keys = observation_keys or tuple(sorted(obs.keys()))
                obs = np.concatenate([obs[k][:].reshape(len(obs[k]), -1) for k in keys], axis=1)
            else:
                obs = obs[:].reshape(len(obs), -1)
            t = len(ep["actions"])
            if len(obs) != t + 1:
                raise ValueError(f"{path}/{name}: {len(obs)} observations for {t} actions (Minari stores T + 1)")
            rows["observations"].append(obs[:-1])
            rows["next_observations"].append(obs[1:])
            rows["actions"].append(ep["actions"][:].reshape(t, -1))
            rows["rewards"].append(ep["rewards"][:].reshape(t))
            rows["terminals"].append(ep["terminations"][:].astype(bool))
            timeouts = ep["truncations"][:].astype(bool)
            timeouts[-1] |= not rows["terminals"][-1][-1]  # the recorded episode stops here either way
            rows["timeouts"].append(timeouts)
    if not names:
        raise ValueError(f"{path} has no episode_<i> groups: not a Minari dataset")
    data = {k: np.concatenate(v) for k, v in rows.items()}
    for k in ("observations", "next_observations", "actions", "rewards"):
        data[k] = data[k].astype(np.float32)
    meta_path = path.parent / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    env_id = json.loads(meta["env_spec"])["id"] if meta.get("env_spec") else None
    return OfflineDataset(**data, env_id=env_id, ref_min_score=_float(meta.get("ref_min_score")),
                          ref_max_score=_float(meta.get("ref_max_score")))


def write_d4rl(path: str | os.PathLike, ds: OfflineDataset) -> None:
    """Write `ds` in the D4RL v2 layout (with next_observations), reference returns as attributes; atomic."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        for k in ARRAYS:
            f.create_dataset(k, data=getattr(ds, k), compression="gzip")
        for k in ("env_id", "ref_min_score", "ref_max_score"):
            if getattr(ds, k) is not None:
                f.attrs[k] = getattr(ds, k)
    tmp.replace(path)


def _float(x) -> float | None:
    return None if x is None else float(x)


def _str(x) -> str | None:
    return None if x is None else (x.decode() if isinstance(x, bytes) else str(x))


# ---------------------------------------------------------------------------------------------------- normalising
def observation_stats(ds: OfflineDataset, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the observations, std + eps (CORL `compute_mean_std`; TD3+BC Sec. 5 normalises states)."""
    return ds.observations.mean(0), ds.observations.std(0) + eps


def normalize_observations(ds: OfflineDataset, mean: np.ndarray, std: np.ndarray) -> OfflineDataset:
    return replace(ds, observations=((ds.observations - mean) / std).astype(np.float32),
                   next_observations=((ds.next_observations - mean) / std).astype(np.float32))


def scale_rewards_by_return_range(ds: OfflineDataset) -> OfflineDataset:
    """r ← r · 1000 / (max episode return − min episode return): IQL's reward normalisation for locomotion
    (Kostrikov et al., 2021, App. B; CORL `modify_reward`), which makes one expectile and β work across tasks."""
    returns = ds.episode_returns()
    spread = float(returns.max() - returns.min())
    if spread <= 0:
        raise ValueError("every episode has the same return: the return range is 0, rewards cannot be scaled by it")
    return replace(ds, rewards=(ds.rewards * 1000.0 / spread).astype(np.float32))


# ------------------------------------------------------------------------------------------------------- sampling
class TransitionBuffer:
    """The dataset as tensors on one device, sampled uniformly with replacement (global torch RNG, which
    checkpoints save, so a resumed run draws the same batches)."""

    def __init__(self, ds: OfflineDataset, device: str | torch.device = "cpu"):
        def t(x):
            return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
        self.observations, self.actions = t(ds.observations), t(ds.actions)
        self.rewards, self.next_observations = t(ds.rewards), t(ds.next_observations)
        self.dones = t(ds.terminals)  # 1 − done multiplies the bootstrapped value
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.rewards)

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(s, a, r, s', done), each with the batch first; r and done are (B,)."""
        idx = torch.randint(len(self), (batch_size,), device=self.device)
        return (self.observations[idx], self.actions[idx], self.rewards[idx], self.next_observations[idx],
                self.dones[idx])


# ----------------------------------------------------------------------------------------------------- evaluating
def evaluate(env_id: str, act: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int,
             obs_mean: np.ndarray | None = None, obs_std: np.ndarray | None = None) -> np.ndarray:
    """Returns of `episodes` episodes of `act` (normalised observation → action), episode i seeded seed + i."""
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            x = obs if obs_mean is None else (obs - obs_mean) / obs_std
            obs, reward, terminated, truncated, _ = env.step(act(x.astype(np.float32)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return np.array(returns)
