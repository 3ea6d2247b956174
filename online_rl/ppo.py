"""PPO fine-tuning of an imitation policy in Meta-World, with chunk-level actions (Schulman et al. 2017,
arXiv:1707.06347; the chunk-level recipe of RLinf / πRL, arXiv:2510.25889).

Any method's policy comes through `common.policy.load_policy`, so this file knows no method. One decision is one
action chunk: the policy samples K actions, the environment executes them open loop, and the chunk is one PPO
"action" with one log-probability (the policy's: a Gaussian around a regression head, a flow policy's stochastic
denoising step, ...).

Each iteration (see online_rl/envs.py): every env plays one episode from its own placement, then
    GAE       delta_t = r_t + gamma * V_next_t - V(s_t)            V_next_t = V(s_{t+1}) if the episode goes on,
              A_t = delta_t + gamma * lambda * c_t * A_{t+1}       V(s_final) if the step limit cut it (truncation
              R_t = A_t + V(s_t)                                   is not failure), 0 after success; c_t: it goes on
              (Schulman et al. 2016, arXiv:1506.02438, eq. 16)
    policy    L = -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)],  rho = exp(log pi(a|s) - log pi_old(a|s))  (eq. 7)
    value     L_V = 1/2 E[max((V - R)^2, (V_old + clip(V - V_old, -eps_V, eps_V) - R)^2)]   (value clipping, as
              OpenAI baselines / CleanRL)
    for `update_epochs` passes over the iteration's chunks in minibatches, advantages normalised over the iteration.
The first `critic_warmup` iterations train the value head alone (the actor is unchanged while the critic learns
values of the starting policy).

Rewards: `success` (default) gives 1 on the chunk in which the task succeeds, which ends the episode (RLinf's
relative sparse reward); `dense` gives Meta-World's shaped reward summed over the chunk, times `dense_scale`. On the
driving benchmark (`env="driving"`, online_rl/driving.py) a chunk is a plan, `success` is arrival and `score` the
episode's PDM-style score, both on the chunk that ends the episode.

Logged per iteration: the success rate of its episodes, the mean return, PPO's clip fraction, the approximate KL
between the rollout policy and the updated one, and the KL of the current policy to the starting one on the
rollout's chunks (Schulman's k3 estimator, E[(r - 1) - log r] with r = pi_start / pi).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from common.policy import Policy

from online_rl.loop import RLConfig, epochs_of_steps, fine_tune, kl_to_start, own_placements


@dataclass
class PPOConfig(RLConfig):
    run_dir: str = "runs/ppo"  # checkpoints, metrics.jsonl, eval_before/ and eval_after/
    gamma: float = 0.99  # discount per chunk
    gae_lambda: float = 0.95  # GAE's lambda
    clip: float = 0.2  # PPO's ratio clip epsilon
    value_clip: float = 0.2  # value clipping around the rollout's values (0: none)
    value_lr: float = 1e-4  # value-head learning rate
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.0  # entropy bonus (RLinf: 0)
    critic_warmup: int = 2  # first iterations update only the value head


# ---------------------------------------------------------------------------------------------------- the maths
def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, goes_on: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (T, N) chunk steps; `goes_on[t]`: the episode continues to t + 1.
    Returns (advantages, returns)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        running = delta + gamma * lam * goes_on[t].float() * running
        advantages[t] = running
    return advantages, advantages + values


def ppo_losses(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, value: torch.Tensor,
               old_value: torch.Tensor, returns: torch.Tensor, clip: float, value_clip: float
               ) -> dict[str, torch.Tensor]:
    """The clipped surrogate (policy) and clipped value losses of one minibatch, with PPO's diagnostics."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    policy = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
    value_loss = (value - returns) ** 2
    if value_clip > 0:
        clipped = old_value + (value - old_value).clamp(-value_clip, value_clip)
        value_loss = torch.max(value_loss, (clipped - returns) ** 2)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # KL(old || new), Schulman's k3
        clip_fraction = ((ratio - 1).abs() > clip).float().mean()
    return dict(policy=policy, value=0.5 * value_loss.mean(), approx_kl=approx_kl, clip_fraction=clip_fraction)


# ---------------------------------------------------------------------------------------------------- training
def make_optimizer(policy: torch.nn.Module, cfg: PPOConfig) -> torch.optim.Optimizer:
    """AdamW with the value head at its own learning rate (RLinf: actor 1e-5, critic 1e-4; betas 0.9, 0.95)."""
    value = [p for n, p in policy.named_parameters() if n.startswith("value_head.") and p.requires_grad]
    actor = [p for n, p in policy.named_parameters() if not n.startswith("value_head.") and p.requires_grad]
    return torch.optim.AdamW([dict(params=actor, lr=cfg.lr), dict(params=value, lr=cfg.value_lr)],
                             betas=(0.9, 0.95), weight_decay=0.0)


def update(cfg: PPOConfig, policy: Policy, reference: Policy, optimizer: torch.optim.Optimizer, state: None,
           batch: dict, iteration: int, generator: torch.Generator) -> dict[str, float]:
    """`update_epochs` passes of minibatch PPO over the valid chunks of one iteration."""
    valid = batch["valid"].flatten().nonzero()[:, 0]
    obs, out = batch["obs"].reshape(-1)[valid], batch["out"].reshape(-1)[valid]
    advantages, returns = (x.flatten()[valid] for x in gae(batch["rewards"], batch["values"], batch["next_values"],
                                                          batch["goes_on"], cfg.gamma, cfg.gae_lambda))
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8) if len(valid) > 1 else advantages
    kl_start = kl_to_start(reference, obs, out)

    def loss_of(mb: torch.Tensor) -> tuple[torch.Tensor, dict]:
        log_prob, entropy = policy.evaluate_actions(obs[mb], out[mb])
        value = policy.get_value(obs[mb])[:, 0]
        losses = ppo_losses(log_prob, out["log_prob"][mb], advantages[mb], value, out["value"][mb, 0], returns[mb],
                            cfg.clip, cfg.value_clip)
        loss = cfg.vf_coef * losses["value"]
        if iteration >= cfg.critic_warmup:
            loss = loss + losses["policy"] - cfg.ent_coef * entropy.mean()
        return loss, {k: v.detach() for k, v in dict(losses, entropy=entropy.mean()).items()}

    policy.train()
    stats = epochs_of_steps(cfg, len(valid), optimizer, generator, loss_of)
    policy.eval()
    return dict(stats, kl_start=kl_start)


def train(cfg: PPOConfig) -> dict:
    return fine_tune(cfg, "ppo", lambda policy: (make_optimizer(policy, cfg), None), partial(own_placements, cfg),
                     partial(update, cfg))
