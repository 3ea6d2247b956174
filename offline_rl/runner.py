"""The training loop every algorithm file shares: load and normalise a dataset, update, evaluate, checkpoint, resume.

An algorithm file (`iql.py`, `cql.py`, ...) defines a config (a `RunConfig` plus its own fields) and an agent: an
`nn.Module` holding its networks, with

    agent.update() -> dict of metrics     one gradient step on a batch it samples itself (metrics may be tensors:
                                          they are read only when logged, every 100 steps)
    agent.act(obs) -> action              a deterministic action in [−1, 1] for one normalised observation
    agent.optimizers / agent.schedulers   dicts, saved in checkpoints

and an optional `agent.evaluate(env_id, episodes, seed, obs_mean, obs_std, max_action)` when acting needs more
than the current observation (the Decision Transformer's return-to-go and context). Agents see actions divided by
the environment's action bound, so every actor ends in a tanh; `max_action` scales them back (as CORL does). Sampling uses the global torch RNG, which
the checkpoints save, so a resumed run continues with the same batches.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from common.config import to_dict
from common.data import write_json_atomic
from common.train import (Logger, last_checkpoint, load_checkpoint, plot_metrics, read_metrics, save_checkpoint,
                          seed_everything)

from offline_rl.data import OfflineDataset, evaluate, load_dataset, normalize_observations, observation_stats

HERE = Path(__file__).parent
DATASETS = HERE / "datasets"  # where generate.py writes <task>-<kind>.hdf5


@dataclass
class RunConfig:
    dataset: str = "inverted_double_pendulum-medium"  # a generated dataset (datasets/<name>.hdf5) or a path to a D4RL hdf5 file / Minari dataset
    env_id: str = ""  # gymnasium id to evaluate in ("" = the one stored with the dataset)
    updates: int = 10_000  # gradient steps (the default presets: minutes on one CPU core)
    batch_size: int = 256  # transitions (or sequences, for DT) per step
    normalize_state: bool = True  # standardise observations with the dataset's mean / std (TD3+BC Sec. 5; CORL)
    eval_every: int = 5_000  # steps between closed-loop evaluations (and at the end)
    eval_episodes: int = 10  # episodes per evaluation, seeded seed + 10_000 + i
    checkpoint_every: int = 5_000  # steps between checkpoints (and at the end)
    resume: bool = False  # continue from run_dir's last checkpoint
    run_dir: str = ""  # "" = offline_rl/runs/<algorithm>-<dataset>-s<seed>
    seed: int = 0  # drives Python, NumPy, torch and the evaluation episodes
    device: str = "cpu"  # "cpu" or "cuda"; the default networks are small MLPs, faster on a CPU core
    threads: int = 1  # torch CPU threads (small MLPs: 1 avoids thread overhead; runs parallelise across seeds)


class Stateful:
    """Several optimizers / schedulers saved and restored as one `state_dict` (for `common.train` checkpoints)."""

    def __init__(self, parts: Mapping[str, Any]):
        self.parts = dict(parts)

    def state_dict(self) -> dict:
        return {k: v.state_dict() for k, v in self.parts.items()}

    def load_state_dict(self, state: Mapping) -> None:
        for k, v in self.parts.items():
            v.load_state_dict(state[k])


def dataset_path(dataset: str) -> Path:
    """`dataset` as a path if it exists, else the generated datasets/<dataset>.hdf5 (which may not exist)."""
    return Path(dataset) if Path(dataset).exists() else DATASETS / f"{dataset}.hdf5"


def resolve_dataset(cfg: RunConfig) -> OfflineDataset:
    path = dataset_path(cfg.dataset)
    if not path.exists():
        raise FileNotFoundError(f"dataset '{cfg.dataset}' is neither a path nor a generated dataset in {DATASETS}; "
                                f"make it with `python offline_rl/generate.py --task {cfg.dataset.split('-')[0]}`")
    ds = load_dataset(path, env_id=cfg.env_id or None)
    if ds.env_id is None:
        raise ValueError(f"{path} does not name its environment: pass --env_id")
    return ds


def action_bound(env_id: str) -> float:
    """The symmetric bound of the environment's Box action space (every action dimension must share it)."""
    space = gym.make(env_id).action_space
    if not (np.allclose(space.high, space.high[0]) and np.allclose(space.low, -space.high)):
        raise ValueError(f"{env_id}: the actors assume a symmetric action box with one bound, got {space}")
    return float(space.high[0])


