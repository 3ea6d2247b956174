"""The episode dataset format shared by every method, its PyTorch views and normalisation statistics.

On disk an episode dataset is one directory:

    meta.json       format version, fps, features {key: {shape, dtype}}, tasks, and one record per episode
                    (start frame, length, task, task_index, language instruction, success, ...)
    stats.json      per-feature statistics over all frames: mean, std, min, max, q01, q99 (float features only)
    <key>.bin       every frame of feature <key>, episodes back to back, as raw C-ordered arrays

Raw `.bin` files are appended to while writing and memory-mapped (`np.memmap`) while reading, so a dataset larger
than memory costs nothing to open and a training sample touches only its own frames. Keys follow LeRobot's naming
(`observation.images.<camera>`, `observation.state`, `action`), which keeps import/export (common/lerobot.py)
a matter of copying arrays.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMAT_NAME = "embodied-episodes"
FORMAT_VERSION = 1
STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")
# Quantiles are estimated on at most this many frames (an even-strided subsample): exact for small datasets,
# a fixed cost for large ones.
_MAX_QUANTILE_FRAMES = 200_000


def default_cache_dir() -> Path:
    """Where generated and imported data are cached: $EMBODIED_CACHE, else ~/.cache/embodied-models."""
    return Path(os.environ.get("EMBODIED_CACHE", Path.home() / ".cache" / "embodied-models"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as JSON through a temporary file and a rename, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class EpisodeWriter:
    """Appends episodes to a new dataset directory; `close()` writes the metadata and statistics.

    The dataset is written under `<root>.partial` and renamed to `root` on `close()`, so an interrupted write never
    leaves something that looks like a finished dataset.

        with EpisodeWriter(root, {"action": ((4,), "float32"), ...}, fps=10) as w:
            w.add_episode({"action": actions, ...}, task="reach-v3", instruction="reach the red goal")
    """

    def __init__(self, root: str | Path, features: Mapping[str, tuple[tuple[int, ...], str]], fps: float,
                 info: Mapping[str, Any] | None = None):
        self.root = Path(root)
        if self.root.exists():
            raise FileExistsError(f"dataset directory already exists: {self.root}")
        self.features = {k: {"shape": list(shape), "dtype": np.dtype(dtype).name} for k, (shape, dtype) in features.items()}
        self.fps, self.info = fps, dict(info or {})
        self.tmp = self.root.with_name(self.root.name + ".partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self._files = {k: open(self.tmp / f"{k}.bin", "wb") for k in self.features}
        self.episodes: list[dict] = []
        self.tasks: list[str] = []
        self.num_frames = 0

    def add_episode(self, frames: Mapping[str, np.ndarray], task: str, instruction: str = "", **extra: Any) -> None:
        """Append one episode. `frames[key]` has shape (T, *feature_shape); every feature must be given."""
        if set(frames) != set(self.features):
            raise KeyError(f"episode features {sorted(frames)} differ from the dataset's {sorted(self.features)}")
        lengths = {k: len(v) for k, v in frames.items()}
        length = next(iter(lengths.values()))
        if length == 0 or any(n != length for n in lengths.values()):
            raise ValueError(f"episode features must share one non-zero length, got {lengths}")
        for key, value in frames.items():
            spec = self.features[key]
            value = np.asarray(value)
            if list(value.shape[1:]) != spec["shape"]:
                raise ValueError(f"feature {key!r}: frame shape {value.shape[1:]} != declared {tuple(spec['shape'])}")
            self._files[key].write(np.ascontiguousarray(value, dtype=spec["dtype"]).tobytes())
        if task not in self.tasks:
            self.tasks.append(task)
        self.episodes.append(dict(index=len(self.episodes), start=self.num_frames, length=length, task=task,
                                  task_index=self.tasks.index(task), instruction=instruction, **extra))
        self.num_frames += length

    def close(self) -> Path:
        for f in self._files.values():
            f.close()
        meta = dict(format=FORMAT_NAME, version=FORMAT_VERSION, fps=self.fps, num_frames=self.num_frames,
                    features=self.features, tasks=self.tasks, episodes=self.episodes, info=self.info)
        write_json_atomic(self.tmp / "meta.json", meta)
        dataset = EpisodeDataset(self.tmp)
        write_json_atomic(self.tmp / "stats.json", compute_stats(dataset))
        os.replace(self.tmp, self.root)
        return self.root

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:  # leave nothing behind that could be mistaken for data
            for f in self._files.values():
                f.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


class EpisodeDataset:
    """Read-only, memory-mapped view of a dataset directory written by `EpisodeWriter`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"not an episode dataset (no meta.json): {self.root}")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT_NAME or self.meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.root}: unsupported format {self.meta.get('format')} v{self.meta.get('version')}")
        self.features: dict[str, dict] = self.meta["features"]
        self.episodes: list[dict] = self.meta["episodes"]
        self.tasks: list[str] = self.meta["tasks"]
        self.fps: float = self.meta["fps"]
        self.num_frames: int = self.meta["num_frames"]
        stats_path = self.root / "stats.json"
        self.stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        self.arrays: dict[str, np.ndarray] = {
            k: np.memmap(self.root / f"{k}.bin", dtype=spec["dtype"], mode="r", shape=(self.num_frames, *spec["shape"]))
            for k, spec in self.features.items()}
        # frame -> episode lookup, used by every sampler
        self.episode_of_frame = np.repeat(np.arange(len(self.episodes)), [e["length"] for e in self.episodes])

    def __len__(self) -> int:
        return self.num_frames

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """All frames of episode i, as arrays (views into the memory map)."""
        ep = self.episodes[i]
        return {k: a[ep["start"]:ep["start"] + ep["length"]] for k, a in self.arrays.items()}


