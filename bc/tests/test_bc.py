import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from common.config import from_dict
from common.data import ChunkDataset
from common.envs.metaworld import collect_demos, demo_spec
from common.tests import dataset_checks, demo_cache, processes, resume
from common.train import last_checkpoint, read_config, read_metrics, seed_everything

from bc import eval as bc_eval
from bc import model as bc_model
from bc.config import PRESETS, BCConfig
from bc import train as bc_train
from bc.train import build_model, instruction_tokenizer, train

BC_DIR = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One small demo set for the whole module, in a private cache."""
    with demo_cache.private_cache(tmp_path_factory.mktemp("cache"), demo_spec(PRESETS["smoke"])) as path:
        yield path


def smoke(tmp_path, **overrides) -> BCConfig:
    return dataclasses.replace(PRESETS["smoke"], run_dir=str(tmp_path / "run"), **overrides)


def _model_and_data(cfg):
    demos = collect_demos(demo_spec(cfg))
    model = build_model(cfg, demos.stats, instruction_tokenizer(cfg, demos), 4, 4)
    return model, ChunkDataset(demos, cfg.horizon, ["observation.images.corner", cfg.state_key])


def test_loss_decreases_on_a_fixed_batch(cache, tmp_path):
    seed_everything(0)
    model, data = _model_and_data(smoke(tmp_path, shift_augment=0))
    batch = torch.utils.data.default_collate([data[i] for i in range(0, len(data), len(data) // 16)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        loss = model.loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], [round(x, 3) for x in losses[::5]]


def test_padded_steps_do_not_count(cache, tmp_path):
    cfg = smoke(tmp_path)
    model, data = _model_and_data(cfg)
    last = data.dataset.episodes[0]["length"] - 1
    batch = torch.utils.data.default_collate([data[last]])  # one real step, H-1 padded
    assert batch["action_is_pad"].sum() == cfg.horizon - 1
    predicted = model(batch)
    corrupted = dict(batch, action=batch["action"].clone())
    corrupted["action"][:, 1:] += 100.0  # change only the padded targets
    assert torch.equal(model.loss(predicted, batch), model.loss(predicted, corrupted))


def test_train_evaluate_and_reload(cache, tmp_path):
    cfg = smoke(tmp_path)
    results = train(cfg)
    run = Path(cfg.run_dir)
    assert set(results) == set(cfg.tasks) and all(r["episodes"] == 1 for r in results.values())
    assert (run / "eval.md").exists() and len(read_metrics(run)) == cfg.steps // cfg.log_every
    checkpoint = last_checkpoint(run)
    assert checkpoint.name == f"{cfg.steps:08d}"
    assert from_dict(BCConfig, read_config(checkpoint)["config"]) == cfg  # the checkpoint rebuilds the config
    again = bc_eval.main(bc_eval.EvalArgs(checkpoint=checkpoint, workers=1, video_dir=str(tmp_path / "videos")))
    assert again == json.loads((run / "eval.json").read_text())  # same weights, same placements, same result
    assert len(list((tmp_path / "videos").iterdir())) == len(cfg.tasks)
    probed = bc_eval.main(bc_eval.EvalArgs(checkpoint=run, workers=1, blank_images=True, instruction="other_task",
                                           out_dir=tmp_path / "probe"))  # a run directory: its last checkpoint
    assert set(probed) == set(cfg.tasks) and (tmp_path / "probe" / "eval.json").exists()


def test_resume_is_exact(cache, tmp_path, monkeypatch):
    """A run killed right after its step-3 checkpoint and resumed ends with the same losses and bit-identical
    weights as an uninterrupted 6-step run."""
    resume.assert_resume_is_exact(bc_train, smoke(tmp_path / "a", eval_episodes=0, log_every=1),
                                  smoke(tmp_path / "b", eval_episodes=0, log_every=1), monkeypatch)


def test_torchrun_two_processes_match_one(cache, tmp_path):
    """DDP over 2 gloo processes takes the same steps as one process with the same global batch.

    Augmentation is off: each rank draws its own random shifts, so with it on the two runs see different pixels."""
    args = ["--preset", "smoke", "--steps", "3", "--log_every", "1", "--eval_episodes", "0", "--shift_augment", "0",
            "--threads", "1"]
    processes.run([sys.executable, "train.py", *args, "--run_dir", str(tmp_path / "one")], BC_DIR, tmp_path / "one.log")
    processes.run([*processes.torchrun(2), "train.py", *args, "--run_dir", str(tmp_path / "two")], BC_DIR,
                  tmp_path / "two.log")
    one, two = ([m["loss"] for m in read_metrics(tmp_path / d)] for d in ("one", "two"))
    assert len(one) == 3 and torch.allclose(torch.tensor(one), torch.tensor(two), atol=1e-5)


def test_trains_from_a_lerobot_dataset(cache, tmp_path):
    """`--dataset` (common/tests/dataset_checks.py), and the instruction vocabulary comes from the dataset."""
    cfg = smoke(tmp_path, vocab_size=300)  # > 256 byte tokens: the BPE learns merges from its corpus
    written = dataset_checks.check_trains_from_a_lerobot_dataset(cfg, train, bc_eval.load_policy,
                                                                 bc_model.ClosedLoopPolicy, tmp_path)
    demos = collect_demos(demo_spec(cfg))
    from_dataset = bc_train.tokenizer_to_json(bc_train.train_bpe_tokenizer(
        [e["instruction"] for e in demos.episodes], vocab_size=cfg.vocab_size))
    assert written["tokenizer"] == from_dataset != instruction_tokenizer(cfg, demos)  # not Meta-World's templates