def sgd_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def run(cfg: RunConfig, algorithm: str, build: Callable[[OfflineDataset], nn.Module]) -> dict:
    """Train `build(dataset)` for `cfg.updates` steps with periodic evaluation; returns (and writes) the results."""
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    raw = resolve_dataset(cfg)
    mean, std = observation_stats(raw) if cfg.normalize_state else (None, None)
    ds = normalize_observations(raw, mean, std) if cfg.normalize_state else raw
    max_action = action_bound(ds.env_id)
    ds = replace(ds, actions=np.clip(ds.actions / max_action, -1.0, 1.0))
    name = Path(cfg.dataset).stem if Path(cfg.dataset).exists() else cfg.dataset
    run_dir = Path(cfg.run_dir or HERE / "runs" / f"{algorithm}-{name}-s{cfg.seed}")
    agent = build(ds).to(cfg.device)
    optimizers, schedulers = Stateful(agent.optimizers), Stateful(getattr(agent, "schedulers", {}))
    meta = dict(algorithm=algorithm, config=to_dict(cfg), env_id=ds.env_id, obs_mean=_list(mean),
                obs_std=_list(std), ref_min_score=raw.ref_min_score, ref_max_score=raw.ref_max_score)
    results_path = run_dir / "results.json"
    step, history = 0, []
    if cfg.resume:
        checkpoint = last_checkpoint(run_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir}/checkpoints")
        step = load_checkpoint(checkpoint, agent, optimizers, schedulers)
        history = [h for h in json.loads(results_path.read_text())["history"] if h["step"] <= step] \
            if results_path.exists() else []
        print(f"resumed from {checkpoint} at step {step}")

    def evaluate_now() -> dict:
        agent.eval()
        with torch.no_grad():
            if hasattr(agent, "evaluate"):
                returns = agent.evaluate(ds.env_id, cfg.eval_episodes, cfg.seed + 10_000, mean, std, max_action)
            else:
                returns = evaluate(ds.env_id, lambda o: agent.act(o) * max_action, cfg.eval_episodes,
                                   cfg.seed + 10_000, mean, std)
        agent.train()
        row = dict(step=step, return_mean=float(returns.mean()), return_std=float(returns.std()))
        if raw.ref_min_score is not None and raw.ref_max_score is not None:
            scores = raw.normalized_score(returns)
            row.update(score_mean=float(scores.mean()), score_std=float(scores.std()))
        return row

    logger = Logger(run_dir, cfg.updates, step, meta, desc=algorithm)
    start = time.perf_counter()
    agent.train()
    while step < cfg.updates:
        metrics = agent.update()
        step += 1
        logger.advance()
        if step % 100 == 0 or step == cfg.updates:
            logger.log(step, metrics)
        if step % cfg.eval_every == 0 or step == cfg.updates:
            history.append(evaluate_now())
            logger.log(step, {k: v for k, v in history[-1].items() if k != "step"})
            write_json_atomic(results_path, dict(meta, history=history, final=history[-1]))
        if step % cfg.checkpoint_every == 0 or step == cfg.updates:
            save_checkpoint(run_dir, step, agent, meta, optimizers, schedulers)
    logger.close()
    logged = {k for row in read_metrics(run_dir) for k in row}  # the losses and the score, beside metrics.jsonl
    curves = sorted(k for k in logged if k.startswith("loss")) + [k for k in ("score_mean", "return_mean")
                                                                   if k in logged][:1]
    if curves:
        plot_metrics(run_dir, tuple(curves))
    results = dict(meta, history=history, final=history[-1] if history else None,
                   seconds=time.perf_counter() - start)
    write_json_atomic(results_path, results)
    final = results["final"]
    if final is not None:
        score = f", normalised score {final['score_mean']:.1f}" if "score_mean" in final else ""
        print(f"{algorithm} on {name}: return {final['return_mean']:.1f} ± {final['return_std']:.1f}{score}")
    return results


def _list(x: np.ndarray | None) -> list | None:
    return None if x is None else [float(v) for v in x]


