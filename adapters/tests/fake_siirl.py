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
- `ActorRolloutRefWorker` (siirl/engine/fsdp_workers.py, the FSDP worker of the actor / rollout / ref roles):
  `__init__` (role flags, the batch-size normalisation), `_create_optimizer_and_scheduler` (AdamW, the constant
  warmup schedule), `generate_sequences`, `compute_log_prob`, `compute_ref_log_prob`, `update_actor`,
  `set_rollout_sharding_manager`; its config dataclasses (siirl/params/model_args.py, embodied_args.py) with the
  fields these read; `Role`, `FlopsCounter` for a model type it does not know (MFU 0), the device helpers, and the
  sharding managers the embodied path uses, which without sequence parallelism or offloading pass data through.
  Cut: the process group / device-mesh set-up (one rank), `init_model` / `_build_rollout` (our worker replaces
  them), the HF model loading and FSDP wrapping they call, LoRA, offloading, memory metrics.
- `EmbodiedDAGWorker`: siirl/dag_worker/dagworker.py, one training step as `embodied_srpo_pipeline` runs it:
  `generate_embodied_mode` (eos / pad / n_samples into the batch, the rollout worker's `generate_sequences`,
  `batch.update`, `compute_response_mask`), `compute_reward` (+ siirl/execution/scheduler/reward.py
  `compute_reward`: `token_level_scores`, no KL in the reward: `token_level_rewards` = scores), `compute_advantage`,
  `compute_old_log_prob` (the actor worker's `compute_log_prob`), `compute_ref_log_prob` and `train_actor` (its
  `update_actor`); `setup_sharding_manager` (siirl/dag_worker/dag_utils.py) for the embodied hf rollout. Cut: Ray,
  the data buffers between nodes, `embodied_local_rank_sampling` (the filter that drops all-success / all-failure
  groups).
