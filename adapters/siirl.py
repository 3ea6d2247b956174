"""Any policy of this repo in siiRL's embodied roles (https://github.com/sii-research/siiRL), written against siirl
0.2.0's wheel (read, not installed: `Requires-Dist: vllm>=0.8.5.post1`, which pins another torch, and
`tensordict!=0.9.0,<=0.9.1,>=0.8.0` beside our torch 2.14.1 / tensordict 0.15.3).

siiRL has no model registry: its embodied path is OpenVLA's by code. `siirl/engine/fsdp_workers.py` builds
`EmbodiedHFRollout` (`siirl/engine/rollout/embodied_rollout.py`) and `RobDataParallelPPOActor`
(`siirl/engine/actor/embodied_actor.py`) when `model.model_type == "embodied"`, and both branch on
`embodied_type in ["openvla", "openvla-oft"]` (action tokens, `pixel_values`, `.cuda()`, bf16 autocast). The two
classes here are drop-ins for those two roles, same methods on the same batch type (a `TensorDict` of batch [B], a
row an episode, scalars as `NonTensorData`), around a `common.policy.Policy`:

    EmbodiedRollout.generate_sequences(prompts)    EmbodiedHFRollout.generate_sequences: prompts hold `task_id`,
                                                   `trial_id` (and `n_samples`, `do_sample`); splits them into
                                                   chunks of num_envs // n_samples, resets and steps the env adapter
                                                   (LIBEROAdapter's `_blocking_reset` / `_blocking_step`) until
                                                   `max_steps` env steps, returns the episodes
    EmbodiedActor.compute_log_prob(data, calculate_entropy)   RobDataParallelPPOActor.compute_log_prob: reads
                                                   `micro_batch_size`, `temperature`, `use_dynamic_bsz` from the
                                                   batch (the worker puts them there), returns (log_probs, entropy)
    EmbodiedActor.update_policy(data)              RobDataParallelPPOActor.update_policy: minibatches of
                                                   `ppo_mini_batch_size`, micro-batches of
                                                   `ppo_micro_batch_size_per_gpu`, each cut into trajectory slices of
                                                   `traj_mini_batch_size` steps, siiRL's
                                                   `core_algos.compute_policy_loss_vanilla` on each (verl's), one
                                                   clipped optimizer step per minibatch; returns lists of metrics

`PolicyActorRolloutRefWorker` is siiRL's FSDP worker (`fsdp_workers.py` `ActorRolloutRefWorker`) building these two
where siiRL builds OpenVLA's (`init_model`, `_build_rollout`), on siiRL's LIBERO env adapter read through
`libero_obs_to_input`; siiRL's DAG worker drives it unchanged once it stands in the role -> worker mapping.

The layout, one position per chunk (siiRL's is one position per action token, `action_token_len` tokens per env
step, `action_chunks_len` env steps per decision): set `embodied.action_token_len = 1` and
`embodied.action_chunks_len = 1` (the worker copies them into the actor's config), so `finish_step`, the response
mask siiRL builds from it (`arange(T) < finish_step * action_token_len`: the actor, `core_algos.compute_advantage`'s
embodied GRPO branch, the embodied reward manager's terminal reward at `finish_step * action_token_len - 1`) count
chunks. The rollout turns the env adapter's `finish_step` (env steps) into chunks taken.

    responses        int64 (B, T, 1)        the chunk's index (siiRL reads only its shape: T, action_token_len)
    attention_mask   int64 (B, T, 1)        1 on the chunks the episode took (`compute_response_mask` reads it)
    finish_step      int64 (B,)             chunks taken;  complete bool (B,): the task succeeded
    rgb, proprio     (B, T, V, S, S, 3), (B, T, D): the observation each chunk was chosen on
    language         uint8 (B, 256)         the instruction as zero-padded UTF-8 (siiRL's batches are tensors:
                                            it encodes `task_file_name` the same way, 50 bytes)
    rollout.<name>   (B, T, ...)            the policy's rollout record (`Policy.forward` less log_prob / value)
    rollout_log_probs float (B, T)          the rollout's log-probs (siiRL recomputes them: `old_log_probs`)

What differs from siiRL's classes, on purpose: a `device` argument where they call `.cuda()` (and no bf16
autocast); `torch.distributed.barrier()` only when a process group is initialised; `temperature` must be 1 (our
policies' log-probs are at their own distribution, there are no logits to divide); `use_dynamic_bsz` splits into
one micro-batch (siiRL balances micro-batches by token count; all our rows have T positions); `compute_log_prob`
returns the entropy when asked (siiRL's returns None). As siiRL's, the loss has no entropy term (`entropy_coeff` is
read and unused) and no KL loss. Not reproduced: the VJEPA video embedding the rollout computes for SRPO's reward
(`vjepa_embedding`), and `compute_entropy` (metrics only, called nowhere in the wheel).
"""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from tensordict import NonTensorStack, TensorDict
from siirl.dag_worker import core_algos
from siirl.engine.actor.base import BasePPOActor
from siirl.engine.fsdp_workers import ActorRolloutRefWorker
from siirl.engine.rollout.base import BaseRollout
from siirl.execution.scheduler.enums import Role
from siirl.utils.extras.device import get_device_id
from siirl.utils.model_utils.flops_counter import FlopsCounter

