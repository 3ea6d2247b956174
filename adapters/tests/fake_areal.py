"""A faithful fake of the part of AReaL 1.0.4 that drives a model (AReaL cannot be installed beside our torch:
`torch>=2.9.1,<2.11`). Reproduced from the areal-1.0.4 wheel, Apache-2.0, cut to the default path:

- `RolloutWorkflow`: areal/api/workflow_api.py (the ABC, `arun_episode` its one abstract method).
- `ppo_actor_loss_fn`: areal/utils/functional/functional.py, token-level importance sampling, no rejection
  sampling: ratio = exp(logp - prox_logp) on the loss mask, clipped at [1 - eps, 1 + eps_higher], optional dual
  clip, loss = sum over the mask / its count.
- `grpo_loss_fn`: areal/trainer/ppo/actor.py, `prox_logp_method="recompute"` without the decoupled loss: the
  proximal log-probs are `input_data["prox_logp"]`; stats logging left out.
- `PPOActor`: areal/trainer/ppo/actor.py `compute_logp` (engine.eval(); engine.forward(input_=data, aggregate_fn=
  cat on the last dim)), `_compute_advantages` (reward bias/scale/clip, the -1 roll of loss_mask and logprobs, KL
  reward with kl_ctl against a zero reference, the outcome reward at `seqlens - 2`, masked GAE, returns) and
  `_ppo_update` (engine.train(); micro-batches by rows; `engine.train_batch(mb, loss_fn=partial(grpo_loss_fn, ...),
  loss_weight_fn=lambda x: x["loss_mask"].count_nonzero())`), on one padded batch (what `batched_call` hands them)
  and without the overlong penalty, reward/advantage normalisation and stats tracker.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


class RolloutWorkflow(ABC):
    @abstractmethod
    async def arun_episode(self, engine, data: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError()


def ppo_actor_loss_fn(logprobs, proximal_logprobs, old_logprobs, advantages, eps_clip, loss_mask,
                      eps_clip_higher=None, c_clip=None):
    loss_mask_count = loss_mask.count_nonzero() or 1
    ratio = torch.where(loss_mask, torch.exp(logprobs - proximal_logprobs), 0)
    clipped_ratio = torch.clamp(ratio, 1.0 - eps_clip, 1.0 + (eps_clip if eps_clip_higher is None else eps_clip_higher))
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * clipped_ratio
    pg_loss = torch.max(pg_loss1, pg_loss2)
    if c_clip is not None:
        pg_loss3 = torch.sign(advantages) * c_clip * advantages
        pg_loss = torch.min(pg_loss, pg_loss3)
    pg_loss = torch.where(loss_mask, pg_loss, 0).sum() / loss_mask_count
    return pg_loss, dict(importance_weight=ratio.detach())


def grpo_loss_fn(logprobs, entropy, input_data, eps_clip, eps_clip_higher, c_clip):
    loss, _ = ppo_actor_loss_fn(logprobs=logprobs, proximal_logprobs=input_data["prox_logp"],
                                old_logprobs=input_data["logprobs"], advantages=input_data["advantages"],
                                eps_clip=eps_clip, loss_mask=input_data["loss_mask"].bool(),
                                eps_clip_higher=eps_clip_higher, c_clip=c_clip)
    return loss


@dataclass
class PPOActorConfig:  # areal/api/cli_args.py, the fields the path above reads
    eps_clip: float = 0.2
    eps_clip_higher: float | None = None
    c_clip: float | None = None
    reward_bias: float = 0.0
    reward_scaling: float = 1.0
    reward_clip: float = 20.0
    kl_ctl: float = 0.0
    discount: float = 1.0
    gae_lambda: float = 1.0
    mask_no_eos_with_zero: bool = False
    recompute_logprob: bool = True
    use_decoupled_loss: bool = False
    ppo_n_minibatches: int = 1


class PPOActor:
    def __init__(self, config: PPOActorConfig, engine):
        self.config, self.engine = config, engine

    def compute_logp(self, data: dict[str, Any]) -> torch.Tensor:
        self.engine.eval()
        return self.engine.forward(input_=data, aggregate_fn=lambda xs: torch.cat(xs, dim=-1))

    def compute_advantages(self, data: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        bs, max_seqlen = data["input_ids"].shape
        batch_indices = torch.arange(bs, dtype=torch.long)
        reward_score = (data["rewards"] + cfg.reward_bias) * cfg.reward_scaling
        reward_score = torch.clip(reward_score, max=cfg.reward_clip, min=-cfg.reward_clip)
        loss_mask = torch.roll(data["loss_mask"].float(), shifts=-1, dims=-1)
        if not cfg.use_decoupled_loss and cfg.recompute_logprob:
            old_logp = data["logprobs"] = data["prox_logp"]
        else:
            old_logp = torch.roll(data["logprobs"], shifts=-1, dims=-1)
            data["prox_logp"] = old_logp
        ref_logp = torch.zeros_like(old_logp) * loss_mask
        old_logp = old_logp * loss_mask
        attn_mask = data["attention_mask"]
        seqlens = attn_mask.sum(-1).long()
        seq_no_eos_mask = seqlens == attn_mask.shape[1]
        rewards = -cfg.kl_ctl * (old_logp - ref_logp)  # KLEstimator("k1")
        rewards[batch_indices, seqlens - 1] = 0
        indices = torch.clip(seqlens - 2, min=0)
        if cfg.mask_no_eos_with_zero:
            rewards[batch_indices, indices] += torch.where(seq_no_eos_mask, 0, reward_score)
        else:
            rewards[batch_indices, indices] += reward_score
        values = data["values"] if "values" in data else torch.zeros_like(rewards)
        advantages_reversed = [torch.zeros(bs, dtype=torch.float32)]
        lastgaelam = 0
        nextvalues = values[:, max_seqlen - 1] * seq_no_eos_mask
        for t in reversed(range(max_seqlen - 1)):
            delta = rewards[:, t] + cfg.discount * nextvalues - values[:, t]
            newgaelam = delta + cfg.discount * cfg.gae_lambda * lastgaelam
            mask = loss_mask[:, t]
            nextvalues = nextvalues * (1 - mask) + values[:, t] * mask
            lastgaelam = lastgaelam * (1 - mask) + newgaelam * mask
            advantages_reversed.append(lastgaelam)
        advantages = torch.stack(advantages_reversed[::-1], dim=1)
        data["returns"] = advantages + values
        data["advantages"] = advantages
        data["loss_mask"] = loss_mask
        data["logprobs"] = old_logp
        return data

    def ppo_update(self, data: dict[str, Any]) -> list[dict[str, float]]:
        self.engine.train()
        rows = data["input_ids"].shape[0]
        size = -(-rows // self.config.ppo_n_minibatches)
        stats = []
        for start in range(0, rows, size):
            mb = {k: v[start:start + size] if torch.is_tensor(v) else v for k, v in data.items()}
            stats.append(self.engine.train_batch(
                mb, loss_fn=functools.partial(grpo_loss_fn, eps_clip=self.config.eps_clip,
                                              eps_clip_higher=self.config.eps_clip_higher, c_clip=self.config.c_clip),
                loss_weight_fn=lambda x: x["loss_mask"].count_nonzero()))
        return stats
