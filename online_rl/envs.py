"""Meta-World for online RL: N environments, each stepped one action chunk at a time, spread over worker processes.

An RL iteration plays one episode in every environment (RLinf's and SimpleVLA-RL's layout): env i of an iteration
starts the placement (seed, episode) it is given, and after its episode ends (success or the step limit) it is
inactive until the next reset. Placements come from Meta-World's seeded variations (`common.envs.metaworld`), so a
resumed run replays exactly the episodes the uninterrupted one would have, and a GRPO group is several envs given the
same placement.

One step executes a chunk of K actions open loop, as the policies do at evaluation; images are rendered only after
the chunk's last action (what the policy sees next). The chunk's reward is returned both ways the algorithms use it:
`success` (the episode succeeded within the chunk: the sparse 0/1 reward) and `dense` (the sum of Meta-World's
shaped per-step rewards, 0..10 each).

Hand-written rather than gymnasium's AsyncVectorEnv: that one needs observation spaces for the instruction string,
resets on the step after `done` (gymnasium 1.x), and has no notion of a placement per reset; this is ~60 lines.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.envs.metaworld import MetaWorldEnv


@dataclass
class ChunkResult:
    """What one chunk did in each env (inactive envs: zeros, `obs` None)."""
    obs: list[dict[str, Any] | None]  # the observation after the chunk (images rendered)
    success: np.ndarray  # (N,) bool: the episode succeeded during this chunk
    done: np.ndarray  # (N,) bool: the episode ended (success or step limit)
    truncated: np.ndarray  # (N,) bool: it ended by the step limit, not by success (bootstrap its value)
    dense: np.ndarray  # (N,) float: sum of Meta-World's shaped rewards over the executed steps
    steps: np.ndarray  # (N,) int: environment steps executed


def _reset(env: MetaWorldEnv, seed: int, episode: int) -> dict[str, Any]:
    return env.reset(seed, episode)


def _step(env: MetaWorldEnv, actions: np.ndarray) -> tuple:
    dense, steps, done, info = 0.0, 0, False, {"success": False}
    for i, action in enumerate(actions):
        obs, reward, done, info = env.step(action, render=False)
        dense, steps = dense + reward, steps + 1
        if done:
            break
    obs = env.observation()  # rendered once, after the chunk
    return obs, info["success"], done, done and not info["success"], dense, steps


def _serve(conn, specs: list[tuple[str, int, tuple[str, ...], int]]) -> None:
    """A worker process: its envs, driven by ("reset", [(index, seed, episode)]) / ("step", [(index, actions)])."""
    import torch
    torch.set_num_threads(1)
    envs = [MetaWorldEnv(task, image_size=size, cameras=cameras, max_steps=max_steps)
            for task, size, cameras, max_steps in specs]
    try:
        while True:
            command, jobs = conn.recv()
            if command == "close":
                break
            function = _reset if command == "reset" else _step
            conn.send([function(envs[i], *args) for i, *args in jobs])
    finally:
        for env in envs:
            env.close()


class ChunkEnvs:
    """`len(tasks)` Meta-World envs (env i runs `tasks[i]`) in `workers` processes (0: in this process)."""

    def __init__(self, tasks: list[str], image_size: int, cameras: tuple[str, ...], max_steps: int, workers: int = 2):
        self.tasks, self.n = list(tasks), len(tasks)
        specs = [(task, image_size, tuple(cameras), max_steps) for task in self.tasks]
        self.workers = min(workers, self.n)
        self.owner = [i % max(self.workers, 1) for i in range(self.n)]  # env i lives in worker owner[i]
        self.local = self.slot = None
        if self.workers == 0:
            self.local = [MetaWorldEnv(t, image_size=s, cameras=c, max_steps=m) for t, s, c, m in specs]
            return
        context = mp.get_context("spawn")  # fork would copy GL contexts
        self.slot = [sum(o == self.owner[i] for o in self.owner[:i]) for i in range(self.n)]  # index in its worker
        self.conns, self.processes = [], []
        for w in range(self.workers):
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(child, [s for s, o in zip(specs, self.owner) if o == w]),
                                      daemon=True)
            process.start()
            self.conns.append(parent)
            self.processes.append(process)

    def _run(self, command: str, jobs: dict[int, tuple]) -> dict[int, Any]:
        """Run `command` with `jobs[i]` in env i, every worker at once; the results by env index."""
        if self.local is not None:
            function = _reset if command == "reset" else _step
            return {i: function(self.local[i], *args) for i, args in jobs.items()}
        per_worker = [[i for i in jobs if self.owner[i] == w] for w in range(self.workers)]
        for w, indices in enumerate(per_worker):
            if indices:
                self.conns[w].send((command, [(self.slot[i], *jobs[i]) for i in indices]))
        results = {}
        for w, indices in enumerate(per_worker):
            if indices:
                results.update(zip(indices, self.conns[w].recv()))
        return results

    def reset(self, seed: int, episodes: list[int]) -> list[dict[str, Any]]:
        """Env i starts placement (seed, episodes[i]) with its task's canonical instruction."""
        results = self._run("reset", {i: (seed, e) for i, e in enumerate(episodes)})
        return [results[i] for i in range(self.n)]

    def step(self, actions: np.ndarray, active: np.ndarray) -> ChunkResult:
        """Execute chunk `actions[i]` (K, A) in every active env i."""
        results = self._run("step", {i: (np.asarray(actions[i]),) for i in range(self.n) if active[i]})
        out = ChunkResult([None] * self.n, np.zeros(self.n, bool), np.zeros(self.n, bool), np.zeros(self.n, bool),
                          np.zeros(self.n), np.zeros(self.n, int))
        for i, (obs, success, done, truncated, dense, steps) in results.items():
            out.obs[i] = obs
            out.success[i], out.done[i], out.truncated[i], out.dense[i], out.steps[i] = (success, done, truncated,
                                                                                          dense, steps)
        return out

    def close(self) -> None:
        if self.local is not None:
            for env in self.local:
                env.close()
            return
        for conn, process in zip(self.conns, self.processes):
            conn.send(("close", None))
            process.join(timeout=10)
