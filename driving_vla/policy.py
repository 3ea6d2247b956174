"""The driving VLA as an RL policy: `common/policy.py`'s contract around a trained `DrivingPolicy`, so that
`common.policy.load_policy(run)` builds it and online_rl/ fine-tunes it on the driving benchmark.

Observations (a TensorDict of batch [B], what online_rl/driving.py builds from `DrivingEnv.observation()`):

    bev       uint8 (B, 64, 64, 5)  the benchmark's ego-aligned raster
    proprio   float (B, 7)          the benchmark's raw ego state (x, y, heading, speed, yaw rate, steering,
                                    acceleration; highway-env's world frame, right-positive angles)
    command   int64 (B,)            the route command (`hw.COMMANDS`)
    language  B strings             the benchmark's ego/route sentence (`hw.describe`)

and they become the model's batch exactly as in closed-loop evaluation (`model.observation_batch`): the ego features
`ego_state_from_observation(proprio, command)`, the prompt `process_route(language)` (the BC model reads no text).
An action is a plan: K = 5 ego-frame waypoints (B, K, 2) in metres, which the environment tracks.

Two distributions, by the head the config selects:

- **Flow head** (`--model vla --head flow`): Flow-SDE (πRL, Chen et al. 2025, arXiv:2510.25889), as pi0/policy.py,
  through `common.policy.flow_sde_step` / `flow_sde_chain`, in the head's own (openpi) time:
      τ_k = 1 − k/N, δ = 1/N, k ~ U{0, …, N−1} drawn once per call; every other step x_{k+1} = x_k − δ v_θ(x_k, τ_k)
      x_{k+1} ~ N(μ_k, s_k² I),  μ_k = x_k − δv − (σ_k²δ / 2τ_k)(x_k + (1 − τ_k)v),  s_k = √δ σ_k,
      σ_k = a √(τ_k / (1 − τ_k)) (1 − τ_0 read as δ: s_0 = a),  a = NOISE_LEVEL = 0.5 (RLinf)
      log π(plan | o) = Σ log N(x_{k+1}; μ_k, s_k²) over the K × 2 normalised waypoint coordinates (all of them:
      the whole plan is tracked), recomputed in the update from the stored (x_k, x_{k+1}, k)
  The transformer backbone (BEV CNN, text embeddings, its layers) is frozen and the flow head trains, as pi0's
  VLM / action expert (RLinf's `train_expert_only`).
- **Regression heads** (`--model bc`, or `--model vla --head mlp`): a Gaussian around the head's plan, as
  `common.policy.GaussianChunkPolicy`: a ~ N(μ_θ(o), diag σ²) over the K × 2 normalised coordinates, σ = exp(log_std)
  with one learned log-std per coordinate (x, y), initially 0.2 (the Gaussian-NLL head's own σ is not used: the RL
  noise is the policy's, not the data's). The whole network trains, as BC's.

Value: V(o) = MLP(LayerNorm(f(o))) on the policy's own fused conditioning embedding, read detached (no gradient
reaches the backbone, RLinf's `detach_critic_input`): f = the mean of the K waypoint-query outputs (VLA), or the
concatenated BEV and ego-state features (BC).

All of forward / get_value / evaluate_actions run PyTorch's transformer layers on their autograd path
(`_same_kernels`): under no_grad those layers take a fused inference kernel that differs in the last bits, and the
rollout's log-probability (no_grad) must equal the update's (with gradients) exactly: PPO's ratio is 1 before a
step. `predict` is the trained policy's own `predict_waypoints`, untouched.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from common.policy import (flow_sde_chain, flow_sde_score, flow_sde_step, language, load_actor_critic_weights,
                         register_policy)
from common.train import read_config

from driving_vla.model import K, DrivingPolicy, ego_state_from_observation, euler_times, policy_from_meta, process_route

NOISE_LEVEL = 0.5  # a: Flow-SDE's noise scale (RLinf's default for π0 and π0.5)
INIT_LOG_STD = math.log(0.2)  # Gaussian heads: σ at the start of RL, in normalised waypoint units (demos' std 1)


@contextmanager
def _same_kernels():
    """PyTorch's transformer layers without their no-grad 'fast path' (a fused kernel whose results differ from the
    autograd path's in the last bits), so a pass gives the same numbers with and without gradients."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def model_batch(obs: TensorDict, reads_text: bool) -> dict:
    """The contract's observation as `DrivingPolicy`'s batch (bev, ego features, prompt), as `observation_batch`
    builds it from a live observation; a key the policy reads that is missing is an error naming it."""
    for key in ("bev", "proprio", "command"):
        if key not in obs.keys():
            raise KeyError(f"the driving policy reads {key!r}: the observation has only {sorted(obs.keys())}")
    ego = np.stack([ego_state_from_observation(dict(state=state, command=int(command)))
                    for state, command in zip(obs["proprio"].cpu().numpy(), obs["command"].cpu().numpy())])
    batch = dict(bev=obs["bev"], ego=torch.from_numpy(ego))
    if reads_text:
        batch["prompt"] = [process_route(text) for text in language(obs)]
    return batch


