"""A faithful fake of the part of siiRL 0.2.0 that drives an embodied policy (siiRL cannot be installed beside our
torch: `vllm>=0.8.5.post1`, `tensordict<=0.9.1`). Reproduced from the siirl-0.2.0 wheel, Apache-2.0, on the path of
its embodied pipeline (`siirl/execution/dag/builtin_pipelines.py` `embodied_srpo_pipeline`: rollout_actor ->
dynaminc_sampling -> compute_reward -> calculate_advantages -> actor_old_log_prob -> reference_log_prob ->
actor_train), with siiRL's advantage and loss functions replaced by verl's real ones (installed), which siiRL's are
copies of:

- `BasePPOActor` (siirl/engine/actor/base.py) and `BaseRollout` (siirl/engine/rollout/base.py): the ABCs.
- `ActorArguments` (siirl/params/model_args.py): the fields the embodied actor and the vanilla loss read, with
  siiRL's defaults; `action_token_len` / `action_chunks_len` as the worker copies them from `embodied.*`.
- `core_algos` (siirl/dag_worker/core_algos.py): `compute_policy_loss_vanilla` is verl's
  (`verl.trainer.ppo.core_algos.compute_policy_loss_vanilla`) returning siiRL's 4-tuple (pg_loss, pg_clipfrac,
  ppo_kl, pg_clipfrac_lower) instead of verl 0.9.1's (loss, metrics); `compute_grpo_outcome_advantage` is verl's,
  given the group index as Python ints (siiRL's copy converts tensor indices with `int()`, verl's hashes them);
  `compute_response_mask` and `compute_advantage`'s GRPO branch (the embodied `finish_step` mask) are copied.
- `EmbodiedRewardManager.__call__` (siirl/engine/reward_manager/embodied.py): the score at position
  `finish_step * action_token_len - 1`, times `reward_coef`. Cut: its default scorer
  (siirl/utils/reward_score/embodied.py `compute_embodied_reward`, SRPO) shapes failed episodes' scores by VJEPA
  video-embedding distances; here the score is `complete` (what its `verify` reads), which needs no VJEPA model.
- `EmbodiedDAGWorker.train_step`: siirl/dag_worker/dagworker.py `generate_embodied_mode` (eos / pad / n_samples
  into the batch, the rollout worker's `generate_sequences`, `batch.update`, `compute_response_mask`),
  `compute_reward` (+ siirl/execution/scheduler/reward.py `compute_reward`: `token_level_scores`, no KL in the
  reward: `token_level_rewards` = scores), `compute_advantage`, `compute_old_log_prob` and `train_actor`, with the
  worker's halves from siirl/engine/fsdp_workers.py `compute_log_prob` (`micro_batch_size`, `max_token_len`,
  `use_dynamic_bsz`, `temperature`, `pad_token_id` as NonTensorData, then `old_log_probs`, `entropys`) and
  `update_actor`. Cut: Ray, FSDP / Ulysses sharding managers, offloading, the flops counter, the data buffers
  between nodes, `embodied_local_rank_sampling` (the filter that drops all-success / all-failure groups) and the
  reference model (`use_kl_loss` is off and the embodied actor has no KL term).
"""

from __future__ import annotations

import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tensordict import NonTensorData, TensorDict
from verl.trainer.ppo import core_algos as verl_core_algos


class BasePPOActor(ABC):
    def __init__(self, config):
        super().__init__()
        self.config = config

    @abstractmethod
    def compute_log_prob(self, data: TensorDict) -> torch.Tensor:
        pass

    @abstractmethod
    def update_policy(self, data: TensorDict) -> dict:
        pass


class BaseRollout(ABC):
    @abstractmethod
    def generate_sequences(self, prompts: TensorDict) -> TensorDict:
        pass


