"""Uniform replay of fixed-length sequences (DreamerV3's `embodied/replay`, uniform selector).

Every agent step is appended to one stream (a FIFO ring of `capacity` steps); a sample is `length` consecutive steps
starting anywhere in the stored stream. Windows may cross an episode boundary, which `is_first` marks (the RSSM
restarts from its initial state there), and the first step of every sampled window is flagged `is_first`, as the
official replay does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Replay:
    def __init__(self, capacity: int, obs_key: str, obs_shape: tuple[int, ...], action_dim: int):
        """`obs_key` "image" (uint8 frames of `obs_shape`) or "vector" (float32 state vectors)."""
        self.capacity = capacity
        obs_dtype = np.uint8 if obs_key == "image" else np.float32
        self.data = {obs_key: np.zeros((capacity, *obs_shape), obs_dtype),
                     "action": np.zeros((capacity, action_dim), np.float32),
                     "reward": np.zeros(capacity, np.float32), "is_first": np.zeros(capacity, bool),
                     "is_terminal": np.zeros(capacity, bool)}
        self.added = 0  # steps appended so far (the next write goes to added % capacity)

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, step: dict) -> None:
        i = self.added % self.capacity
        for key, buffer in self.data.items():
            buffer[i] = step[key]
        self.added += 1

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
        """(batch, length, ...) windows, each starting uniformly among the stored steps."""
        if len(self) < length:
            raise ValueError(f"replay holds {len(self)} steps, fewer than one sequence of {length}")
        oldest = self.added - len(self)
        starts = oldest + rng.integers(0, len(self) - length + 1, batch)
        index = (starts[:, None] + np.arange(length)) % self.capacity
        out = {key: value[index] for key, value in self.data.items()}
        out["is_first"][:, 0] = True
        return out

    def save(self, path: Path) -> None:
        """The stored steps in write order (an atomic .npz)."""
        order = (self.added - len(self) + np.arange(len(self))) % self.capacity
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, added=self.added, **{key: value[order] for key, value in self.data.items()})
        tmp.replace(path)

    def load(self, path: Path) -> None:
        with np.load(path) as stored:
            n = len(stored["reward"])
            added = int(stored["added"])
            order = (added - n + np.arange(n)) % self.capacity
            for key, buffer in self.data.items():
                buffer[order] = stored[key]
            self.added = added
