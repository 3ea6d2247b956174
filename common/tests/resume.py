"""The exact-resume check every method's tests run: a training killed right after a checkpoint and resumed must end
with the same per-step losses and bit-identical weights as an uninterrupted run."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from common.train import last_checkpoint, read_metrics


def assert_resume_is_exact(train_module, straight, interrupted, monkeypatch, steps: str | int = "steps",
                           metric: str = "loss", saver=None, when_interrupted=None) -> None:
    """`train_module`: a method's train.py (its `train` and the `save_checkpoint` it calls, or `saver`'s); `straight`
    and `interrupted`: the same config with two run directories, logging every step (`steps` counts them: the
    config's field of that name, or the number; `metric` is a logged loss, and lines without it -- a DAgger round's
    statistics -- are not steps). The interrupted run dies right after its first checkpoint (`save_every` steps),
    `when_interrupted()` checks what it left, then it resumes."""
    train_module.train(straight)
    saver = saver or train_module
    save = saver.save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(saver, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(interrupted)
    monkeypatch.undo()
    assert last_checkpoint(interrupted.run_dir).name == f"{interrupted.save_every:08d}"
    if when_interrupted is not None:
        when_interrupted()
    train_module.train(dataclasses.replace(interrupted, resume=True))
    a, b = ([m for m in read_metrics(run.run_dir) if metric in m] for run in (straight, interrupted))
    total = steps if isinstance(steps, int) else getattr(straight, steps)
    assert [m["step"] for m in b] == list(range(1, total + 1))
    assert [m[metric] for m in a] == [m[metric] for m in b]
    wa = load_file(last_checkpoint(straight.run_dir) / "model.safetensors")
    wb = load_file(last_checkpoint(interrupted.run_dir) / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
