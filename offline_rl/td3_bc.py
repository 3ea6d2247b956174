"""TD3+BC (Fujimoto & Gu, 2021, arXiv:2106.06860): TD3 with a behaviour-cloning term, normalised states.

The only changes to TD3 (Fujimoto et al., 2018) are a BC term in the actor's objective and state normalisation
(Sec. 5, Eq. 3):

    π = argmax_π E[ λ Q₁(s, π(s)) − (π(s) − a)² ],   λ = α / mean|Q₁(s, π(s))|  (α = 2.5, λ carries no gradient)

The critics are TD3's: clipped double Q with target policy smoothing, a' = clip(π'(s') + clip(ε, −c, c), −1, 1),
ε ~ N(0, 0.2²), c = 0.5, y = r + γ(1 − d) min(Q₁', Q₂')(s', a'); the actor and all targets update every 2nd step.

    python offline_rl/td3_bc.py
    python offline_rl/td3_bc.py --preset corl --dataset /data/hopper-medium-v2.hdf5 --env_id Hopper-v5
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from common.config import parse_config
from offline_rl.data import OfflineDataset, TransitionBuffer
from offline_rl.networks import DeterministicActor, TwinQ, soft_update
from offline_rl.runner import RunConfig, run, sgd_step


@dataclass
class TD3BCConfig(RunConfig):
    alpha: float = 2.5  # α in λ = α / mean|Q| (TD3+BC Eq. 3)
    discount: float = 0.99  # γ
    tau: float = 0.005  # Polyak rate of the target actor and critics
    policy_noise: float = 0.2  # σ of the target policy smoothing noise (TD3)
    noise_clip: float = 0.5  # c, the clip of that noise
    policy_freq: int = 2  # actor and target updates every this many critic updates (TD3's delay)
    actor_lr: float = 3e-4  # Adam
    critic_lr: float = 3e-4  # Adam
    hidden: int = 256  # width of the two hidden layers


PRESETS = {
    "default": TD3BCConfig(),
    "corl": TD3BCConfig(updates=1_000_000, checkpoint_every=50_000),  # CORL's D4RL budget
}


def td3_bc_actor_loss(q: Tensor, pi: Tensor, actions: Tensor, alpha: float) -> Tensor:
    """−λ·mean Q₁(s, π(s)) + mean (π(s) − a)², λ = α / mean|Q₁| without gradient (TD3+BC Eq. 3; the squared
    error is averaged over batch and action dimensions, as in the authors' code)."""
    lam = alpha / q.abs().mean().detach()
    return -lam * q.mean() + (pi - actions).pow(2).mean()


def td3_target(q_target: TwinQ, actor_target: nn.Module, next_obs: Tensor, rewards: Tensor, dones: Tensor,
               discount: float, policy_noise: float, noise_clip: float) -> Tensor:
    """y = r + γ(1 − d)·min_i Q_i'(s', clip(π'(s') + clip(ε, −c, c), −1, 1)) (TD3 Eq. 15 with smoothing)."""
    next_actions = actor_target(next_obs)
    noise = (torch.randn_like(next_actions) * policy_noise).clamp(-noise_clip, noise_clip)
    next_q = q_target(next_obs, (next_actions + noise).clamp(-1.0, 1.0)).min(0).values
    return rewards + discount * (1.0 - dones) * next_q


class TD3BC(nn.Module):
    def __init__(self, cfg: TD3BCConfig, ds: OfflineDataset):
        super().__init__()
        self.cfg, self.buffer = cfg, TransitionBuffer(ds, cfg.device)
        obs_dim, act_dim = ds.observations.shape[1], ds.actions.shape[1]
        self.actor = DeterministicActor(obs_dim, act_dim, cfg.hidden)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.q = TwinQ(obs_dim, act_dim, cfg.hidden)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.optimizers = dict(actor=torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, fused=True),
                               q=torch.optim.Adam(self.q.parameters(), lr=cfg.critic_lr, fused=True))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # for the actor's delay, resumed with it
        self.last_actor_loss = torch.tensor(float("nan"))

    def update(self) -> dict[str, float]:
        cfg = self.cfg
        obs, actions, rewards, next_obs, dones = self.buffer.sample(cfg.batch_size)
        with torch.no_grad():
            target = td3_target(self.q_target, self.actor_target, next_obs, rewards, dones, cfg.discount,
                                cfg.policy_noise, cfg.noise_clip)
        # MSE of each critic to the shared target, summed over the two (TD3)
        loss_q = (self.q(obs, actions) - target).pow(2).mean(1).sum()
        sgd_step(self.optimizers["q"], loss_q)
        self.steps += 1
        if self.steps % cfg.policy_freq == 0:
            pi = self.actor(obs)
            loss_pi = td3_bc_actor_loss(self.q(obs, pi)[0], pi, actions, cfg.alpha)
            sgd_step(self.optimizers["actor"], loss_pi)
            soft_update(self.q_target, self.q, cfg.tau)
            soft_update(self.actor_target, self.actor, cfg.tau)
            self.last_actor_loss = loss_pi.detach()
        return dict(loss_q=loss_q.item(), loss_pi=self.last_actor_loss)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(obs, device=self.buffer.device)[None])[0].cpu().numpy()


def main(args: list[str] | None = None) -> dict:
    cfg = parse_config(PRESETS, args, default="default", description=__doc__)
    return run(cfg, "td3_bc", lambda ds: TD3BC(cfg, ds))


if __name__ == "__main__":
    main()
