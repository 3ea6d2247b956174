"""Import and export of LeRobot datasets (on-disk format v3.0, as read and written by lerobot 0.4 - 0.6).

A LeRobotDataset v3.0 is one directory in which many episodes share each file:

    meta/
      info.json                     codebase_version "v3.0", fps, features {key: {dtype, shape, names[, info]}},
                                    totals, chunks_size, file-size limits, splits, data_path / video_path templates
      stats.json                    statistics per feature over all frames (min, max, mean, std, count, q01..q99)
      tasks.parquet                 one row per task: task (the language instruction, stored as the pandas index)
                                    and task_index
      episodes/chunk-000/file-000.parquet
                                    one row per episode: episode_index, tasks, length, data/chunk_index,
                                    data/file_index, dataset_from_index, dataset_to_index,
                                    videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp},
                                    stats/<key>/<stat>, meta/episodes/{chunk_index, file_index}
    data/chunk-000/file-000.parquet one row per frame, episodes back to back: every non-video feature (vectors as
                                    fixed-size lists, `image` features as structs {bytes: PNG/JPEG, path}), plus
                                    timestamp, frame_index, episode_index, index, task_index
    videos/<key>/chunk-000/file-000.mp4
                                    the frames of a `video` feature, episodes back to back; an episode's frame at
                                    `timestamp` t is the video frame at from_timestamp + t

A file is closed once it reaches `data_files_size_in_mb` / `video_files_size_in_mb`; the next one is file-001, and
after `chunks_size` files a new chunk-001 starts. (Paths are from lerobot's `datasets/utils.py`; the episodes
columns from `dataset_metadata.py` / `dataset_writer.py`; the video settings from `configs/video.py`.)

`import_lerobot` turns such a directory into our episode format (common/data.py) keeping LeRobot's feature names;
images come back as uint8 (H, W, C). Our format has one task per episode: an episode's LeRobot task string (its
language instruction) becomes both our `task` and our `instruction`. `export_lerobot` writes the reverse, with
each episode's instruction (or its task name when it has none) as the LeRobot task.

Where we differ from lerobot's own writer (none of it changes what lerobot reads):
- a camera's episodes are encoded as one continuous stream per mp4 file (lerobot encodes each episode on its own
  and concatenates the files); a file is closed once its muxed bytes pass the size limit, so it can overshoot by
  the encoder's delay (about 25 frames for SVT-AV1);
- meta/stats.json holds exact statistics over all frames for numeric features (lerobot merges per-episode stats,
  averaging quantiles); camera statistics are merged from per-episode ones (<= 100 sampled frames each) as lerobot
  does;
- the episodes table is always a single file; our scalar features (shape ()) are exported as shape (1,), so
  they come back as (1,);
- on import, stats.json is not read (our statistics are recomputed from the data), and an episode whose frames
  carry several tasks gets the task of its first frame.

`open_dataset` is what a training script's `--dataset <dir>` calls: our episode format as it is, or a LeRobot v3.0
dataset imported once into the cache, with the keys the method reads checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from common.data import EpisodeDataset, EpisodeWriter, default_cache_dir

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CHUNKS_SIZE = 1000
DATA_FILE_SIZE_IN_MB = 100
VIDEO_FILE_SIZE_IN_MB = 200
# Per-frame columns every LeRobot dataset has; they index frames and are not features of ours.
BOOKKEEPING = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
               "task_index": "int64"}
_EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index")
_BASIC_STATS = ("min", "max", "mean", "std", "count")
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# lerobot's default encoder (VideoEncoderConfig): AV1 by SVT-AV1, yuv420p, a keyframe every 2 frames, crf 30.
VIDEO_CODEC, VIDEO_PIX_FMT, VIDEO_GOP, VIDEO_CRF, VIDEO_PRESET = "libsvtav1", "yuv420p", 2, 30, 12
_MAX_QUANTILE_FRAMES = 200_000
_IMAGE_STATS_FRAMES = 100   # frames sampled per episode for image statistics (lerobot samples ~100)
_IMAGE_STATS_SIDE = 150     # images are strided down to about this size for statistics


class LeRobotFormatError(ValueError):
    """The directory is not a LeRobot dataset this module can read."""


# ----------------------------------------------------------------------------------------------------- import

def import_lerobot(src: str | Path, dst: str | Path, episodes: list[int] | None = None) -> EpisodeDataset:
    """Convert the local LeRobot v3.0 dataset `src` into our episode format at `dst` and open it.

    `episodes` picks LeRobot episode indices (default: all); each imported episode records its original index as
    `lerobot_episode_index`. String and language columns are not features of ours and are skipped, and so are
    depth-map cameras (12-bit quantised depth video).
    """
    root = Path(src)
    info = _load_info(root)
    fps = info["fps"]
    specs = _import_specs(info["features"])
    task_names = _read_tasks(root)
    rows = _select_episodes(_read_episodes(root), episodes)
    data = _DataFiles(root, info["data_path"])
    videos = {key: _VideoReader(fps) for key, (kind, _, _) in specs.items() if kind == "video"}
    features = {key: (shape, dtype) for key, (_, shape, dtype) in specs.items()}
    names = {k: ft.get("names") for k, ft in info["features"].items() if k in specs and ft.get("names")}
    meta = dict(source="lerobot", codebase_version=info["codebase_version"], robot_type=info.get("robot_type"),
                names=names)
    try:
        with EpisodeWriter(dst, features, fps=fps, info=meta) as writer:
            for row in rows:
                table = data.episode(row)
                frames = {key: _read_feature(root, info, row, table, key, spec, videos.get(key))
                          for key, spec in specs.items()}
                task = task_names[int(table.column("task_index")[0].as_py())]
                writer.add_episode(frames, task=task, instruction=task, lerobot_episode_index=row["episode_index"])
    finally:
        for reader in videos.values():
            reader.close()
    return EpisodeDataset(dst)


class MissingKeyError(ValueError):
    """The dataset lacks a feature the method reads."""


def open_dataset(path: str | Path, keys: Iterable[str], cache_dir: str | Path | None = None) -> EpisodeDataset:
    """The training demos at `path`: an episode dataset of ours (meta.json), or a LeRobot v3.0 dataset (meta/info.json),
    imported on first use into `cache_dir/lerobot-<fingerprint>` (default: $EMBODIED_CACHE or
    ~/.cache/embodied-models) and reused while its files are unchanged. Every key in `keys` (the cameras' image keys,
    the state key, the action key) must be one of its features, else a `MissingKeyError` naming the missing ones and
    what the dataset has. With several processes, call it on one first (the import writes the cache)."""
    root = Path(path)
    if (root / "meta.json").exists():
        dataset = EpisodeDataset(root)
    elif (root / INFO_PATH).exists():
        cache = Path(cache_dir or default_cache_dir())
        imported = cache / f"lerobot-{_fingerprint(root)}"
        if not imported.exists():  # (an interrupted import left only `.partial`, which the writer clears)
            import_lerobot(root, imported)
        dataset = EpisodeDataset(imported)
    else:
        raise FileNotFoundError(f"{root}: neither an episode dataset (no meta.json) nor a LeRobot v3.0 dataset (no "
                                f"{INFO_PATH})")
    missing = [key for key in keys if key not in dataset.features]
    if missing:
        raise MissingKeyError(f"{root} has no feature {', '.join(missing)}; it has {', '.join(sorted(dataset.features))}"
                              f" (choose the cameras, state and action keys with the training script's flags)")
    return dataset


def _fingerprint(root: Path) -> str:
    """A hash of the dataset's absolute path and every file's relative path, size and modification time."""
    digest = hashlib.sha1(str(root.resolve()).encode())
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"LeRobot dataset file missing: {path}")
    return path


def _load_info(root: Path) -> dict:
    info = json.loads(_require(root / INFO_PATH).read_text())
    version = str(info.get("codebase_version", ""))
    major = version.lstrip("v").split(".")[0]
    if major == "2":
        raise LeRobotFormatError(
            f"{root} is a LeRobot {version} dataset; only v3.0 is supported. Convert it with lerobot's "
            f"convert_dataset_v21_to_v30 first (python -m lerobot.scripts.convert_dataset_v21_to_v30 "
            f"--repo-id=<id> --root={root} --push-to-hub=false; a v2.0 dataset needs lerobot 0.3's "
            f"lerobot.datasets.v21.convert_dataset_v20_to_v21 before that).")
    if major != "3":
        raise LeRobotFormatError(f"{root}: unsupported LeRobot codebase_version {version!r} (expected v3.0)")
    for field in ("fps", "features", "data_path"):
        if field not in info:
            raise LeRobotFormatError(f"{root / INFO_PATH} has no {field!r}")
    if any(ft["dtype"] == "video" for ft in info["features"].values()) and not info.get("video_path"):
        raise LeRobotFormatError(f"{root / INFO_PATH} declares video features but no video_path")
    return info


def _import_specs(features: dict[str, dict]) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """{key: (kind, our shape, our dtype)} with kind in numeric / image / video."""
    specs = {}
    for key, ft in features.items():
        dtype, shape = ft["dtype"], tuple(ft["shape"])
        if key in BOOKKEEPING or dtype in ("string", "language"):
            continue
        if (ft.get("info") or {}).get("is_depth_map") or (ft.get("info") or {}).get("video.is_depth_map"):
            warnings.warn(f"skipping depth-map feature {key!r}: quantised depth video is not imported")
            continue
        if dtype in ("image", "video"):
            names = ft.get("names") or []
            if len(shape) == 3 and names and str(names[0]).startswith("channel"):
                shape = (shape[1], shape[2], shape[0])  # (C, H, W) declared -> frames are (H, W, C)
            specs[key] = (dtype, shape, "uint8")
        else:
            specs[key] = ("numeric", shape, np.dtype(dtype).name)
    return specs


def _read_tasks(root: Path) -> dict[int, str]:
    table = pq.read_table(_require(root / TASKS_PATH))
    # lerobot writes the task string as the pandas index, named "task"; other writers leave it unnamed
    text = "task" if "task" in table.column_names else next(c for c in table.column_names if c != "task_index")
    return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))


def _read_episodes(root: Path) -> list[dict]:
    paths = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not paths:
        raise FileNotFoundError(
            f"LeRobot dataset file missing: {root / EPISODES_PATH.format(chunk_index=0, file_index=0)}")
    rows = []
    for path in paths:
        table = pq.read_table(path)
        missing = sorted(set(_EPISODE_COLUMNS) - set(table.column_names))
        if missing:
            raise LeRobotFormatError(f"{path} lacks the columns {missing}")
        rows += table.select([c for c in table.column_names if not c.startswith("stats/")]).to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


def _select_episodes(rows: list[dict], episodes: Iterable[int] | None) -> list[dict]:
    if episodes is None:
        return rows
    by_index = {r["episode_index"]: r for r in rows}
    missing = [e for e in episodes if e not in by_index]
    if missing:
        raise KeyError(f"episodes {missing} are not in the dataset (it has {len(rows)} episodes)")
    return [by_index[e] for e in episodes]


class _DataFiles:
    """Reads an episode's frames from the data parquet files, keeping the last file open (episodes share files)."""

    def __init__(self, root: Path, template: str):
        self.root, self.template = root, template
        self.path, self.table = None, None

    def episode(self, row: dict) -> pa.Table:
        path = self.root / self.template.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        if path != self.path:
            self.path, self.table = path, pq.read_table(_require(path))
        table = self.table.filter(pc.equal(self.table.column("episode_index"), row["episode_index"]))
        if table.num_rows != row["length"]:
            raise LeRobotFormatError(f"episode {row['episode_index']}: {table.num_rows} frames in {path}, "
                                     f"but the episodes table says {row['length']}")
        return table.sort_by("frame_index")


