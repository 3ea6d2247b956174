"""Our Meta-World tasks as an RLinf environment type (`env_type: embodied_models_metaworld`), rendered as our
policies were trained: the checkpoint's cameras and image size, the 4-D proprio (hand xyz + gripper), our instruction
paraphrases, our reproducible placements (`common.envs.metaworld`). A module of its own so that only RLinf's env
workers import MuJoCo: `adapters.rlinf.register()` routes the env worker's lookup here (see adapters/rlinf.py).

RLinf's env types are a closed enum (rlinf/envs/__init__.py `SupportedEnvType`, `get_env_cls`); this class has the
interface of its Meta-World env (rlinf/envs/metaworld/metaworld_env.py, RLinf 0.3.0), which the env worker
(rlinf/workers/env/env_worker.py) drives:

    __init__(cfg, num_envs, seed_offset, total_num_processes, worker_info)    env_worker.py `_setup_env_and_wrappers`
    reset(env_idx=None, reset_state_ids=None) -> (obs, infos)
    step(actions, auto_reset=True) -> (obs, reward (N,), terminations (N,), truncations (N,), infos)
    chunk_step(chunk_actions (N, K, 4)) -> (obs_list (K entries), rewards (N, K), terminations (N, K),
                                            truncations (N, K), infos_list (K entries))
    update_reset_state_ids(), is_start, elapsed_steps

    obs: main_images uint8 (N, S, S, 3) camera 0 (wrist_images: camera 1, for a policy with two), states float32
         (N, 4), task_descriptions N strings: the keys of metaworld_env.py `_wrap_obs`, which
         `adapters.rlinf.RLinfPolicy.observations` reads

Per step, as RLinf's Meta-World env: termination = the task's success at that step, truncation = the episode's step
count reached `max_episode_steps`, reward = `reward_coef` x termination (its difference to the last step's with
`use_rel_reward`), `infos["episode"]` = success_once / return / episode_len / reward; `ignore_terminations` moves the
success to `success_at_end`; `auto_reset` resets the envs that ended after the chunk, with the old observation in
`infos["final_observation"]`, and reports the chunk's termination / truncation on its last step only.

Where it differs from RLinf's Meta-World env, on purpose:
- Placements: reset-state id r is episode r % trials_per_task of task r // trials_per_task, i.e. placement
  (`placement_seed`, that episode) of `common.envs.metaworld.variation`: the envs of a GRPO group (same id) start
  from the same object and goal positions. (RLinf's id picks only the task, metaworld_env.py:273-291; its trial id
  reaches no env.) No 15 zero-action steps after a reset (metaworld_env.py:59, 311-316): our demos and evaluations
  start at the reset.
- A fixed group reset on the first reset of a rollout (`is_start`, set by the env worker before it resets), as
  RLinf's LIBERO env does (libero_env.py:683-694); RLinf's Meta-World env draws random ids there.
- Images are rendered once per chunk, after its last action (what the policy sees next, as online_rl/ and our
  evaluation do); `obs_list` holds None for the chunk's earlier steps, which RLinf's video recorder allows for
  (rlinf/envs/wrappers/record_video.py:381-382).
- The envs step in this process, one after another (RLinf's run one subprocess each); scale out with env workers.

Config keys (`env.train` / `env.eval`), RLinf's own as its Meta-World env reads them (seed, group_size,
use_fixed_reset_state_ids, use_ordered_reset_state_ids, is_eval, auto_reset, ignore_terminations, max_episode_steps,
reward_coef, use_rel_reward, video_cfg), plus:
    tasks            Meta-World task names, "mt10" or "mt50"
    model_path       the checkpoint the policy comes from (e.g. ${actor.model.model_path}): cameras and image size
                     as it was trained; `cameras` / `image_size` override them
    trials_per_task  placements per task (default 50); placement_seed (default 5000 for training, as online_rl/;
                     1000 with is_eval, our evaluation's)
    instruction      "canonical" (each task's first paraphrase, as our evaluation; default) or "paraphrase" (one of
                     its training paraphrases per placement)
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from rlinf.envs.utils import to_tensor

from adapters.rlinf import CAMERAS
from common.envs.metaworld import INSTRUCTIONS, MetaWorldEnv, instruction_for, resolve_tasks
from common.train import read_config, resolve_checkpoint

TRAIN_PLACEMENT_SEED, EVAL_PLACEMENT_SEED = 5000, 1000  # online_rl's training placements; our evaluation's


class RLinfMetaWorldEnv:
    """`num_envs` of our Meta-World envs behind RLinf's env interface (module docstring)."""

    def __init__(self, cfg, num_envs: int, seed_offset: int, total_num_processes: int, worker_info: Any = None):
        self.cfg, self.num_envs, self.seed_offset = cfg, num_envs, seed_offset
        self.total_num_processes, self.worker_info = total_num_processes, worker_info
        self.seed = cfg.seed + seed_offset  # RLinf's: draws this process's random reset-state ids
        self.group_size = cfg.group_size
        self.num_group = num_envs // self.group_size
        self.use_fixed_reset_state_ids = cfg.use_fixed_reset_state_ids
        self.is_eval = cfg.get("is_eval", False)
        self.auto_reset, self.ignore_terminations = cfg.auto_reset, cfg.ignore_terminations
        self.max_episode_steps = cfg.max_episode_steps
        self.video_cfg = cfg.get("video_cfg")

        self.tasks = resolve_tasks(list(cfg.tasks) if not isinstance(cfg.tasks, str) else cfg.tasks)
        self.trials_per_task = cfg.get("trials_per_task", 50)
        self.total_num_group_envs = len(self.tasks) * self.trials_per_task  # RLinf's name: reset-state ids
        self.placement_seed = cfg.get("placement_seed", EVAL_PLACEMENT_SEED if self.is_eval else TRAIN_PLACEMENT_SEED)
        if cfg.get("instruction", "canonical") not in ("canonical", "paraphrase"):
            raise ValueError(f"instruction must be 'canonical' or 'paraphrase', got {cfg.instruction!r}")
        trained = read_config(resolve_checkpoint(cfg.model_path))["config"] if cfg.get("model_path") else {}
        if trained.get("state_key", "observation.state") != "observation.state":
            raise ValueError(f"the checkpoint reads {trained['state_key']}; RLinf's `states` are the 4-D proprio")
        self.cameras = tuple(cfg.get("cameras") or trained.get("cameras", ("corner",)))
        self.image_size = int(cfg.get("image_size") or trained.get("demo_image_size", 128))
        if len(self.cameras) > len(CAMERAS):
            raise ValueError(f"RLinf's observations hold {len(CAMERAS)} images ({CAMERAS}), got {self.cameras}")

        self._generator = np.random.default_rng(seed=self.seed)
        self.envs: list[MetaWorldEnv | None] = [None] * num_envs  # built on the first reset of each env's task
        self._last: list[dict[str, Any] | None] = [None] * num_envs  # each env's latest rendered observation
        self._is_start = True
        self._elapsed_steps = np.zeros(num_envs, dtype=np.int32)
        self.prev_step_reward = np.zeros(num_envs)
        self.success_once, self.returns = np.zeros(num_envs, dtype=bool), np.zeros(num_envs)
        self.update_reset_state_ids()

    # ------------------------------------------------------------------------------------- RLinf's bookkeeping
    @property
    def elapsed_steps(self) -> np.ndarray:
        return self._elapsed_steps

    @property
    def info_logging_keys(self) -> list[str]:
        return []

    @property
    def is_start(self) -> bool:
        return self._is_start

    @is_start.setter
    def is_start(self, value: bool) -> None:
        self._is_start = value

    def update_reset_state_ids(self) -> None:
        """The next rollout's reset-state ids: one per group, repeated over its `group_size` adjacent envs. Random,
        or with `is_eval` / `use_ordered_reset_state_ids` this process's own block of ids."""
        if self.is_eval or self.cfg.get("use_ordered_reset_state_ids", False):
            ids = (self.seed_offset * self.num_group + np.arange(self.num_group)) % self.total_num_group_envs
        else:
            ids = self._generator.integers(low=0, high=self.total_num_group_envs, size=(self.num_group,))
        self.reset_state_ids = ids.repeat(self.group_size)

    def placement(self, reset_state_id: int) -> tuple[str, int]:
        """(task, episode) of a reset-state id."""
        return self.tasks[reset_state_id // self.trials_per_task], int(reset_state_id % self.trials_per_task)

    # ------------------------------------------------------------------------------------------- reset / step
    def reset(self, env_idx=None, reset_state_ids=None) -> tuple[dict[str, Any], dict]:
        env_idx = np.arange(self.num_envs) if env_idx is None else np.atleast_1d(env_idx)
        if self.is_start:  # a rollout's first reset: the groups' ids (LIBERO's libero_env.py:683-694)
            if self.use_fixed_reset_state_ids:
                reset_state_ids = self.reset_state_ids[env_idx]
            self._is_start = False
        if reset_state_ids is None:
            reset_state_ids = self._generator.integers(low=0, high=self.total_num_group_envs, size=(len(env_idx),))
        for i, reset_state_id in zip(env_idx, reset_state_ids):
            task, episode = self.placement(int(reset_state_id))
            if self.envs[i] is None or self.envs[i].task != task:
                if self.envs[i] is not None:
                    self.envs[i].close()
                self.envs[i] = MetaWorldEnv(task, image_size=self.image_size, cameras=self.cameras,
                                            max_steps=self.max_episode_steps)
            paraphrase = self.cfg.get("instruction", "canonical") == "paraphrase"
            instruction = instruction_for(task, self.placement_seed, episode) if paraphrase else INSTRUCTIONS[task][0]
            self._last[i] = self.envs[i].reset(self.placement_seed, episode, instruction)
        self.prev_step_reward[env_idx], self.success_once[env_idx], self.returns[env_idx] = 0.0, False, 0.0
        self._elapsed_steps[env_idx] = 0
        return self._wrap_obs(), {}

    def step(self, actions, auto_reset: bool = True, render: bool = True):
        """One action (N, 4) in every env. `render=False` (chunk_step's earlier steps): no images, obs None."""
        if any(env is None for env in self.envs):
            raise RuntimeError("call reset() before step()")
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().cpu().numpy()
        self._elapsed_steps += 1
        success = np.zeros(self.num_envs, dtype=bool)
        for i, env in enumerate(self.envs):
            obs, _, _, info = env.step(actions[i], render=render)
            success[i] = info["success"]
            if render:
                self._last[i] = obs
        terminations = success.copy()
        truncations = self.elapsed_steps >= self.max_episode_steps
        obs = self._wrap_obs() if render else None
        step_reward = self._calc_step_reward(terminations)
        infos = self._record_metrics(step_reward, terminations, {"success": to_tensor(success)})
        if self.ignore_terminations:
            infos["episode"]["success_at_end"] = to_tensor(terminations)
            terminations[:] = False
        dones = terminations | truncations
        if dones.any() and auto_reset and self.auto_reset:
            obs, infos = self._handle_auto_reset(dones, obs, infos)
        return obs, to_tensor(step_reward), to_tensor(terminations), to_tensor(truncations), infos

    def chunk_step(self, chunk_actions):
        """K actions (N, K, 4) in every env, rendered after the last; per-step rewards / terminations / truncations
        (N, K) as metaworld_env.py `chunk_step` lays them out."""
        chunk_size = chunk_actions.shape[1]
        obs_list, infos_list, rewards, raw_terminations, raw_truncations = [], [], [], [], []
        for k in range(chunk_size):
            obs, reward, terminations, truncations, infos = self.step(chunk_actions[:, k], auto_reset=False,
                                                                      render=k == chunk_size - 1)
            obs_list.append(obs)
            infos_list.append(infos)
            rewards.append(reward)
            raw_terminations.append(terminations)
            raw_truncations.append(truncations)
        rewards = torch.stack(rewards, dim=1)
        raw_terminations, raw_truncations = torch.stack(raw_terminations, dim=1), torch.stack(raw_truncations, dim=1)
        past_terminations, past_truncations = raw_terminations.any(dim=1), raw_truncations.any(dim=1)
        past_dones = past_terminations | past_truncations
        if past_dones.any() and self.auto_reset:
            obs_list[-1], infos_list[-1] = self._handle_auto_reset(past_dones.numpy(), obs_list[-1], infos_list[-1])
        if self.auto_reset or self.ignore_terminations:  # the chunk's outcome on its last step
            terminations, truncations = torch.zeros_like(raw_terminations), torch.zeros_like(raw_truncations)
            terminations[:, -1], truncations[:, -1] = past_terminations, past_truncations
        else:
            terminations, truncations = raw_terminations, raw_truncations
        return obs_list, rewards, terminations, truncations, infos_list

    def close(self) -> None:
        for env in self.envs:
            if env is not None:
                env.close()

    # ---------------------------------------------------------------------------------------------- internals
    def _wrap_obs(self) -> dict[str, Any]:
        obs = {CAMERAS[c]: torch.from_numpy(np.stack([last["images"][camera] for last in self._last]))
               for c, camera in enumerate(self.cameras)}
        obs["states"] = torch.from_numpy(np.stack([last["state"] for last in self._last]))
        obs["task_descriptions"] = [last["instruction"] for last in self._last]
        return obs

    def _calc_step_reward(self, terminations: np.ndarray) -> np.ndarray:
        reward = self.cfg.reward_coef * terminations
        reward_diff = reward - self.prev_step_reward
        self.prev_step_reward = reward
        return reward_diff if self.cfg.use_rel_reward else reward

    def _record_metrics(self, step_reward: np.ndarray, terminations: np.ndarray, infos: dict) -> dict:
        self.returns += step_reward
        self.success_once = self.success_once | terminations
        infos["episode"] = to_tensor({"success_once": self.success_once.copy(), "return": self.returns.copy(),
                                      "episode_len": self.elapsed_steps.copy(),
                                      "reward": self.returns / self.elapsed_steps})
        return infos

    def _handle_auto_reset(self, dones: np.ndarray, final_obs: dict, infos: dict) -> tuple[dict, dict]:
        final_obs, final_info = copy.deepcopy(final_obs), copy.deepcopy(infos)
        env_idx = np.arange(self.num_envs)[dones]
        obs, infos = self.reset(env_idx, self.reset_state_ids[env_idx] if self.use_fixed_reset_state_ids else None)
        infos.update(final_observation=final_obs, final_info=final_info, _final_info=dones, _final_observation=dones,
                     _elapsed_steps=dones)
        return obs, infos