@dataclass
class ActorArguments:
    ppo_mini_batch_size: int = 256
    ppo_micro_batch_size_per_gpu: int = 1
    use_dynamic_bsz: bool = False
    grad_clip: float = 1.0
    clip_ratio: float = 0.2
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    entropy_coeff: float = 0.0
    loss_agg_mode: str = "token-mean"
    embodied_type: str | None = None
    action_token_len: int | None = None
    action_chunks_len: int | None = None
    traj_mini_batch_size: int = 16

    def get(self, key: str, default: Any = None) -> Any:  # verl's loss reads clip_ratio_c through .get
        return getattr(self, key, default)

    global_batch_info = {}  # verl's agg_loss keywords: none, as siiRL's agg_loss takes none


def compute_policy_loss_vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                                config=None, rollout_is_weights=None):
    pg_loss, metrics = verl_core_algos.compute_policy_loss_vanilla(
        old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages, response_mask=response_mask,
        loss_agg_mode=loss_agg_mode, config=config, rollout_is_weights=rollout_is_weights)
    as_tensor = lambda name: torch.tensor(metrics[name])  # noqa: E731
    return pg_loss, as_tensor("actor/pg_clipfrac"), as_tensor("actor/ppo_kl"), as_tensor("actor/pg_clipfrac_lower")


def compute_grpo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                   norm_adv_by_std_in_grpo=True, config=None):
    index = np.array([int(i.item()) if isinstance(i, torch.Tensor) else int(i) for i in index])
    return verl_core_algos.compute_grpo_outcome_advantage(token_level_rewards, response_mask, index, epsilon,
                                                          norm_adv_by_std_in_grpo)


def compute_response_mask(data: TensorDict) -> torch.Tensor:
    responses, attention_mask = data["responses"], data["attention_mask"]
    batch_size = responses.size(0)
    if responses.ndim == 3:
        traj_len, action_token_len = responses.size(1), responses.size(2)
        if attention_mask.ndim == 3:
            return attention_mask[:, :, -action_token_len:].reshape(batch_size, -1)
        return attention_mask[:, -traj_len * action_token_len:]
    return attention_mask[:, -responses.size(1):]


def compute_advantage(data: TensorDict, adv_estimator: str = "grpo", norm_adv_by_std_in_grpo: bool = True,
                      **kwargs) -> TensorDict:
    if "response_mask" not in data.keys():
        data["response_mask"] = compute_response_mask(data)
    if adv_estimator != "grpo":
        raise NotImplementedError("the fake reproduces the embodied pipeline's estimator, GRPO")
    if "finish_step" in data and data["responses"].ndim == 3:
        responses = data["responses"]
        response_length = responses.size(1) * responses.size(2)
        finish_step = data["finish_step"] * responses.size(2)
        steps = torch.arange(response_length, device=responses.device)
        mask = steps.unsqueeze(0).expand(responses.size(0), -1) < finish_step.unsqueeze(1)
    else:
        mask = data["response_mask"]
    advantages, returns = compute_grpo_outcome_advantage(token_level_rewards=data["token_level_rewards"],
                                                         response_mask=mask, index=data["uid"],
                                                         norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo)
    data["advantages"], data["returns"], data["response_mask"] = advantages, returns, mask
    return data


class EmbodiedRewardManager:
    def __init__(self, action_token_len: int = 7, reward_coef: float = 1.0):
        self.action_token_len, self.reward_coef = action_token_len, reward_coef

    def __call__(self, data: TensorDict, return_dict: bool = False):
        batch_size = data["responses"].shape[0]
        scores = [float(c) for c in data["complete"].tolist()]
        verifier = torch.zeros_like(data["responses"], dtype=torch.float32).view(batch_size, -1)
        valid_length = data["finish_step"] * self.action_token_len
        for i in range(batch_size):
            if valid_length[i] - 1 >= 0:
                verifier[i, valid_length[i] - 1] = scores[i]
        final = torch.zeros_like(verifier)
        if self.reward_coef != 0:
            final += self.reward_coef * verifier
        if return_dict:
            return {"reward_tensor": final, "reward_extra_info": {"verifier_score": scores}}
        return {"gt_scores": verifier, "all": final}, {"reward_all": final.sum(-1).mean().item()}


