import json
import sys
from pathlib import Path

import torch

import pytest

from common.tests import processes
from common.train import (Logger, ResumableSampler, last_checkpoint, load_pretrained, plot_metrics, read_config,
                          read_metrics, resumable_loader, resume_last, save_checkpoint, save_pretrained, seed_everything)


def _model():
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 2))


def _train(run_dir, total, stop_at=None, resume=False):
    """A tiny training loop with dropout, Adam and a cosine schedule: everything that must survive a resume."""
    seed_everything(0)
    data = torch.utils.data.TensorDataset(torch.randn(50, 4), torch.randn(50, 2))
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    step = resume_last(run_dir, model, opt, sched) if resume else 0
    loader = resumable_loader(data, 8, seed=1, step=step)
    losses = []
    while step < (stop_at or total):
        x, y = next(loader)
        loss = torch.nn.functional.mse_loss(model(x), y) + 1e-3 * torch.rand(())  # consumes the global RNG too
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
    save_checkpoint(run_dir, step, model, {"hidden": 16}, opt, sched)
    return losses


def test_resume_continues_the_same_loss_curve(tmp_path):
    straight = _train(tmp_path / "a", total=20)
    first = _train(tmp_path / "b", total=20, stop_at=7)
    second = _train(tmp_path / "b", total=20, resume=True)
    assert first + second == straight  # bit-exact: same batches, dropout masks, optimizer and schedule


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    model = _model()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        resume_last(tmp_path / "empty", model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    model = _model()
    save_pretrained(model, {"hidden": 16, "name": "x"}, tmp_path / "ckpt")
    other = _model()
    assert read_config(tmp_path / "ckpt") == {"hidden": 16, "name": "x"}
    load_pretrained(other, tmp_path / "ckpt")
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_checkpoints_rotate_and_point_at_last(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, model, {}, opt, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["00000020", "00000030", "last"]
    assert last_checkpoint(tmp_path).name == "00000030"
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints" / "00000030").iterdir())  # no temp files


def test_sampler_is_a_pure_function_of_position():
    full = list(_take(ResumableSampler(10, 4, seed=5), 24))
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))  # epochs are permutations
    assert full[:10] != full[10:20]  # ... and differ
    assert list(_take(ResumableSampler(10, 4, seed=5, start=12), 12)) == full[12:]
    ranks = [list(_take(ResumableSampler(10, 4, seed=5, rank=r, world_size=2), 12)) for r in (0, 1)]
    assert ranks[0][:2] + ranks[1][:2] == full[:4]  # rank r takes the r-th half of each global batch


def _take(it, n):
    it = iter(it)
    return [next(it) for _ in range(n)]


def test_logger_writes_metrics(tmp_path):
    log = Logger(tmp_path, total_steps=3)
    for step in range(3):
        log.log(step, {"loss": 1.0 / (step + 1)})
        log.advance()
    log.close()
    assert [m["loss"] for m in read_metrics(tmp_path)] == [1.0, 0.5, 1.0 / 3]
    png = plot_metrics(tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) takes the same steps as one process with the same global batch."""
    script = Path(__file__).with_name("_ddp_script.py")
    env = dict(PYTHONPATH=str(Path(__file__).parents[2]))
    processes.run([sys.executable, str(script), str(tmp_path / "one.json")], tmp_path, tmp_path / "one.log", env=env)
    processes.run([*processes.torchrun(2), str(script), str(tmp_path / "two.json")], tmp_path, tmp_path / "two.log",
                  env=env)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert len(one) == 6 and len(set(one)) == 6  # six different batches were trained on
    assert torch.allclose(torch.tensor(one), torch.tensor(two), atol=1e-6)