class DrivingActorCritic(nn.Module):
    def __init__(self, policy: DrivingPolicy, value_hidden: int = 256):
        super().__init__()
        self.policy, self.cfg = policy, policy.cfg
        self.flow = self.cfg.model == "vla" and self.cfg.head == "flow"
        width = self.cfg.width if self.cfg.model == "vla" else 2 * self.cfg.bc_hidden  # f(o)'s size
        self.value_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, value_hidden), nn.ReLU(),
                                        nn.Linear(value_hidden, value_hidden), nn.ReLU(), nn.Linear(value_hidden, 1))
        if self.flow:  # only the flow head trains
            for name, parameter in policy.net.named_parameters():
                parameter.requires_grad_(name.startswith("head."))
        else:
            self.log_std = nn.Parameter(torch.full((2,), INIT_LOG_STD))
        self.policy.eval()

    def train(self, mode: bool = True) -> "DrivingActorCritic":
        super().train(mode)
        self.policy.eval()  # the same deterministic network in the rollout and the update
        return self

    def _inputs(self, obs: TensorDict) -> tuple:
        return self.policy.inputs(model_batch(obs, self.cfg.model == "vla"))

    def _metres(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised waypoints (B, K, 2) → metres, ego frame."""
        return self.policy.normalizer.unnormalize("waypoints", x.reshape(-1, 2 * K)).view(-1, K, 2)

    # ------------------------------------------------------------------------------------------ the flow head
    def _queries(self, inputs: tuple) -> torch.Tensor:
        """The K waypoint-query outputs (B, K, width) of the frozen backbone: the flow head's conditioning."""
        with torch.no_grad():
            return self.policy.net(*inputs)

    def _velocity(self, x: torch.Tensor, k: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """v_θ(x, τ_k) for steps k (B,) on the sampler's own grid (`euler_times`)."""
        return self.policy.net.head(x, euler_times(self.cfg.num_inference_steps).to(x.device)[k], queries)

    def _sde_step(self, x: torch.Tensor, v: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, K, 2) and standard deviation (B, 1, 1) of Flow-SDE's step k (B,) from x_k with velocity v."""
        n = self.cfg.num_inference_steps
        return flow_sde_step(x, v, euler_times(n).to(x.device)[k], 1.0 / n, NOISE_LEVEL)

    def _flow_forward(self, obs: TensorDict, deterministic: bool) -> TensorDict:
        inputs = self._inputs(obs)
        b, n = inputs[0].shape[0], self.cfg.num_inference_steps
        x = torch.randn(b, K, 2, device=inputs[0].device)  # drawn first, as `DrivingVLA.sample` draws its noise
        chosen = -1 if deterministic else int(torch.randint(n, ()))
        queries = self._queries(inputs)
        with torch.no_grad():
            def euler_step(x: torch.Tensor, step: int) -> torch.Tensor:  # `DrivingVLA.sample`'s step
                return x + (-1.0 / n) * self._velocity(x, torch.full((b,), step, device=x.device), queries)

            def sde_step(x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
                k = torch.full((b,), step, device=x.device)
                return self._sde_step(x, self._velocity(x, k, queries), k)

            x, x_k, x_next, log_prob = flow_sde_chain(x, n, chosen, euler_step, sde_step, lambda x: x)
        return TensorDict(action=self._metres(x), x_k=x_k, x_next=x_next,
                          step=torch.full((b,), chosen, device=x.device), log_prob=log_prob,
                          value=self.value_head(queries.mean(1)), batch_size=[b])

    # ------------------------------------------------------------------------------------- the Gaussian heads
    def distribution(self, obs: TensorDict) -> tuple[torch.distributions.Normal, torch.Tensor]:
        """Regression heads: the Gaussian over the normalised plan (B, K, 2) and f(o), detached."""
        inputs, net = self._inputs(obs), self.policy.net
        if self.cfg.model == "vla":
            queries = net(*inputs)
            mean, features = net.head(queries)[..., :2], queries.mean(1)
        else:  # `BCModel.forward`, keeping its fused features
            bev, ego = inputs
            features = torch.cat([net.encode_bev_map(bev), net.state_mlp(ego)], dim=-1)
            mean = net.head(features).view(bev.shape[0], K, -1)[..., :2]
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean)), features.detach()

    # ----------------------------------------------------------------------------------------------- the contract
    @torch.no_grad()
    def predict(self, obs: TensorDict) -> torch.Tensor:
        """The plan as trained (the flow ODE from noise of torch's global RNG, or the regression head), metres:
        (B, K, 2)."""
        return self.policy.predict_waypoints(model_batch(obs, self.cfg.model == "vla"))

    @_same_kernels()
    def forward(self, obs: TensorDict, deterministic: bool = False) -> TensorDict:
        if self.flow:
            return self._flow_forward(obs, deterministic)
        gaussian, features = self.distribution(obs)
        sample = (gaussian.mean if deterministic else gaussian.sample()).detach()
        return TensorDict(action=self._metres(sample), sample=sample, log_prob=gaussian.log_prob(sample).sum((1, 2)),
                          value=self.value_head(features), batch_size=[len(sample)])

    @_same_kernels()
    def get_value(self, obs: TensorDict) -> torch.Tensor:
        features = self._queries(self._inputs(obs)).mean(1) if self.flow else self.distribution(obs)[1]
        return self.value_head(features)

    @_same_kernels()
    def evaluate_actions(self, obs: TensorDict, rollout: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.flow:
            gaussian, _ = self.distribution(obs)
            return gaussian.log_prob(rollout["sample"]).sum((1, 2)), gaussian.entropy().sum((1, 2))
        k, x_k = rollout["step"], rollout["x_k"]
        mean, std = self._sde_step(x_k, self._velocity(x_k, k, self._queries(self._inputs(obs))), k)
        return flow_sde_score(mean, std, rollout["x_next"])


@register_policy("driving_vla")
def load(checkpoint: Path) -> DrivingActorCritic:
    """From a driving-VLA training checkpoint (fresh RL heads) or an online-RL one (all of it)."""
    return load_actor_critic_weights(DrivingActorCritic(policy_from_meta(read_config(checkpoint))), checkpoint)