def _read_feature(root: Path, info: dict, row: dict, table: pa.Table, key: str, spec: tuple,
                  video: "_VideoReader | None") -> np.ndarray:
    kind, shape, dtype = spec
    if kind == "numeric":
        return _column_to_numpy(table.column(key), shape, dtype)
    if kind == "image":
        return np.stack([_decode_image(cell, root, shape) for cell in table.column(key).to_pylist()])
    path = root / info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                            file_index=row[f"videos/{key}/file_index"])
    timestamps = row[f"videos/{key}/from_timestamp"] + table.column("timestamp").to_numpy().astype(np.float64)
    return video.read(_require(path), timestamps)


def _column_to_numpy(column: pa.ChunkedArray, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    values = column.combine_chunks()
    n = len(values)
    while isinstance(values, (pa.ListArray, pa.FixedSizeListArray, pa.LargeListArray)):
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False).astype(dtype).reshape(n, *shape)


def _decode_image(cell: dict, root: Path, shape: tuple[int, ...]) -> np.ndarray:
    """An `image` cell is {bytes, path}; lerobot embeds the bytes, a path (if any) is relative to the dataset."""
    if cell.get("bytes") is not None:
        image = Image.open(io.BytesIO(cell["bytes"]))
    else:
        path = Path(cell["path"])
        image = Image.open(path if path.is_absolute() else _require(root / path))
    pixels = np.asarray(image.convert("RGB" if shape[-1] == 3 else "L"))
    return pixels.reshape(shape)


