"""Any policy of this repo inside verl (`pip install verl==0.9.1`, https://github.com/volcengine/verl): a rollout
that answers verl's `generate_sequences(DataProto) -> DataProto`, and an actor with `compute_log_prob` /
`compute_values` / `update_policy` on DataProto that trains with verl's own registered advantage estimators and
policy losses (verl/trainer/ppo/core_algos.py: `get_adv_estimator_fn`, `get_policy_loss_fn`, `compute_value_loss`,
`agg_loss`).

verl is written for language models: a row of a DataProto is a prompt and its response, a position is a token. An
embodied episode maps onto it as SimpleVLA-RL (built on verl) maps it: a row is an episode, a position is one
decision, here one action chunk, so a (B, T) batch holds B episodes of T chunks and verl's token-level machinery
applies unchanged:

    response_mask        (B, T)  the chunk steps the episode took (0 after it ended)
    token_level_rewards  (B, T)  the reward of each chunk (e.g. 1 on the chunk in which the task succeeds)
    old_log_probs        (B, T)  the chunk's log-probability at rollout time (our contract's chunk-level log-prob)
    values               (B, T)  V(s_t) from the policy's value head
    uid                  (B,)    the group of a row for GRPO (episodes from the same placement)

    GAE:   get_adv_estimator_fn("gae")(token_level_rewards, values, response_mask, gamma, lam)
           (the episode's end is terminal: verl's GAE bootstraps nothing after the last position)
    GRPO:  get_adv_estimator_fn("grpo")(token_level_rewards, response_mask, index=uid)  (outcome = the row's sum)
    loss:  get_policy_loss_fn(config.policy_loss.loss_mode)  ("vanilla": the clipped PPO surrogate, dual-clip)

The observation of each chunk step travels in the batch (`rgb` (B, T, V, S, S, 3), `proprio` (B, T, D); the
instruction as `language` (B,) in non_tensor_batch) with the policy's rollout tensors under `rollout.<name>`, which
`Policy.evaluate_actions` re-scores.

What is not here: verl 0.9.1 ships no embodied code (no env loop, no VLA worker); its trainer drives engine workers
(verl/workers/engine_workers.py `compute_log_prob` / `update_actor` on TensorDict) through Ray and an LLM inference
server (`get_rollout_class`: vllm, sglang, trtllm). The rollout below answers one decision per call; the loop that
steps environments and stacks the steps into episodes (`episodes`) is the caller's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Generator

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig
from verl.workers.rollout.base import BaseRollout

from common.policy import Policy


def observation(data: DataProto) -> TensorDict:
    """One decision step's rows (`rgb`, `proprio`, non-tensor `language`) as `common.policy`'s TensorDict."""
    return TensorDict(rgb=data.batch["rgb"], proprio=data.batch["proprio"],
                      language=NonTensorStack(*data.non_tensor_batch["language"]), batch_size=[len(data)])


class VLARollout(BaseRollout):
    """verl's rollout interface (verl/workers/rollout/base.py `BaseRollout`) around a `common.policy.Policy`.

    `BaseRollout.__init__` is not called: it builds a rollout config, an HF model config and a device mesh for an
    LLM inference server; this rollout runs the policy in-process."""

    def __init__(self, policy: Policy):
        self.policy = policy

    @torch.no_grad()
    def generate_sequences(self, prompts: DataProto) -> DataProto:
        """One action chunk per row: `prompts` holds each env's current observation; `meta_info["validate"]`
        (verl's flag for evaluation rollouts) takes the policy's deterministic chunk. Returns the rows with
        `actions` (B, K, A) in environment units, `old_log_probs` (B,), `values` (B,) and `rollout.*` added."""
        out = self.policy(observation(prompts), deterministic=prompts.meta_info.get("validate", False))
        tensors = {"actions": out["action"], "old_log_probs": out["log_prob"].float(),
                   "values": out["value"][:, 0].float()}
        tensors.update({f"rollout.{name}": value for name, value in out.items() if name not in ("log_prob", "value")})
        return prompts.union(DataProto.from_dict(tensors=tensors, meta_info=prompts.meta_info))

    async def resume(self, tags: list[str]):
        """Nothing to bring back: the policy stays in memory."""

    async def release(self):
        """Nothing to free: the policy stays in memory."""

    async def update_weights(self, weights: Generator[tuple[str, torch.Tensor], None, None],
                             wire_format: str = "named_tensors", **kwargs):
        """The actor's weights, as (name, tensor) pairs of the policy's state dict."""
        if wire_format != "named_tensors":
            raise ValueError(f"only named_tensors weights are supported, got {wire_format!r}")
        state = self.policy.state_dict()
        with torch.no_grad():
            for name, tensor in weights:
                state[name].copy_(tensor)


def episodes(steps: list[DataProto], rewards: torch.Tensor, response_mask: torch.Tensor,
             uid: np.ndarray | None = None) -> DataProto:
    """T decision steps of B envs (each what `generate_sequences` returned) as verl's (B, T) layout: a row an
    episode, a position a chunk. `rewards`, `response_mask`: (B, T); `uid`: GRPO's group of each row."""
    batch = {key: torch.stack([step.batch[key] for step in steps], dim=1) for key in steps[0].batch.keys()}
    batch.update(token_level_rewards=rewards.float(), response_mask=response_mask.float())
    non_tensors = {"language": steps[0].non_tensor_batch["language"]}
    if uid is not None:
        non_tensors["uid"] = uid
    return DataProto.from_dict(tensors=batch, non_tensors=non_tensors)


class VLAActor:
    """verl's actor role for a `common.policy.Policy`: the calls of its PPO actor (`compute_log_prob`,
    `update_policy`; critic: `compute_values`) on the (B, T) episode layout, with verl's `ActorConfig` (clip
    ratios, `policy_loss.loss_mode`, `loss_agg_mode`, `entropy_coeff`, `ppo_epochs`, `ppo_mini_batch_size`,
    `ppo_micro_batch_size_per_gpu`, `optim.clip_grad`). The value head lives in the policy, so the critic's loss
    (`compute_value_loss`, clipped at `cliprange_value`, weight `vf_coef`) is added when the batch has `values`."""

    def __init__(self, policy: Policy, config: ActorConfig, optimizer: torch.optim.Optimizer,
                 vf_coef: float = 0.5, cliprange_value: float = 0.2):
        self.policy, self.config, self.optimizer = policy, config, optimizer
        self.vf_coef, self.cliprange_value = vf_coef, cliprange_value

    def _score(self, data: DataProto, values: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-probability, entropy (and V) of every (row, chunk) of `data` under the current weights: (B, T)."""
        b, t = data.batch["response_mask"].shape
        obs = TensorDict(rgb=data.batch["rgb"].flatten(0, 1), proprio=data.batch["proprio"].flatten(0, 1),
                         language=NonTensorStack(*np.repeat(data.non_tensor_batch["language"], t)),
                         batch_size=[b * t])
        rollout = TensorDict({key.removeprefix("rollout."): data.batch[key].flatten(0, 1)
                              for key in data.batch.keys() if key.startswith("rollout.")}, batch_size=[b * t])
        log_prob, entropy = self.policy.evaluate_actions(obs, rollout)
        value = self.policy.get_value(obs)[:, 0].view(b, t) if values else None
        return log_prob.view(b, t), entropy.view(b, t), value

    @torch.no_grad()
    def compute_log_prob(self, data: DataProto) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_prob, entropy), each (B, T): before any update, log_prob equals the rollout's `old_log_probs`."""
        log_prob, entropy, _ = self._score(data, values=False)
        return log_prob, entropy

    @torch.no_grad()
    def compute_values(self, data: DataProto) -> torch.Tensor:
        return self._score(data, values=True)[2]

    def update_policy(self, data: DataProto) -> dict[str, float]:
        """`ppo_epochs` passes over `data` in minibatches of `ppo_mini_batch_size` rows, each one optimizer step
        accumulated over micro-batches of `ppo_micro_batch_size_per_gpu` rows. Needs `advantages` (and `returns`,
        `values` for the critic)."""
        cfg = self.config
        loss_fn = core_algos.get_policy_loss_fn(cfg.policy_loss.loss_mode)
        critic = "values" in data.batch.keys()
        parameters = [p for p in self.policy.parameters() if p.requires_grad]
        metrics = defaultdict(list)
        self.policy.train()
        for _ in range(cfg.ppo_epochs):
            for minibatch in data.split(cfg.ppo_mini_batch_size):
                self.optimizer.zero_grad()
                for micro in minibatch.split(cfg.ppo_micro_batch_size_per_gpu):
                    mask = micro.batch["response_mask"]
                    log_prob, entropy, value = self._score(micro, values=critic)
                    pg_loss, pg_metrics = loss_fn(old_log_prob=micro.batch["old_log_probs"], log_prob=log_prob,
                                                  advantages=micro.batch["advantages"], response_mask=mask,
                                                  loss_agg_mode=cfg.loss_agg_mode, config=cfg)
                    entropy_loss = core_algos.agg_loss(entropy, mask, cfg.loss_agg_mode)
                    loss = pg_loss - cfg.entropy_coeff * entropy_loss
                    if critic:
                        vf_loss, vf_clipfrac = core_algos.compute_value_loss(
                            vpreds=value, returns=micro.batch["returns"], values=micro.batch["values"],
                            response_mask=mask, cliprange_value=self.cliprange_value, loss_agg_mode=cfg.loss_agg_mode)
                        loss = loss + self.vf_coef * vf_loss
                        metrics["critic/vf_loss"].append(vf_loss.item())
                        metrics["critic/vf_clipfrac"].append(vf_clipfrac.item())
                    (loss * len(micro) / len(minibatch)).backward()
                    metrics["actor/pg_loss"].append(pg_loss.item())
                    metrics["actor/entropy"].append(entropy_loss.item())
                    for key, v in pg_metrics.items():
                        metrics[key].append(v)
                grad_norm = torch.nn.utils.clip_grad_norm_(parameters, cfg.optim.clip_grad)
                self.optimizer.step()
                metrics["actor/grad_norm"].append(grad_norm.item())
        self.policy.eval()
        return {key: float(np.mean(values)) for key, values in metrics.items()}
