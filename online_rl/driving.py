"""The driving benchmark for online RL: highway-env scenarios (`common.envs.highway`) stepped one plan at a time, on
the worker plumbing of Meta-World's chunk envs (envs.py); `--env driving` in the RL config.

A decision is a plan, the driving policy's action: K = 5 ego-frame waypoints 0.5, 1.0, ..., 2.5 s ahead (metres,
x forward, y left). The env follows it for `plan_steps` control steps at 10 Hz before the policy plans again: each
step re-reads the plan at the time elapsed since it was made, in the current ego frame (`Plan`), and tracks it with
the benchmark's pure pursuit (`hw.waypoints_to_controls`), as closed-loop evaluation tracks a fresh plan every step
(`plan_steps` = 1 is exactly that).

Episodes: env i plays scenario `tasks[i]` from highway-env seed `seed + episode` (training: `placement_seed` 5000 +
episode; the demonstrations and DAgger use the first training seeds 0, 1, ..., evaluation `hw.seeds("eval")` from
10^6) and ends at a collision, on arrival or at the horizon (`max_steps` / 10 s). The horizon is part of the task
(arrive within it; the score is the whole episode's), so no episode is truncated: nothing is bootstrapped past it.

Rewards. The benchmark defines no per-step reward, only the metrics of a whole episode (`hw.episode_metrics`); the
RL reward is one of them, given on the chunk that ends the episode (0 on the others):
    "score"    the episode's PDM-style score NC·DAC·(5·TTC + 2·C + 5·EP)/12 ∈ [0, 1], what the benchmark ranks
               policies by. Its EP is progress relative to the expert's on the same seed: `hw.expert_reference`
               drives the expert once per episode (in the env's worker; about 1.5x the cost of the episode).
    "success"  1 on arrival (`arrived`: the route's goal reached, or the highway survived to the horizon).
Each chunk also reports `collision` (an event: the loop logs each iteration's collision rate).

Observations: the policy contract's TensorDict (`observations`): `bev` uint8 (B, 64, 64, 5), `proprio` the raw ego
state (B, 7), `command` int64 (B,), `language` the benchmark's sentence; driving_vla/policy.py turns them into its
model's inputs exactly as its closed-loop evaluation does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict

from common.envs import highway as hw
from common.policy import Policy

from online_rl.envs import ChunkEnvs, ChunkResult

PLAN_TIMES = np.array([0, *hw.WAYPOINT_STEPS]) / hw.FREQUENCY  # [s] the plan's start and its waypoints


def observations(obs: list[dict[str, Any]], device: str | torch.device = "cpu") -> TensorDict:
    """`DrivingEnv.observation()` dicts (one per env) as the policy contract's TensorDict of batch [B]."""
    return TensorDict({"bev": torch.from_numpy(np.stack([o["bev"] for o in obs])),
                       "proprio": torch.from_numpy(np.stack([o["state"] for o in obs]).astype(np.float32)),
                       "command": torch.as_tensor([int(o["command"]) for o in obs], dtype=torch.int64),
                       "language": NonTensorStack(*(o["text"] for o in obs))}, batch_size=[len(obs)], device=device)


def horizon_s(cfg: Any) -> float:
    """The episode limit [s] of a run: `max_steps` at 10 Hz."""
    return cfg.max_steps / hw.FREQUENCY


class Plan:
    """Waypoints (K, 2) planned at an ego state (the benchmark's raw `state`: x, y, heading, speed, ...), kept in
    the world frame with the start, at PLAN_TIMES."""

    def __init__(self, waypoints: np.ndarray, state: np.ndarray):
        start = np.zeros((1, 2))
        self.points = hw.from_ego_frame(np.concatenate([start, np.asarray(waypoints).reshape(-1, 2)]), state[:2],
                                        float(state[2]))

    def controls(self, elapsed: float, state: np.ndarray) -> np.ndarray:
        """The normalised [acceleration, steering] `elapsed` seconds after planning, from ego state `state`: the plan
        0.5, ..., 2.5 s ahead of now (linear in time between its points, the last segment extended), in the current
        ego frame, tracked by `hw.waypoints_to_controls`."""
        times = elapsed + PLAN_TIMES[1:]
        i = np.clip(np.searchsorted(PLAN_TIMES, times, side="right") - 1, 0, len(PLAN_TIMES) - 2)
        w = ((times - PLAN_TIMES[i]) / (PLAN_TIMES[i + 1] - PLAN_TIMES[i]))[:, None]
        ahead = self.points[i] + w * (self.points[i + 1] - self.points[i])
        return hw.waypoints_to_controls(hw.to_ego_frame(ahead, state[:2], float(state[2])), float(state[3]))