class _VideoReader:
    """Decodes frames of one camera's mp4 files by timestamp; frame i of a file is the one at time i / fps.

    Consecutive episodes of one file are read by decoding straight on; going back (or far ahead) seeks to the
    preceding keyframe first.
    """

    def __init__(self, fps: float):
        self.fps = fps
        self.path = self.container = self.frames = self.time_base = None
        self.next_index = 0  # index of the frame `self.frames` yields next

    def read(self, path: Path, timestamps: np.ndarray) -> np.ndarray:
        wanted = np.round(timestamps * self.fps).astype(np.int64)
        first, last = int(wanted.min()), int(wanted.max())
        if path != self.path:
            self.close()
            self.path, self.container = path, av.open(str(path))
        if self.frames is None or not self.next_index <= first <= self.next_index + 4 * self.fps:
            self._seek(first)
        found: dict[int, np.ndarray] = {}
        for frame in self.frames:
            if frame.pts is None:
                continue
            index = round(float(frame.pts * self.time_base) * self.fps)
            self.next_index = index + 1
            if first <= index <= last:
                found[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
        missing = sorted(set(wanted.tolist()) - set(found))
        if missing:
            raise LeRobotFormatError(f"{path}: no video frame at timestamps {[i / self.fps for i in missing[:5]]} s")
        return np.stack([found[i] for i in wanted.tolist()])

    def _seek(self, index: int) -> None:
        stream = self.container.streams.video[0]
        self.container.seek(max(0, round(index / self.fps / stream.time_base) - 1), backward=True,
                            any_frame=False, stream=stream)
        self.frames, self.next_index, self.time_base = self.container.decode(stream), 0, stream.time_base

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
        self.path = self.container = self.frames = None


# ----------------------------------------------------------------------------------------------------- export

def export_lerobot(dataset: EpisodeDataset | str | Path, dst: str | Path, fps: float | None = None, video: bool = True,
                   robot_type: str = "sawyer", *, vcodec: str | None = None,
                   data_files_size_in_mb: float = DATA_FILE_SIZE_IN_MB,
                   video_files_size_in_mb: float = VIDEO_FILE_SIZE_IN_MB) -> Path:
    """Write `dataset` as a LeRobot v3.0 dataset directory `dst` (which must not exist); returns `dst`.

    Cameras (uint8 (H, W, 3) features) become mp4 `video` features when `video` is True (AV1 through SVT-AV1 by
    default, as lerobot records, or H.264 where PyAV lacks it; `vcodec` picks another encoder), else PNG `image`
    features inside the parquet files. `fps`
    overrides the dataset's declared rate (frames are not resampled) and must be a whole number, as in lerobot.
    The directory is written under `<dst>.partial` and renamed when complete.
    """
    dataset = dataset if isinstance(dataset, EpisodeDataset) else EpisodeDataset(dataset)
    fps = _whole_fps(fps if fps is not None else dataset.fps)
    root = Path(dst)
    if root.exists():
        raise FileExistsError(f"destination already exists: {root}")
    clash = sorted(set(dataset.features) & set(BOOKKEEPING))
    if clash:
        raise ValueError(f"features {clash} clash with LeRobot's per-frame bookkeeping columns")
    cameras = [k for k, spec in dataset.features.items() if _is_camera(spec)]
    vcodec = vcodec or (VIDEO_CODEC if VIDEO_CODEC in av.codecs_available else "libx264")
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rows, tasks, video_info = _write_frames(dataset, tmp, fps, cameras, video, vcodec, data_files_size_in_mb,
                                                video_files_size_in_mb)
        info = _info(dataset, fps, robot_type, cameras, video_info, len(tasks), video,
                     data_files_size_in_mb, video_files_size_in_mb)
        _write_json(tmp / INFO_PATH, info)
        _write_json(tmp / STATS_PATH, _dataset_stats(dataset, cameras, fps, tasks, rows))
        _write_tasks(tmp / TASKS_PATH, tasks)
        _write_episodes(tmp / EPISODES_PATH.format(chunk_index=0, file_index=0), rows)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, root)
    return root


