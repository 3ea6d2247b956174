"""LeRobot's side of the export check: lerobot 0.6.1's own `LeRobotDataset` reads a small dataset that our
`export_lerobot` (common/lerobot.py) wrote, and what it yields for every frame goes into an .npz fixture.

Two steps, because lerobot 0.6.1 lives in its own Python 3.12 venv (DESIGN.md, "LeRobot as a parity/speed
reference") and our venv has no lerobot:

    .venv/bin/python common/tools/lerobot_reference.py --export /tmp/lerobot_export
    /work/lerobot-venv/bin/python common/tools/lerobot_reference.py --read /tmp/lerobot_export \\
        --out common/tests/fixtures/lerobot_read_export.npz

The LeRobot venv: `/root/.pyenv/versions/3.12.1/bin/python3.12 -m venv /work/lerobot-venv` and
`/work/lerobot-venv/bin/pip install "lerobot[dataset]==0.6.1"` (plain `lerobot` lacks datasets, pandas, pyarrow, av
and torchcodec, which its `dataset` extra brings). torchcodec, lerobot's default video decoder, loads only beside
the system's FFmpeg shared libraries (Debian 12: `apt-get install libavcodec59 libavformat59 libavutil57
libswscale6 libavdevice59 libavfilter8 libswresample4`); without them torchcodec cannot be imported, lerobot
falls back to PyAV, and the torchcodec read below cannot run.

`--export DIR` (our venv) writes DIR/ours, our episode format built by `build_dataset` (three episodes of 7, 12
and 5 frames, two instructions, a 24x24 camera with a gradient and a moving square, 4-D state and action), and
exports it twice: DIR/image with `video=False` (PNG `image` features inside the parquet files) and DIR/video with
`video=True` (AV1 mp4, our default encoder settings).

`--read DIR` (lerobot's venv; offline, with a throwaway `datasets` cache) opens DIR/image and DIR/video with
`LeRobotDataset(repo_id="local/<name>", root=DIR/<name>)` (lerobot/datasets/lerobot_dataset.py) and calls `ds[i]`
for every frame (`DatasetReader.get_item`, lerobot/datasets/dataset_reader.py). The video directory is read twice,
with `video_backend="torchcodec"` and `"pyav"` (lerobot/datasets/video_utils.py `decode_video_frames`). Stored
per read, under "<read>/<key>" with read in {image, video_torchcodec, video_pyav}: the camera frames, state,
action, episode_index, frame_index, index, task_index, timestamp and the task string, stacked over frames; the
keys `ds[i]` returned; `ds.meta.total_episodes`, `total_frames`, `fps`, `camera_keys`, `video_keys` and the video
backend. lerobot yields images as float32 (C, H, W) in [0, 1] (`pil_to_chw_tensor` for PNG, uint8 / 255 for
video); they are stored as uint8 (H, W, C), round(255 x), with the largest |255 x - round(255 x)| as
"<read>/rounding_error" to show that nothing was lost. Also stored: the lerobot, torch, torchcodec, av, datasets
and Python versions; each directory's meta/info.json and episodes table (less its statistics), which the test
compares with a re-export, as it does the per-frame columns of the data files with what lerobot yielded, so that a
fixture older than a change to the export fails instead of passing on stale reads; and the SHA-256 of the mp4 file
(where a re-export gives the same bytes, the test holds our `import_lerobot` to lerobot's decoded pixels exactly).

The test, common/tests/test_lerobot_reference.py, rebuilds the dataset with `build_dataset` and compares.
The fixture is written byte-reproducibly (sorted zip members, fixed timestamps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "lerobot_read_export.npz"
FPS = 10
CAMERA = "observation.images.corner"
SIDE = 24  # camera frames are SIDE x SIDE x 3
LENGTHS = (7, 12, 5)
TASKS = (("pick-place", "pick up the red block"), ("drawer-open", "open the top drawer"))  # (task, instruction)
FEATURES = {CAMERA: ((SIDE, SIDE, 3), "uint8"), "observation.state": ((4,), "float32"), "action": ((4,), "float32")}
EXPORTS = {"image": False, "video": True}  # export directory -> export_lerobot's `video`
READS = {"image": ("image", None), "video_torchcodec": ("video", "torchcodec"), "video_pyav": ("video", "pyav")}
VIDEO_FILE = f"videos/{CAMERA}/chunk-000/file-000.mp4"  # the one video file of DIR/video
PER_FRAME = ("episode_index", "frame_index", "index", "task_index", "timestamp")


def camera_frame(episode: int, t: int) -> np.ndarray:
    """A red/green gradient, a blue level per episode and an 8x8 yellow square that moves with t.

    The square sits on even rows and columns, so its edges fall on yuv420p's 2x2 chroma blocks: a square on odd
    ones smears its colour into the neighbouring pixels (errors up to 186 where aligned ones stay under 60).
    """
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    image = np.stack([40 + 6 * x, 40 + 6 * y, np.full_like(x, 60 + 50 * episode)], -1)
    top, left = 2 * ((3 * t + 1) % 9), 2 * ((5 * t + 3 * episode) % 9)
    image[top:top + 8, left:left + 8] = (230, 220, 30)
    return image.astype(np.uint8)


def episode_frames(episode: int, n: int) -> dict[str, np.ndarray]:
    """The episode's features. Only + - * / on small integers, so every platform gets the same float32 bits."""
    t = np.arange(n, dtype=np.float64)
    state = np.stack([episode + t / 10, (t * t % 7) / 7 - 0.5, -t / 3, (episode * t % 5) / 4], 1)
    action = np.stack([(t - n / 2) / n, (t % 3 - 1) / 8, np.full(n, episode - 1.5), (t + 1) / (episode + 3)], 1)
    return {CAMERA: np.stack([camera_frame(episode, i) for i in range(n)]),
            "observation.state": state.astype(np.float32), "action": action.astype(np.float32)}