def install(monkeypatch) -> None:
    """Puts the modules the adapter imports (`siirl.dag_worker.core_algos`, `siirl.engine.actor.base`,
    `siirl.engine.rollout.base`) into sys.modules for the life of `monkeypatch`."""
    this = sys.modules[__name__]
    names = ["siirl", "siirl.dag_worker", "siirl.engine", "siirl.engine.actor", "siirl.engine.rollout"]
    modules = {name: types.ModuleType(name) for name in names}
    modules["siirl.dag_worker.core_algos"] = this
    modules["siirl.dag_worker"].core_algos = this
    for name in ("siirl.engine.actor.base", "siirl.engine.rollout.base"):
        modules[name] = this
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


class EmbodiedDAGWorker:
    """One training step of the embodied pipeline on one rank: `rollout` (an EmbodiedHFRollout drop-in), `actor` (a
    RobDataParallelPPOActor drop-in), the config values the worker reads (`rollout.n`, the log-prob micro-batch
    size, `rollout.temperature`, `algorithm.norm_adv_by_std_in_grpo`, `actor.loss_agg_mode`)."""

    def __init__(self, rollout, actor, reward_fn: EmbodiedRewardManager, n_samples: int,
                 log_prob_micro_batch_size_per_gpu: int = 2, temperature: float = 1.0,
                 norm_adv_by_std_in_grpo: bool = True, loss_agg_mode: str = "token-mean"):
        self.rollout, self.actor, self.reward_fn = rollout, actor, reward_fn
        self.n_samples, self.log_prob_micro_batch_size = n_samples, log_prob_micro_batch_size_per_gpu
        self.temperature, self.norm_adv_by_std_in_grpo = temperature, norm_adv_by_std_in_grpo
        self.loss_agg_mode = loss_agg_mode

    def generate(self, batch: TensorDict) -> TensorDict:
        batch["eos_token_id"] = NonTensorData(None)
        batch["n_samples"] = NonTensorData(self.n_samples)
        batch["pad_token_id"] = NonTensorData(None)
        gen_output = self.rollout.generate_sequences(batch).to("cpu")
        batch.update(gen_output)
        if "response_mask" not in batch:
            batch["response_mask"] = compute_response_mask(batch)
        return batch

    def compute_reward(self, batch: TensorDict) -> TensorDict:
        if "token_level_rewards" in batch and batch["token_level_rewards"].numel() > 0:
            return batch
        batch["global_token_num"] = NonTensorData(torch.sum(batch["attention_mask"], dim=-1).tolist())
        batch["token_level_scores"] = self.reward_fn(batch, return_dict=True)["reward_tensor"]
        batch["token_level_rewards"] = batch["token_level_scores"]
        return batch

    def compute_advantage(self, batch: TensorDict) -> TensorDict:
        return compute_advantage(batch, adv_estimator="grpo", norm_adv_by_std_in_grpo=self.norm_adv_by_std_in_grpo)

    def compute_old_log_prob(self, batch: TensorDict) -> tuple[TensorDict, dict[str, float]]:
        batch["micro_batch_size"] = NonTensorData(self.log_prob_micro_batch_size)
        batch["max_token_len"] = NonTensorData(16384)
        batch["use_dynamic_bsz"] = NonTensorData(False)
        batch["temperature"] = NonTensorData(self.temperature)
        batch["pad_token_id"] = NonTensorData(None)
        output, entropys = self.actor.compute_log_prob(data=batch, calculate_entropy=True)
        batch["old_log_probs"] = output
        metrics = {}
        if entropys is not None:
            metrics["actor/entropy_loss"] = verl_core_algos.agg_loss(entropys, batch["response_mask"],
                                                                     self.loss_agg_mode).item()
        return batch, metrics

    def train_actor(self, batch: TensorDict) -> dict[str, list[float]]:
        batch["multi_turn"] = NonTensorData(False)
        return self.actor.update_policy(data=batch)

    def train_step(self, prompts: TensorDict) -> tuple[TensorDict, dict[str, Any]]:
        batch = self.compute_advantage(self.compute_reward(self.generate(prompts)))
        batch, metrics = self.compute_old_log_prob(batch)
        metrics.update(self.train_actor(batch))
        return batch, metrics
