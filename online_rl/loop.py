"""What every online-RL algorithm here shares: the settings, the rollout of one iteration, the closed-loop
evaluation before and after, and the iteration loop (rollout -> the algorithm's update -> log -> checkpoint) with
exact resume, and the minibatch steps with gradient accumulation. The algorithms bring their update: ppo.py,
grpo.py (with its grouping of placements) and sac.py (with its critics and replay, saved beside each checkpoint).

A run: the imitation checkpoint is loaded through `common.policy.load_policy` (so any method's policy), evaluated,
fine-tuned for `iterations` iterations, evaluated again. Each iteration plays one episode per env (Meta-World's
envs.py, or with `env="driving"` highway-env's driving.py: the envs give the contract's observations and each
chunk's reward, so the rollout, GAE and the updates are the same for both); all its random draws are seeded by
(seed, iteration) alone, so a resumed run repeats the uninterrupted one exactly.
Checkpoints hold the actor-critic's weights with the imitation checkpoint's config.json (plus this run's config
under `online_rl`), so `load_policy` reads a fine-tuned policy back whole.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from common.config import to_dict
from common.envs.metaworld import eval_config, evaluate, format_results
from common.policy import Policy, load_policy, observations
from common.train import (Logger, last_checkpoint, read_config, resolve_checkpoint, resume_last, save_checkpoint,
                          seed_everything)

from online_rl.envs import ChunkEnvs

# MT10 tasks on which the imitation policies of benchmarks/results/mt10.md are weak but not at zero (a sparse reward
# needs some successes to learn from)
WEAK_TASKS = ("reach-v3", "push-v3", "button-press-topdown-v3", "window-open-v3")
# MT10 tasks the imitation policies already solve (benchmarks/results/mt10_tasks.md): evaluated before and after but
# not trained on, so a fine-tuning that breaks what imitation learned shows
STRONG_TASKS = ("door-open-v3", "drawer-close-v3")
REWARDS = {"metaworld": ("success", "dense"), "driving": ("success", "score")}  # each env's `reward` choices


@dataclass
class RLConfig:
    policy: str = "../pi0/runs/pi0"  # the imitation checkpoint to fine-tune: a checkpoint, run dir or `last` pointer
    method: str | None = None  # the policy's method folder, for checkpoints written before config.json named it
    run_dir: str = "runs/rl"  # checkpoints, metrics.jsonl, eval_before/ and eval_after/
    env: str = "metaworld"  # "metaworld": Meta-World tasks (envs.py); "driving": highway-env scenarios (driving.py)
    tasks: tuple[str, ...] = WEAK_TASKS  # trained (and evaluated) tasks; driving: scenarios (common.envs.highway)
    watch_tasks: tuple[str, ...] | None = None  # evaluated before and after, never trained on (None: STRONG_TASKS
    #                                             for Meta-World, none for driving)
    envs_per_task: int = 4  # episodes per task per iteration
    iterations: int = 50  # iterations (one episode per env each)
    max_steps: int = 200  # environment steps per episode (as the imitation evaluation; driving: the horizon, 10 Hz)
    placement_seed: int = 5000  # training placements (demos use 0, evaluation 1000 and 2000; driving: highway-env
    #                             seeds placement_seed + episode, evaluation from 10^6)
    reward: str = "success"  # "success": 1 on success (Meta-World) or arrival (driving), sparse; "dense": Meta-World's
    #                          shaped reward x dense_scale; "score": driving, the episode's PDM-style score at its end
    dense_scale: float = 0.01  # the dense reward's scale (Meta-World's is 0..10 per step)
    plan_steps: int = 5  # driving: 10 Hz control steps that follow each plan before the next (5 = 0.5 s, the
    #                      waypoints' spacing; 1 = replan every step, as the imitation evaluation)
    update_epochs: int = 4  # passes over each iteration's chunks
    minibatch_size: int = 256  # chunks per optimizer step (RLinf: 2048, 4 epochs: a handful of steps per rollout)
    micro_batch_size: int = 32  # chunks per forward/backward; gradients are accumulated over a minibatch
    lr: float = 1e-5  # actor learning rate (RLinf's Meta-World pi0 setting)
    max_grad_norm: float = 1.0  # gradient clipping
    eval_episodes: int = 10  # closed-loop evaluation episodes per task, before and after (placements of seed 1000;
    #                           0: none)
    save_every: int = 5  # checkpoint every k iterations (and at the end)
    workers: int = 2  # environment processes (0: in this process)
    seed: int = 0  # seeds sampling, minibatch order and the RL heads' initialisation
    threads: int = 2  # torch CPU threads
    resume: bool = False  # continue run_dir's last checkpoint exactly
    device: str = "auto"  # "auto": CUDA when present, else CPU

    def __post_init__(self):
        if self.env not in REWARDS:
            raise ValueError(f"env must be one of {sorted(REWARDS)}, got {self.env!r}")
        if self.reward not in REWARDS[self.env]:
            raise ValueError(f"reward must be one of {REWARDS[self.env]} for env {self.env!r}, got {self.reward!r}")
        if self.env == "driving":
            from common.envs.highway import SCENARIOS  # highway-env is imported only for driving runs
            unknown = [task for task in self.tasks if task not in SCENARIOS]
            if unknown:
                raise ValueError(f"env 'driving' plays highway-env scenarios; unknown {unknown}: pass --tasks from "
                                 f"{', '.join(SCENARIOS)}")
            if self.watch_tasks:
                raise ValueError("env 'driving' has no watch tasks: every evaluated scenario is a trained one")
            if self.policy == RLConfig.policy:
                raise ValueError("env 'driving' fine-tunes a driving policy: pass --policy (a driving_vla checkpoint "
                                 "or run); the default is π0's Meta-World run")

    def evaluated_tasks(self) -> tuple[str, ...]:
        """The tasks evaluated before and after: the trained ones, then the watched ones."""
        watch = (STRONG_TASKS if self.env == "metaworld" else ()) if self.watch_tasks is None else self.watch_tasks
        return (*self.tasks, *(task for task in watch if task not in self.tasks))

    def env_tasks(self) -> list[str]:
        """The task of every env: env i runs tasks[i % len(tasks)]."""
        return [self.tasks[i % len(self.tasks)] for i in range(self.envs_per_task * len(self.tasks))]


# ---------------------------------------------------------------------------------------------------- rollouts
def make_envs(cfg: RLConfig, policy: Policy) -> ChunkEnvs:
    """The run's envs, one per entry of `cfg.env_tasks()`: Meta-World's, rendered as the policy's config says, or
    highway-env's (online_rl/driving.py)."""
    if cfg.env == "driving":
        from online_rl import driving  # highway-env (and pygame) only for driving runs
        return driving.DrivingEnvs(cfg.env_tasks(), driving.horizon_s(cfg), cfg.plan_steps, cfg.workers)
    return ChunkEnvs(cfg.env_tasks(), policy.cfg.demo_image_size, policy.cfg.cameras, cfg.max_steps, cfg.workers,
                     policy.cfg.state_key)


