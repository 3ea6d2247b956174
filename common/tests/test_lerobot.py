"""LeRobot v3.0 import/export: datasets written here in the official layout import with the right values, and our
datasets survive an export -> import round trip."""

import io
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.data import EpisodeDataset, EpisodeWriter
from common.lerobot import LeRobotFormatError, export_lerobot, import_lerobot

FPS = 10
H, W = 32, 48
CAM = "observation.images.top"
LENGTHS = (5, 7)
TASKS = ("pick up the red cube", "open the top drawer")  # episode 0, episode 1


def _state(ep: int, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32)
    return np.stack([ep * 100 + t, -0.5 * t], 1).astype(np.float32)


def _action(ep: int, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32)
    return np.stack([t / 7, np.full(n, ep, np.float32), np.sin(t)], 1).astype(np.float32)


def _image(k: int) -> np.ndarray:
    """A smooth picture whose brightness rises with k, so frames are told apart and ordered."""
    y, x = np.mgrid[0:H, 0:W]
    base = 30 + 12 * k
    return np.stack([base + x, base + y, np.full_like(x, base + 20)], -1).clip(0, 255).astype(np.uint8)


def _fixed_list(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_official_v3(root: Path, camera_dtype: str) -> None:
    """Two episodes in two data files, in the layout lerobot's LeRobotDataset writes (meta/, data/, videos/)."""
    (root / "meta").mkdir(parents=True)
    cam_feature = {"dtype": camera_dtype, "shape": [H, W, 3], "names": ["height", "width", "channels"]}
    if camera_dtype == "video":
        cam_feature["info"] = {"video.height": H, "video.width": W, "video.codec": "h264",
                               "video.pix_fmt": "yuv420p", "video.fps": FPS, "video.channels": 3,
                               "is_depth_map": False, "has_audio": False}
    features = {
        CAM: cam_feature,
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": [3], "names": ["a", "b", "c"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {"codebase_version": "v3.0", "robot_type": "so100", "total_episodes": 2, "total_frames": sum(LENGTHS),
            "total_tasks": 2, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "fps": FPS, "splits": {"train": "0:2"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
            if camera_dtype == "video" else None,
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (root / "meta/stats.json").write_text("{}")
    # task_index order differs from episode order: episode 0's task is task 1
    task_index_of_episode = (1, 0)
    pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64()), "task": [TASKS[1], TASKS[0]]}),
                   root / "meta/tasks.parquet")

    episode_rows, start = [], 0
    for ep, n in enumerate(LENGTHS):
        columns = {
            "observation.state": _fixed_list(_state(ep, n)),
            "action": _fixed_list(_action(ep, n)),
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / FPS),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, ep, np.int64)),
            "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, task_index_of_episode[ep], np.int64)),
        }
        if camera_dtype == "image":
            cells = [{"bytes": _png(_image(start + i)), "path": f"frame-{i:06d}.png"} for i in range(n)]
            columns = {CAM: pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])), **columns}
        path = root / f"data/chunk-000/file-{ep:03d}.parquet"  # one file per episode: file_index 0 and 1
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(columns)
        pq.write_table(table.take(np.arange(n)[::-1].copy()), path)  # rows stored out of order on purpose
        row = {"episode_index": ep, "tasks": [TASKS[ep]], "length": n, "data/chunk_index": 0, "data/file_index": ep,
               "dataset_from_index": start, "dataset_to_index": start + n,
               "stats/action/mean": _action(ep, n).mean(0).tolist(),
               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        if camera_dtype == "video":  # both episodes back to back in one mp4
            row.update({f"videos/{CAM}/chunk_index": 0, f"videos/{CAM}/file_index": 0,
                        f"videos/{CAM}/from_timestamp": start / FPS, f"videos/{CAM}/to_timestamp": (start + n) / FPS})
        episode_rows.append(row)
        start += n
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), root / "meta/episodes/chunk-000/file-000.parquet")
    if camera_dtype == "video":
        _write_mp4(root / f"videos/{CAM}/chunk-000/file-000.mp4", [_image(k) for k in range(sum(LENGTHS))])