def _write_frames(dataset: EpisodeDataset, root: Path, fps: int, cameras: list[str], video: bool, vcodec: str,
                  data_mb: float, video_mb: float) -> tuple[list[dict], list[str], dict]:
    """Writes data/ (and videos/); returns the episodes-table rows, the task strings and each video's info block."""
    in_parquet = [k for k in dataset.features if not (video and k in cameras)]
    data = _ParquetSink(root, data_mb)
    videos = {k: _VideoSink(root, k, fps, vcodec, video_mb) for k in cameras} if video else {}
    tasks: list[str] = []
    rows = []
    for ep in dataset.episodes:
        text = ep.get("instruction") or ep["task"]  # LeRobot's task is the language instruction
        if text not in tasks:
            tasks.append(text)
        frames = dataset.episode(ep["index"])
        columns = _episode_columns(ep, frames, in_parquet, cameras, fps, tasks.index(text))
        row = dict(episode_index=ep["index"], tasks=[text], length=ep["length"])
        row.update(data.add(columns, ep["start"], ep["length"]))
        for key, sink in videos.items():
            row.update(sink.add(frames[key]))
        row.update(_flatten_stats(_episode_stats(frames, columns, cameras)))
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        rows.append(row)
    data.close()
    return rows, tasks, {key: sink.close() for key, sink in videos.items()}


