"""Behaviour cloning, and "x% BC" (Chen et al., 2021, Decision Transformer, Sec. 5.3): clone only the episodes
with the top `top_fraction` of returns (CORL `any_percent_bc`). top_fraction = 1 is plain BC.

    π = argmin_π E_(s,a)~D[ (π(s) − a)² ],   π(s) = tanh(MLP(s))

    python offline_rl/bc.py                       # BC on every transition
    python offline_rl/bc.py --top_fraction 0.1    # 10% BC
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.config import parse_config
from offline_rl.data import OfflineDataset, TransitionBuffer
from offline_rl.networks import DeterministicActor
from offline_rl.runner import RunConfig, run, sgd_step


@dataclass
class BCConfig(RunConfig):
    top_fraction: float = 1.0  # keep the episodes with the best returns, this fraction of them (1 = plain BC)
    lr: float = 3e-4  # Adam
    hidden: int = 256  # width of the two hidden layers


PRESETS = {
    "default": BCConfig(),
    "corl": BCConfig(updates=1_000_000, checkpoint_every=50_000),  # CORL's D4RL budget
}


def top_episodes(ds: OfflineDataset, fraction: float) -> OfflineDataset:
    """The transitions of the best max(1, ⌊fraction · #episodes⌋) episodes by return (CORL)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {fraction}")
    slices = ds.episode_slices()
    keep = np.argsort(-ds.episode_returns(), kind="stable")[:max(1, int(fraction * len(slices)))]
    return ds.rows(np.concatenate([np.arange(len(ds))[slices[i]] for i in sorted(keep)]))


class BC(nn.Module):
    def __init__(self, cfg: BCConfig, ds: OfflineDataset):
        super().__init__()
        if cfg.top_fraction < 1:
            ds = top_episodes(ds, cfg.top_fraction)
        self.cfg, self.buffer = cfg, TransitionBuffer(ds, cfg.device)
        self.actor = DeterministicActor(ds.observations.shape[1], ds.actions.shape[1], cfg.hidden)
        self.optimizers = dict(actor=torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, fused=True))

    def update(self) -> dict[str, float]:
        obs, actions, *_ = self.buffer.sample(self.cfg.batch_size)
        loss = (self.actor(obs) - actions).pow(2).mean()
        sgd_step(self.optimizers["actor"], loss)
        return dict(loss=loss.detach())

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(obs, device=self.buffer.device)[None])[0].cpu().numpy()


def main(args: list[str] | None = None) -> dict:
    cfg = parse_config(PRESETS, args, default="default", description=__doc__)
    return run(cfg, f"bc{'' if cfg.top_fraction == 1 else f'-{cfg.top_fraction:g}'}", lambda ds: BC(cfg, ds))


if __name__ == "__main__":
    main()
