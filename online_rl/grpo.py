"""GRPO fine-tuning of an imitation policy in Meta-World: group-relative advantages of a 0/1 outcome, no critic
(Shao et al. 2024, arXiv:2402.03300), with DAPO's dynamic sampling and clip-higher (Yu et al. 2025,
arXiv:2503.14476), as SimpleVLA-RL fine-tunes OpenVLA-OFT (Li et al. 2025, arXiv:2509.09674).

    groups     G envs play the same placement (task, seed, episode): our resets are deterministic, so the G
               episodes differ only by the policy's own sampling
    reward     R_i = 1 if episode i succeeded, else 0 (the outcome)
    advantage  A_i = (R_i - mean_g R) / (std_g R + 1e-6) for every chunk of episode i, std the sample std of its group
    dynamic    a group whose G outcomes are all equal (all failed or all succeeded) has no signal: it is dropped
    sampling   (DAPO; SimpleVLA-RL filters such groups the same way)
    loss       L = -(1 / #chunks) sum_{i,t} min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i), the mean over
               the minibatch's chunks (DAPO's token-level mean), eps_low 0.2, eps_high 0.28 (clip-higher); no KL term
The policy's value head is not used (no critic). The rollout, logging, checkpoints and exact resume are loop.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from common.policy import Policy

from online_rl.loop import RLConfig, epochs_of_steps, fine_tune, kl_to_start


@dataclass
class GRPOConfig(RLConfig):
    run_dir: str = "runs/grpo"  # checkpoints, metrics.jsonl, eval_before/ and eval_after/
    group_size: int = 4  # G: envs that share a placement
    envs_per_task: int = 8  # a multiple of group_size: envs_per_task / G groups per task per iteration
    clip_low: float = 0.2  # eps_low: the ratio's lower clip
    clip_high: float = 0.28  # eps_high: the ratio's upper clip (DAPO's clip-higher)

    def __post_init__(self):
        super().__post_init__()
        if self.group_size < 2 or self.envs_per_task % self.group_size:
            raise ValueError(f"envs_per_task ({self.envs_per_task}) must be a multiple of group_size "
                             f"({self.group_size}), which must be at least 2")


def groups(cfg: GRPOConfig) -> torch.Tensor:
    """The group of every env: env i runs task i % T as that task's copy j = i // T, in group j // G."""
    n_tasks, per_task = len(cfg.tasks), cfg.envs_per_task // cfg.group_size
    return torch.tensor([(i % n_tasks) * per_task + (i // n_tasks) // cfg.group_size
                         for i in range(len(cfg.env_tasks()))])


def placements(cfg: GRPOConfig, iteration: int) -> list[int]:
    """The G envs of a group share one placement, new every iteration."""
    per_task = cfg.envs_per_task // cfg.group_size
    return [iteration * per_task + (i // len(cfg.tasks)) // cfg.group_size for i in range(len(cfg.env_tasks()))]


def grpo_advantages(outcomes: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalised advantages of 0/1 `outcomes` (N,) and which envs' groups carry signal (not all equal)."""
    advantages, keep = torch.zeros_like(outcomes), torch.zeros_like(outcomes, dtype=torch.bool)
    for g in group.unique():
        members = group == g
        r = outcomes[members]
        if (r == r[0]).all():
            continue  # dynamic sampling: no signal
        advantages[members] = (r - r.mean()) / (r.std() + 1e-6)
        keep[members] = True
    return advantages, keep


def grpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_low: float,
              clip_high: float) -> dict[str, torch.Tensor]:
    """The clipped surrogate with asymmetric clip, averaged over chunks; with the clip fraction and approximate KL."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)).mean()
    with torch.no_grad():
        clipped = (ratio < 1 - clip_low) | (ratio > 1 + clip_high)
        return dict(policy=loss, approx_kl=((ratio - 1) - log_ratio).mean(), clip_fraction=clipped.float().mean())


def update(cfg: GRPOConfig, policy: Policy, reference: Policy, optimizer: torch.optim.Optimizer, state: None,
           batch: dict, iteration: int, generator: torch.Generator) -> dict[str, float]:
    """`update_epochs` passes of minibatch GRPO over the chunks of the groups with signal."""
    outcomes = torch.as_tensor(batch["success"], dtype=torch.float32)
    advantages, keep = grpo_advantages(outcomes, groups(cfg))
    chunks = (batch["valid"].cpu() & keep[None]).flatten().nonzero()[:, 0]  # (t, env) rows, flattened
    stats = dict(groups_kept=keep.float().mean().item() * len(keep) / cfg.group_size, chunks_used=len(chunks))
    if len(chunks) == 0:
        return dict(stats, kl_start=0.0)  # every group all-0 or all-1: nothing to learn from this iteration
    obs, out = batch["obs"].reshape(-1)[chunks], batch["out"].reshape(-1)[chunks]
    chunk_advantages = advantages[chunks % len(keep)].to(out["log_prob"].device)  # each chunk its episode's A_i
    kl_start = kl_to_start(reference, obs, out)

    def loss_of(mb: torch.Tensor) -> tuple[torch.Tensor, dict]:
        log_prob, entropy = policy.evaluate_actions(obs[mb], out[mb])
        losses = grpo_loss(log_prob, out["log_prob"][mb], chunk_advantages[mb], cfg.clip_low, cfg.clip_high)
        return losses["policy"], {k: v.detach() for k, v in dict(losses, entropy=entropy.mean()).items()}

    policy.train()
    logged = epochs_of_steps(cfg, len(chunks), optimizer, generator, loss_of)
    policy.eval()
    return dict(stats, **logged, kl_start=kl_start)


def make_optimizer(policy: torch.nn.Module, cfg: GRPOConfig) -> torch.optim.Optimizer:
    """AdamW over the actor (the value head is not trained: GRPO has no critic)."""
    actor = [p for n, p in policy.named_parameters() if not n.startswith("value_head.") and p.requires_grad]
    return torch.optim.AdamW(actor, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)


def train(cfg: GRPOConfig) -> dict:
    return fine_tune(cfg, "grpo", lambda policy: (make_optimizer(policy, cfg), None), partial(placements, cfg),
                     partial(update, cfg))
