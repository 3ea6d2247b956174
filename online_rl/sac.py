"""SAC fine-tuning of a Gaussian-head policy (BC, OpenVLA-OFT) in Meta-World, with chunk-level actions: soft actor-
critic with twin Q networks, target networks and a learned temperature (Haarnoja et al. 2018, arXiv:1801.01290 and
arXiv:1812.05905; the update as CleanRL's `sac_continuous_action.py`).

    a ~ pi(. | o)           the policy's Gaussian over the K executed actions (`distribution(obs)`, normalised units)
    Q_i(o, a)               MLP([f(o), a]) for i = 1, 2, with f(o) the policy's own features, read detached
    y = r + gamma (1 - terminal) (min_i Q'_i(o', a') - alpha log pi(a' | o')),  a' ~ pi(. | o')     (the soft target)
    L_Q = sum_i E[(Q_i(o, a) - y)^2]                                                             (critics)
    L_pi = E[alpha log pi(a~ | o) - min_i Q_i(o, a~)],  a~ = mu(o) + sigma * eps (reparameterised) (actor)
    L_alpha = -E[log alpha (log pi(a~ | o) + H_target)],  H_target = -K * A                         (temperature)
    Q'_i <- tau Q_i + (1 - tau) Q'_i after every critic step (Polyak averaging)
A step limit is a truncation (bootstrapped from the episode's last observation), success is terminal. Chunks go to
a replay buffer of the last `buffer_size` chunks (images included); each iteration plays one episode per env
(loop.py), then `updates` gradient steps on minibatches drawn from the buffer; the first `critic_warmup`
iterations train the critics and the temperature only, so a fresh critic cannot drag a good imitation policy off.
The Gaussian is not tanh-squashed (the imitation head's mean is the policy; the environment clips to [-1, 1]).
Checkpoints hold the critics, targets, temperature, their optimizers and the buffer (`sac_state.pt`), so a resumed
run continues exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict
from torch import nn

from common.policy import Policy

from online_rl.loop import RLConfig, fine_tune, kl_to_start, own_placements


@dataclass
class SACConfig(RLConfig):
    run_dir: str = "runs/sac"  # checkpoints, metrics.jsonl, eval_before/ and eval_after/
    gamma: float = 0.99  # discount per chunk
    tau: float = 0.005  # Polyak factor of the target critics
    q_lr: float = 3e-4  # critics' learning rate
    alpha_lr: float = 3e-4  # temperature's learning rate
    init_alpha: float = 0.01  # initial temperature (small: the imitation policy is already good)
    q_hidden: int = 256  # the critics' MLP width
    buffer_size: int = 10_000  # chunks kept in the replay buffer (~50 KB each at 128 px, one camera, twice)
    minibatch_size: int = 64  # chunks drawn from the buffer per gradient step
    updates: int = 50  # gradient steps per iteration
    critic_warmup: int = 2  # first iterations train the critics and the temperature only

    def __post_init__(self):
        super().__post_init__()
        if self.env != "metaworld":  # its critics are sized by a Meta-World chunk (n_action_steps x action_dim)
            raise ValueError(f"SAC runs on Meta-World only, not env {self.env!r}: use ppo or grpo")


class SACState(nn.Module):
    """The twin critics, their targets, the temperature, their optimizers and the replay buffer."""

    def __init__(self, feature_dim: int, action_shape: tuple[int, int], cfg: SACConfig):
        super().__init__()
        inputs = feature_dim + action_shape[0] * action_shape[1]
        self.q = nn.ModuleList(nn.Sequential(nn.Linear(inputs, cfg.q_hidden), nn.ReLU(), nn.Linear(cfg.q_hidden,
                               cfg.q_hidden), nn.ReLU(), nn.Linear(cfg.q_hidden, 1)) for _ in range(2))
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(cfg.init_alpha))))
        self.target_entropy = -float(action_shape[0] * action_shape[1])
        self.q_optimizer = torch.optim.Adam(self.q.parameters(), lr=cfg.q_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.capacity, self.buffer = cfg.buffer_size, None

    def values(self, critics: nn.ModuleList, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """min_i Q_i(o, a): (B,)."""
        x = torch.cat([features, action.flatten(1)], dim=-1)
        return torch.min(critics[0](x), critics[1](x))[:, 0]

    # ------------------------------------------------------------------------------------------------- replay
    def add(self, obs: TensorDict, next_obs: TensorDict, sample: torch.Tensor, reward: torch.Tensor,
            terminal: torch.Tensor) -> None:
        """Append chunks, dropping the oldest beyond `capacity`."""
        new = dict(rgb=obs["rgb"], proprio=obs["proprio"], next_rgb=next_obs["rgb"], next_proprio=next_obs["proprio"],
                   sample=sample, reward=reward, terminal=terminal.float())
        language = list(obs["language"])
        if self.buffer is not None:
            new = {k: torch.cat([self.buffer[k], v.cpu()]) for k, v in new.items()}
            language = self.buffer["language"] + language
        self.buffer = {k: v.cpu()[-self.capacity:] for k, v in new.items()} | {"language": language[-self.capacity:]}

    def draw(self, n: int, generator: torch.Generator, device) -> tuple[TensorDict, TensorDict, dict]:
        """n chunks uniformly from the buffer: observations, next observations and the rest."""
        index = torch.randint(len(self.buffer["reward"]), (n,), generator=generator)
        language = NonTensorStack(*(self.buffer["language"][i] for i in index.tolist()))
        obs, next_obs = (TensorDict(rgb=self.buffer[f"{p}rgb"][index], proprio=self.buffer[f"{p}proprio"][index],
                                    language=language, batch_size=[n], device=device) for p in ("", "next_"))
        return obs, next_obs, {k: self.buffer[k][index].to(device) for k in ("sample", "reward", "terminal")}

    # ------------------------------------------------------------------------------------------------- checkpoint
    def save(self, directory: Path) -> None:
        torch.save(dict(modules=self.state_dict(), q_optimizer=self.q_optimizer.state_dict(),
                        alpha_optimizer=self.alpha_optimizer.state_dict(), buffer=self.buffer),
                   directory / "sac_state.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "sac_state.pt", weights_only=True)
        self.load_state_dict(state["modules"])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.buffer = state["buffer"]


def setup(cfg: SACConfig, policy: Policy) -> tuple[torch.optim.Optimizer, SACState]:
    """The actor's optimizer (the policy without its PPO value head) and the SAC state sized from the policy."""
    if not hasattr(policy, "distribution"):
        raise TypeError(f"SAC needs a Gaussian-head policy (BC, OpenVLA-OFT): {type(policy).__name__} has no "
                        f"`distribution(obs)`")
    actor = [p for n, p in policy.named_parameters() if not n.startswith("value_head.") and p.requires_grad]
    shape = (policy.cfg.n_action_steps, policy.policy.action_dim)
    state = SACState(policy.feature_dim, shape, cfg).to(next(policy.parameters()).device)
    return torch.optim.Adam(actor, lr=cfg.lr), state