def build_dataset(root: Path) -> Path:
    """Our episode dataset (common/data.py) at `root`; episodes 0 and 2 share the first task."""
    from common.data import EpisodeWriter
    with EpisodeWriter(root, FEATURES, fps=FPS) as writer:
        for episode, n in enumerate(LENGTHS):
            task, instruction = TASKS[episode % 2]
            writer.add_episode(episode_frames(episode, n), task=task, instruction=instruction)
    return root


def export(out: Path) -> None:
    """Our venv: out/ours, and its LeRobot v3.0 exports out/image and out/video."""
    from common.lerobot import export_lerobot
    ours = build_dataset(out / "ours")
    for name, video in EXPORTS.items():
        export_lerobot(ours, out / name, video=video)
    print(f"wrote {', '.join(str(out / n) for n in ['ours', *EXPORTS])}")


def episodes_rows(root: Path) -> list[dict]:
    """The episodes table of the export at `root` without its per-episode statistics: where each episode's frames
    and video lie, its length and its tasks."""
    import pyarrow.parquet as pq
    table = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    return table.select([c for c in table.column_names if not c.startswith("stats/")]).to_pylist()


def read_with_lerobot(export_dir: Path, name: str, backend: str | None) -> dict[str, np.ndarray]:
    """What lerobot's LeRobotDataset yields for every frame of export_dir/name, stacked."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    ds = LeRobotDataset(repo_id=f"local/{name}", root=export_dir / name, video_backend=backend)
    items = [ds[i] for i in range(len(ds))]
    images = np.stack([item[CAMERA].numpy() for item in items]) * 255  # (N, C, H, W) float32 in [0, 255]
    out = {CAMERA: np.round(images).astype(np.uint8).transpose(0, 2, 3, 1),
           "rounding_error": np.abs(images - np.round(images)).max(),
           "observation.state": np.stack([item["observation.state"].numpy() for item in items]),
           "action": np.stack([item["action"].numpy() for item in items]),
           "task": np.array([item["task"] for item in items]),
           "item_keys": np.array(sorted(items[0])),
           "total_episodes": np.array(ds.meta.total_episodes), "total_frames": np.array(ds.meta.total_frames),
           "fps": np.array(ds.meta.fps), "camera_keys": np.array(ds.meta.camera_keys),
           "video_keys": np.array(ds.meta.video_keys, dtype=str),
           "video_backend": np.array(ds._video_backend)}  # private in lerobot
    out.update({key: np.stack([item[key].numpy() for item in items]) for key in PER_FRAME})
    return out


def read(export_dir: Path, fixture: Path) -> None:
    """lerobot's venv: every read of READS, the versions, the info.json files, the episodes tables and the mp4's
    SHA-256, into `fixture`."""
    import av
    import datasets
    import lerobot
    import torch
    import torchcodec
    arrays = {"lerobot_version": lerobot.__version__, "torch_version": torch.__version__,
              "torchcodec_version": torchcodec.__version__, "av_version": av.__version__,
              "datasets_version": datasets.__version__, "python_version": platform.python_version()}
    for name in EXPORTS:
        arrays[f"{name}/info_json"] = (export_dir / name / "meta/info.json").read_text()
        arrays[f"{name}/episodes_json"] = json.dumps(episodes_rows(export_dir / name))
    arrays["video/mp4_sha256"] = hashlib.sha256((export_dir / "video" / VIDEO_FILE).read_bytes()).hexdigest()
    for read_name, (name, backend) in READS.items():
        got = read_with_lerobot(export_dir, name, backend)
        arrays.update({f"{read_name}/{key}": value for key, value in got.items()})
    save_npz(fixture, arrays)
    print(f"wrote {fixture} ({fixture.stat().st_size / 1024:.1f} KiB, {len(arrays)} arrays), "
          f"lerobot {lerobot.__version__}")


def save_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed, members in sorted order, written whole or not at all. numpy stamps every member with a
    fixed date (1980-01-01), so equal arrays give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **{key: np.asarray(arrays[key]) for key in sorted(arrays)})
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    step = parser.add_mutually_exclusive_group(required=True)
    step.add_argument("--export", type=Path, metavar="DIR", help="our venv: build and export into DIR (new)")
    step.add_argument("--read", type=Path, metavar="DIR", help="lerobot's venv: read DIR/image and DIR/video")
    parser.add_argument("--out", type=Path, default=FIXTURE, help="the fixture --read writes")
    args = parser.parse_args()
    if args.export:
        export(args.export)
        return
    with tempfile.TemporaryDirectory() as cache:
        # nothing from a hub, and a fresh `datasets` cache so that a re-export at the same path is read anew
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=cache)
        read(args.read, args.out)


if __name__ == "__main__":
    main()