def _write_mp4(path: Path, images: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"g": "2", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for k, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = k
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _check_numbers_and_tasks(ds, episodes=(0, 1)):
    assert [e["length"] for e in ds.episodes] == [LENGTHS[e] for e in episodes]
    for i, ep in enumerate(episodes):
        frames = ds.episode(i)
        np.testing.assert_array_equal(frames["observation.state"], _state(ep, LENGTHS[ep]))
        np.testing.assert_array_equal(frames["action"], _action(ep, LENGTHS[ep]))
        assert ds.episodes[i]["task"] == ds.episodes[i]["instruction"] == TASKS[ep]
        assert ds.episodes[i]["lerobot_episode_index"] == ep
    assert set(ds.features) == {CAM, "observation.state", "action"}
    assert ds.features[CAM] == {"shape": [H, W, 3], "dtype": "uint8"}


def test_import_image_dataset(tmp_path):
    _write_official_v3(tmp_path / "lr", "image")
    ds = import_lerobot(tmp_path / "lr", tmp_path / "ours")
    _check_numbers_and_tasks(ds)
    starts = np.cumsum((0,) + LENGTHS)
    for ep in (0, 1):
        expected = np.stack([_image(k) for k in range(starts[ep], starts[ep + 1])])
        np.testing.assert_array_equal(ds.episode(ep)[CAM], expected)  # PNG is lossless
    assert ds.meta["info"]["robot_type"] == "so100"
    assert ds.meta["info"]["names"]["observation.state"] == ["x", "y"]


def test_import_video_dataset_in_any_episode_order(tmp_path):
    _write_official_v3(tmp_path / "lr", "video")
    starts = np.cumsum((0,) + LENGTHS)
    for name, order in (("forward", (0, 1)), ("backward", (1, 0))):  # backward makes the reader seek back
        ds = import_lerobot(tmp_path / "lr", tmp_path / name, episodes=list(order))
        _check_numbers_and_tasks(ds, order)
        for i, ep in enumerate(order):
            got = ds.episode(i)[CAM].astype(np.float64)
            expected = np.stack([_image(k) for k in range(starts[ep], starts[ep + 1])]).astype(np.float64)
            assert got.shape == expected.shape
            assert np.abs(got - expected).mean(axis=(1, 2, 3)).max() < 3  # lossy coding, but the right frame
            brightness = got.mean(axis=(1, 2, 3))
            np.testing.assert_allclose(np.diff(brightness), 12, atol=1.5)  # frames in order, none skipped


OUR_H, OUR_W = 48, 64


def _waves(k: int) -> np.ndarray:
    """A smooth picture whose phase turns by the golden angle per frame: neighbours differ far beyond coding noise."""
    y, x = np.mgrid[0:OUR_H, 0:OUR_W] / np.array([[[OUR_H]], [[OUR_W]]])
    amplitude = np.array([80, 60, 40]).reshape(3, 1, 1)
    wave = 128 + amplitude * np.sin(2 * np.pi * (x + 0.5 * y) + 2 * np.pi * 0.381966 * k)
    return wave.transpose(1, 2, 0).astype(np.uint8)


OUR_LENGTHS = (30, 20, 25)  # long enough for the AV1 encoder (~25 frames of delay) to emit bytes mid-file


def _our_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    features = {CAM: ((OUR_H, OUR_W, 3), "uint8"), "observation.state": ((4,), "float32"), "action": ((2,), "float32"),
                "reward": ((), "float32")}
    with EpisodeWriter(root, features, fps=FPS) as writer:
        for ep, n in enumerate(OUR_LENGTHS):
            start = sum(OUR_LENGTHS[:ep])
            images = np.stack([_waves(start + i) for i in range(n)])
            writer.add_episode({CAM: images, "observation.state": rng.normal(size=(n, 4)).astype(np.float32),
                                "action": rng.normal(size=(n, 2)).astype(np.float32),
                                "reward": rng.normal(size=n).astype(np.float32)},
                               task=f"task-{ep % 2}", instruction=["reach the goal", "push the puck"][ep % 2])
    return root


@pytest.mark.parametrize("video", [False, True])
def test_export_then_import_round_trips(tmp_path, video):
    from common.data import EpisodeDataset
    ours = EpisodeDataset(_our_dataset(tmp_path / "ours"))
    # tiny file limits: every episode opens a new data file (and video file), exercising chunk/file indexing
    out = export_lerobot(ours, tmp_path / "lr", video=video, data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6)

    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "sawyer"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 75, 2)
    assert info["splits"] == {"train": "0:3"} and info["chunks_size"] == 1000
    assert info["features"][CAM]["dtype"] == ("video" if video else "image")
    assert info["features"][CAM]["names"] == ["height", "width", "channels"]
    assert info["features"]["reward"]["shape"] == [1]
    assert {"timestamp", "frame_index", "episode_index", "index", "task_index"} <= set(info["features"])
    assert [p.name for p in sorted((out / "data/chunk-000").glob("*.parquet"))] == \
        ["file-000.parquet", "file-001.parquet", "file-002.parquet"]
    data = pq.read_table(out / "data/chunk-000/file-001.parquet")
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 4)
    assert data.schema.field("timestamp").type == pa.float32()
    assert data.column("index").to_pylist() == list(range(30, 50))
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_from_index"] for e in episodes] == [0, 30, 50]
    assert [e["data/file_index"] for e in episodes] == [0, 1, 2]
    assert episodes[1]["tasks"] == ["push the puck"] and "stats/action/mean" in episodes[0]
    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["reach the goal", "push the puck"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((out / "meta/stats.json").read_text())
    np.testing.assert_allclose(stats["action"]["mean"], ours.arrays["action"].astype(np.float64).mean(0), rtol=1e-9)
    pixels = ours.arrays[CAM].reshape(-1, 3) / 255.0  # every frame is sampled in episodes this short
    np.testing.assert_allclose(np.array(stats[CAM]["mean"]).reshape(3), pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(np.array(stats[CAM]["std"]).reshape(3), pixels.std(0), rtol=1e-9)
    assert np.array(stats[CAM]["q99"]).shape == (3, 1, 1) and stats[CAM]["count"] == [75]
    if video:
        assert info["features"][CAM]["info"]["video.height"] == OUR_H
        # the encoder holds frames back, so a file closes once its muxed bytes pass the limit, maybe an episode late
        video_files = [e[f"videos/{CAM}/file_index"] for e in episodes]
        assert video_files == sorted(video_files) and video_files[-1] >= 1
        assert (out / f"videos/{CAM}/chunk-000/file-{video_files[-1]:03d}.mp4").exists()
        assert [e[f"videos/{CAM}/from_timestamp"] for e in episodes if e[f"videos/{CAM}/file_index"] == 0][0] == 0

    back = import_lerobot(out, tmp_path / "back")
    assert [e["length"] for e in back.episodes] == list(OUR_LENGTHS)
    assert [e["instruction"] for e in back.episodes] == ["reach the goal", "push the puck", "reach the goal"]
    for key in ("observation.state", "action"):
        np.testing.assert_array_equal(back.arrays[key], ours.arrays[key])
    np.testing.assert_array_equal(back.arrays["reward"][:, 0], ours.arrays["reward"])
    if video:
        got, expected = back.arrays[CAM].astype(np.float64), ours.arrays[CAM].astype(np.float64)
        assert np.abs(got - expected).mean(axis=(1, 2, 3)).max() < 3
        assert np.abs(got[1:] - expected[:-1]).mean(axis=(1, 2, 3)).min() > 10  # a frame shift would show
    else:
        np.testing.assert_array_equal(back.arrays[CAM], ours.arrays[CAM])


def test_v21_dataset_is_refused_with_the_conversion_hint(tmp_path):
    (tmp_path / "old/meta").mkdir(parents=True)
    (tmp_path / "old/meta/info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 10, "features": {}}))
    with pytest.raises(LeRobotFormatError, match="convert_dataset_v21_to_v30"):
        import_lerobot(tmp_path / "old", tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_missing_file_is_named(tmp_path):
    _write_official_v3(tmp_path / "lr", "image")
    (tmp_path / "lr/data/chunk-000/file-001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="file-001.parquet"):
        import_lerobot(tmp_path / "lr", tmp_path / "ours")
    assert not (tmp_path / "ours").exists() and not (tmp_path / "ours.partial").exists()
    (tmp_path / "lr/meta/tasks.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="tasks.parquet"):
        import_lerobot(tmp_path / "lr", tmp_path / "ours")


# ----------------------------------------------------------------------------------------- training from --dataset
def test_embedded_demos_through_lerobot_give_the_native_batches(tmp_path):
    """What `train.py --dataset` reads: the embedded Meta-World demos exported to LeRobot v3.0 (PNG, lossless) and
    opened with `open_dataset` give exactly the native demos' training batches (every field but `task_index`, whose
    numbering follows LeRobot's task strings) and the same normalisation statistics."""
    import torch

    from common.data import ChunkDataset
    from common.envs.metaworld import DemoSpec, collect_demos
    from common.lerobot import MissingKeyError, open_dataset
    from common.train import resumable_loader

    spec = DemoSpec(tasks=("reach-v3", "drawer-close-v3"), episodes_per_task=2, image_size=32,
                    cameras=("corner", "gripperPOV"))
    native = collect_demos(spec, workers=1, cache_dir=tmp_path / "cache", progress=False)
    export_lerobot(native, tmp_path / "lerobot", video=False)
    keys = ["observation.images.corner", "observation.images.gripperPOV", "observation.state"]
    imported = open_dataset(tmp_path / "lerobot", [*keys, "action"], cache_dir=tmp_path / "cache")
    assert [e["instruction"] for e in imported.episodes] == [e["instruction"] for e in native.episodes]
    assert imported.stats == native.stats
    loaders = [resumable_loader(ChunkDataset(d, 5, keys), 8, seed=3) for d in (native, imported)]
    for _ in range(4):
        ours, theirs = next(loaders[0]), next(loaders[1])
        assert ours.keys() == theirs.keys()
        for key in ours.keys() - {"task_index"}:
            if isinstance(ours[key], torch.Tensor):
                assert torch.equal(ours[key], theirs[key]), key
            else:
                assert ours[key] == theirs[key], key
    # imported once: a second open reads the cache; our own format opens as it is
    cached = sorted((tmp_path / "cache").glob("lerobot-*"))
    assert len(cached) == 1
    assert open_dataset(tmp_path / "lerobot", keys, cache_dir=tmp_path / "cache").root == cached[0]
    assert open_dataset(native.root, keys).root == native.root
    with pytest.raises(MissingKeyError, match="no feature observation.images.wrist; it has action, "):
        open_dataset(tmp_path / "lerobot", ["observation.images.wrist"], cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="neither an episode dataset"):
        open_dataset(tmp_path, keys)


def test_training_demos_read_the_action_key_a_dataset_uses(tmp_path):
    """`--action_key`: a dataset whose actions are called otherwise is read with them as `action` (the same memory
    map and statistics); without the flag the error names the missing `action`."""
    from types import SimpleNamespace

    from common.envs.metaworld import training_demos
    from common.lerobot import MissingKeyError
    rng = np.random.default_rng(0)
    with EpisodeWriter(tmp_path / "ours", {"observation.state": ((4,), "float32"), "actions": ((2,), "float32")},
                       fps=10) as writer:
        for n in (5, 7):
            writer.add_episode({"observation.state": rng.normal(size=(n, 4)).astype(np.float32),
                                "actions": rng.normal(size=(n, 2)).astype(np.float32)}, task="t", instruction="go")
    cfg = SimpleNamespace(dataset=str(tmp_path / "ours"), action_key="actions")
    demos = training_demos(cfg, ["observation.state"])
    assert "actions" not in demos.features and demos.features["action"]["shape"] == [2]
    assert np.array_equal(demos.arrays["action"], EpisodeDataset(tmp_path / "ours").arrays["actions"])
    assert demos.stats["action"] == EpisodeDataset(tmp_path / "ours").stats["actions"]
    with pytest.raises(MissingKeyError, match="no feature action; it has actions, observation.state"):
        training_demos(SimpleNamespace(dataset=str(tmp_path / "ours"), action_key=None), ["observation.state"])