@torch.no_grad()
def rollout(policy: Policy, envs: ChunkEnvs, cfg: RLConfig, episodes: list[int], device: torch.device) -> dict:
    """One episode per env, env i from placement (placement_seed, episodes[i]), as (T, N) tensors of chunk steps;
    rows of envs whose episode has ended hold their last values and are masked out by `valid`. The policy runs on
    the active envs only. `events`: per env, whether each of the envs' episode events (driving: collision) happened;
    `env_steps`: the environment steps the iteration took, over all envs."""
    current = envs.reset(cfg.placement_seed, episodes)
    active = np.ones(envs.n, bool)
    success, returns, steps, out = np.zeros(envs.n, bool), np.zeros(envs.n), [], None
    env_steps = 0
    events: dict[str, np.ndarray] = {}
    while active.any():
        obs = envs.observations(current, device)
        rows = torch.as_tensor(np.flatnonzero(active))
        sampled = policy(obs[rows])
        if out is None:
            out = sampled.exclude("action").clone()
        out[rows] = sampled.exclude("action")  # inactive rows keep stale values (masked)
        actions = np.zeros((envs.n, *sampled["action"].shape[1:]), np.float32)
        actions[rows.numpy()] = sampled["action"].cpu().numpy()
        result = envs.step(actions, active)
        reward = envs.reward(result, cfg)
        next_value = torch.zeros(envs.n, device=device)  # 0 after a terminal end; set below where the episode goes on
        cut = np.flatnonzero(result.truncated)
        if len(cut):  # the step limit ended these episodes: bootstrap with the value of where they stopped
            final = envs.observations([result.obs[i] for i in cut], device)
            next_value[torch.as_tensor(cut)] = policy.get_value(final)[:, 0]
        steps.append(dict(obs=obs, out=out.clone(), reward=torch.as_tensor(np.where(active, reward, 0.0)),
                          valid=torch.as_tensor(active.copy()), goes_on=torch.as_tensor(active & ~result.done),
                          terminal=torch.as_tensor(active & result.done & ~result.truncated), next_value=next_value))
        returns += np.where(active, reward, 0.0)
        env_steps += int(result.steps.sum())  # inactive envs executed nothing (0)
        success |= result.success & active
        for key, happened in result.events.items():
            events[key] = events.get(key, np.zeros(envs.n, bool)) | (happened & active)
        current = [o if o is not None else c for o, c in zip(result.obs, current)]
        active &= ~result.done
    stacked = {key: torch.stack([s[key] for s in steps]) for key in steps[0]}
    values = stacked["out"]["value"][..., 0]
    goes_on = stacked["goes_on"].to(device)
    next_values = stacked["next_value"]
    next_values[:-1] = torch.where(goes_on[:-1], values[1:], next_values[:-1])  # V(s_{t+1}) where it goes on
    # where each chunk led (SAC's o'): the next chunk's observation, or the episode's last one (obs[t + 1] holds it
    # for an env that ended at t; `current` after the final chunk)
    next_obs = torch.stack([s["obs"] for s in steps[1:]] + [envs.observations(current, device)])
    return dict(obs=stacked["obs"], out=stacked["out"], rewards=stacked["reward"].float().to(device), values=values,
                next_values=next_values, goes_on=goes_on, terminal=stacked["terminal"].to(device),
                valid=stacked["valid"].to(device), next_obs=next_obs, success=success, returns=returns, events=events,
                env_steps=env_steps)