from common.policy import Policy, load_policy
from common.train import load_pretrained, read_config, resolve_checkpoint, save_pretrained

from adapters.text import LANGUAGE_BYTES, decode_text, encode_text

TASK_NAME_BYTES = 50  # 50: embodied_rollout.py's `max_len` for task_file_name


def step_mask(finish_step: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length): True before `finish_step` (RobDataParallelPPOActor.generate_traj_mask)."""
    return torch.arange(length, device=finish_step.device)[None] < finish_step[:, None]


def _group_size(group: Any) -> int:
    return torch.distributed.get_world_size(group) if torch.distributed.is_initialized() else 1


def average_gradients(module: torch.nn.Module, group: Any = None) -> None:
    """Each gradient averaged over the ranks of `group` (what DDP does during backward)."""
    if _group_size(group) > 1:
        for p in module.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad, group=group)
                p.grad /= _group_size(group)


class EmbodiedRollout(BaseRollout):
    """Drop-in for siiRL's `EmbodiedHFRollout`. `adapter` has LIBEROAdapter's protocol
    (`siirl/environment/embodied/adapters/libero.py`): `_blocking_reset(task_ids, trial_ids)` and
    `_blocking_step({"indices", "actions"})` -> one dict per env with `obs`, `active`, `complete`, `finish_step`
    (env steps), and on reset `task_description`, `task_file_name`. `obs_to_input(obs)` -> {"rgb": (V, S, S, 3)
    uint8, "proprio": (D,)} (EmbodiedHFRollout._obs_to_input's place; default: the env already answers these)."""

    def __init__(self, policy: Policy, adapter: Any, num_envs: int, max_steps: int,
                 obs_to_input: Callable[[Any], dict[str, Any]] | None = None, device: str | torch.device = "cpu"):
        # `model`: siiRL's name, which its DAG worker sets to the actor's module (dag_utils.py setup_sharding_manager)
        self.model, self.adapter, self.num_workers, self.max_steps = policy, adapter, num_envs, max_steps
        self.obs_to_input = obs_to_input or (lambda obs: obs)
        self.device = torch.device(device)

    def generate_sequences(self, prompts: TensorDict) -> TensorDict:
        n_samples = prompts["n_samples"] if "n_samples" in prompts.keys() else 1
        assert self.num_workers >= n_samples, f"rollout num_workers({self.num_workers}) must be >= n_samples"
        per_chunk = self.num_workers // n_samples
        total = prompts.batch_size[0]
        return torch.cat([self._generate_chunk_rollout(prompts[start:start + per_chunk])
                          for start in range(0, total, per_chunk)])

    def _observation(self, inputs: list[dict[str, Any]], texts: list[str]) -> TensorDict:
        rgb = torch.stack([torch.as_tensor(np.asarray(x["rgb"])) for x in inputs]).to(self.device)
        proprio = torch.stack([torch.as_tensor(np.asarray(x["proprio"]), dtype=torch.float32) for x in inputs])
        return TensorDict(rgb=rgb, proprio=proprio.to(self.device), language=NonTensorStack(*texts),
                          batch_size=[len(inputs)])

    @torch.no_grad()
    def _generate_chunk_rollout(self, prompts: TensorDict) -> TensorDict:
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        deterministic = not (prompts["do_sample"] if "do_sample" in prompts.keys() else True)
        size = prompts.batch_size[0]
        init = self.adapter._blocking_reset(task_ids=prompts["task_id"].reshape(-1).tolist(),
                                            trial_ids=prompts["trial_id"].reshape(-1).tolist())
        texts = [r["task_description"] for r in init]
        inputs = [self.obs_to_input(r["obs"]) for r in init]
        records = [dict(active=r["active"], complete=r["complete"], finish_step=r["finish_step"],
                        task_file_name=r["task_file_name"]) for r in init]
        history, step, chunk_len = [], 0, 1
        while step < self.max_steps:  # as siiRL: every env is scored every step, the mask drops the finished
            obs = self._observation(inputs, texts)
            out = self.model(obs, deterministic=deterministic)
            history.append((obs, out))
            chunk_len = out["action"].shape[1]
            active = [i for i, r in enumerate(records) if r["active"]]
            results = self.adapter._blocking_step({"indices": active, "actions": out["action"].cpu().numpy()})
            for i in active:
                inputs[i] = self.obs_to_input(results[i]["obs"])
                records[i].update(active=results[i]["active"], complete=results[i]["complete"],
                                  finish_step=results[i]["finish_step"])
            step += chunk_len
        self.model.train(was_training)

        length = len(history)
        finish = torch.tensor([math.ceil(r["finish_step"] / chunk_len) for r in records], dtype=torch.int64)
        valid = step_mask(finish, length)
        batch = dict(responses=torch.arange(length).expand(size, length)[..., None].clone(),
                     attention_mask=valid[..., None].long(), finish_step=finish,
                     complete=torch.tensor([bool(r["complete"]) for r in records]),
                     task_file_name=encode_text([r["task_file_name"] for r in records], TASK_NAME_BYTES),
                     rgb=torch.stack([o["rgb"] for o, _ in history], 1).cpu(),
                     proprio=torch.stack([o["proprio"] for o, _ in history], 1).cpu(),
                     language=encode_text(texts, LANGUAGE_BYTES),
                     rollout_log_probs=torch.stack([out["log_prob"].float() for _, out in history], 1).cpu() * valid)
        for name in history[0][1].keys():
            if name not in ("log_prob", "value"):
                batch[f"rollout.{name}"] = torch.stack([out[name] for _, out in history], 1).cpu()
        return TensorDict(batch, batch_size=[size])


class EmbodiedActor(BasePPOActor):
    """Drop-in for siiRL's `RobDataParallelPPOActor(config, actor_module, actor_optimizer)` (optimizer None: the
    reference policy), plus `device`. `config` is siiRL's `ActorArguments` (the fields read:
    `ppo_mini_batch_size`, `ppo_micro_batch_size_per_gpu`, `traj_mini_batch_size`, `use_dynamic_bsz`,
    `grad_clip`, `action_token_len`, `action_chunks_len`, and the clip ratios that `compute_policy_loss_vanilla`
    reads)."""

    def __init__(self, config: Any, actor_module: Policy, actor_optimizer: torch.optim.Optimizer | None = None,
                 device: str | torch.device = "cpu", process_group: Any = None):
        super().__init__(config)
        if config.action_token_len != 1 or config.action_chunks_len != 1:
            raise ValueError("one position per chunk: set embodied.action_token_len = embodied.action_chunks_len = 1"
                             f" (got {config.action_token_len}, {config.action_chunks_len})")
        self.actor_module, self.actor_optimizer = actor_module, actor_optimizer
        self.device = torch.device(device)
        self.process_group = process_group  # data parallel over it: gradients averaged before each step

    def _forward_micro_batch(self, micro_batch: TensorDict, steps: slice = slice(None)
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(entropy, log_probs), each (B, t): the chunks at `steps` of every row under the current weights."""
        b = micro_batch.batch_size[0]
        rgb, proprio = micro_batch["rgb"][:, steps], micro_batch["proprio"][:, steps]
        t = rgb.shape[1]
        texts = [text for text in decode_text(micro_batch["language"]) for _ in range(t)]
        obs = TensorDict(rgb=rgb.flatten(0, 1), proprio=proprio.flatten(0, 1), language=NonTensorStack(*texts),
                         batch_size=[b * t])
        rollout = TensorDict({key.removeprefix("rollout."): micro_batch[key][:, steps].flatten(0, 1)
                              for key in micro_batch.keys() if key.startswith("rollout.")}, batch_size=[b * t])
        log_prob, entropy = self.actor_module.evaluate_actions(obs, rollout)
        return entropy.float().view(b, t), log_prob.float().view(b, t)

    @staticmethod
    def _check_temperature(temperature: float) -> None:
        if float(temperature) != 1.0:
            raise ValueError(f"temperature {temperature}: our policies score chunks at their own distribution (1.0)")

    def compute_log_prob(self, data: TensorDict, calculate_entropy: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log_probs, entropy or None), each (B, T), 0 after `finish_step`."""
        self.actor_module.eval()
        self._check_temperature(data["temperature"])
        batch = data.select("responses", "rgb", "proprio", "language", "finish_step",
                            *[k for k in data.keys() if k.startswith("rollout.")])
        micro_batches = [batch] if data["use_dynamic_bsz"] else batch.split(data["micro_batch_size"])
        log_probs, entropies = [], []
        with torch.no_grad():
            for micro in micro_batches:
                micro = micro.to(self.device)
                entropy, log_prob = self._forward_micro_batch(micro)
                mask = step_mask(micro["finish_step"], log_prob.shape[1])
                log_probs.append(torch.where(mask, log_prob, 0.0))
                entropies.append(torch.where(mask, entropy, 0.0))
        return torch.cat(log_probs), (torch.cat(entropies) if calculate_entropy else None)

    def _optimizer_step(self) -> torch.Tensor:
        assert self.config.grad_clip is not None
        if not hasattr(self.actor_module, "clip_grad_norm_"):  # an unsharded policy on each rank: DDP's averaging
            average_gradients(self.actor_module, self.process_group)
        if hasattr(self.actor_module, "clip_grad_norm_"):  # FSDP
            grad_norm = self.actor_module.clip_grad_norm_(max_norm=self.config.grad_clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.actor_module.parameters(), max_norm=self.config.grad_clip)
        self.actor_optimizer.step()
        return grad_norm

    def update_policy(self, data: TensorDict) -> dict[str, list[float]]:
        cfg = self.config
        self.actor_module.train()
        assert cfg.ppo_mini_batch_size % cfg.ppo_micro_batch_size_per_gpu == 0
        self.gradient_accumulation = cfg.ppo_mini_batch_size // cfg.ppo_micro_batch_size_per_gpu
        self._check_temperature(data["temperature"])
        batch = data.select("responses", "rgb", "proprio", "language", "old_log_probs", "advantages", "finish_step",
                            *[k for k in data.keys() if k.startswith("rollout.")])
        metrics: dict[str, list[float]] = {}
        for mini_batch in batch.split(cfg.ppo_mini_batch_size):
            micro_batches = [mini_batch] if cfg.use_dynamic_bsz else mini_batch.split(cfg.ppo_micro_batch_size_per_gpu)
            self.actor_optimizer.zero_grad()
            for micro in micro_batches:
                micro = micro.to(self.device)
                traj_len = micro["responses"].size(1)
                response_length = traj_len * micro["responses"].size(2)
                response_mask = step_mask(micro["finish_step"] * cfg.action_token_len, response_length)
                mask_sum = response_mask.sum()
                info = {"actor/pg_loss": 0.0, "actor/pg_clipfrac": 0.0, "actor/ppo_kl": 0.0}
                assert traj_len % cfg.traj_mini_batch_size == 0
                for start in range(0, traj_len, cfg.traj_mini_batch_size):
                    steps = slice(start, start + cfg.traj_mini_batch_size)
                    _, log_prob = self._forward_micro_batch(micro, steps)
                    mask = response_mask[:, steps]
                    pg_loss, pg_clipfrac, ppo_kl, _ = core_algos.compute_policy_loss_vanilla(
                        old_log_prob=micro["old_log_probs"][:, steps], log_prob=log_prob,
                        advantages=micro["advantages"][:, steps], response_mask=mask, config=cfg)
                    share = mask.sum() / mask_sum  # siiRL's weighting: the slice's token-mean by its share
                    policy_loss = pg_loss * share
                    (policy_loss / self.gradient_accumulation).backward()
                    info["actor/pg_loss"] += policy_loss.item()
                    info["actor/pg_clipfrac"] += (pg_clipfrac * share).item()
                    info["actor/ppo_kl"] += (ppo_kl * share).item()
                for key, value in info.items():
                    metrics.setdefault(key, []).append(value)
            metrics.setdefault("actor/grad_norm", []).append(self._optimizer_step().item())
        self.actor_optimizer.zero_grad()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        return metrics


# ---------------------------------------------------------------------------------------------- the worker swap
LIBERO_IMAGES = ("agentview_image", "robot0_eye_in_hand_image")  # a policy's cameras 0 and 1, as siiRL's
#                                                                   _obs_to_input reads "full_image" / "wrist_image"
NO_TOKENIZER = SimpleNamespace(eos_token_id=None, pad_token_id=None)  # the ids siiRL's worker puts into each batch;
#                                                                       an action-chunk rollout has no tokens


def libero_obs_to_input(obs: dict[str, Any], num_cameras: int, image_size: int) -> dict[str, Any]:
    """A LIBERO (robosuite) observation as our policy reads it, as siiRL's `EmbodiedHFRollout._obs_to_input` reads
    it (embodied_rollout.py:652-676, siirl/utils/embodied/libero_utils.py): the agent-view image (and the wrist
    camera's for a second camera) turned 180 degrees and resized to the policy's `image_size` (bilinear here; siiRL
    round-trips through JPEG and resizes with lanczos3 in TensorFlow, as OpenVLA's RLDS loader did), and the 8-D
    state: end-effector position, its orientation as an axis-angle, the two gripper joints."""
    if num_cameras > len(LIBERO_IMAGES):
        raise ValueError(f"LIBERO renders {len(LIBERO_IMAGES)} cameras {LIBERO_IMAGES}; the policy reads {num_cameras}")
    images = []
    for key in LIBERO_IMAGES[:num_cameras]:
        image = Image.fromarray(np.ascontiguousarray(obs[key][::-1, ::-1]))
        images.append(np.asarray(image.resize((image_size, image_size), Image.BILINEAR)))
    quat = np.asarray(obs["robot0_eef_quat"], dtype=np.float64)  # (x, y, z, w); robosuite's quat2axisangle
    w = np.clip(quat[3], -1.0, 1.0)
    den = np.sqrt(1.0 - w * w)
    axis_angle = np.zeros(3) if math.isclose(den, 0.0) else quat[:3] * 2.0 * math.acos(w) / den
    state = np.concatenate([obs["robot0_eef_pos"], axis_angle, obs["robot0_gripper_qpos"]]).astype(np.float32)
    return {"rgb": np.stack(images), "proprio": state}


class PolicyActorRolloutRefWorker(ActorRolloutRefWorker):
    """siiRL's FSDP worker (siirl/engine/fsdp_workers.py `ActorRolloutRefWorker`) with our policy where it builds
    OpenVLA: `init_model` loads `model.path` through `load_policy` and builds `EmbodiedActor` (actor and reference)
    with siiRL's own AdamW and LR schedule; `_build_rollout` builds `EmbodiedRollout` on siiRL's LIBERO env adapter,
    reading its observations with `libero_obs_to_input` at the checkpoint's cameras and image size. Its
    `generate_sequences`, `compute_log_prob`, `compute_ref_log_prob` and `update_actor` are siiRL's, unchanged.

    The name keeps "ActorRolloutRefWorker": siiRL's DAG worker passes `role` only to classes so named
    (dagworker.py `_initialize_node_workers`). `use_policy_worker()` puts it in the DAG worker's role -> worker
    mapping; the run's config: `model.model_type: embodied`, `model.path`: a `load_policy` checkpoint,
    `rollout.name: hf`, `embodied.action_token_len = embodied.action_chunks_len = 1`.
    Several ranks: each holds the whole policy (not FSDP-sharded: our actor and rollout call the policy's own methods,
    which would bypass FSDP's gathering `forward`), all built alike (`_load_policy`), and the actor averages the
    gradients over the worker's process group before every step, as DDP does. Not adapted: LoRA, parameter /
    optimizer offloading, Megatron."""

    def __init__(self, config: Any, role: str, process_group: Any):
        super().__init__(config, role, process_group)
        self.process_group = process_group

    def _load_policy(self) -> Policy:
        """The checkpoint's policy, the same on every rank and in every role: the value head a policy adds to an
        imitation checkpoint starts from seed 0 (FSDP's `sync_module_states` gives siiRL's ranks rank 0's weights)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return load_policy(self.config.model.path).to(get_device_id())

    def init_model(self):
        """fsdp_workers.py `init_model` with our policy: actor, rollout and reference in the order siiRL builds
        them, the embodied layout copied into the actor's and reference's configs as siiRL copies it."""
        cfg = self.config
        if self._is_offload_param or self._is_offload_optimizer or cfg.model.lora_rank > 0:
            raise ValueError("parameter / optimizer offloading and LoRA are not adapted to our policies")
        self.tokenizer, self.processor = NO_TOKENIZER, None
        self.flops_counter = FlopsCounter(SimpleNamespace(model_type="load_policy"))  # an unknown type: MFU 0
        if self._is_actor:
            self.actor_module_fsdp = self.actor_module = self._load_policy()
            self.actor_optimizer, self.actor_lr_scheduler = self._create_optimizer_and_scheduler(
                model=self.actor_module, optim_config=cfg.actor.optim, role=Role.Actor)
            self._copy_embodied_layout(cfg.actor)
            self.actor = EmbodiedActor(cfg.actor, self.actor_module, self.actor_optimizer, device=get_device_id(),
                                       process_group=self.process_group)
        if self._is_rollout:
            self.rollout, self.rollout_sharding_manager = self._build_rollout()
        if self._is_ref:
            self._copy_embodied_layout(cfg.ref)
            self.ref_module_fsdp = self._load_policy()
            self.ref_policy = EmbodiedActor(cfg.ref, self.ref_module_fsdp, device=get_device_id())

    def _copy_embodied_layout(self, role_config: Any) -> None:
        embodied = self.config.embodied
        role_config.embodied_type = embodied.embodied_type
        role_config.action_token_len = embodied.action_token_len
        role_config.action_chunks_len = embodied.action_chunks_len

    def _build_rollout(self, trust_remote_code: bool = False):
        """fsdp_workers.py `_build_rollout`'s hf / embodied branch with our rollout; the env adapter built as
        `EmbodiedHFRollout.__init__` builds it (embodied_rollout.py:163-173). Its model is the actor's module where
        this worker has one; siiRL's DAG worker sets it again in `setup_sharding_manager` (dag_utils.py)."""
        from siirl.environment.embodied import LIBEROAdapter  # here: only rollout workers need LIBERO
        env, rank = self.config.embodied.env, torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.generation_config = None
        adapter = LIBEROAdapter(env_name=env.env_name, num_envs=env.num_envs, max_steps=env.max_steps,
                                num_steps_wait=env.num_steps_wait, model_family=env.model_family,
                                gpu_ids=[rank % self.config.embodied.n_gpus_per_node])
        trained = read_config(resolve_checkpoint(self.config.model.path))["config"]
        obs_to_input = partial(libero_obs_to_input, num_cameras=len(trained["cameras"]),
                               image_size=trained["demo_image_size"])
        rollout = EmbodiedRollout(getattr(self, "actor_module_fsdp", None), adapter, num_envs=env.num_envs,
                                  max_steps=env.max_steps, obs_to_input=obs_to_input, device=get_device_id())
        return rollout, None

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        """The actor's policy as a `load_policy` checkpoint in `local_path` (siiRL's FSDPCheckpointManager writes
        HF models): its weights and the config.json it was loaded with; no optimizer state, no HDFS copy."""
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            save_pretrained(self.actor_module, read_config(resolve_checkpoint(self.config.model.path)), local_path)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        load_pretrained(self.actor_module, local_path)


def use_policy_worker() -> None:
    """Make siiRL's DAG workers build `PolicyActorRolloutRefWorker` wherever they would build its FSDP
    `ActorRolloutRefWorker` (actor, rollout, reference): replaces `get_worker_classes` where
    siirl/dag_worker/dagworker.py imports it by name (it resolves the role -> worker mapping in
    `_setup_role_worker_mapping`). siiRL has no extension hook; run this in every Ray worker process with Ray's
    own, before siiRL's entry point (siirl/main_dag.py `main` keeps a Ray that is already running):

        ray.init(runtime_env={"env_vars": siirl.main_dag.RAY_RUNTIME_ENV_VARS,
                              "worker_process_setup_hook": "adapters.siirl.use_policy_worker"})
        siirl.main_dag.main()
    """
    from siirl.dag_worker import dag_utils, dagworker

    def get_worker_classes(config, strategy: str) -> dict:
        classes = dag_utils.get_worker_classes(config, strategy)
        return {role: PolicyActorRolloutRefWorker if cls is ActorRolloutRefWorker else cls
                for role, cls in classes.items()}

    dagworker.get_worker_classes = get_worker_classes