def _whole_fps(fps: float) -> int:
    if float(fps) <= 0 or not float(fps).is_integer():
        raise ValueError(f"LeRobot datasets need a whole, positive fps; got {fps} (pass fps=...)")
    return int(fps)


def _is_camera(spec: dict) -> bool:
    return spec["dtype"] == "uint8" and len(spec["shape"]) == 3 and spec["shape"][-1] == 3


def _next_file(chunk_index: int, file_index: int) -> tuple[int, int]:
    """lerobot's `update_chunk_file_indices`: file-000..file-999 per chunk, then the next chunk."""
    return (chunk_index + 1, 0) if file_index == CHUNKS_SIZE - 1 else (chunk_index, file_index + 1)


def _episode_columns(ep: dict, frames: dict, keys: list[str], cameras: list[str], fps: int,
                     task_index: int) -> dict[str, np.ndarray | list]:
    """The parquet columns of one episode: features (cameras as PNG cells) and the bookkeeping columns."""
    n = ep["length"]
    columns: dict[str, Any] = {}
    for key in keys:
        if key in cameras:
            columns[key] = [{"bytes": _png(image), "path": None} for image in frames[key]]
        else:
            columns[key] = np.asarray(frames[key])
    frame_index = np.arange(n, dtype=np.int64)
    columns.update(timestamp=(frame_index / fps).astype(np.float32), frame_index=frame_index,
                   episode_index=np.full(n, ep["index"], dtype=np.int64),
                   index=np.arange(ep["start"], ep["start"] + n, dtype=np.int64),
                   task_index=np.full(n, task_index, dtype=np.int64))
    return columns


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def _arrow_column(values: np.ndarray | list) -> pa.Array:
    """Scalars (shape () or (1,)) as plain columns, vectors as fixed-size lists, images as {bytes, path} structs."""
    if isinstance(values, list):
        return pa.array(values, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    n, shape = len(values), values.shape[1:]
    if int(np.prod(shape)) == 1 and len(shape) <= 1:
        return pa.array(values.reshape(n))
    array = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(shape):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


class _ParquetSink:
    """Appends episodes to data/chunk-XXX/file-XXX.parquet (one row group each), opening a new file past the limit."""

    def __init__(self, root: Path, max_mb: float):
        self.root, self.max_bytes = root, max_mb * 1024 ** 2
        self.chunk_index, self.file_index, self.writer, self.bytes = 0, 0, None, 0

    def add(self, columns: dict, start: int, length: int) -> dict:
        table = pa.table({k: _arrow_column(v) for k, v in columns.items()})
        if self.writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self.chunk_index, file_index=self.file_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        self.writer.write_table(table)
        self.bytes += table.nbytes
        where = {"data/chunk_index": self.chunk_index, "data/file_index": self.file_index,
                 "dataset_from_index": start, "dataset_to_index": start + length}
        if self.bytes >= self.max_bytes:
            self.close()
            self.chunk_index, self.file_index = _next_file(self.chunk_index, self.file_index)
        return where

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.bytes = None, 0


class _VideoSink:
    """Encodes one camera's episodes back to back into videos/<key>/chunk-XXX/file-XXX.mp4 (frame i at i / fps).

    A file is closed after the episode during which its muxed bytes pass the limit; the encoder holds frames back
    (about 25 for SVT-AV1), so a file can overshoot by that much: the limit is a target, as in lerobot.
    """

    def __init__(self, root: Path, key: str, fps: int, vcodec: str, max_mb: float):
        if vcodec not in av.codecs_available:
            raise ValueError(f"video codec {vcodec!r} is not in this PyAV build; try vcodec='libx264' or video=False")
        self.root, self.key, self.fps, self.vcodec, self.max_bytes = root, key, fps, vcodec, max_mb * 1024 ** 2
        self.chunk_index, self.file_index = 0, 0
        self.container = self.stream = None
        self.frames_in_file = self.bytes = 0
        self.first_file: Path | None = None

    def add(self, frames: np.ndarray) -> dict:
        if self.container is None:
            self._open(frames.shape[1:])
        start = self.frames_in_file
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames_in_file
            self._mux(self.stream.encode(frame))
            self.frames_in_file += 1
        where = {f"videos/{self.key}/chunk_index": self.chunk_index, f"videos/{self.key}/file_index": self.file_index,
                 f"videos/{self.key}/from_timestamp": start / self.fps,
                 f"videos/{self.key}/to_timestamp": self.frames_in_file / self.fps}
        if self.bytes >= self.max_bytes:
            self._finish()
            self.chunk_index, self.file_index = _next_file(self.chunk_index, self.file_index)
        return where

    def _open(self, shape: tuple[int, ...]) -> None:
        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk_index,
                                             file_index=self.file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.first_file = self.first_file or path
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration to stderr otherwise
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(self.vcodec, rate=self.fps, options=self._options())
        self.stream.height, self.stream.width = shape[0], shape[1]
        self.stream.pix_fmt = VIDEO_PIX_FMT
        self.frames_in_file = self.bytes = 0

    def _options(self) -> dict[str, str]:
        options = {"g": str(VIDEO_GOP), "crf": str(VIDEO_CRF)}
        if self.vcodec == "libsvtav1":
            options.update(preset=str(VIDEO_PRESET), **{"svtav1-params": "fast-decode=0"})
        return options

    def _mux(self, packets) -> None:
        for packet in packets:
            self.bytes += packet.size
            self.container.mux(packet)

    def _finish(self) -> None:
        if self.container is not None:
            self._mux(self.stream.encode())
            self.container.close()
        self.container = self.stream = None

    def close(self) -> dict:
        """Finish the open file; returns the feature's `info` block, probed from the first file like lerobot."""
        self._finish()
        if self.first_file is None:  # no episodes
            return {}
        with av.open(str(self.first_file)) as probe:
            stream = probe.streams.video[0]
            info = {"video.height": stream.height, "video.width": stream.width,
                    "video.codec": stream.codec_context.codec.canonical_name, "video.pix_fmt": stream.pix_fmt,
                    "video.fps": int(stream.base_rate), "video.channels": 3}
        info.update({"video.g": VIDEO_GOP, "video.crf": VIDEO_CRF, "video.fast_decode": 0,
                     "video.video_backend": "pyav", "video.extra_options": {}, "is_depth_map": False,
                     "has_audio": False})
        if self.vcodec == "libsvtav1":
            info["video.preset"] = VIDEO_PRESET
        return info


def _info(dataset: EpisodeDataset, fps: int, robot_type: str, cameras: list[str], video_info: dict,
          total_tasks: int, video: bool, data_mb: float, video_mb: float) -> dict:
    names = dataset.meta.get("info", {}).get("names", {})
    features = {}
    for key, spec in dataset.features.items():
        shape = list(spec["shape"])
        if key in cameras:
            features[key] = {"dtype": "video" if video else "image", "shape": shape,
                             "names": ["height", "width", "channels"]}
            if video:
                features[key]["info"] = video_info[key]
            continue
        if len(shape) <= 1:
            size = int(np.prod(shape))
            own = names.get(key)
            key_names = own if isinstance(own, (list, dict)) else [f"{key.rsplit('.', 1)[-1]}_{i}" for i in range(size)]
            features[key] = {"dtype": spec["dtype"], "shape": [size], "names": key_names}
        else:
            features[key] = {"dtype": spec["dtype"], "shape": shape, "names": None}
    features.update({k: {"dtype": dtype, "shape": [1], "names": None} for k, dtype in BOOKKEEPING.items()})
    return dict(codebase_version=CODEBASE_VERSION, robot_type=robot_type, total_episodes=len(dataset.episodes),
                total_frames=dataset.num_frames, total_tasks=total_tasks, chunks_size=CHUNKS_SIZE,
                data_files_size_in_mb=data_mb, video_files_size_in_mb=video_mb, fps=fps,
                splits={"train": f"0:{len(dataset.episodes)}"}, data_path=DATA_PATH,
                video_path=VIDEO_PATH if video else None, features=features)


# ------------------------------------------------------------------------------------------------- statistics

def _numeric_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension min/max/mean/std/count and quantiles over frames (axis 0), as lerobot stores them."""
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(len(x), 1) if x.ndim == 1 else x
    sub = x[:: max(1, len(x) // _MAX_QUANTILE_FRAMES)]
    stats = dict(min=x.min(0), max=x.max(0), mean=x.mean(0), std=x.std(0), count=np.array([len(x)]))
    stats.update({name: np.quantile(sub, q, axis=0) for name, q in QUANTILES.items()})
    return stats


def _image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of uint8 (N, H, W, C) images in [0, 1], shaped (C, 1, 1) like lerobot's."""
    step = max(1, max(images.shape[1:3]) // _IMAGE_STATS_SIDE)
    pixels = images[:, ::step, ::step].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    stats = _numeric_stats(pixels)
    stats = {k: v if k == "count" else v.reshape(-1, 1, 1) for k, v in stats.items()}
    stats["count"] = np.array([len(images)])
    return stats


def _sample(n: int, k: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, n - 1, min(n, k))).astype(np.int64))


