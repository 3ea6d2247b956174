"""π0 / π0.5 as RL policies: `common/policy.py`'s contract with Flow-SDE (πRL: Chen et al. 2025, arXiv:2510.25889;
the maths as RLinf's `openpi_action_model.py` computes it).

A flow policy's chunk is a deterministic function of its starting noise, so it has no likelihood to put in PPO's
ratio. Flow-SDE makes one Euler step of the chunk's N-step integration stochastic — the Euler–Maruyama step of the
SDE whose marginals equal the ODE's — and uses that step's Gaussian as the policy's distribution:

    τ_k = 1 − k/N, δ = 1/N                            the sampler's grid (τ = 1 noise → τ = 0 action, openpi's time)
    k ~ U{0, …, N−1}                                  one step per chunk made stochastic (drawn once per call, as RLinf)
    x_{k+1} ~ N(μ_k, s_k² I)                          the other steps stay x_{k+1} = x_k − δ v_θ(x_k, o, τ_k)
    μ_k = x_k − δ v − (σ_k² δ / 2τ_k) (x_k + (1 − τ_k) v),   s_k = √δ σ_k,   v = v_θ(x_k, o, τ_k)
    σ_k = a √(τ_k / (1 − τ_k)),  with 1 − τ_0 read as 1 − τ_1 = δ (so s_0 = a);  a = NOISE_LEVEL = 0.5 (RLinf)
    log π(chunk | o) = Σ log N(x_{k+1}; μ_k, s_k²) over the executed K actions and the real action dimensions
    H = Σ ½ log(2πe s_k²) over the same entries (the chosen step's Gaussian)

The rollout stores (x_k, x_{k+1}, k); `evaluate_actions` recomputes v_θ(x_k, o, τ_k) with gradients through the whole
joint forward (`PI0.velocity`, which the rollout also used for step k, so the ratio is 1 before an update) and
scores x_{k+1}. The other steps run the cached sampler (`PI0.expert_steps`). `deterministic=True` is the plain ODE.

Value: V(o) = MLP(LayerNorm(mean over the real prefix tokens of the VLM's last hidden states)), the features read
without gradient. That is RLinf's `value_after_vlm` (its π0.5 setting); for π0 RLinf reads the action expert's
output at the chosen step instead, which makes V depend on the sampled noise — here both variants read the
observation only, so the value of a truncated episode's last observation is well defined.
Trained: the action expert and the value head; the VLM (vision tower, projector, embeddings, its layers) is frozen,
as RLinf's `train_expert_only`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

from common.policy import (feature_batch, flow_sde_chain, flow_sde_score, flow_sde_step, load_actor_critic_weights,
                         register_policy)
from common.train import rebuild_policy

from pi0.config import PI0Config
from pi0.model import Pi0Policy, additive, block_attention_mask, joint_layer
from pi0.train import build_policy

NOISE_LEVEL = 0.5  # a: the SDE's noise scale (RLinf's default for π0 and π0.5)
VLM_PARTS = ("vision_tower.", "multi_modal_projector.", "embed_tokens.", "vlm_layers.")  # frozen in RL


class Pi0ActorCritic(nn.Module):
    def __init__(self, policy: Pi0Policy, value_hidden: int = 256):
        super().__init__()
        self.policy, self.cfg = policy, policy.cfg
        width = policy.cfg.vlm.width
        self.value_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, value_hidden), nn.ReLU(),
                                        nn.Linear(value_hidden, value_hidden), nn.ReLU(), nn.Linear(value_hidden, 1))
        for name, parameter in policy.model.named_parameters():
            parameter.requires_grad_(not name.startswith(VLM_PARTS))
        self.policy.eval()

    def train(self, mode: bool = True) -> "Pi0ActorCritic":
        super().train(mode)
        self.policy.eval()  # the same deterministic network in the rollout and the update
        return self

    def _inputs(self, obs: TensorDict):
        return self.policy.inputs(feature_batch(obs, self.policy.image_keys, self.cfg.state_key))

    def _value(self, images, image_masks, tokens, token_masks) -> torch.Tensor:
        """V(o) from the VLM's prefix (it attends only to itself, so it runs alone here)."""
        model = self.policy.model
        with torch.no_grad():
            prefix, pad, start = model.embed_prefix(images, image_masks, tokens, token_masks)
            mask, rope = additive(block_attention_mask(pad, start)), model.rope(prefix, torch.cumsum(pad, 1) - 1)
            for layer in model.vlm_layers:
                (prefix,), _ = joint_layer([layer], [prefix], [None], rope, mask, needed=(True,))
            real = pad[..., None].float()
            pooled = (prefix * real).sum(1) / real.sum(1)
        return self.value_head(pooled)

    def _sde_step(self, x: torch.Tensor, v: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, H, D) and standard deviation (B, 1, 1) of Flow-SDE's step k (B,) from x_k with velocity v."""
        n = self.cfg.num_inference_steps
        return flow_sde_step(x, v, 1 - k.float() / n, 1.0 / n, NOISE_LEVEL)

    def _executed(self, x: torch.Tensor) -> torch.Tensor:
        """The entries the robot executes: the first K actions, the real action dimensions."""
        return x[:, : self.cfg.n_action_steps, : self.policy.action_dim]

    # ----------------------------------------------------------------------------------------------- the contract
    @torch.no_grad()
    def predict(self, obs: TensorDict) -> torch.Tensor:
        return self.policy.predict_chunk(feature_batch(obs, self.policy.image_keys, self.cfg.state_key))

    def forward(self, obs: TensorDict, deterministic: bool = False) -> TensorDict:
        cfg, model = self.cfg, self.policy.model
        inputs = self._inputs(obs)
        b, n = inputs[2].shape[0], cfg.num_inference_steps
        x = torch.randn(b, cfg.horizon, cfg.max_action_dim, device=inputs[2].device)
        chosen = -1 if deterministic else int(torch.randint(n, ()))
        with torch.no_grad():
            expert = model.expert_steps(*inputs, cfg.horizon, n)

            def sde_step(x: torch.Tensor, step: int):
                k = torch.full((b,), step, device=x.device)
                return self._sde_step(x, model.velocity(*inputs, x, 1 - k.float() / n), k)

            x, x_k, x_next, log_prob = flow_sde_chain(
                x, n, chosen, lambda x, step: x - (1.0 / n) * expert.velocity(x, step), sde_step, self._executed)
            action = self.policy.normalizer.unnormalize("action", self._executed(x))
        return TensorDict(action=action, x_k=x_k, x_next=x_next, step=torch.full((b,), chosen, device=x.device),
                          log_prob=log_prob, value=self._value(*inputs[:4]), batch_size=[b])

    def get_value(self, obs: TensorDict) -> torch.Tensor:
        return self._value(*self._inputs(obs)[:4])

    def evaluate_actions(self, obs: TensorDict, rollout: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        k, x_k = rollout["step"], rollout["x_k"]
        v = self.policy.model.velocity(*self._inputs(obs), x_k, 1 - k.float() / self.cfg.num_inference_steps)
        mean, std = self._sde_step(x_k, v, k)
        return flow_sde_score(mean, std, rollout["x_next"], self._executed)


@register_policy("pi0")
def load(checkpoint: Path) -> Pi0ActorCritic:
    """From a π0/π0.5 training checkpoint (fresh value head) or an online-RL one (all of it)."""
    policy, _ = rebuild_policy(checkpoint, PI0Config, build_policy, load_weights=False)
    return load_actor_critic_weights(Pi0ActorCritic(policy), checkpoint)
