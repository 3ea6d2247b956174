"""OpenVLA and OpenVLA-OFT as RL policies: `common/policy.py`'s contract around a trained `OpenVLAPolicy`.

OpenVLA (tokens): the categorical over the 256 action bins, one token per action dimension, decoded
autoregressively (SimpleVLA-RL's and RL4VLA's token-level policy):
    a_d ~ Cat(softmax(logits_d restricted to the 256 action-bin ids)),  d = 1 … A, each given the tokens before it
    log π(a | o) = Σ_d log p(a_d | o, a_<d)    (recomputed by one teacher-forced pass)
    H = Σ_d H(p(· | o, a_<d))                   (closed form from the same logits)
    V(o) = MLP(final hidden state at the last prompt position), read detached (it sees the whole prefix; causal
           attention keeps it independent of the action tokens)
The rollout samples with the key/value cache, then scores the sampled tokens with the teacher-forced pass that
`evaluate_actions` runs (the ratio is 1 before an update). `deterministic=True` is OpenVLA's greedy decoding.

OpenVLA-OFT (regression): a Gaussian around the L1 head's chunk, as BC (bc/policy.py):
    a ~ N(μ_θ(o), diag σ²) over the K executed actions, in OFT's [-1, 1] (BOUNDS_Q99) action units; σ = exp(log_std),
    one learned log-std per action dimension; V(o) = MLP(mean of the chunk slots' final hidden states), detached.
SimpleVLA-RL fine-tunes OFT with GRPO on discretised (token) actions; here OFT keeps its regression head.
Everything the imitation training trained is trained; the imitation policy stays in eval mode (no crop
augmentation in RL).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

from common.policy import GaussianChunkPolicy, feature_batch, load_actor_critic_weights, register_policy
from common.train import rebuild_policy

from openvla.config import OpenVLAConfig
from openvla.model import OpenVLAPolicy
from openvla.train import build_policy

INIT_LOG_STD = math.log(0.2)  # OFT: σ at the start of RL, in the [-1, 1] action units


def value_mlp(width: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


class OpenVLAActorCritic(nn.Module):
    """OpenVLA: the token policy."""

    def __init__(self, policy: OpenVLAPolicy):
        super().__init__()
        self.policy, self.cfg = policy, policy.cfg
        self.value_head = value_mlp(policy.cfg.llm.width)
        self.bins = slice(policy.cfg.text_vocab - policy.cfg.action_bins, policy.cfg.text_vocab)  # the action ids
        self.policy.eval()

    def train(self, mode: bool = True) -> "OpenVLAActorCritic":
        super().train(mode)
        self.policy.eval()
        return self

    def _inputs(self, obs: TensorDict):
        return self.policy.inputs(feature_batch(obs, self.policy.image_keys, self.cfg.state_key))[:3]

    def _score(self, inputs, tokens: torch.Tensor):
        """Teacher-forced log-probability, entropy (B,) of the tokens (B, A) and the value (B, 1)."""
        states = self.policy.model.token_states(*inputs, tokens)
        categorical = torch.distributions.Categorical(logits=self.policy.model.lm_head(states)[..., self.bins])
        log_prob = categorical.log_prob(tokens - self.bins.start).sum(-1)
        return log_prob, categorical.entropy().sum(-1), self.value_head(states[:, 0].detach())

    @torch.no_grad()
    def predict(self, obs: TensorDict) -> torch.Tensor:
        return self.policy.predict_chunk(feature_batch(obs, self.policy.image_keys, self.cfg.state_key))

    def forward(self, obs: TensorDict, deterministic: bool = False) -> TensorDict:
        inputs = self._inputs(obs)

        def sample(logits: torch.Tensor) -> torch.Tensor:
            return torch.distributions.Categorical(logits=logits[..., self.bins]).sample() + self.bins.start

        tokens = self.policy.model.predict_action_tokens(*inputs, choose=None if deterministic else sample)
        with torch.no_grad():
            log_prob, _, value = self._score(inputs, tokens.clamp(self.bins.start, self.bins.stop - 1))
        action = self.policy.normalizer.unnormalize("action", self.policy.action_tokenizer.decode(tokens))[:, None]
        return TensorDict(action=action, tokens=tokens, log_prob=log_prob, value=value, batch_size=[len(tokens)])

    def get_value(self, obs: TensorDict) -> torch.Tensor:
        inputs = self._inputs(obs)
        any_token = torch.full((inputs[0].shape[0], 1), self.bins.start, device=inputs[1].device)
        return self.value_head(self.policy.model.token_states(*inputs, any_token)[:, 0].detach())

    def evaluate_actions(self, obs: TensorDict, rollout: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        log_prob, entropy, _ = self._score(self._inputs(obs), rollout["tokens"])
        return log_prob, entropy


class OFTActorCritic(GaussianChunkPolicy):
    """OpenVLA-OFT: a Gaussian around the regression head."""

    def __init__(self, policy: OpenVLAPolicy):
        super().__init__()
        self.policy, self.cfg = policy, policy.cfg
        self.log_std = nn.Parameter(torch.full((policy.action_dim,), INIT_LOG_STD))
        self.feature_dim = policy.cfg.llm.width
        self.value_head = value_mlp(self.feature_dim)
        self.policy.eval()

    def distribution(self, obs: TensorDict) -> tuple[torch.distributions.Normal, torch.Tensor]:
        """The Gaussian over the executed chunk (B, K, A) and the mean of the chunk slots' final hidden states."""
        model = self.policy.model
        states = model.chunk_states(*self.policy.inputs(self._batch(obs)))
        mean = model.action_head(states)[:, : self.cfg.n_action_steps]
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean)), states.mean(1).detach()


@register_policy("openvla")
def load(checkpoint: Path) -> nn.Module:
    """OpenVLA or OFT (by the config's variant) from a training checkpoint (fresh RL heads) or an online-RL one."""
    policy, cfg = rebuild_policy(checkpoint, OpenVLAConfig, build_policy, load_weights=False)
    actor_critic = OFTActorCritic(policy) if cfg.variant == "oft" else OpenVLAActorCritic(policy)
    return load_actor_critic_weights(actor_critic, checkpoint)