def own_placements(cfg: RLConfig, iteration: int) -> list[int]:
    """Every env a placement of its own, new each iteration: env i (task i % T) plays episode it * E + i // T."""
    return [iteration * cfg.envs_per_task + i // len(cfg.tasks) for i in range(len(cfg.env_tasks()))]


def epochs_of_steps(cfg: RLConfig, n: int, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                    loss_of: Callable[[torch.Tensor], tuple[torch.Tensor, dict]]) -> dict[str, float]:
    """`update_epochs` passes over n chunks in shuffled minibatches, one optimizer step each, the gradient of a
    minibatch accumulated over micro-batches: `loss_of(indices)` -> (the loss averaged over those chunks, stats),
    each micro-batch's loss weighted by its share of the minibatch. Returns the mean of every statistic."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    logged: dict[str, list[float]] = {}
    for _ in range(cfg.update_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.minibatch_size):
            minibatch = order[start:start + cfg.minibatch_size]
            optimizer.zero_grad(set_to_none=True)
            for first in range(0, len(minibatch), cfg.micro_batch_size):
                micro = minibatch[first:first + cfg.micro_batch_size]
                loss, stats = loss_of(micro)
                (loss * len(micro) / len(minibatch)).backward()
                for key, value in stats.items():
                    logged.setdefault(key, []).append(float(value))
            logged.setdefault("grad_norm", []).append(float(torch.nn.utils.clip_grad_norm_(params,
                                                                                         cfg.max_grad_norm)))
            optimizer.step()
    return {k: float(np.mean(v)) for k, v in logged.items()}


def checkpoint_directory(run_dir: str | Path, step: int) -> Path:
    """Where `save_checkpoint(run_dir, step, ...)` writes (created here for files saved beside it)."""
    directory = Path(run_dir) / "checkpoints" / f"{step:08d}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def kl_to_start(reference: Policy, obs, out) -> float:
    """KL(pi || pi_start) on chunks pi sampled: Schulman's k3 estimator E[(r - 1) - log r], r = pi_start / pi."""
    with torch.no_grad():
        log_ratio = reference.evaluate_actions(obs, out)[0] - out["log_prob"]
    return ((log_ratio.exp() - 1) - log_ratio).mean().item()


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_policy(policy: Policy, cfg: RLConfig, out_dir: Path) -> dict:
    """Closed-loop success on held-out placements (evaluation seed 1000) of the trained and the watched tasks, the
    policy acting deterministically; driving: `driving.evaluate_policy` (the benchmark's evaluation seeds and metrics,
    success = arrival). Returns per task its summary (success_rate, episodes, ...), also written to
    `out_dir/summary.json` (what online_rl/table.py reads)."""
    summary = _evaluate(policy, cfg, out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def _evaluate(policy: Policy, cfg: RLConfig, out_dir: Path) -> dict:
    if cfg.env == "driving":
        from online_rl import driving
        return driving.evaluate_policy(policy, cfg, out_dir)
    policy_cfg = policy.cfg

    def act(obs: dict) -> np.ndarray:
        with torch.no_grad():
            td = observations([obs], policy_cfg.cameras, policy_cfg.state_key, next(policy.parameters()).device)
            return policy(td, deterministic=True)["action"][0].cpu().numpy()

    results = evaluate(act, eval_config(policy_cfg, tasks=cfg.evaluated_tasks(), episodes_per_task=cfg.eval_episodes,
                                        workers=1, max_steps=cfg.max_steps, video_dir=None))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.md").write_text(format_results(results) + "\n")
    return {task: r.as_dict() for task, r in results.items()}


# ---------------------------------------------------------------------------------------------------- the loop
def fine_tune(cfg: RLConfig, algorithm: str, setup: Callable[[Policy], tuple[torch.optim.Optimizer, Any]],
              episodes: Callable[[int], list[int]], update: Callable[..., dict]) -> dict:
    """Evaluate, then `cfg.iterations` times: roll out one episode per env (env i from placement episodes(it)[i]),
    `update(policy, reference, optimizer, state, batch, iteration, generator)` -> statistics, log, checkpoint;
    evaluate again. `setup(policy)` gives the optimizer and the algorithm's own state (None, or an object with
    `save(directory)` / `load(directory)`: SAC's critics and replay), saved in each checkpoint and restored on
    resume."""
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    run_dir = Path(cfg.run_dir)
    start = resolve_checkpoint(cfg.policy)
    policy = load_policy(start, cfg.method).to(device).eval()
    reference = copy.deepcopy(policy).requires_grad_(False)  # the starting policy, for the KL to it
    optimizer, state = setup(policy)
    written = read_config(start)
    meta = dict(written, method=cfg.method or written["method"],
                online_rl=dict(algorithm=algorithm, config=to_dict(cfg), start=str(start)))
    iteration = resume_last(run_dir, policy, optimizer) if cfg.resume else 0
    if iteration and state is not None:
        state.load(last_checkpoint(run_dir))
    if iteration == 0 and cfg.eval_episodes:
        before = evaluate_policy(policy, cfg, run_dir / "eval_before")
        print(f"before RL: {np.mean([r['success_rate'] for r in before.values()]):.1%}")
    generator = torch.Generator().manual_seed(cfg.seed)
    envs = make_envs(cfg, policy)
    logger = Logger(run_dir, cfg.iterations, iteration, to_dict(cfg), desc=algorithm)
    try:
        while iteration < cfg.iterations:
            generator.manual_seed(cfg.seed * 1_000_003 + iteration)  # each iteration's draws depend on it alone
            torch.manual_seed(cfg.seed * 1_000_003 + iteration)
            batch = rollout(policy, envs, cfg, episodes(iteration), device)
            stats = update(policy, reference, optimizer, state, batch, iteration, generator)
            iteration += 1
            events = {key: happened.mean() for key, happened in batch["events"].items()}  # driving: collision rate
            logger.log(iteration, dict(success=batch["success"].mean(), episode_return=batch["returns"].mean(),
                                       chunks=int(batch["valid"].sum()), env_steps=batch["env_steps"], **events,
                                       **stats))
            logger.advance()
            if iteration % cfg.save_every == 0 or iteration == cfg.iterations:
                if state is not None:  # first, so the `last` pointer never names a checkpoint without it
                    state.save(checkpoint_directory(run_dir, iteration))
                save_checkpoint(run_dir, iteration, policy, meta, optimizer)
    finally:
        envs.close()
        logger.close()
    if not cfg.eval_episodes:
        return {}
    after = evaluate_policy(policy, cfg, run_dir / "eval_after")
    print(f"after RL: {np.mean([r['success_rate'] for r in after.values()]):.1%}")
    return after
