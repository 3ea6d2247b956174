import numpy as np
import pytest
import torch

from common.data import ChunkDataset, EpisodeDataset, EpisodeWriter, Normalizer

FEATURES = {"observation.images.cam": ((4, 4, 3), "uint8"), "observation.state": ((2,), "float32"),
            "action": ((3,), "float32")}


def _episode(length, offset):
    t = np.arange(length, dtype=np.float32)
    return {"observation.images.cam": np.full((length, 4, 4, 3), offset, np.uint8) + t[:, None, None, None].astype(np.uint8),
            "observation.state": np.stack([t, -t], 1) + offset,
            "action": np.stack([t, t * 2, t * 3], 1) + offset}


@pytest.fixture
def dataset(tmp_path):
    with EpisodeWriter(tmp_path / "ds", FEATURES, fps=10, info={"note": "test"}) as w:
        w.add_episode(_episode(5, 0), task="reach", instruction="reach the goal")
        w.add_episode(_episode(3, 100), task="push", instruction="push the puck")
        w.add_episode(_episode(4, 200), task="reach", instruction="go to the goal")
    return EpisodeDataset(tmp_path / "ds")


def test_round_trip(dataset):
    assert len(dataset) == 12 and [e["length"] for e in dataset.episodes] == [5, 3, 4]
    assert dataset.tasks == ["reach", "push"] and [e["task_index"] for e in dataset.episodes] == [0, 1, 0]
    assert dataset.meta["info"] == {"note": "test"}
    for i, (length, offset) in enumerate([(5, 0), (3, 100), (4, 200)]):
        for key, value in _episode(length, offset).items():
            np.testing.assert_array_equal(dataset.episode(i)[key], value)
            assert dataset.episode(i)[key].dtype == value.dtype
    assert isinstance(dataset.arrays["action"], np.memmap)


def test_stats_are_stored_and_exact(dataset):
    actions = np.concatenate([_episode(5, 0)["action"], _episode(3, 100)["action"], _episode(4, 200)["action"]])
    s = dataset.stats["action"]
    np.testing.assert_allclose(s["mean"], actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s["std"], actions.std(0), rtol=1e-6)
    np.testing.assert_allclose(s["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(s["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-6)
    assert "observation.images.cam" not in dataset.stats  # images carry no statistics


def test_chunks_pad_past_episode_end(dataset):
    chunks = ChunkDataset(dataset, horizon=4, observation_keys=["observation.state", "observation.images.cam"])
    assert len(chunks) == 12
    item = chunks[3]  # episode 0, frame 3 of 5: two real steps, then two copies of the last action
    assert item["episode_index"] == 0 and item["frame_index"] == 3 and item["instruction"] == "reach the goal"
    assert item["action_is_pad"].tolist() == [False, False, True, True]
    np.testing.assert_array_equal(item["action"][:, 0], [3, 4, 4, 4])
    np.testing.assert_array_equal(item["observation.state"], [3, -3])
    assert item["observation.images.cam"].dtype == torch.uint8 and item["observation.images.cam"].shape == (4, 4, 3)
    first_of_second = chunks[5]  # never reads into the next episode
    assert first_of_second["episode_index"] == 1 and first_of_second["action_is_pad"].tolist() == [False] * 3 + [True]
    np.testing.assert_array_equal(first_of_second["action"][:, 0], [100, 101, 102, 102])
    only_last = ChunkDataset(dataset, 2, ["observation.state"], episodes=[2])
    assert len(only_last) == 4 and only_last[0]["task_index"] == 0 and only_last[0]["action"][0, 0] == 200


def test_normalizer_modes_invert(dataset):
    norm = Normalizer(dataset.stats, {"action": "quantile", "observation.state": "mean_std"})
    a = torch.tensor(np.asarray(dataset.arrays["action"]))
    z = norm.normalize("action", a)
    q01, q99 = (torch.tensor(dataset.stats["action"][k], dtype=torch.float32) for k in ("q01", "q99"))
    assert torch.allclose(norm.normalize("action", q01), -torch.ones(3), atol=1e-5)
    assert torch.allclose(norm.normalize("action", q99), torch.ones(3), atol=1e-5)
    assert torch.allclose(norm.unnormalize("action", z), a, atol=1e-4)
    s = torch.tensor(np.asarray(dataset.arrays["observation.state"]))
    zs = norm.normalize("observation.state", s)
    assert torch.allclose(zs.mean(0), torch.zeros(2), atol=1e-5) and torch.allclose(zs.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.allclose(norm.unnormalize("observation.state", zs), s, atol=1e-4)
    assert set(norm.state_dict()) == {f"{k}__{n}" for k in ("action", "observation_state") for n in ("mean", "std", "q01", "q99")}


def test_bad_inputs_raise_clear_errors(tmp_path, dataset):
    with pytest.raises(FileExistsError):
        EpisodeWriter(dataset.root, FEATURES, fps=10)
    w = EpisodeWriter(tmp_path / "bad", FEATURES, fps=10)
    with pytest.raises(KeyError, match="differ"):
        w.add_episode({"action": np.zeros((2, 3))}, task="x")
    bad = _episode(3, 0)
    bad["action"] = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="'action'"):
        w.add_episode(bad, task="x")
    with pytest.raises(KeyError, match="observation.depth"):
        ChunkDataset(dataset, 2, ["observation.depth"])
    with pytest.raises(ValueError, match="mode"):
        Normalizer(dataset.stats, {"action": "minmax"})
    with pytest.raises(FileNotFoundError):
        EpisodeDataset(tmp_path / "nothing")


def test_interrupted_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with EpisodeWriter(tmp_path / "ds", FEATURES, fps=10) as w:
            w.add_episode(_episode(3, 0), task="a")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
