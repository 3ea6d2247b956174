"""Data and episodes on the embedded driving benchmark (`common.envs.highway`): the training view of its expert
demonstrations, DAgger rollouts with expert relabelling, and closed-loop evaluation over worker processes.

The expert demonstrations are the benchmark's own (`hw.collect_demos`: per frame `observation.bev`,
`observation.state`, `observation.agents`, `observation.command` = (command, metres to its manoeuvre), `action`,
`waypoints` = the expert's positions +0.5 ... +2.5 s ahead in the ego frame, `waypoints_valid`). A DAgger round is
written in the same format (`collect_dagger`), with the label of each learner-visited state from
`hw.expert_waypoints` (the env copied and rolled with the expert), so that `WaypointDataset` reads the aggregate as
one. Evaluation runs `hw.evaluate` on one scenario per worker process.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from common.data import EpisodeDataset, EpisodeWriter, write_json_atomic
from common.envs import highway as hw

from .model import K, ClosedLoopPolicy, process_ego_state, process_route

FEATURES = {"observation.bev": ((hw.BEV.size, hw.BEV.size, len(hw.BEV_CHANNELS)), "uint8"),
            "observation.state": ((hw.STATE_DIM,), "float32"),
            "observation.agents": ((hw.NUM_AGENTS, hw.AGENT_FEATURES), "float32"),
            "observation.command": ((2,), "float32"), "action": ((2,), "float32"),
            "waypoints": ((2 * K,), "float32"), "waypoints_valid": ((K,), "uint8")}


# ------------------------------------------------------------------------------------------------ worker pool
def _init_worker(initializer: Callable | None, initargs: tuple) -> None:
    torch.set_num_threads(1)  # one process per core
    if initializer is not None:
        initializer(*initargs)


def _map(fn: Callable, jobs: Sequence, workers: int, desc: str, progress: bool = True,
         initializer: Callable | None = None, initargs: tuple = ()) -> list:
    """[fn(job) for job in jobs], in order, over `workers` spawned processes (no forked torch/pygame state), with a
    progress bar; in this process when workers <= 1."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        _init_worker(initializer, initargs) if initializer is not None else None
        pool = nullcontext(None)
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(initializer, initargs))
    with pool as p:
        results = p.imap(fn, jobs) if p is not None else map(fn, jobs)
        results = list(tqdm(results, total=len(jobs), desc=desc, disable=not progress, dynamic_ncols=True))
        if p is not None:  # let the workers exit on their own (terminate() leaks their semaphores)
            p.close()
            p.join()
        return results


_worker_policy: ClosedLoopPolicy | None = None


def _set_policy(meta: dict, state_dict: dict, shield: bool) -> None:
    """Build a worker's closed-loop policy from a checkpoint's config and weights."""
    global _worker_policy
    from .model import Shield, policy_from_meta
    policy = policy_from_meta(meta, state_dict)
    _worker_policy = ClosedLoopPolicy(policy, Shield.from_config(policy.cfg) if shield else None)


# ------------------------------------------------------------------------------------------------ training data
def prompt(state: np.ndarray, command: np.ndarray, scenario: str) -> str:
    """The prompt of a stored frame: the benchmark's sentence rebuilt from the state and command
    (`hw.describe_state`, as `hw.collect_demos` documents), through `process_route`."""
    text = hw.describe_state(float(state[3]), float(state[2]), int(command[0]), float(command[1]),
                             hw.SCENARIOS[scenario].place)
    return process_route(text)


def ego_state(state: np.ndarray, command: np.ndarray) -> np.ndarray:
    """`process_ego_state` of a stored frame (highway-env's right-positive yaw rate and steering are flipped)."""
    return process_ego_state(float(state[3]), -float(state[4]), -float(state[5]), float(state[6]), int(command[0]))


class WaypointDataset(torch.utils.data.Dataset):
    """The frames with a full label (all K waypoints valid) of one or more datasets in the benchmark's demo format,
    as training samples: bev (uint8), ego, waypoints [m] and the prompt's tokens (tokenised once, up front)."""

    def __init__(self, datasets: Iterable[EpisodeDataset], tokenizer=None, max_text_tokens: int = 0):
        from common.text import tokenize
        self.parts = list(datasets)
        self.index, egos, prompts = [], [], []
        for p, d in enumerate(self.parts):
            state, command = np.asarray(d.arrays["observation.state"]), np.asarray(d.arrays["observation.command"])
            valid = np.asarray(d.arrays["waypoints_valid"]).all(axis=1)
            for t in np.nonzero(valid)[0]:
                self.index.append((p, int(t)))
                egos.append(ego_state(state[t], command[t]))
                if tokenizer is not None:
                    prompts.append(prompt(state[t], command[t], d.episodes[d.episode_of_frame[t]]["task"]))
        self.ego = torch.as_tensor(np.stack(egos))
        self.tokens = tokenize(tokenizer, prompts, max_text_tokens) if tokenizer is not None else None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        part, t = self.index[i]
        arrays = self.parts[part].arrays
        item = dict(bev=torch.from_numpy(np.array(arrays["observation.bev"][t])), ego=self.ego[i],
                    waypoints=torch.from_numpy(np.array(arrays["waypoints"][t])))
        if self.tokens is not None:
            item.update(input_ids=self.tokens["input_ids"][i], attention_mask=self.tokens["attention_mask"][i])
        return item


