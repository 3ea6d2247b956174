"""Conservative Q-Learning (Kumar, Zhou, Tucker & Levine, 2020, arXiv:2006.04779), CQL(H) on top of SAC, with
CORL's hyperparameters.

CQL adds to the critic's TD loss a term that pushes Q down on actions the policy might pick and up on the
dataset's actions (Eq. 4, the CQL(H) variant):

    L_Q = ½ E[(Q(s, a) − y)²] + α_cql · E_s[ log Σ_a' exp Q(s, a') − E_(a~D) Q(s, a) ]

The log-sum-exp over all actions is estimated by importance sampling (App. F) from N = 10 uniform actions
(density 0.5^|A| on [−1, 1]^|A|) and N actions each from π(·|s) and π(·|s') (densities π(a'|·)):

    log Σ_a' exp Q(s, a') ≈ logsumexp_j [ Q(s, a_j) − log μ(a_j) ]   over the 3N samples (the constant log 3N dropped)

All 3N + 1 actions per state go through the twin critics in one batched forward. With `lagrange` the trade-off
α' is tuned so the gap stays at `target_action_gap` (Eq. 5). The actor is SAC's (tanh-Gaussian, automatic entropy
temperature), trained by behaviour cloning (max log π(a|s)) for its first `bc_steps` updates, as in CORL.

    python offline_rl/cql.py
    python offline_rl/cql.py --preset corl --dataset /data/hopper-medium-v2.hdf5 --env_id Hopper-v5
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from common.config import parse_config
from offline_rl.data import OfflineDataset, TransitionBuffer
from offline_rl.networks import TanhGaussianPolicy, TwinQ, soft_update
from offline_rl.runner import RunConfig, run, sgd_step


@dataclass
class CQLConfig(RunConfig):
    cql_alpha: float = 10.0  # α_cql, weight of the conservative term (CORL locomotion: 10)
    n_actions: int = 10  # N: sampled actions per source (uniform, π(·|s), π(·|s')) in the log-sum-exp
    temperature: float = 1.0  # the log-sum-exp is T · logsumexp(Q / T)
    lagrange: bool = False  # tune α' so the conservative gap matches target_action_gap (CQL Eq. 5)
    target_action_gap: float = -1.0  # τ of the Lagrange variant (used only with --lagrange)
    bc_steps: int = 0  # the actor clones the data (max log π(a|s)) for this many first updates (CORL: 0)
    discount: float = 0.99  # γ
    tau: float = 0.005  # Polyak rate of the target critics
    actor_lr: float = 3e-5  # Adam (CORL: 3e-5)
    critic_lr: float = 3e-4  # Adam
    alpha_lr: float = 3e-5  # Adam, for SAC's entropy temperature (CORL: the actor's rate)
    alpha_prime_lr: float = 3e-4  # Adam, for the Lagrange multiplier α' (CORL: the critics' rate)
    backup_entropy: bool = False  # subtract α log π(a'|s') in the TD target (SAC's soft backup; CORL: off)
    hidden: int = 256  # width of the hidden layers
    layers: int = 3  # hidden layers of the critics and the actor (CORL: 3)
    orthogonal_init: bool = True  # critics: orthogonal hidden weights (gain √2), output gain 0.01 (CORL)


PRESETS = {
    # ~3 updates/s on one CPU core (30 critic evaluations per state): a short budget by default
    "default": CQLConfig(updates=2_000, eval_every=1_000, checkpoint_every=1_000),
    "corl": CQLConfig(updates=1_000_000, checkpoint_every=50_000),  # CORL's D4RL budget
}


def conservative_gap(q_data: Tensor, q_sampled: Tensor, log_density: Tensor, temperature: float) -> Tensor:
    """E_s[T·logsumexp_j((Q(s, a_j) − log μ(a_j)) / T) − Q(s, a)] per critic (CQL Eq. 4 with App. F's importance
    sampling). q_data: (2, B); q_sampled, log_density: (2 or 1, B, 3N). Returns (2,)."""
    ood = torch.logsumexp((q_sampled - log_density) / temperature, dim=-1) * temperature
    return (ood - q_data).mean(-1)


class CQL(nn.Module):
    def __init__(self, cfg: CQLConfig, ds: OfflineDataset):
        super().__init__()
        self.cfg, self.buffer = cfg, TransitionBuffer(ds, cfg.device)
        obs_dim, self.act_dim = ds.observations.shape[1], ds.actions.shape[1]
        self.actor = TanhGaussianPolicy(obs_dim, self.act_dim, cfg.hidden, cfg.layers)
        self.q = TwinQ(obs_dim, self.act_dim, cfg.hidden, cfg.layers, orthogonal_init=cfg.orthogonal_init)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.zeros(()))  # SAC's entropy temperature
        self.log_alpha_prime = nn.Parameter(torch.ones(()))  # the Lagrange multiplier α' (starts at e, as CORL)
        self.optimizers = dict(actor=torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, fused=True),
                               q=torch.optim.Adam(self.q.parameters(), lr=cfg.critic_lr, fused=True),
                               alpha=torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, fused=True),
                               alpha_prime=torch.optim.Adam([self.log_alpha_prime], lr=cfg.alpha_prime_lr,
                                                            fused=True))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def update(self) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.n_actions
        obs, actions, rewards, next_obs, dones = self.buffer.sample(cfg.batch_size)
        b = obs.shape[0]
        # Every loss comes from the networks as they are before this update's steps, as in the CQL code and CORL.

        # SAC's temperature and actor (behaviour cloning for the first bc_steps)
        new_actions, log_pi = self.actor(obs)
        loss_alpha = -(self.log_alpha * (log_pi.detach() - self.act_dim)).mean()  # target entropy −|A|
        alpha = self.log_alpha.exp().detach()
        if self.steps < cfg.bc_steps:
            loss_pi = (alpha * log_pi - self.actor.log_prob(obs, actions)).mean()
        else:
            loss_pi = (alpha * log_pi - self.q(obs, new_actions).min(0).values).mean()

        # TD target from the target critics (optionally SAC's soft backup)
        with torch.no_grad():
            next_actions, next_log_pi = self.actor(next_obs)
            next_q = self.q_target(next_obs, next_actions).min(0).values
            if cfg.backup_entropy:
                next_q = next_q - alpha * next_log_pi
            target = rewards + cfg.discount * (1.0 - dones) * next_q
            # the 3N importance samples, drawn in CORL's order: uniform, π(·|s), π(·|s'); the policy ones from one
            # actor pass per state (CORL runs the actor on each state repeated N times: N times the FLOPs)
            uniform = torch.rand(b, n, self.act_dim, device=obs.device) * 2 - 1
            policy_actions, policy_log_pi = self.actor(torch.cat([obs, next_obs]), samples=n)  # (2B, N, A)
            current, following = policy_actions[:b], policy_actions[b:]
            current_log_pi, following_log_pi = policy_log_pi[:b], policy_log_pi[b:]
            log_density = torch.cat([torch.full((b, n), self.act_dim * math.log(0.5), device=obs.device),
                                     following_log_pi, current_log_pi], dim=1)
        # one batched critic pass: the dataset action and the 3N samples, all at s (CQL evaluates π(·|s') at s)
        all_actions = torch.cat([actions[:, None], uniform, following, current], dim=1)  # (B, 1 + 3N, A)
        q_all = self.q(obs[:, None].expand(-1, 1 + 3 * n, -1), all_actions)  # (2, B, 1 + 3N)
        q_data = q_all[..., 0]
        loss_td = (q_data - target).pow(2).mean(-1).sum()  # the MSE of each critic, summed over the two
        gap = conservative_gap(q_data, q_all[..., 1:], log_density, cfg.temperature)  # (2,)
        if cfg.lagrange:  # α' ≥ 0 grows while the gap exceeds its target (CQL Eq. 5)
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            conservative = alpha_prime.detach() * cfg.cql_alpha * (gap - cfg.target_action_gap)
            loss_alpha_prime = -(alpha_prime * cfg.cql_alpha * (gap.detach() - cfg.target_action_gap)).mean()
            sgd_step(self.optimizers["alpha_prime"], loss_alpha_prime)
        else:
            conservative = cfg.cql_alpha * gap
        loss_q = loss_td + conservative.sum()

        sgd_step(self.optimizers["alpha"], loss_alpha)
        sgd_step(self.optimizers["actor"], loss_pi)  # also leaves gradients on the critics: the next step clears them
        sgd_step(self.optimizers["q"], loss_q)
        soft_update(self.q_target, self.q, cfg.tau)
        self.steps += 1
        return dict(loss_q=loss_td.detach(), gap=gap.detach().mean(), loss_pi=loss_pi.detach(), alpha=alpha,
                    loss_alpha=loss_alpha.detach(), q=q_data.detach().mean())

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor.mean_action(torch.as_tensor(obs, device=self.buffer.device)[None])[0].cpu().numpy()


def main(args: list[str] | None = None) -> dict:
    cfg = parse_config(PRESETS, args, default="default", description=__doc__)
    return run(cfg, "cql", lambda ds: CQL(cfg, ds))


if __name__ == "__main__":
    main()
