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
The worker plumbing takes the env's functions as class attributes (`make`, `reset_env`, `step_env`), so the driving
envs (online_rl/driving.py) run on it too.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tensordict import TensorDict

from common.policy import observations

if TYPE_CHECKING:
    from common.envs.metaworld import MetaWorldEnv


@dataclass
class ChunkResult:
    """What one chunk did in each env (inactive envs: zeros, `obs` None)."""
    obs: list[dict[str, Any] | None]  # the observation after the chunk (images rendered)
    success: np.ndarray  # (N,) bool: the episode succeeded during this chunk
    done: np.ndarray  # (N,) bool: the episode ended (success or step limit)
    truncated: np.ndarray  # (N,) bool: it ended by the step limit, not by success (bootstrap its value)
    dense: np.ndarray  # (N,) float: the env's own reward over the executed steps (Meta-World: the sum of its shaped
    #                     rewards; driving: the episode's score on the chunk that ends it)
    steps: np.ndarray  # (N,) int: environment steps executed
    events: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) bool per other episode event of this chunk
    #                                                               (driving: collision; none in Meta-World)


def _make(task: str, image_size: int, cameras: tuple[str, ...], max_steps: int) -> MetaWorldEnv:
    from common.envs.metaworld import MetaWorldEnv  # here: the driving envs' workers need no MuJoCo
    return MetaWorldEnv(task, image_size=image_size, cameras=cameras, max_steps=max_steps)


def _reset(env: MetaWorldEnv, seed: int, episode: int) -> dict[str, Any]:
    return env.reset(seed, episode)


def _step(env: MetaWorldEnv, actions: np.ndarray) -> tuple:
    """(obs, success, done, truncated, dense, steps, events) of one chunk."""
    dense, steps, done, info = 0.0, 0, False, {"success": False}
    for i, action in enumerate(actions):
        obs, reward, done, info = env.step(action, render=False)
        dense, steps = dense + reward, steps + 1
        if done:
            break
    obs = env.observation()  # rendered once, after the chunk
    return obs, info["success"], done, done and not info["success"], dense, steps, {}


def _serve(conn, make, reset, step, specs: list[tuple]) -> None:
    """A worker process: its envs `make(*spec)`, driven by ("reset", [(index, seed, episode)]) / ("step", [(index,
    actions)])."""
    torch.set_num_threads(1)
    envs = [make(*spec) for spec in specs]
    try:
        while True:
            command, jobs = conn.recv()
            if command == "close":
                break
            function = reset if command == "reset" else step
            conn.send([function(envs[i], *args) for i, *args in jobs])
    finally:
        for env in envs:
            env.close()


class ChunkEnvs:
    """`len(tasks)` Meta-World envs (env i runs `tasks[i]`) in `workers` processes (0: in this process); their
    observations become the policy contract's TensorDict with `cameras` and `state_key` (`observations`)."""
    make, reset_env, step_env = staticmethod(_make), staticmethod(_reset), staticmethod(_step)  # picklable by name

    def __init__(self, tasks: list[str], image_size: int, cameras: tuple[str, ...], max_steps: int, workers: int = 2,
                 state_key: str = "observation.state"):
        self.cameras, self.state_key = tuple(cameras), state_key
        self._start(list(tasks), [(task, image_size, tuple(cameras), max_steps) for task in tasks], workers)

    def _start(self, tasks: list[str], specs: list[tuple], workers: int) -> None:
        """Env i is `make(*specs[i])`, in this process or in worker i % workers."""
        self.tasks, self.n = tasks, len(tasks)
        self.workers = min(workers, self.n)
        self.owner = [i % max(self.workers, 1) for i in range(self.n)]  # env i lives in worker owner[i]
        self.local = self.slot = None
        if self.workers == 0:
            self.local = [self.make(*spec) for spec in specs]
            return
        context = mp.get_context("spawn")  # fork would copy GL contexts
        self.slot = [sum(o == self.owner[i] for o in self.owner[:i]) for i in range(self.n)]  # index in its worker
        self.conns, self.processes = [], []
        for w in range(self.workers):
            parent, child = context.Pipe()
            process = context.Process(target=_serve, daemon=True, args=(
                child, self.make, self.reset_env, self.step_env, [s for s, o in zip(specs, self.owner) if o == w]))
            process.start()
            self.conns.append(parent)
            self.processes.append(process)

    def _run(self, command: str, jobs: dict[int, tuple]) -> dict[int, Any]:
        """Run `command` with `jobs[i]` in env i, every worker at once; the results by env index."""
        if self.local is not None:
            function = self.reset_env if command == "reset" else self.step_env
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
        for i, (obs, success, done, truncated, dense, steps, events) in results.items():
            out.obs[i] = obs
            out.success[i], out.done[i], out.truncated[i], out.dense[i], out.steps[i] = (success, done, truncated,
                                                                                          dense, steps)
            for key, value in events.items():
                out.events.setdefault(key, np.zeros(self.n, bool))[i] = value
        return out

    def observations(self, obs: list[dict[str, Any]], device: str | torch.device = "cpu") -> TensorDict:
        """Env observations as the policy contract's TensorDict (`common.policy.observations`)."""
        return observations(obs, self.cameras, self.state_key, device)

    def reward(self, result: ChunkResult, cfg: Any) -> np.ndarray:
        """Each env's reward for its chunk under the run's `cfg.reward`: 1 on success, or Meta-World's shaped
        reward times `cfg.dense_scale` ("dense")."""
        return result.dense * cfg.dense_scale if cfg.reward == "dense" else result.success.astype(float)

    def close(self) -> None:
        if self.local is not None:
            for env in self.local:
                env.close()
            return
        for conn, process in zip(self.conns, self.processes):
            conn.send(("close", None))
            process.join(timeout=10)
