"""The small networks the algorithms share: MLPs, twin Q-functions evaluated as one batched ensemble, and actors.

The twin critics are one module with stacked weights (`EnsembleLinear`): both Q-networks run in a single batched
matmul per layer instead of two forward passes. Written here because torch has no ensemble linear layer; each
member is initialised exactly like an `nn.Linear` of the same shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Normal


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int = 2, dropout: float = 0.0,
        layer_norm: bool = False) -> nn.Sequential:
    """Linear–ReLU × `layers` then a linear output (optional dropout / LayerNorm after each hidden layer)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(in_dim if i == 0 else hidden, hidden))
        if layer_norm:
            mods.append(nn.LayerNorm(hidden))
        mods.append(nn.ReLU())
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
    mods.append(nn.Linear(hidden if layers else in_dim, out_dim))
    return nn.Sequential(*mods)


class EnsembleLinear(nn.Module):
    """`size` independent linear layers applied to (size, B, in) inputs in one batched matmul."""

    def __init__(self, in_dim: int, out_dim: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(size, 1, out_dim))
        bound = 1 / math.sqrt(in_dim)  # nn.Linear's default: kaiming_uniform(a=√5) ≡ U(±1/√in) for the weight
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinQ(nn.Module):
    """Q₁, Q₂ (Fujimoto et al., 2018: clipped double Q) as one ensemble; forward returns (2, *batch).

    `orthogonal_init`: hidden weights orthogonal with gain √2, the output layer with gain 0.01, biases 0 (CQL's
    SimpleSAC code, as CORL's CQL); otherwise nn.Linear's default."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int = 2, size: int = 2,
                 orthogonal_init: bool = False):
        super().__init__()
        dims = [obs_dim + act_dim] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [EnsembleLinear(a, b, size), nn.ReLU()]
        mods.append(EnsembleLinear(dims[-1], 1, size))
        self.net = nn.Sequential(*mods)
        self.size = size
        if orthogonal_init:
            linears = [m for m in self.net if isinstance(m, EnsembleLinear)]
            for i, layer in enumerate(linears):
                size_, fan_in, fan_out = layer.weight.shape
                for member in range(size_):  # an (out, in) orthogonal matrix, as for nn.Linear, stored as (in, out)
                    w = nn.init.orthogonal_(torch.empty(fan_out, fan_in), gain=1e-2 if i == len(linears) - 1
                                            else math.sqrt(2))
                    layer.weight.data[member] = w.T
                nn.init.zeros_(layer.bias)

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([obs, actions], dim=-1)
        batch = x.shape[:-1]
        x = x.reshape(1, -1, x.shape[-1]).expand(self.size, -1, -1)
        return self.net(x).reshape(self.size, *batch)


class GaussianPolicy(nn.Module):
    """IQL's actor: N(tanh(MLP(s)), diag(exp(log σ))) with a state-independent log σ (CORL `GaussianPolicy`)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, dropout=dropout)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def distribution(self, obs: Tensor) -> Normal:
        return Normal(torch.tanh(self.net(obs)), self.log_std.clamp(-20.0, 2.0).exp(), validate_args=False)

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        return self.distribution(obs).log_prob(actions).sum(-1)

    def mean_action(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs)).clamp(-1.0, 1.0)


class TanhGaussianPolicy(nn.Module):
    """SAC's actor: a = tanh(u), u ~ N(μ(s), σ(s)), with the change-of-variables log-probability.

    As in CQL's SimpleSAC code (and CORL): log σ = m · raw + o with a trainable scalar multiplier m (init 1) and
    offset o (init `log_std_offset`), clamped to [−20, 2]; the output layer starts small (Xavier, gain 0.01)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int = 2, log_std_offset: float = -1.0):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden, layers)
        nn.init.xavier_uniform_(self.net[-1].weight, gain=1e-2)
        nn.init.zeros_(self.net[-1].bias)
        self.log_std_multiplier = nn.Parameter(torch.tensor(1.0))
        self.log_std_offset = nn.Parameter(torch.tensor(log_std_offset))

    def _normal(self, obs: Tensor, samples: int | None = None) -> Normal:
        mu, raw = self.net(obs).chunk(2, dim=-1)
        log_std = self.log_std_multiplier * raw + self.log_std_offset
        if samples is not None:  # (B, samples, A): the network runs once per state, not once per sample
            mu, log_std = (x[:, None].expand(-1, samples, -1) for x in (mu, log_std))
        return Normal(mu, log_std.clamp(-20.0, 2.0).exp(), validate_args=False)

    def forward(self, obs: Tensor, samples: int | None = None) -> tuple[Tensor, Tensor]:
        """A reparameterised sample a = tanh(u) and its log-probability log π(a|s); with `samples`, that many
        independent samples per state, (B, samples, A) and (B, samples)."""
        normal = self._normal(obs, samples)
        u = normal.rsample()
        return torch.tanh(u), self._log_prob(normal, u)

    def log_prob(self, obs: Tensor, actions: Tensor, eps: float = 1e-6) -> Tensor:
        """log π(a|s) of given actions (u = atanh(a), a clipped inside (−1, 1))."""
        return self._log_prob(self._normal(obs), torch.atanh(actions.clamp(-1 + eps, 1 - eps)))

    @staticmethod
    def _log_prob(normal: Normal, u: Tensor) -> Tensor:
        """log N(u) − Σ log(1 − tanh²u), with log(1 − tanh²u) = 2(log 2 − u − softplus(−2u)) (stable form)."""
        return normal.log_prob(u).sum(-1) - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)

    def mean_action(self, obs: Tensor) -> Tensor:
        return torch.tanh(self._normal(obs).mean)


class DeterministicActor(nn.Module):
    """TD3's actor: a = max_action · tanh(MLP(s)) (actions are in [−1, 1] here, so max_action = 1)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs))

    def mean_action(self, obs: Tensor) -> Tensor:
        return self(obs)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """θ' ← τθ + (1 − τ)θ' (Polyak averaging of target networks)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
