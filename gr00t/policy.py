"""GR00T N1.5 as an RL policy: `common/policy.py`'s contract with Flow-SDE (πRL, arXiv:2510.25889), as for π0.

GR00T integrates from t = 0 (noise) to t = 1 (action), x_t = (1 − t)·ε + t·a, velocity a − ε, n = 4 Euler steps
x ← x + v_θ(x, ⌊1000·k/n⌋)/n. In openpi's time this is τ = 1 − t and v = −v_θ, so Flow-SDE's step
(`common.policy.flow_sde_step`) applies unchanged:

    k ~ U{0, …, n−1}                         one step per chunk made stochastic (drawn once per call, as RLinf)
    x_{k+1} ~ N(μ_k, s_k² I),  μ_k, s_k = flow_sde_step(x_k, −v_θ(x_k, o, t_k), τ_k = 1 − k/n, δ = 1/n, a = 0.5)
    log π(chunk | o) = Σ log N(x_{k+1}; μ_k, s_k²) over the executed K actions and the real action dimensions

`evaluate_actions` recomputes v_θ at the stored (x_k, k) through the action head's plain `velocity` (which the
rollout also uses for step k: the ratio is 1 before an update); the other steps run the cached `EulerSteps`.
Value: V(o) = MLP(LayerNorm(mean over the prompt's real tokens of the backbone features)), read without gradient.
Trained: the action head (VL self-attention, DiT, embodiment encoders/decoder) and the value head; the Eagle
backbone is frozen (the release's `tune_llm=False, tune_visual=False`; RLinf's `train_expert_only` for π0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

from common.policy import (feature_batch, flow_sde_chain, flow_sde_score, flow_sde_step, load_actor_critic_weights,
                         register_policy)
from common.train import rebuild_policy

from gr00t.config import Gr00tConfig
from gr00t.fast_sampling import EulerSteps
from gr00t.model import Gr00tPolicy
from gr00t.train import build_policy

NOISE_LEVEL = 0.5  # a: the SDE's noise scale (RLinf's default for the flow policies)


class Gr00tActorCritic(nn.Module):
    def __init__(self, policy: Gr00tPolicy, value_hidden: int = 256):
        super().__init__()
        self.policy, self.cfg = policy, policy.cfg
        width = policy.cfg.llm.hidden_size
        self.value_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, value_hidden), nn.ReLU(),
                                        nn.Linear(value_hidden, value_hidden), nn.ReLU(), nn.Linear(value_hidden, 1))
        policy.model.backbone.requires_grad_(False)
        self.policy.eval()

    def train(self, mode: bool = True) -> "Gr00tActorCritic":
        super().train(mode)
        self.policy.eval()  # the same deterministic network in the rollout and the update
        return self

    def _encode(self, obs: TensorDict):
        """Backbone features (frozen, no gradient), their validity mask, the padded state and the embodiment ids."""
        images, ids, mask, is_image, state, embodiment = self.policy.inputs(
            feature_batch(obs, self.policy.image_keys, self.cfg.state_key))
        with torch.no_grad():
            vl = self.policy.model.backbone(images, ids, mask, is_image)
        return vl, mask, state, embodiment

    def _value(self, vl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        real = mask[..., None].float()
        return self.value_head((vl * real).sum(1) / real.sum(1))

    def _velocity(self, vl, state, embodiment, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """v_θ(x_k, o, t_k) through the plain path (with gradients, unless called under no_grad)."""
        head = self.policy.model.action_head
        buckets = self._buckets().to(k.device)[k]
        return head.velocity(head.process_backbone_output(vl), head.state_encoder(state, embodiment), x, buckets,
                             embodiment)

    def _buckets(self) -> torch.Tensor:
        """The time bucket ⌊1000·k/n⌋ of each step, computed as the sampler computes it."""
        n = self.cfg.num_inference_steps
        return torch.tensor([int(i / n * self.cfg.num_timestep_buckets) for i in range(n)])

    def _sde_step(self, x: torch.Tensor, v: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow-SDE's step k in GR00T's time: τ = 1 − k/n, the velocity's sign flipped."""
        n = self.cfg.num_inference_steps
        return flow_sde_step(x, -v, 1 - k.float() / n, 1.0 / n, NOISE_LEVEL)

    def _executed(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.cfg.n_action_steps, : self.policy.action_dim]

    # ----------------------------------------------------------------------------------------------- the contract
    @torch.no_grad()
    def predict(self, obs: TensorDict) -> torch.Tensor:
        return self.policy.predict_chunk(feature_batch(obs, self.policy.image_keys, self.cfg.state_key))

    def forward(self, obs: TensorDict, deterministic: bool = False) -> TensorDict:
        cfg, head = self.cfg, self.policy.model.action_head
        vl, mask, state, embodiment = self._encode(obs)
        b, n = vl.shape[0], cfg.num_inference_steps
        x = torch.randn(b, cfg.horizon, cfg.max_action_dim, device=vl.device)
        chosen = -1 if deterministic else int(torch.randint(n, ()))
        with torch.no_grad():
            steps = EulerSteps(head, head.process_backbone_output(vl), head.state_encoder(state, embodiment),
                               embodiment, self._buckets().tolist())

            def sde_step(x: torch.Tensor, step: int):
                k = torch.full((b,), step, device=x.device)
                return self._sde_step(x, self._velocity(vl, state, embodiment, x, k), k)

            x, x_k, x_next, log_prob = flow_sde_chain(x, n, chosen, lambda x, step: x + steps.velocity(x, step) / n,
                                                      sde_step, self._executed)
            action = self.policy.normalizer.unnormalize("action", self._executed(x))
        return TensorDict(action=action, x_k=x_k, x_next=x_next, step=torch.full((b,), chosen, device=x.device),
                          log_prob=log_prob, value=self._value(vl, mask), batch_size=[b])

    def get_value(self, obs: TensorDict) -> torch.Tensor:
        vl, mask, _, _ = self._encode(obs)
        return self._value(vl, mask)

    def evaluate_actions(self, obs: TensorDict, rollout: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        vl, _, state, embodiment = self._encode(obs)
        k, x_k = rollout["step"], rollout["x_k"]
        mean, std = self._sde_step(x_k, self._velocity(vl, state, embodiment, x_k, k), k)
        return flow_sde_score(mean, std, rollout["x_next"], self._executed)


@register_policy("gr00t")
def load(checkpoint: Path) -> Gr00tActorCritic:
    """From a GR00T training checkpoint (fresh value head) or an online-RL one (all of it)."""
    policy, _ = rebuild_policy(checkpoint, Gr00tConfig, build_policy, load_weights=False)
    return load_actor_critic_weights(Gr00tActorCritic(policy), checkpoint)