def _episode_stats(frames: dict, columns: dict, cameras: list[str]) -> dict[str, dict]:
    stats = {key: _numeric_stats(v) for key, v in columns.items() if key not in cameras}
    for key in cameras:
        stats[key] = _image_stats(np.asarray(frames[key][_sample(len(frames[key]), _IMAGE_STATS_FRAMES)]))
    return stats


def _dataset_stats(dataset: EpisodeDataset, cameras: list[str], fps: int, tasks: list[str], rows: list[dict]) -> dict:
    """stats.json: exact statistics over all frames for numbers; for cameras, the episodes' statistics (in the
    episodes-table `rows`) merged as lerobot merges them."""
    lengths = [ep["length"] for ep in dataset.episodes]
    frame_index = np.concatenate([np.arange(n) for n in lengths])
    task_of_episode = [tasks.index(ep.get("instruction") or ep["task"]) for ep in dataset.episodes]
    columns = {key: array for key, array in dataset.arrays.items() if key not in cameras}
    columns.update(timestamp=(frame_index / fps).astype(np.float32), frame_index=frame_index,
                   episode_index=np.repeat([ep["index"] for ep in dataset.episodes], lengths),
                   index=np.arange(dataset.num_frames), task_index=np.repeat(task_of_episode, lengths))
    stats = {key: _numeric_stats(v) for key, v in columns.items()}
    for key in cameras:
        names = [*_BASIC_STATS, *QUANTILES]
        stats[key] = _merge_stats([{n: np.asarray(row[f"stats/{key}/{n}"]) for n in names} for row in rows])
    return {key: {name: value.tolist() for name, value in s.items()} for key, s in stats.items()}