def prompts_of(datasets: Iterable[EpisodeDataset]) -> list[str]:
    """Every frame's prompt (to train the tokenizer on)."""
    out = []
    for d in datasets:
        state, command = np.asarray(d.arrays["observation.state"]), np.asarray(d.arrays["observation.command"])
        out += [prompt(state[t], command[t], d.episodes[d.episode_of_frame[t]]["task"]) for t in range(d.num_frames)]
    return out


def ego_and_waypoint_stats(demos: EpisodeDataset) -> dict:
    """Normalisation statistics (mean, std, ...) of the ego features and the waypoints over the labelled frames."""
    data = WaypointDataset([demos])
    waypoints = np.stack([demos.arrays["waypoints"][t] for _, t in data.index]).astype(np.float64)
    out = {}
    for key, x in (("ego", data.ego.numpy().astype(np.float64)), ("waypoints", waypoints)):
        q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
        out[key] = {k: v.tolist() for k, v in dict(mean=x.mean(0), std=x.std(0), min=x.min(0), max=x.max(0),
                                                   q01=q01, q99=q99).items()}
    return out


# ------------------------------------------------------------------------------------------------ DAgger
def dagger_episode(job: tuple[str, int, float | None, float, int, int]) -> dict:
    """Roll the β-mixture of (expert, learner) on (scenario, seed) and relabel every `relabel_every`-th visited state
    with the expert's waypoints from that state (`hw.expert_waypoints`). At each step the expert's action is executed
    with probability β (Ross et al. 2011, Alg. 3.1: π_i = β_i π* + (1 − β_i) π̂_i)."""
    scenario, seed, horizon_s, beta, relabel_every, mix_seed = job
    policy = _worker_policy
    policy.reset(mix_seed)
    rng = np.random.default_rng(mix_seed)
    env = hw.make_scenario(scenario, seed, horizon_s=horizon_s)
    obs, done, t = env.observation(), False, 0
    rows, expert_steps = [], 0
    while not done:
        action = policy(obs)
        if beta > 0 and rng.random() < beta:
            action, expert_steps = env.expert_action(), expert_steps + 1
        if t % relabel_every == 0:
            command, distance = env.command()
            rows.append({"observation.bev": obs["bev"], "observation.state": obs["state"],
                         "observation.agents": obs["agents"], "action": action,
                         "observation.command": np.array([command, min(distance, 1e3)]),
                         "waypoints": hw.expert_waypoints(env).reshape(2 * K), "waypoints_valid": np.ones(K)})
        obs, done, _ = env.step(action)
        t += 1
    frames = {k: np.stack([r[k] for r in rows]) for k in FEATURES}
    env.close()
    return dict(frames=frames, scenario=scenario, seed=seed, steps=t, expert_steps=expert_steps,
                collision=bool(env.log.collision), arrived=bool(env.log.arrived))


def collect_dagger(root: str | Path, meta: dict, state_dict: dict, scenarios: Sequence[str], seeds: Sequence[int],
                   horizon_s: float | None, beta: float, relabel_every: int, mix_seed: int, workers: int = 2,
                   shield: bool = False, progress: bool = True) -> EpisodeDataset:
    """One DAgger round: learner (β-mixture) episodes on `seeds` of every scenario, relabelled by the expert, written
    to `root` in the demo format (reused if it exists: a resumed run finds the round it had collected)."""
    root = Path(root)
    if (root / "meta.json").exists():
        return EpisodeDataset(root)
    jobs = [(s, seed, horizon_s, beta, relabel_every, mix_seed * 1000 + i)
            for i, (s, seed) in enumerate((s, seed) for s in scenarios for seed in seeds)]
    episodes = _map(dagger_episode, jobs, workers, "DAgger rollouts", progress, _set_policy, (meta, state_dict, shield))
    info = dict(source="DAgger", beta=beta, collisions=sum(e["collision"] for e in episodes),
                steps=sum(e["steps"] for e in episodes), expert_steps=sum(e["expert_steps"] for e in episodes))
    with EpisodeWriter(root, FEATURES, fps=hw.FREQUENCY, info=info) as writer:
        for e in episodes:
            writer.add_episode(e["frames"], task=e["scenario"], seed=e["seed"], collision=e["collision"],
                               arrived=e["arrived"])
    return EpisodeDataset(root)


