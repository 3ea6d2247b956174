"""Small training utilities every method uses: seeding, checkpoints, resumable sampling, logging, torchrun setup.

Checkpoint layout of a run directory:

    <run>/checkpoints/<step>/model.safetensors   weights (safetensors; tied tensors handled by save_model)
    <run>/checkpoints/<step>/config.json         the config the model was built with
    <run>/checkpoints/<step>/train_state.pt      optimizer, scheduler, step, RNG states (torch.save; read back with
                                                 weights_only=True, so loading a checkpoint never runs code)
    <run>/checkpoints/last -> <step>             what `--resume` continues from
    <run>/metrics.jsonl                          one JSON line per logged step

Every file is written to a temporary name and renamed, so an interrupted save never corrupts the previous one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm


# ---------------------------------------------------------------------------------------------------- randomness
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state, in types that `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = dict(python=random.getstate(), torch=torch.get_rng_state(),
                 numpy=[np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class ResumableSampler(torch.utils.data.Sampler[int]):
    """An endless stream of dataset indices: a fresh permutation each epoch, seeded by (seed, epoch).

    The stream is a pure function of (seed, position), so a resumed run starts at `start` = steps done × global batch
    and sees exactly the samples the uninterrupted run would have seen — without loading the skipped ones.
    Under DDP each rank takes its contiguous slice of every global batch, so the ranks together see the same global
    batch as one process would (and the mean of the ranks' mean losses equals the one-process loss).
    """

    def __init__(self, n: int, global_batch: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {world_size}")
        self.n, self.global_batch, self.seed, self.start = n, global_batch, seed, start
        self.rank, self.world_size = rank, world_size

    def _global_stream(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.n)
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            yield from torch.randperm(self.n, generator=g)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        local = self.global_batch // self.world_size
        lo = self.rank * local
        stream = self._global_stream()
        while True:
            batch = [next(stream) for _ in range(self.global_batch)]
            yield from batch[lo:lo + local]


def resumable_loader(dataset: torch.utils.data.Dataset, global_batch: int, seed: int, step: int = 0, rank: int = 0,
                     world_size: int = 1, num_workers: int = 0, **loader_kwargs: Any) -> Iterator[Any]:
    """An endless iterator of this rank's batches that continues exactly where step `step` left off.

    The loader gets its own seeded generator: a DataLoader without one draws its worker seed from the *global* torch
    RNG when iterated, which would shift every later random number of a resumed run.
    """
    sampler = ResumableSampler(len(dataset), global_batch, seed, start=step * global_batch, rank=rank,
                               world_size=world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=global_batch // world_size, sampler=sampler,
                                         num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                                         persistent_workers=num_workers > 0, **loader_kwargs)
    return iter(loader)


# ---------------------------------------------------------------------------------------------------- checkpoints
def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def save_pretrained(model: torch.nn.Module | Mapping[str, torch.Tensor], config: Mapping[str, Any],
                    directory: str | Path) -> Path:
    """Write `model.safetensors` + `config.json` into `directory` (atomically, file by file). `model` may also be
    a full state dict (e.g. gathered from FSDP shards by `full_state`)."""
    directory = Path(directory)
    if isinstance(model, torch.nn.Module):
        _atomic(directory / "model.safetensors", lambda p: save_model(_unwrap(model), str(p)))
    else:
        _atomic(directory / "model.safetensors",
                lambda p: save_file({k: v.contiguous() for k, v in model.items()}, str(p)))
    _atomic(directory / "config.json", lambda p: p.write_text(json.dumps(config, indent=1, default=str)))
    return directory


def load_pretrained(model: torch.nn.Module, directory: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load `model.safetensors` from `directory` into `model`; returns the stored config dict."""
    directory = Path(directory)
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no model.safetensors in {directory}")
    missing, unexpected = load_model(_unwrap(model), str(weights), strict=strict)
    if missing or unexpected:
        print(f"load_pretrained: missing {missing[:5]}..., unexpected {unexpected[:5]}...")
    return json.loads((directory / "config.json").read_text())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint directory, a run directory (its last checkpoint), a `checkpoints/`
    directory or the `last` pointer file itself (the checkpoint it names)."""
    path = Path(path)
    if path.is_file() and path.name == "last":
        return path.parent / path.read_text().strip()
    if (path / "config.json").exists():
        return path
    for pointer in (path / "checkpoints" / "last", path / "last"):
        if pointer.is_file():
            return pointer.parent / pointer.read_text().strip()
    raise FileNotFoundError(f"{path} is not a checkpoint directory (no config.json) nor a run directory with a "
                            f"checkpoints/last pointer")


def checkpoint_meta(method: str, cfg: Any, stats: dict, tokenizer_json: str, state_dim: int, action_dim: int) -> dict:
    """The config.json of a policy checkpoint: what rebuilds it from the directory alone — the method (its folder's
    name, which `common.policy.load_policy` dispatches on), its config, the normalisation statistics, the tokenizer
    and the state/action sizes."""
    from common.config import to_dict  # here: common.config imports tyro, which the rest of this module needs not
    return dict(method=method, config=to_dict(cfg), stats=stats, tokenizer=tokenizer_json, state_dim=state_dim,
                action_dim=action_dim)


def rebuild_policy(checkpoint: str | Path, config_cls: type, build, load_weights: bool = True
                   ) -> tuple[torch.nn.Module, Any]:
    """A trained policy and its config from a checkpoint (or run) directory alone: the config.json a method writes
    holds its config, the normalisation statistics, the tokenizer and the state/action sizes, which
    `build(cfg, stats, tokenizer, state_dim, action_dim)` turns into the policy the weights are loaded into
    (`load_weights=False`: built only, for a caller that loads them into a model around it)."""
    from common.config import from_dict  # here: common.config imports tyro, which the rest of this module needs not
    checkpoint = resolve_checkpoint(checkpoint)
    meta = read_config(checkpoint)
    cfg = from_dict(config_cls, meta["config"])
    policy = build(cfg, meta["stats"], meta["tokenizer"], meta["state_dim"], meta["action_dim"])
    if load_weights:
        load_pretrained(policy, checkpoint)
    return policy, cfg


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {directory} (is it a checkpoint directory?)")
    return json.loads(path.read_text())


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module | Mapping[str, torch.Tensor],
                    config: Mapping[str, Any], optimizer: torch.optim.Optimizer | Mapping[str, Any],
                    scheduler: Any = None, keep: int = 2) -> Path:
    """Save weights + config + training state under `<run>/checkpoints/<step>`; point `last` at it; keep the newest
    `keep` checkpoints. `model` / `optimizer` may be state dicts instead (FSDP: see `full_state`)."""
    root = Path(run_dir) / "checkpoints"
    directory = root / f"{step:08d}"
    save_pretrained(model, config, directory)
    optimizer_state = optimizer if isinstance(optimizer, Mapping) else optimizer.state_dict()
    state = dict(step=step, optimizer=optimizer_state, rng=rng_state(),
                 scheduler=scheduler.state_dict() if scheduler is not None else None)
    _atomic(directory / "train_state.pt", lambda p: torch.save(state, p))
    _atomic(root / "last", lambda p: p.write_text(directory.name))
    for old in sorted(d for d in root.iterdir() if d.is_dir() and d.name.isdigit())[:-keep]:
        shutil.rmtree(old)
    return directory


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded CPU state dicts of an FSDP-sharded model and its optimizer (a collective: call it on every rank,
    then save on rank 0 with `save_checkpoint`; restore with `load_full_state`)."""
    # imported here: torch.distributed.checkpoint takes seconds to import and only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any = None) -> int:
    """`load_checkpoint` for an FSDP-sharded model: every rank reads the full files and keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    directory = Path(directory)
    state = torch.load(directory / "train_state.pt", weights_only=True, map_location="cpu")
    set_state_dict(model, optimizer, model_state_dict=load_file(directory / "model.safetensors"),
                   optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
    return _restore_schedule_and_rng(state, scheduler)


def last_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "last"
    return pointer.parent / pointer.read_text().strip() if pointer.exists() else None


def load_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> int:
    """Restore weights, optimizer, scheduler and RNG states from a checkpoint directory; returns the step."""
    directory = Path(directory)
    load_pretrained(model, directory)
    state = torch.load(directory / "train_state.pt", weights_only=True, map_location="cpu")
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return _restore_schedule_and_rng(state, scheduler)


def resume_last(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None,
                sharded: bool = False) -> int:
    """`--resume`: restore `run_dir`'s last checkpoint (weights, optimizer, scheduler, RNG; `sharded` for FSDP) and
    return its step. No checkpoint is an error, never a silent fresh start."""
    checkpoint = last_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {Path(run_dir) / 'checkpoints'}")
    step = (load_full_state if sharded else load_checkpoint)(checkpoint, model, optimizer, scheduler)
    print(f"resumed from {checkpoint} at step {step}")
    return step


def _restore_schedule_and_rng(state: Mapping[str, Any], scheduler: Any) -> int:
    """The part of resuming shared by plain and sharded models: scheduler, every RNG; returns the step."""
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------------- logging
class Logger:
    """Progress bar + `metrics.jsonl` always; wandb only when asked (offline unless WANDB_MODE says otherwise)."""

    def __init__(self, run_dir: str | Path, total_steps: int, start_step: int = 0, config: Mapping | None = None,
                 wandb_project: str | None = None, enabled: bool = True, desc: str = "train"):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, disable=not enabled, dynamic_ncols=True)
        self.wandb = None
        if enabled and wandb_project:
            import wandb  # optional: imported only when asked for
            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = wandb.init(project=wandb_project, dir=str(run_dir), config=dict(config or {}))

    def log(self, step: int, metrics: Mapping[str, float], advance: int = 0) -> None:
        if not self.enabled:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(step=step, **metrics)) + "\n")
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_metrics(run_dir: str | Path, keys: tuple[str, ...] = ("loss",), out: str | Path | None = None) -> Path:
    """A PNG of the logged `keys` against the step (log scale for losses, symlog where one is ≤ 0), next to
    `metrics.jsonl` by default."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    rows = read_metrics(run_dir)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, ms=3)  # sparse ones (evaluations) as dots
        log = "log" if all(v > 0 for _, v in points) else "symlog"  # some losses go negative (−log-likelihoods)
        ax.set(xlabel="step", title=key, yscale=log if "loss" in key else "linear")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out or Path(run_dir) / "metrics.png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group when launched by torchrun (RANK/WORLD_SIZE set), else a one-process `Dist`.

    NCCL on CUDA, gloo on CPU. `device` is "auto" (CUDA when present), "cpu" or "cuda".
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average a scalar tensor over the process group (identity without one)."""
    if not dist.is_initialized():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()