@torch.no_grad()
def soft_target(policy: Policy, state: SACState, next_obs: TensorDict, reward: torch.Tensor, terminal: torch.Tensor,
                alpha: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma (1 - terminal) (min_i Q'_i(o', a') - alpha log pi(a' | o')), a' ~ pi(. | o')."""
    gaussian, features = policy.distribution(next_obs)
    a = gaussian.sample()
    soft = state.values(state.q_target, features, a) - alpha * gaussian.log_prob(a).sum((1, 2))
    return reward + gamma * (1 - terminal) * soft


def update(cfg: SACConfig, policy: Policy, reference: Policy, optimizer: torch.optim.Optimizer, state: SACState,
           batch: dict, iteration: int, generator: torch.Generator) -> dict[str, float]:
    """Add the iteration's chunks to the buffer, then `updates` SAC steps on minibatches drawn from it."""
    valid = batch["valid"].flatten().nonzero()[:, 0]
    obs, out = batch["obs"].reshape(-1)[valid], batch["out"].reshape(-1)[valid]
    state.add(obs, batch["next_obs"].reshape(-1)[valid], out["sample"], batch["rewards"].flatten()[valid],
              batch["terminal"].flatten()[valid])
    kl_start = kl_to_start(reference, obs, out)
    device = out["sample"].device
    logged: dict[str, list[float]] = {}
    for _ in range(cfg.updates):
        o, o2, rest = state.draw(cfg.minibatch_size, generator, device)
        alpha = state.log_alpha.exp().detach()
        target = soft_target(policy, state, o2, rest["reward"], rest["terminal"], alpha, cfg.gamma)
        gaussian, features = policy.distribution(o)
        x = torch.cat([features, rest["sample"].flatten(1)], dim=-1)
        q_loss = sum(((q(x)[:, 0] - target) ** 2).mean() for q in state.q)
        state.q_optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        state.q_optimizer.step()
        with torch.no_grad():
            for q, q_target in zip(state.q.parameters(), state.q_target.parameters()):
                q_target.lerp_(q, cfg.tau)
        a = gaussian.rsample()
        log_prob = gaussian.log_prob(a).sum((1, 2))
        stats = dict(q_loss=q_loss.detach(), alpha=alpha, log_prob=log_prob.detach().mean())
        if iteration >= cfg.critic_warmup:
            actor_loss = (alpha * log_prob - state.values(state.q, features, a)).mean()
            optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.max_grad_norm)
            optimizer.step()
            stats["actor_loss"] = actor_loss.detach()
        alpha_loss = -(state.log_alpha * (log_prob.detach() + state.target_entropy)).mean()
        state.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        state.alpha_optimizer.step()
        for key, value in stats.items():
            logged.setdefault(key, []).append(float(value))
    state.q.zero_grad(set_to_none=True)  # the actor loss also reached the critics' parameters
    return dict({k: float(np.mean(v)) for k, v in logged.items()}, buffer=len(state.buffer["reward"]),
                kl_start=kl_start)


def train(cfg: SACConfig) -> dict:
    return fine_tune(cfg, "sac", partial(setup, cfg), partial(own_placements, cfg), partial(update, cfg))
