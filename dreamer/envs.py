"""Environments for DreamerV3: dm-control from 64×64 renders (or its state vector), and a gymnasium adapter.

Both return the same observation dict at every agent step: `image` (S, S, 3) uint8 — or, with `obs="vector"`, the
simulator's observation flattened to float32 `vector` (no rendering) —, `reward` (summed over the action repeat; 0 at
reset), `is_first`, `is_last`, `is_terminal`. Continuous actions are in [−1, 1] (dm-control's action
spec, rescaled for gymnasium boxes); discrete actions are one-hot vectors.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; before mujoco is imported

import numpy as np


class DMC:
    """A dm-control suite task from pixels (or its state: DreamerV3's "DMC Proprio"), as DreamerV3 uses it
    (`embodied/envs/dmc.py`): action repeat with the rewards summed, at most `time_limit` environment steps per
    episode (None: the suite's own, 1000), camera 0 (quadruped: 2), never terminal.

    `fast_render` turns off shadows, reflections and multisampling (~6x faster on Mesa's software renderer, but
    different pixels); the default keeps dm-control's standard look. Episode k is seeded with (seed, k), so a run
    resumed at an episode boundary sees the same episodes as an uninterrupted one.
    """

    def __init__(self, name: str, size: int = 64, repeat: int = 2, time_limit: int | None = None, seed: int = 0,
                 fast_render: bool = False, obs: str = "image"):
        from dm_control import suite
        domain, _, task = name.partition("-")
        if (domain, task) not in suite.ALL_TASKS:
            raise ValueError(f"unknown dm-control task {name!r}; e.g. cartpole-balance, walker-walk")
        self._make = lambda episode: suite.load(domain, task, task_kwargs=dict(
            random=np.random.RandomState([seed, episode])))
        self.size, self.repeat, self.time_limit, self.fast_render, self.obs = size, repeat, time_limit, fast_render, obs
        self.steps = 0
        self.camera = 2 if domain == "quadruped" else 0
        self.episode = 0
        self.env = self._make(0)
        spec = self.env.action_spec()
        self.action_dim, self.discrete = int(spec.shape[0]), False
        self._low, self._high = spec.minimum, spec.maximum
        self.vector_dim = sum(int(np.prod(v.shape)) for v in self.env.observation_spec().values())

    def _observe(self, time_step) -> dict:
        if self.obs == "vector":
            return dict(vector=np.concatenate([np.ravel(v) for v in time_step.observation.values()]).astype(np.float32))
        return dict(image=self.env.physics.render(self.size, self.size, camera_id=self.camera))

    def reset(self) -> dict:
        self.env = self._make(self.episode)
        self.episode += 1
        if self.fast_render:
            model = self.env.physics.model
            model.vis.quality.offsamples = 0  # no multisampling
            model.light_castshadow[:] = 0  # no shadows
            model.mat_reflectance[:] = 0  # no reflections
        time_step = self.env.reset()
        self.steps = 0
        return dict(self._observe(time_step), reward=0.0, is_first=True, is_last=False, is_terminal=False)

    def step(self, action: np.ndarray) -> dict:
        action = self._low + (np.clip(action, -1, 1) + 1) / 2 * (self._high - self._low)
        reward, step = 0.0, None
        for _ in range(self.repeat):
            step = self.env.step(action)
            reward += step.reward or 0.0
            self.steps += 1
            if step.last() or self.steps == self.time_limit:
                break
        terminal = step.last() and step.discount == 0
        return dict(self._observe(step), reward=reward, is_first=False,
                    is_last=bool(step.last() or self.steps == self.time_limit), is_terminal=bool(terminal))


class Gym:
    """A gymnasium environment seen through its `rgb_array` renders, resized to `size` (area averaging), or through
    its own (Box) observation flattened with `obs="vector"`, with action repeat. Discrete actions come as one-hot
    vectors; box actions in [−1, 1] are rescaled to the env's bounds."""

    def __init__(self, name: str, size: int = 64, repeat: int = 2, time_limit: int | None = None, seed: int = 0,
                 obs: str = "image"):
        import gymnasium as gym
        self.env = gym.make(name, render_mode="rgb_array" if obs == "image" else None, max_episode_steps=time_limit)
        self.size, self.repeat, self.seed, self.episode, self.obs = size, repeat, seed, 0, obs
        self.vector_dim = int(np.prod(self.env.observation_space.shape))
        space = self.env.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.action_dim = int(space.n) if self.discrete else int(np.prod(space.shape))
        if not self.discrete:
            self._low, self._high = space.low, space.high

    def _observe(self, observation) -> dict:
        if self.obs == "vector":
            return dict(vector=np.ravel(observation).astype(np.float32))
        import PIL.Image
        frame = PIL.Image.fromarray(self.env.render()).resize((self.size, self.size), PIL.Image.BOX)
        return dict(image=np.asarray(frame))

    def reset(self) -> dict:
        observation, _ = self.env.reset(seed=self.seed * 100_003 + self.episode)
        self.episode += 1
        return dict(self._observe(observation), reward=0.0, is_first=True, is_last=False, is_terminal=False)

    def step(self, action: np.ndarray) -> dict:
        if self.discrete:
            action = int(np.argmax(action))
        else:
            action = self._low + (np.clip(action, -1, 1) + 1) / 2 * (self._high - self._low)
        reward, terminated, truncated, observation = 0.0, False, False, None
        for _ in range(self.repeat):
            observation, r, terminated, truncated, _ = self.env.step(action)
            reward += float(r)
            if terminated or truncated:
                break
        return dict(self._observe(observation), reward=reward, is_first=False, is_last=terminated or truncated,
                    is_terminal=terminated)


def make_env(task: str, size: int, repeat: int, time_limit: int | None, seed: int, fast_render: bool = False,
             obs: str = "image"):
    """"dmc/<domain>-<task>" or "gym/<id>"; `time_limit` environment steps per episode at most (None: the task's
    own); `obs` "image" (renders) or "vector" (the simulator's state)."""
    suite, _, name = task.partition("/")
    if suite == "dmc":
        return DMC(name, size, repeat, time_limit, seed, fast_render, obs)
    if suite == "gym":
        return Gym(name, size, repeat, time_limit, seed, obs)
    raise ValueError(f"task {task!r}: use 'dmc/<domain>-<task>' or 'gym/<env id>'")