def _merge_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """lerobot's `aggregate_feature_stats`: count-weighted means and quantiles, pooled variance, min/max overall."""
    counts = np.array([p["count"][0] for p in parts], dtype=np.float64)
    weights = (counts / counts.sum()).reshape(-1, *[1] * parts[0]["mean"].ndim)
    means = np.stack([p["mean"] for p in parts])
    mean = (weights * means).sum(0)
    variance = (weights * (np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)).sum(0)
    merged = dict(min=np.min([p["min"] for p in parts], 0), max=np.max([p["max"] for p in parts], 0), mean=mean,
                  std=np.sqrt(variance), count=np.array([int(counts.sum())]))
    merged.update({q: (weights * np.stack([p[q] for p in parts])).sum(0) for q in QUANTILES})
    return merged


def _flatten_stats(stats: dict[str, dict]) -> dict[str, list]:
    return {f"stats/{key}/{name}": value.tolist() for key, s in stats.items() for name, value in s.items()}


# ------------------------------------------------------------------------------------------------- meta files

def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4))


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """tasks.parquet as pandas writes lerobot's DataFrame(task_index, index=Index(tasks, name="task")).

    The pandas metadata makes `pd.read_parquet` (what lerobot calls) restore `task` as the index.
    """
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


def _write_episodes(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
