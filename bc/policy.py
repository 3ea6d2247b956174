"""BC as an RL policy: `common/policy.py`'s contract around a trained `BCPolicy`.

    a ~ N(mu_theta(o), diag sigma^2)   over the K = n_action_steps actions of the chunk the robot executes, in the
                                       policy's normalised action units; mu is the BC head's output, sigma =
                                       exp(log_std) with one learned log-std per action dimension (a Gaussian around
                                       a regression head, as PPO's continuous-action policies: Schulman et al. 2017)
    log pi(a|o) = sum_{k<K, d} log N(a_kd; mu_kd, sigma_d^2)      one number per chunk (chunk-level PPO)
    H = K * sum_d (1/2) log(2 pi e sigma_d^2)                     the closed-form entropy
    V(o) = MLP(features(o))            a value head on the policy's own embeddings (image, state, instruction), read
                                       detached: the critic learns without moving the actor's features, so a critic
                                       warm-up leaves the policy as it was (RLinf's `detach_critic_input`)

The imitation policy stays in eval mode (no random-shift augmentation): the log-probability recomputed in the update
must equal the rollout's before any step (PPO's ratio is exactly 1 there).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

from common.policy import GaussianChunkPolicy, load_actor_critic_weights, register_policy
from common.train import rebuild_policy

from bc.config import BCConfig
from bc.model import BCPolicy
from bc.train import build_model

INIT_LOG_STD = math.log(0.2)  # sigma at the start of RL, in normalised action units (the demos' std is 1)


class BCActorCritic(GaussianChunkPolicy):
    def __init__(self, policy: BCPolicy, value_hidden: int = 256):
        super().__init__()
        self.policy, self.cfg = policy, policy.cfg
        self.log_std = nn.Parameter(torch.full((policy.action_dim,), INIT_LOG_STD))
        self.feature_dim = policy.head[0].in_features
        self.value_head = nn.Sequential(nn.Linear(self.feature_dim, value_hidden), nn.ReLU(),
                                        nn.Linear(value_hidden, value_hidden), nn.ReLU(), nn.Linear(value_hidden, 1))
        self.policy.eval()

    def distribution(self, obs: TensorDict) -> tuple[torch.distributions.Normal, torch.Tensor]:
        """The Gaussian over the executed chunk (B, K, A) and the concatenated image/state/instruction features."""
        features = self.policy.features(self._batch(obs))
        chunk = self.policy.head(features).view(-1, self.cfg.horizon, self.policy.action_dim)
        mean = chunk[:, : self.cfg.n_action_steps]
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean)), features.detach()


@register_policy("bc")
def load(checkpoint: Path) -> BCActorCritic:
    """From a BC training checkpoint (fresh log-std and value head) or an online-RL one (all of it)."""
    policy, _ = rebuild_policy(checkpoint, BCConfig, build_model, load_weights=False)
    return load_actor_critic_weights(BCActorCritic(policy), checkpoint)