class PlanEnv:
    """One scenario, stepped a plan at a time (what a worker holds)."""

    def __init__(self, scenario: str, horizon: float, plan_steps: int):
        self.scenario, self.horizon, self.plan_steps = scenario, horizon, plan_steps
        self.env = hw.make_scenario(scenario, horizon_s=horizon)

    def reset(self, seed: int, episode: int) -> dict[str, Any]:
        return self.env.reset(seed + episode)

    def step(self, waypoints: np.ndarray) -> tuple:
        """(obs, success, done, truncated, reward, steps, events) of one plan: `plan_steps` steps or to the end."""
        plan, env = Plan(waypoints, self.env.ego_state()), self.env
        done, steps = False, 0
        while not done and steps < self.plan_steps:
            done = env.advance(plan.controls(steps / hw.FREQUENCY, env.ego_state()))
            steps += 1
        log, score = env.log, 0.0
        if done:  # the expert's progress on this seed is the reference of the score's EP
            expert = hw.expert_reference(self.scenario, env.seed, self.horizon)
            score = hw.episode_metrics(log, expert["progress"])["score"]
        success = log.arrived and not log.collision
        return env.observation(), success, done, False, score, steps, dict(collision=log.collision)

    def close(self) -> None:
        self.env.close()


def _reset(env: PlanEnv, seed: int, episode: int) -> dict[str, Any]:
    return env.reset(seed, episode)


def _step(env: PlanEnv, waypoints: np.ndarray) -> tuple:
    return env.step(waypoints)


class DrivingEnvs(ChunkEnvs):
    """`len(scenarios)` highway-env scenarios (env i plays `scenarios[i]`) in `workers` processes (0: in this one),
    stepped a plan (K, 2) at a time."""
    make, reset_env, step_env = staticmethod(PlanEnv), staticmethod(_reset), staticmethod(_step)

    def __init__(self, scenarios: list[str], horizon: float, plan_steps: int, workers: int = 2):
        self._start(list(scenarios), [(s, horizon, plan_steps) for s in scenarios], workers)

    def observations(self, obs: list[dict[str, Any]], device: str | torch.device = "cpu") -> TensorDict:
        return observations(obs, device)

    def reward(self, result: ChunkResult, cfg: Any) -> np.ndarray:
        """Each env's reward for its plan under the run's `cfg.reward`: the episode's score ("score") or arrival
        ("success"), on the plan that ends the episode."""
        return result.dense if cfg.reward == "score" else result.success.astype(float)


# ---------------------------------------------------------------------------------------------------- evaluation
class PlanFollower:
    """`hw.evaluate`'s policy: a deterministic plan of the contract's policy every `plan_steps` steps, followed in
    between as the training envs follow it."""

    def __init__(self, policy: Policy, plan_steps: int):
        self.policy, self.plan_steps, self.t, self.plan = policy, plan_steps, 0, None

    def reset(self) -> None:
        self.t = 0

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        elapsed = self.t % self.plan_steps
        if elapsed == 0:
            with torch.no_grad():
                td = observations([obs], next(self.policy.parameters()).device)
                self.plan = Plan(self.policy(td, deterministic=True)["action"][0].cpu().numpy(), obs["state"])
        self.t += 1
        return self.plan.controls(elapsed / hw.FREQUENCY, obs["state"])


def evaluate_policy(policy: Policy, cfg: Any, out_dir: Path) -> dict:
    """Closed-loop episodes on the benchmark's evaluation seeds (`hw.seeds("eval", eval_episodes)` of every scenario
    of `cfg.tasks`), the policy planning deterministically: the benchmark's metrics into `out_dir` (eval.md, and
    eval.json with every episode's row); per scenario the arrival rate (`success_rate`), score and collision rate."""
    result = hw.evaluate(PlanFollower(policy, cfg.plan_steps), cfg.tasks, cfg.eval_episodes, horizon_s(cfg),
                         progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.md").write_text(hw.format_results(result) + "\n")
    (out_dir / "eval.json").write_text(json.dumps(result.rows, indent=1, default=float))
    return {name: dict(success_rate=m["arrived"][0], score=m["score"][0], collision=m["collision"][0],
                       episodes=int(m["episodes"][0])) for name, m in result.summary.items() if name != "all"}
