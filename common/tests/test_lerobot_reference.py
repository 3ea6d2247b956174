"""A real LeRobot reads our LeRobot v3.0 export: lerobot 0.6.1's `LeRobotDataset` (lerobot/datasets/
lerobot_dataset.py, frames from `DatasetReader.get_item` in dataset_reader.py) yields our frames, actions, indices,
timestamps and tasks for a dataset written by `export_lerobot` (common/lerobot.py), with PNG images and with AV1
video decoded by both of its backends (torchcodec and PyAV, `decode_video_frames` in video_utils.py).

lerobot needs its own venv, so its reads are in fixtures/lerobot_read_export.npz, written by
common/tools/lerobot_reference.py (the commands are in its docstring); these tests rebuild the same dataset with
that tool's `build_dataset` and need no lerobot.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.data import EpisodeDataset
from common.lerobot import import_lerobot
from common.tools.lerobot_reference import (CAMERA, EXPORTS, FIXTURE, FPS, LENGTHS, PER_FRAME, READS, TASKS,
                                            VIDEO_FILE, episodes_rows, export)

F = dict(np.load(FIXTURE))


def reads_of(name: str) -> list[str]:
    """The fixture's reads of the export directory `name`."""
    return [read for read, (export_name, _) in READS.items() if export_name == name]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """Our dataset (ours/) and its two exports (image/, video/), written now as the fixture's were."""
    root = tmp_path_factory.mktemp("lerobot_reference")
    export(root)
    return root


@pytest.fixture(scope="module")
def ours(exported) -> EpisodeDataset:
    return EpisodeDataset(exported / "ours")


def assert_codec_close(got: np.ndarray, expected: np.ndarray) -> None:
    """AV1 (SVT-AV1, crf 30, yuv420p) on 24x24 frames is lossy. Measured against our frames, lerobot 0.6.1 reading
    the fixture's mp4 with either backend: mean |error| 4.47 over all pixels, 6.78 in the worst frame, max 58.
    A frame from the wrong time would show: lerobot's frame i + 1 differs from our frame i by >= 16.4 on average.
    """
    error = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    assert error.mean() < 5 and error.mean(axis=(1, 2, 3)).max() < 8 and error.max() <= 64
    assert np.abs(got[1:].astype(np.float64) - expected[:-1]).mean(axis=(1, 2, 3)).min() > 12


def test_fixture_is_lerobot_0_6_1_reading_every_frame():
    assert str(F["lerobot_version"]) == "0.6.1"
    for read, (name, backend) in READS.items():
        assert (F[f"{read}/total_episodes"], F[f"{read}/total_frames"], F[f"{read}/fps"]) == (3, sum(LENGTHS), FPS)
        assert F[f"{read}/camera_keys"].tolist() == [CAMERA]
        assert F[f"{read}/video_keys"].tolist() == ([CAMERA] if name == "video" else [])
        if backend is not None:
            assert str(F[f"{read}/video_backend"]) == backend
        assert F[f"{read}/item_keys"].tolist() == sorted([CAMERA, "observation.state", "action", "task", "timestamp",
                                                          "frame_index", "episode_index", "index", "task_index"])
        assert F[f"{read}/rounding_error"] == 0  # lerobot's float images are exactly uint8 / 255
        assert len(F[f"{read}/{CAMERA}"]) == sum(LENGTHS)


def test_fixture_read_the_export_we_write_today(exported):
    """What lerobot read is what export_lerobot writes now: meta/info.json (features, shapes, dtypes, paths, codec),
    the episodes table (lengths, data and video files, from/to timestamps, tasks) and the per-frame columns of the
    data file. If this fails, the export changed: regenerate the fixture."""
    for name in EXPORTS:
        root = exported / name
        assert json.loads((root / "meta/info.json").read_text()) == json.loads(str(F[f"{name}/info_json"]))
        assert episodes_rows(root) == json.loads(str(F[f"{name}/episodes_json"]))
        data = pq.read_table(root / "data/chunk-000/file-000.parquet")
        for read in reads_of(name):
            for key in PER_FRAME:
                np.testing.assert_array_equal(data.column(key).to_numpy(), F[f"{read}/{key}"], err_msg=key)


@pytest.mark.parametrize("read", list(READS))
def test_lerobot_yields_our_frames(read, ours):
    frame_index = np.concatenate([np.arange(n) for n in LENGTHS])
    episode_index = np.repeat(np.arange(len(LENGTHS)), LENGTHS)
    np.testing.assert_array_equal(F[f"{read}/episode_index"], episode_index)
    np.testing.assert_array_equal(F[f"{read}/frame_index"], frame_index)
    np.testing.assert_array_equal(F[f"{read}/index"], np.arange(sum(LENGTHS)))
    np.testing.assert_array_equal(F[f"{read}/task_index"], episode_index % 2)  # episodes 0 and 2 share a task
    assert F[f"{read}/timestamp"].dtype == np.float32
    np.testing.assert_array_equal(F[f"{read}/timestamp"], (frame_index / FPS).astype(np.float32))
    assert F[f"{read}/task"].tolist() == [TASKS[e % 2][1] for e in episode_index]  # the instruction
    for key in ("observation.state", "action"):
        assert F[f"{read}/{key}"].dtype == np.float32
        np.testing.assert_array_equal(F[f"{read}/{key}"], ours.arrays[key])
    if READS[read][0] == "image":
        np.testing.assert_array_equal(F[f"{read}/{CAMERA}"], ours.arrays[CAMERA])  # PNG: lossless
    else:
        assert_codec_close(F[f"{read}/{CAMERA}"], ours.arrays[CAMERA])


def test_import_lerobot_reads_what_lerobot_reads(exported, ours, tmp_path):
    """Our importer on the same exports yields what lerobot yields; on the very mp4 lerobot decoded (a re-export
    with the SVT-AV1 build that wrote the fixture gives the same bytes) it decodes the same pixels."""
    for name in EXPORTS:
        back = import_lerobot(exported / name, tmp_path / name)
        instructions = [ep["instruction"] for ep in back.episodes for _ in range(ep["length"])]
        for read in reads_of(name):
            for key in ("observation.state", "action"):
                np.testing.assert_array_equal(back.arrays[key], F[f"{read}/{key}"])
            assert instructions == F[f"{read}/task"].tolist()
        if name == "image":
            np.testing.assert_array_equal(back.arrays[CAMERA], F[f"image/{CAMERA}"])
            continue
        if hashlib.sha256((exported / name / VIDEO_FILE).read_bytes()).hexdigest() == str(F["video/mp4_sha256"]):
            for read in reads_of(name):
                np.testing.assert_array_equal(back.arrays[CAMERA], F[f"{read}/{CAMERA}"])
        else:  # another encoder build wrote other bytes: only the codec's tolerance is left to check
            assert_codec_close(back.arrays[CAMERA], ours.arrays[CAMERA])