def rename_features(dataset: EpisodeDataset, names: Mapping[str, str]) -> EpisodeDataset:
    """A view of `dataset` (the same memory maps, episodes and statistics) whose features `names` maps are renamed,
    e.g. {"actions": "action"} for a dataset that calls its actions otherwise."""
    view = copy.copy(dataset)
    view.arrays = {names.get(k, k): v for k, v in dataset.arrays.items()}
    view.features = {names.get(k, k): v for k, v in dataset.features.items()}
    view.stats = {names.get(k, k): v for k, v in dataset.stats.items()}
    return view


def compute_stats(dataset: EpisodeDataset, keys: Iterable[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """Per-dimension mean/std/min/max and 1st/99th percentiles of every floating-point feature over all frames."""
    stats = {}
    for key in keys or dataset.features:
        array = dataset.arrays[key]
        if not np.issubdtype(array.dtype, np.floating) or array.ndim > 2:
            continue  # images and integer ids carry no normalisation statistics
        stats[key] = array_stats(array)
    return stats


def array_stats(x: np.ndarray) -> dict[str, list[float]]:
    """Per-column mean/std/min/max and 1st/99th percentiles of an (N, ...) array, flattened to (N, D): what
    `Normalizer` reads. Quantiles come from at most ~2·_MAX_QUANTILE_FRAMES evenly strided rows (exact below that)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    q01, q99 = np.quantile(x[:: max(1, len(x) // _MAX_QUANTILE_FRAMES)], [0.01, 0.99], axis=0)
    stats = dict(mean=x.mean(0), std=x.std(0), min=x.min(0), max=x.max(0), q01=q01, q99=q99)
    return {name: v.tolist() for name, v in stats.items()}


class ChunkDataset(torch.utils.data.Dataset):
    """Samples (observation at t, action chunk a_t .. a_{t+H-1}) from an `EpisodeDataset`.

    Every frame is a sample. Where the chunk runs past the end of its episode the missing steps repeat the episode's
    last action and are flagged in `action_is_pad` (True = padding), so a loss can ignore them — the convention of
    LeRobot's `delta_timestamps` and of the π0/ACT papers' chunked policies.

    Returned per sample: each observation key as a tensor (images as uint8 HWC), `action` (H, A) float32,
    `action_is_pad` (H,) bool, `instruction` (str), `task_index` (int), `episode_index` (int), `frame_index` (int).
    """

    def __init__(self, dataset: EpisodeDataset, horizon: int, observation_keys: Iterable[str], action_key: str = "action",
                 episodes: Iterable[int] | None = None):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.dataset, self.horizon, self.action_key = dataset, horizon, action_key
        self.observation_keys = list(observation_keys)
        for key in [*self.observation_keys, action_key]:
            if key not in dataset.features:
                raise KeyError(f"feature {key!r} is not in the dataset; it has {sorted(dataset.features)}")
        chosen = range(len(dataset.episodes)) if episodes is None else episodes
        self.frames = np.concatenate([np.arange(dataset.episodes[e]["start"],
                                                dataset.episodes[e]["start"] + dataset.episodes[e]["length"])
                                      for e in chosen])

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = int(self.frames[i])
        ep = self.dataset.episodes[self.dataset.episode_of_frame[t]]
        end = ep["start"] + ep["length"]  # one past the episode's last frame
        steps = t + np.arange(self.horizon)
        is_pad = steps >= end
        actions = self.dataset.arrays[self.action_key][np.minimum(steps, end - 1)]
        item = {k: torch.from_numpy(np.array(self.dataset.arrays[k][t])) for k in self.observation_keys}
        item.update(action=torch.from_numpy(np.array(actions, dtype=np.float32)), action_is_pad=torch.from_numpy(is_pad),
                    instruction=ep["instruction"], task_index=ep["task_index"], episode_index=ep["index"],
                    frame_index=t - ep["start"])
        return item


def random_shift(x: torch.Tensor, pad: int, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Pad each image (B, C, H, W) by `pad` pixels, replicating edges, and crop back at a random offset (DrQ,
    Kostrikov et al. 2020). `offsets` (2, B) integers in [0, 2·pad] give (dx, dy) per image; by default they are
    drawn from torch's global RNG."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    if offsets is None:
        offsets = torch.randint(0, 2 * pad + 1, (2, b))
    dx, dy = offsets.tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


class Normalizer(nn.Module):
    """Normalises features with dataset statistics stored as buffers, so they travel inside the model's weights.

    Modes:
      - "mean_std": (x - mean) / (std + eps)                      (π0 / LeRobot default for state and actions)
      - "quantile": 2 (x - q01) / (q99 - q01 + eps) - 1, i.e. [q01, q99] -> [-1, 1]   (openpi's π0.5 / π0-FAST)
      - "identity": x
    `unnormalize` is the exact inverse (values outside [q01, q99] are not clipped, so it round-trips).
    """

    MODES = ("mean_std", "quantile", "identity")

    def __init__(self, stats: Mapping[str, Mapping[str, Any]], modes: Mapping[str, str], eps: float = 1e-8):
        super().__init__()
        self.modes, self.eps = dict(modes), eps
        for key, mode in self.modes.items():
            if mode not in self.MODES:
                raise ValueError(f"normalisation mode for {key!r} must be one of {self.MODES}, got {mode!r}")
            if key not in stats:
                raise KeyError(f"no statistics for {key!r}; have {sorted(stats)}")
            for name in ("mean", "std", "q01", "q99"):
                self.register_buffer(self._buffer(key, name), torch.as_tensor(stats[key][name], dtype=torch.float32))

    @staticmethod
    def _buffer(key: str, name: str) -> str:
        return f"{key.replace('.', '_')}__{name}"

    def _stat(self, key: str, name: str) -> torch.Tensor:
        return getattr(self, self._buffer(key, name))

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        mode = self.modes.get(key, "identity")
        if mode == "mean_std":
            return (x - self._stat(key, "mean")) / (self._stat(key, "std") + self.eps)
        if mode == "quantile":
            q01, q99 = self._stat(key, "q01"), self._stat(key, "q99")
            return 2 * (x - q01) / (q99 - q01 + self.eps) - 1
        return x

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        mode = self.modes.get(key, "identity")
        if mode == "mean_std":
            return x * (self._stat(key, "std") + self.eps) + self._stat(key, "mean")
        if mode == "quantile":
            q01, q99 = self._stat(key, "q01"), self._stat(key, "q99")
            return (x + 1) / 2 * (q99 - q01 + self.eps) + q01
        return x
