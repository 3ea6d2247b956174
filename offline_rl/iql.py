"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021, arXiv:2110.06169), with CORL's hyperparameters.

IQL never queries Q at actions outside the dataset. It fits V(s) as an upper expectile of Q(s, a) over the
dataset's actions (Eq. 5), backs Q up through V(s') (Eq. 6), and extracts a policy by advantage-weighted
regression onto the dataset's actions (Eq. 7):

    L_V = E[ L₂^τ(Q̂(s, a) − V(s)) ],   L₂^τ(u) = |τ − 1(u < 0)| u²,   τ = 0.7
    L_Q = E[ (r + γ (1 − d) V(s') − Q(s, a))² ]          for each of the twin Q networks
    L_π = −E[ exp(β (Q̂(s, a) − V(s))) log π(a | s) ],   β = 3, the weight clipped at 100

Q̂ is the minimum of the twin target networks (Polyak averaged, rate 0.005). Updates run V, then Q (and its
target), then π, as in CORL; the actor's learning rate follows a cosine schedule over training.

    python offline_rl/iql.py                                  # the default generated dataset
    python offline_rl/iql.py --dataset hopper-medium --updates 100000
    python offline_rl/iql.py --preset corl --dataset /data/hopper-medium-v2.hdf5 --env_id Hopper-v5
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from common.config import parse_config

from offline_rl.data import OfflineDataset, TransitionBuffer, scale_rewards_by_return_range
from offline_rl.networks import GaussianPolicy, TwinQ, mlp, soft_update
from offline_rl.runner import RunConfig, run, sgd_step


@dataclass
class IQLConfig(RunConfig):
    expectile: float = 0.7  # τ of the value expectile (IQL Eq. 5; 0.7 for locomotion, 0.9 for AntMaze)
    beta: float = 3.0  # inverse temperature of the advantage weights (IQL Eq. 7)
    max_weight: float = 100.0  # exp(β·A) is clipped here (IQL code, CORL EXP_ADV_MAX)
    discount: float = 0.99  # γ
    tau: float = 0.005  # Polyak rate of the target Q networks
    actor_lr: float = 3e-4  # Adam, cosine-annealed to 0 over `updates` (CORL)
    critic_lr: float = 3e-4  # Adam, for Q and V
    hidden: int = 256  # width of the two hidden layers of every network
    normalize_reward: bool = False  # r · 1000 / (max − min episode return) (IQL App. B; CORL: hopper only)


PRESETS = {
    "default": IQLConfig(normalize_reward=True),  # the paper's locomotion setting (IQL App. B)
    "corl": IQLConfig(updates=1_000_000, eval_every=5_000, checkpoint_every=50_000),  # CORL's D4RL budget
}


# ------------------------------------------------------------------------------------------------------- losses
def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """L₂^τ(u) = |τ − 1(u < 0)| · u², averaged (IQL Eq. 5); u = Q̂(s, a) − V(s)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def q_loss(qs: Tensor, target: Tensor) -> Tensor:
    """Mean over the twin networks of the squared TD error to r + γ(1 − d)V(s') (IQL Eq. 6). qs: (2, B)."""
    return (qs - target).pow(2).mean()


def awr_policy_loss(log_prob: Tensor, advantage: Tensor, beta: float, max_weight: float) -> Tensor:
    """−E[min(exp(β·A), max_weight) · log π(a|s)] (IQL Eq. 7); the weights carry no gradient."""
    weight = torch.exp(beta * advantage.detach()).clamp(max=max_weight)
    return -(weight * log_prob).mean()


# -------------------------------------------------------------------------------------------------------- agent
class IQL(nn.Module):
    def __init__(self, cfg: IQLConfig, ds: OfflineDataset):
        super().__init__()
        if cfg.normalize_reward:
            ds = scale_rewards_by_return_range(ds)
        self.cfg, self.buffer = cfg, TransitionBuffer(ds, cfg.device)
        obs_dim, act_dim = ds.observations.shape[1], ds.actions.shape[1]
        self.q = TwinQ(obs_dim, act_dim, cfg.hidden)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = mlp(obs_dim, 1, cfg.hidden)
        self.actor = GaussianPolicy(obs_dim, act_dim, cfg.hidden)
        self.optimizers = dict(q=torch.optim.Adam(self.q.parameters(), lr=cfg.critic_lr, fused=True),
                               v=torch.optim.Adam(self.v.parameters(), lr=cfg.critic_lr, fused=True),
                               actor=torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, fused=True))
        self.schedulers = dict(actor=torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizers["actor"],
                                                                                cfg.updates))

    def update(self) -> dict[str, float]:
        cfg = self.cfg
        obs, actions, rewards, next_obs, dones = self.buffer.sample(cfg.batch_size)
        with torch.no_grad():
            target_q = self.q_target(obs, actions).min(0).values
            next_v = self.v(next_obs).squeeze(-1)
        # V: upper expectile of Q̂ over the dataset's actions
        v = self.v(obs).squeeze(-1)
        advantage = target_q - v
        loss_v = expectile_loss(advantage, cfg.expectile)
        sgd_step(self.optimizers["v"], loss_v)
        # Q: backed up through V(s'), never through an action the dataset lacks
        loss_q = q_loss(self.q(obs, actions), rewards + cfg.discount * (1.0 - dones) * next_v)
        sgd_step(self.optimizers["q"], loss_q)
        soft_update(self.q_target, self.q, cfg.tau)
        # π: advantage-weighted regression onto the dataset's actions
        loss_pi = awr_policy_loss(self.actor.log_prob(obs, actions), advantage, cfg.beta, cfg.max_weight)
        sgd_step(self.optimizers["actor"], loss_pi)
        self.schedulers["actor"].step()
        return dict(loss_v=loss_v.detach(), loss_q=loss_q.detach(), loss_pi=loss_pi.detach(), v=v.detach().mean())

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor.mean_action(torch.as_tensor(obs, device=self.buffer.device)[None])[0].cpu().numpy()


def main(args: list[str] | None = None) -> dict:
    cfg = parse_config(PRESETS, args, default="default", description=__doc__)
    return run(cfg, "iql", lambda ds: IQL(cfg, ds))


if __name__ == "__main__":
    main()
