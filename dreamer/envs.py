"""Pixel environments for DreamerV3: dm-control from 64×64 renders, and a gymnasium adapter.

Both return the same observation dict at every agent step: `image` (S, S, 3) uint8, `reward` (summed over the action
repeat; 0 at reset), `is_first`, `is_last`, `is_terminal`. Continuous actions are in [−1, 1] (dm-control's action
spec, rescaled for gymnasium boxes); discrete actions are one-hot vectors.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; before mujoco is imported

import numpy as np


class DMCPixels:
    """A dm-control suite task from pixels, as DreamerV3 uses it (`embodied/envs/dmc.py`): action repeat with the
    rewards summed, `time_limit` environment steps per episode (the suite's own limit is 1000), camera 0
    (quadruped: 2), never terminal.

    `fast_render` turns off shadows, reflections and multisampling (~6x faster on Mesa's software renderer, but
    different pixels); the default keeps dm-control's standard look. Episode k is seeded with (seed, k), so a run
    resumed at an episode boundary sees the same episodes as an uninterrupted one.
    """

    def __init__(self, name: str, size: int = 64, repeat: int = 2, time_limit: int = 1000, seed: int = 0,
                 fast_render: bool = False):
        from dm_control import suite
        domain, _, task = name.partition("-")
        if (domain, task) not in suite.ALL_TASKS:
            raise ValueError(f"unknown dm-control task {name!r}; e.g. cartpole-balance, walker-walk")
        self._make = lambda episode: suite.load(domain, task, task_kwargs=dict(
            random=np.random.RandomState([seed, episode])))
        self.size, self.repeat, self.time_limit, self.fast_render = size, repeat, time_limit, fast_render
        self.steps = 0
        self.camera = 2 if domain == "quadruped" else 0
        self.episode = 0
        self.env = self._make(0)
        spec = self.env.action_spec()
        self.action_dim, self.discrete = int(spec.shape[0]), False
        self._low, self._high = spec.minimum, spec.maximum

    def _render(self) -> np.ndarray:
        return self.env.physics.render(self.size, self.size, camera_id=self.camera)

    def reset(self) -> dict:
        self.env = self._make(self.episode)
        self.episode += 1
        if self.fast_render:
            model = self.env.physics.model
            model.vis.quality.offsamples = 0  # no multisampling
            model.light_castshadow[:] = 0  # no shadows
            model.mat_reflectance[:] = 0  # no reflections
        self.env.reset()
        self.steps = 0
        return dict(image=self._render(), reward=0.0, is_first=True, is_last=False, is_terminal=False)

    def step(self, action: np.ndarray) -> dict:
        action = self._low + (np.clip(action, -1, 1) + 1) / 2 * (self._high - self._low)
        reward, step = 0.0, None
        for _ in range(self.repeat):
            step = self.env.step(action)
            reward += step.reward or 0.0
            self.steps += 1
            if step.last() or self.steps >= self.time_limit:
                break
        terminal = step.last() and step.discount == 0
        return dict(image=self._render(), reward=reward, is_first=False,
                    is_last=bool(step.last() or self.steps >= self.time_limit), is_terminal=bool(terminal))


class GymPixels:
    """A gymnasium environment seen through its `rgb_array` renders, resized to `size` (area averaging), with action
    repeat. Discrete actions come as one-hot vectors; box actions in [−1, 1] are rescaled to the env's bounds."""

    def __init__(self, name: str, size: int = 64, repeat: int = 2, time_limit: int = 1000, seed: int = 0):
        import gymnasium as gym
        self.env = gym.make(name, render_mode="rgb_array", max_episode_steps=time_limit)
        self.size, self.repeat, self.seed, self.episode = size, repeat, seed, 0
        space = self.env.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.action_dim = int(space.n) if self.discrete else int(np.prod(space.shape))
        if not self.discrete:
            self._low, self._high = space.low, space.high

    def _render(self) -> np.ndarray:
        import PIL.Image
        frame = self.env.render()
        return np.asarray(PIL.Image.fromarray(frame).resize((self.size, self.size), PIL.Image.BOX))

    def reset(self) -> dict:
        self.env.reset(seed=self.seed * 100_003 + self.episode)
        self.episode += 1
        return dict(image=self._render(), reward=0.0, is_first=True, is_last=False, is_terminal=False)

    def step(self, action: np.ndarray) -> dict:
        if self.discrete:
            action = int(np.argmax(action))
        else:
            action = self._low + (np.clip(action, -1, 1) + 1) / 2 * (self._high - self._low)
        reward, terminated, truncated = 0.0, False, False
        for _ in range(self.repeat):
            _, r, terminated, truncated, _ = self.env.step(action)
            reward += float(r)
            if terminated or truncated:
                break
        return dict(image=self._render(), reward=reward, is_first=False, is_last=terminated or truncated,
                    is_terminal=terminated)


def make_env(task: str, size: int, repeat: int, time_limit: int, seed: int, fast_render: bool = False):
    """"dmc/<domain>-<task>" or "gym/<id>"; `time_limit` environment steps per episode at most."""
    suite, _, name = task.partition("/")
    if suite == "dmc":
        return DMCPixels(name, size, repeat, time_limit, seed, fast_render)
    if suite == "gym":
        return GymPixels(name, size, repeat, time_limit, seed)
    raise ValueError(f"task {task!r}: use 'dmc/<domain>-<task>' or 'gym/<env id>'")