# ------------------------------------------------------------------------------------------------ evaluation
def _name(scenario: str, seed: int, horizon_s: float | None) -> str:
    return f"{scenario}/{seed}/{horizon_s}"


def _expert_job(job: tuple[str, int, float | None]) -> dict:
    return hw.expert_reference(*job)


def expert_results(scenarios: Sequence[str], episodes: int, horizon_s: float | None = None, workers: int = 2,
                   progress: bool = True) -> dict[str, dict]:
    """`hw.expert_reference` (the expert's episode metrics, every learner's progress reference) on seeds("eval",
    episodes) of each scenario, computed once per benchmark version and cached on disk."""
    path = hw.default_cache_dir() / f"highway-expert-{hw.source_version()}.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    jobs = [(s, seed, horizon_s) for s in scenarios for seed in hw.seeds("eval", episodes)
            if _name(s, seed, horizon_s) not in cached]
    if jobs:
        rows = _map(_expert_job, jobs, workers, "expert reference", progress)
        cached = json.loads(path.read_text()) if path.exists() else {}  # another run may have added some meanwhile
        cached.update({_name(*job): row for job, row in zip(jobs, rows)})
        write_json_atomic(path, cached)
    return {_name(s, seed, horizon_s): cached[_name(s, seed, horizon_s)]
            for s in scenarios for seed in hw.seeds("eval", episodes)}


def _eval_job(job: tuple[str, int, float | None, dict]) -> list[dict]:
    scenario, episodes, horizon_s, references = job
    return hw.evaluate(_worker_policy, [scenario], episodes, horizon_s, progress=False, references=references).rows


def evaluate(meta: dict, state_dict: dict, scenarios: Sequence[str], episodes: int, horizon_s: float | None = None,
             workers: int = 2, shield: bool = False, progress: bool = True) -> list[dict]:
    """`hw.evaluate` of a policy (given as a checkpoint's config and weights, so that workers can rebuild it) on
    seeds("eval", episodes) of every scenario, one scenario per worker; per-episode metric rows."""
    expert = expert_results(scenarios, episodes, horizon_s, workers, progress)
    seeds = hw.seeds("eval", episodes)
    jobs = [(s, episodes, horizon_s, {(s, seed): expert[_name(s, seed, horizon_s)] for seed in seeds}) for s in scenarios]
    rows = _map(_eval_job, jobs, workers, "closed-loop eval", progress, _set_policy, (meta, state_dict, shield))
    return [row for scenario_rows in rows for row in scenario_rows]


def episode_gif(policy: ClosedLoopPolicy, scenario: str, seed: int, path: str | Path, horizon_s: float | None = None,
                render_size: int = 128) -> Path:
    """A GIF of one closed-loop episode: highway-env's top-down render beside the BEV, the plan drawn in red
    (`hw.episode_frame`, `hw.save_gif`)."""
    env = hw.make_scenario(scenario, seed, render_size=render_size, horizon_s=horizon_s)
    policy.reset()
    obs, done, frames = env.observation(), False, []
    while not done:
        action = policy(obs)
        frames.append(hw.episode_frame(env, obs, policy.last_waypoints))
        obs, done, _ = env.step(action)
    env.close()
    return hw.save_gif(frames, path)


# ------------------------------------------------------------------------------------------------ tables
COLUMNS = (("collision", "collision"), ("progress", "progress [m]"), ("ep", "EP"), ("score", "PDM-style score"),
           ("arrived", "arrived"), ("drivable", "DAC"), ("ttc", "TTC ok"), ("comfort", "comfort"))


def cell(metric: str, mean_std: tuple[float, float]) -> str:
    """"mean ± std" of one metric: metres to the metre, rates and scores to two decimals."""
    digits = 0 if metric == "progress" else 2
    return f"{mean_std[0]:.{digits}f} ± {mean_std[1]:.{digits}f}"


def table(results: dict[str, list[dict]], scenarios: Sequence[str]) -> str:
    """A markdown table: one row per (method, scenario) and per method over all scenarios, mean ± std over the
    episodes (seeds) of each metric."""
    lines = ["| method | scenario | episodes | " + " | ".join(name for _, name in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for method, rows in results.items():
        agg = hw.aggregate(rows)
        for scenario in [*scenarios, "all"]:
            if scenario not in agg:
                continue
            a = agg[scenario]
            cells = [cell(k, a[k]) for k, _ in COLUMNS]
            name = f"**{scenario}**" if scenario == "all" else scenario
            lines.append(f"| {method} | {name} | {int(a['episodes'][0])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