Line numbers below are those of the v0.2.0 tag of github.com/sii-research/siiRL.
"""

from __future__ import annotations

import os
import sys
import time
import types
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from tensordict import NonTensorData, TensorDict
from torch.optim.lr_scheduler import LambdaLR
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
class OptimizerArguments:  # siirl/params/model_args.py:98-126
    lr: float = 1e-6
    lr_warmup_steps_ratio: float = 0.0
    min_lr_ratio: float | None = 0.0
    warmup_style: str = "constant"
    total_training_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    lr_warmup_steps: int = -1
    num_cycles: float = 0.5


@dataclass
class FSDPArguments:  # model_args.py:43-62
    param_offload: bool = False
    optimizer_offload: bool = False
    fsdp_size: int = -1


@dataclass
class ActorArguments:  # model_args.py:274-341
    strategy: str = "fsdp"
    ppo_mini_batch_size: int = 256
    ppo_micro_batch_size: int | None = None
    ppo_micro_batch_size_per_gpu: int = 1
    ppo_epochs: int = 1
    ulysses_sequence_parallel_size: int = 1
    optim: OptimizerArguments = field(default_factory=OptimizerArguments)
    fsdp_config: FSDPArguments = field(default_factory=FSDPArguments)
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


@dataclass
class RefArguments:  # model_args.py:498-535
    fsdp_config: FSDPArguments = field(default_factory=FSDPArguments)
    log_prob_micro_batch_size: int | None = None
    log_prob_micro_batch_size_per_gpu: int | None = 1
    log_prob_use_dynamic_bsz: bool = False
    log_prob_max_token_len_per_gpu: int = 16384
    embodied_type: str | None = None


@dataclass
class RolloutArguments:  # model_args.py:442-496
    name: str = "vllm"
    temperature: float = 1.0
    n: int = 1
    log_prob_micro_batch_size: int | None = None
    log_prob_micro_batch_size_per_gpu: int | None = 1
    log_prob_max_token_len_per_gpu: int = 16384
    log_prob_use_dynamic_bsz: bool = False


@dataclass
class ModelArguments:  # model_args.py:161-232
    path: str = "~/models/deepseek-llm-7b-chat"
    lora_rank: int = 0
    model_type: str = "llm"


@dataclass
class EnvironmentArgs:  # siirl/params/embodied_args.py:6-38
    env_type: str = "libero"
    env_name: str = "libero_10"
    num_envs: int = 16
    max_steps: int = 512
    num_trials_per_task: int = 50
    num_steps_wait: int = 10
    model_family: str = "openvla"


@dataclass
class EmbodiedArguments:  # embodied_args.py:41-116
    env: EnvironmentArgs = field(default_factory=EnvironmentArgs)
    embodied_type: str = "openvla"
    action_chunks_len: int = 8
    action_token_len: int = 7
    num_images_in_input: int = 1
    n_gpus_per_node: int = 8


@dataclass
class ActorRolloutRefArguments:  # model_args.py:538-548
    model: ModelArguments = field(default_factory=ModelArguments)
    actor: ActorArguments = field(default_factory=ActorArguments)
    ref: RefArguments = field(default_factory=RefArguments)
    rollout: RolloutArguments = field(default_factory=RolloutArguments)
    embodied: EmbodiedArguments = field(default_factory=EmbodiedArguments)


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


class Role(Enum):  # siirl/execution/scheduler/enums.py:35-46
    Actor = 0
    Rollout = 1
    ActorRollout = 2
    Critic = 3
    RefPolicy = 4
    RewardModel = 5
    ActorRolloutRef = 6


def get_device_name() -> str:  # siirl/utils/extras/device.py:32-44 (no CUDA / NPU here)
    return "cuda" if torch.cuda.is_available() else "cpu"


def get_torch_device():  # device.py:47-57
    return getattr(torch, get_device_name())


def get_device_id():  # device.py:60-65: on CPU, torch.cpu.current_device() is "cpu"
    return get_torch_device().current_device()


def fsdp_version(model) -> int:  # siirl/utils/model_utils/fsdp_utils.py:516-522 (FSDP1 only here)
    from torch.distributed.fsdp import FullyShardedDataParallel
    return 1 if isinstance(model, FullyShardedDataParallel) else 0


class FlopsCounter:  # siirl/utils/model_utils/flops_counter.py:65-98, for a model type it does not know
    def __init__(self, config, forward_only: bool = False):
        self.config, self.forward_only = config, forward_only

    def estimate_flops(self, batch_seqlens, delta_time):
        return 0, 1.0  # _estimate_unknown_flops; promised: the device's peak (1.0 stands in)


class FSDPUlyssesShardingManager:  # siirl/engine/sharding_manager/fsdp_ulysses.py: no sequence parallelism
    def __init__(self, device_mesh):
        assert device_mesh is None
        self.device_mesh = device_mesh

    def __enter__(self):
        pass

    def __exit__(self, exc_type, exc_value, traceback):
        pass

    def preprocess_data(self, data: TensorDict) -> TensorDict:
        return data

    def postprocess_data(self, data: TensorDict) -> TensorDict:
        return data


class FSDPHFShardingManager:  # siirl/engine/sharding_manager/fsdp_hf.py: offloading off, so enter / exit do nothing
    def __init__(self, module, rollout, offload_param: bool = False, offload_embedding: bool = False):
        assert not offload_param and not offload_embedding
        self.module, self.rollout = module, rollout

    def __enter__(self):
        pass

    def __exit__(self, exc_type, exc_value, traceback):
        pass


def get_constant_schedule_with_warmup(optimizer, num_warmup_steps: int, last_epoch: int = -1):
    # siirl/utils/model_utils/torch_functional.py:562-584
    def lr_lambda(current_step):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1.0, num_warmup_steps))
        return 1.0
    return LambdaLR(optimizer, lr_lambda, last_epoch)


class Worker:  # siirl/engine/base_worker/base/worker.py:75-160: the rank from the environment
    def __init__(self):
        self._rank = int(os.environ.get("RANK", 0))

    @property
    def rank(self) -> int:
        return self._rank


class ActorRolloutRefWorker(Worker):
    """siirl/engine/fsdp_workers.py:162-1503 (the methods the embodied pipeline calls; see the module docstring)."""

    def __init__(self, config: ActorRolloutRefArguments, role: str, process_group=None):  # :168-235
        super().__init__()
        self.config = config
        # cut: init_process_group and the FSDP device mesh (:172-182); one rank
        self.group_world_size = torch.distributed.get_world_size(process_group) if torch.distributed.is_initialized() \
            else 1
        mesh_size = self.group_world_size
        self.ulysses_device_mesh = None
        self.ulysses_sequence_parallel_size = self.config.actor.ulysses_sequence_parallel_size
        self.ulysses_sharding_manager = FSDPUlyssesShardingManager(self.ulysses_device_mesh)
        self._lora_rank = self.config.model.lora_rank
        self._is_lora = self._lora_rank > 0

        self.role = role
        assert self.role in ["actor", "rollout", "ref", "actor_rollout", "actor_rollout_ref"]
        self._is_actor = self.role in ["actor", "actor_rollout", "actor_rollout_ref"]
        self._is_rollout = self.role in ["rollout", "actor_rollout", "actor_rollout_ref"]
        self._is_ref = self.role in ["ref", "actor_rollout_ref"]

        self._is_offload_param = False
        self._is_offload_optimizer = False
        if self._is_actor:
            self._is_offload_param = self.config.actor.fsdp_config.param_offload
            self._is_offload_optimizer = self.config.actor.fsdp_config.optimizer_offload
        elif self._is_ref:
            self._is_offload_param = self.config.ref.fsdp_config.param_offload

        if self._is_actor:
            self.config.actor.ppo_mini_batch_size *= self.config.rollout.n
            self.config.actor.ppo_mini_batch_size //= mesh_size // self.ulysses_sequence_parallel_size
            assert self.config.actor.ppo_mini_batch_size > 0
            if self.config.actor.ppo_micro_batch_size is not None:
                self.config.actor.ppo_micro_batch_size //= mesh_size // self.ulysses_sequence_parallel_size
                self.config.actor.ppo_micro_batch_size_per_gpu = self.config.actor.ppo_micro_batch_size
            if self.config.actor.ppo_micro_batch_size_per_gpu is not None:
                assert self.config.actor.ppo_mini_batch_size % self.config.actor.ppo_micro_batch_size_per_gpu == 0
                assert self.config.actor.ppo_mini_batch_size // self.config.actor.ppo_micro_batch_size_per_gpu > 0
        if self._is_rollout and self.config.rollout.log_prob_micro_batch_size is not None:
            self.config.rollout.log_prob_micro_batch_size //= mesh_size // self.ulysses_sequence_parallel_size
            self.config.rollout.log_prob_micro_batch_size_per_gpu = self.config.rollout.log_prob_micro_batch_size
        if self._is_ref and self.config.ref.log_prob_micro_batch_size is not None:
            self.config.ref.log_prob_micro_batch_size //= mesh_size // self.ulysses_sequence_parallel_size
            self.config.ref.log_prob_micro_batch_size_per_gpu = self.config.ref.log_prob_micro_batch_size

    def _create_optimizer_and_scheduler(self, model, optim_config, role):  # :1022-1088 (the constant schedule)
        if role != Role.Actor or optim_config is None:
            return None, None
        optimizer = torch.optim.AdamW(model.parameters(), lr=optim_config.lr, betas=optim_config.betas,
                                      weight_decay=optim_config.weight_decay)
        total_steps = optim_config.total_training_steps
        num_warmup_steps = int(optim_config.lr_warmup_steps)
        if num_warmup_steps < 0:
            num_warmup_steps = int(optim_config.lr_warmup_steps_ratio * total_steps)
        if optim_config.warmup_style != "constant":
            raise NotImplementedError("the fake reproduces the constant warmup schedule")
        return optimizer, get_constant_schedule_with_warmup(optimizer=optimizer, num_warmup_steps=num_warmup_steps)

    def update_actor(self, data: TensorDict):  # :1269-1307 (cut: offloading, memory metrics)
        data = data.to(get_device_id())
        assert self._is_actor
        with self.ulysses_sharding_manager:
            data = self.ulysses_sharding_manager.preprocess_data(data=data)
            start = time.perf_counter()
            metrics = self.actor.update_policy(data=data)
            delta_time = time.perf_counter() - start
            global_num_tokens = data["global_token_num"]
            estimated_flops, promised_flops = self.flops_counter.estimate_flops(global_num_tokens, delta_time)
            metrics["perf/mfu/actor"] = estimated_flops * self.config.actor.ppo_epochs / promised_flops
            metrics["perf/delta_time/actor"] = delta_time
            lr = self.actor_lr_scheduler.get_last_lr()[0]
            metrics["actor/lr"] = lr
            self.actor_lr_scheduler.step()
            data["metrics"] = NonTensorData(metrics)
            processed_data = self.ulysses_sharding_manager.postprocess_data(data=data)
            processed_data = processed_data.to("cpu")
        return processed_data

    def generate_sequences(self, prompts: TensorDict):  # :1309-1351 (the hf path)
        prompts = prompts.to(get_device_id())
        assert self._is_rollout
        prompts["eos_token_id"] = NonTensorData(self.generation_config.eos_token_id if self.generation_config
                                                is not None else self.tokenizer.eos_token_id)
        prompts["pad_token_id"] = NonTensorData(self.generation_config.pad_token_id if self.generation_config
                                                is not None else self.tokenizer.pad_token_id)
        with self.rollout_sharding_manager:
            start = time.perf_counter()
            output = self.rollout.generate_sequences(prompts=prompts)
            delta_time = time.perf_counter() - start
            total_input_tokens = output["total_input_tokens"] if "total_input_tokens" in output else 0
            total_output_tokens = output["total_output_tokens"] if "total_output_tokens" in output else 0
            batch_size = prompts["input_ids"].shape[0] if "input_ids" in prompts else 1
            avg_seq_len = (total_input_tokens + total_output_tokens) / batch_size if batch_size > 0 else 0
            estimated_flops, promised_flops = self.flops_counter.estimate_flops([int(avg_seq_len)] * batch_size,
                                                                                delta_time)
            metrics = {"perf/mfu/rollout": estimated_flops / promised_flops, "perf/delta_time/rollout": delta_time}
            output["metrics"] = NonTensorData(metrics, batch_size=None)
        return output.to("cpu")

    def compute_log_prob(self, data: TensorDict):  # :1353-1404 (cut: offloading)
        assert self._is_actor
        is_lora = data.pop("is_lora", False)
        adapter_ctx = self.actor.actor_module.disable_adapter() if is_lora else nullcontext()
        data = data.to(get_device_id())
        data["micro_batch_size"] = NonTensorData(self.config.rollout.log_prob_micro_batch_size_per_gpu)
        data["max_token_len"] = NonTensorData(self.config.rollout.log_prob_max_token_len_per_gpu)
        data["use_dynamic_bsz"] = NonTensorData(self.config.rollout.log_prob_use_dynamic_bsz)
        data["temperature"] = NonTensorData(self.config.rollout.temperature)
        data["pad_token_id"] = NonTensorData(self.tokenizer.pad_token_id)
        with self.ulysses_sharding_manager:
            data = self.ulysses_sharding_manager.preprocess_data(data)
            start = time.perf_counter()
            with adapter_ctx:
                output, entropys = self.actor.compute_log_prob(data=data, calculate_entropy=True)
            delta_time = time.perf_counter() - start
            estimated_flops, promised_flops = self.flops_counter.estimate_flops(data["global_token_num"], delta_time)
            metrics = {"perf/mfu/actor_log_prob": estimated_flops / promised_flops / 3,
                       "perf/delta_time/actor_log_prob": delta_time}
            data["old_log_probs"] = output
            if entropys is not None:
                data["entropys"] = entropys
            data["metrics"] = NonTensorData(metrics)
            processed_data = self.ulysses_sharding_manager.postprocess_data(data)
        processed_data = processed_data.to("cpu")
        if self.group_world_size > 1 and fsdp_version(self.actor.actor_module) == 1:
            self.actor.actor_module._handle.reshard(True)
        return processed_data

    def compute_ref_log_prob(self, data: TensorDict):  # :1406-1446 (a standalone reference model)
        assert self._is_ref
        data = data.to(get_device_id())
        data["micro_batch_size"] = NonTensorData(self.config.ref.log_prob_micro_batch_size_per_gpu)
        data["temperature"] = NonTensorData(self.config.rollout.temperature)
        data["max_token_len"] = NonTensorData(self.config.ref.log_prob_max_token_len_per_gpu)
        data["use_dynamic_bsz"] = NonTensorData(self.config.ref.log_prob_use_dynamic_bsz)
        with self.ulysses_sharding_manager:
            data = self.ulysses_sharding_manager.preprocess_data(data)
            start = time.perf_counter()
            output, _ = self.ref_policy.compute_log_prob(data=data, calculate_entropy=False)
            estimated_flops, promised_flops = self.flops_counter.estimate_flops(data["global_token_num"],
                                                                                time.perf_counter() - start)
            data["ref_log_prob"] = output
            data["metrics"] = NonTensorData({"perf/mfu/ref": estimated_flops / promised_flops})
            processed_data = self.ulysses_sharding_manager.postprocess_data(data)
        return processed_data.to("cpu")

    def set_rollout_sharding_manager(self, sharding_manager):  # :1501-1503
        self.rollout_sharding_manager = sharding_manager
        self.rollout.sharding_manager = sharding_manager


def setup_sharding_manager(model_type: str, actor_worker, rollout_worker) -> None:
    """siirl/dag_worker/dag_utils.py:241-366 for strategy fsdp and rollout hf: an embodied rollout runs the actor's
    module (:252-256), behind FSDPHFShardingManager (:275-283)."""
    if model_type == "embodied":
        if hasattr(actor_worker, "actor_module_fsdp"):
            rollout_worker.rollout.model = actor_worker.actor_module_fsdp
    rollout_worker.set_rollout_sharding_manager(FSDPHFShardingManager(
        module=actor_worker.actor_module_fsdp, rollout=rollout_worker.rollout,
        offload_param=getattr(actor_worker, "_is_offload_param", False), offload_embedding=False))


class NodeRole(Enum):  # siirl/execution/dag/node.py:60-75 (the roles with workers)
    ACTOR = "ACTOR"
    CRITIC = "CRITIC"
    ROLLOUT = "ROLLOUT"
    REFERENCE = "REFERENCE"
    REWARD = "REWARD"


class CriticWorker:  # fsdp_workers.py:1506 (not used by the embodied pipeline)
    pass


class RewardModelWorker:  # fsdp_workers.py:1819 (not used by the embodied pipeline)
    pass


WORKER_ROLE_MAPPING = {NodeRole.ACTOR: "actor", NodeRole.ROLLOUT: "rollout", NodeRole.REFERENCE: "ref"}
# siirl/dag_worker/constants.py:29-33


def get_worker_classes(config, strategy: str) -> dict:  # dag_utils.py:370-390, the fsdp strategy in sync mode
    assert strategy in ["fsdp", "fsdp2"]
    return {NodeRole.ACTOR: ActorRolloutRefWorker, NodeRole.ROLLOUT: ActorRolloutRefWorker,
            NodeRole.REFERENCE: ActorRolloutRefWorker, NodeRole.CRITIC: CriticWorker,
            NodeRole.REWARD: RewardModelWorker}


def install(monkeypatch, libero_adapter: type) -> None:
    """Puts the modules adapters.siirl imports into sys.modules for the life of `monkeypatch`, with
    `libero_adapter` as `siirl.environment.embodied.LIBEROAdapter` (LIBERO itself is not installable here)."""
    this = sys.modules[__name__]
    names = ["siirl", "siirl.dag_worker", "siirl.engine", "siirl.engine.actor", "siirl.engine.rollout",
             "siirl.environment", "siirl.execution", "siirl.execution.scheduler", "siirl.utils", "siirl.utils.extras",
             "siirl.utils.model_utils"]
    modules = {name: types.ModuleType(name) for name in names}
    modules["siirl.dag_worker.core_algos"] = this
    modules["siirl.dag_worker"].core_algos = this
    for name in ("siirl.engine.actor.base", "siirl.engine.rollout.base", "siirl.engine.fsdp_workers",
                 "siirl.execution.scheduler.enums", "siirl.utils.extras.device",
                 "siirl.utils.model_utils.flops_counter"):
        modules[name] = this
    modules["siirl.environment.embodied"] = types.ModuleType("siirl.environment.embodied")
    modules["siirl.environment.embodied"].LIBEROAdapter = libero_adapter
    modules["siirl.dag_worker.dag_utils"] = this
    modules["siirl.dag_worker.dagworker"] = types.ModuleType("siirl.dag_worker.dagworker")
    modules["siirl.dag_worker.dagworker"].get_worker_classes = get_worker_classes  # imported by name (:60)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


class EmbodiedDAGWorker:
    """The DAG worker of one rank (dagworker.py) for the embodied pipeline: builds its actor, rollout and reference
    workers as `_initialize_worker` and `init_graph` do, then runs the pipeline's steps on them. The config values
    it reads: `actor_rollout_ref` (each node's config), `rollout.n`, `algorithm.norm_adv_by_std_in_grpo`,
    `actor.loss_agg_mode`."""

    def __init__(self, config: ActorRolloutRefArguments, reward_fn: EmbodiedRewardManager,
                 norm_adv_by_std_in_grpo: bool = True, loss_agg_mode: str = "token-mean"):
        self.reward_fn, self.n_samples = reward_fn, config.rollout.n
        self.norm_adv_by_std_in_grpo, self.loss_agg_mode = norm_adv_by_std_in_grpo, loss_agg_mode
        # _setup_role_worker_mapping (:840-858), through the name dagworker.py imported
        mapping = sys.modules["siirl.dag_worker.dagworker"].get_worker_classes(config, config.actor.strategy)
        # _initialize_node_workers (:860-910): a worker per model node (rollout, actor, reference: one node key
        # each, generate_node_worker_key), `role` only for classes named *ActorRolloutRefWorker* (:885-888)
        self.agent_group = {}
        for node_role in (NodeRole.ROLLOUT, NodeRole.ACTOR, NodeRole.REFERENCE):
            worker_cls = mapping[node_role]
            worker_args = {"config": config, "process_group": None}
            if "ActorRolloutRefWorker" in worker_cls.__name__:
                worker_args["role"] = WORKER_ROLE_MAPPING[node_role]
            self.agent_group[node_role.value.lower()] = worker_cls(**worker_args)
        # init_graph (:912-941): _load_model_weights (init_model on each), _setup_sharding_manager
        for worker in self.agent_group.values():
            worker.init_model()
        setup_sharding_manager(config.model.model_type, self.agent_group["actor"], self.agent_group["rollout"])

    def generate(self, batch: TensorDict) -> TensorDict:  # :461-503 (no validation tokenizer: None ids)
        batch["eos_token_id"] = NonTensorData(None)
        batch["n_samples"] = NonTensorData(self.n_samples)
        batch["pad_token_id"] = NonTensorData(None)
        gen_output = self.agent_group["rollout"].generate_sequences(batch)
        assert "metrics" in gen_output.keys()
        batch.update(gen_output)
        if "response_mask" not in batch:
            batch["response_mask"] = compute_response_mask(batch)
        return batch

    def compute_reward(self, batch: TensorDict) -> TensorDict:  # :523-549 (tp_size 1, no KL in the reward)
        if "token_level_rewards" in batch and batch["token_level_rewards"].numel() > 0:
            return batch
        batch["global_token_num"] = NonTensorData(torch.sum(batch["attention_mask"], dim=-1).tolist())
        batch["token_level_scores"] = self.reward_fn(batch, return_dict=True)["reward_tensor"]
        batch["token_level_rewards"] = batch["token_level_scores"]
        return batch

    def compute_advantage(self, batch: TensorDict) -> TensorDict:  # :633-661
        return compute_advantage(batch, adv_estimator="grpo", norm_adv_by_std_in_grpo=self.norm_adv_by_std_in_grpo)

    def compute_old_log_prob(self, batch: TensorDict) -> tuple[TensorDict, dict[str, float]]:  # :551-569
        if "global_token_num" not in batch:
            batch["global_token_num"] = NonTensorData(torch.sum(batch["attention_mask"], dim=-1).tolist())
        processed_data = self.agent_group["actor"].compute_log_prob(batch)
        local_metrics = processed_data["metrics"] if "metrics" in processed_data else {}
        if "entropys" in processed_data:
            entropy = verl_core_algos.agg_loss(processed_data["entropys"], processed_data["response_mask"].to("cpu"),
                                               self.loss_agg_mode)
            local_metrics["actor/entropy_loss"] = entropy.item()
        processed_data.pop("metrics", None)
        processed_data.pop("entropys", None)
        return processed_data, local_metrics

    def compute_ref_log_prob(self, batch: TensorDict) -> TensorDict:  # :571-577
        return self.agent_group["reference"].compute_ref_log_prob(batch)

    def train_actor(self, batch: TensorDict) -> dict[str, Any]:  # :663-672 (no critic warm-up)
        batch["multi_turn"] = NonTensorData(False)
        return self.agent_group["actor"].update_actor(batch)["metrics"]
