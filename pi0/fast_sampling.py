"""π0's Euler steps rearranged for batch-1 CPU latency: the same maths as `model.joint_layer` with few ops.

`PI0.sample_actions` computes the prefix's keys/values once (the *context*) and then calls `ActionExpertSteps.velocity`
once per Euler step. Read `model.py` for the paper's maths; this module only folds it for speed:
- π0's RMSNorm weights (1 + w) folded into the next projection, π0.5's adaRMS terms of every step computed at once;
- RoPE's `rotate_half` folded into the q/k projections as a signed row permutation (`rotate_half_rows`);
- multi-query attention as batched matmuls over (token, head) rows, residual adds inside `addmm`;
- π0's action-time MLP split so that its time half is computed for every step up front.

Held equal to the plain path by `pi0/tests/test_pi0.py::test_cached_sampling_equals_uncached` (every parameter
random, π0 and π0.5, to 1e-5 against `PI0.sample_actions_uncached`, which runs `joint_layer` over the whole sequence
at every step) and `test_rotate_half_rows_folds_rope_into_the_projection` (exact).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # type hints only: model.py imports this module
    from .model import PI0, RMSNorm


class ActionExpertSteps:
    """v_θ(x_τ, o) for the Euler steps of one chunk: the action expert alone over the H action tokens, attending to
    the cached context keys/values (`joint_layer`'s maths, the context's keys/values prepended), rearranged for
    latency.

    At batch 1 the matrices are a few tokens by ~100 wide, so a step's time goes to launching ops, not to arithmetic
    (on this project's CPU an elementwise op costs ~5 µs whatever its size, `F.rms_norm` ~30 µs). The rearrangement
    cuts the ops per expert layer from ~60 to ~20, all of its preparation done once per chunk, here:
    - tokens stay as (B · H, width) rows, so the projections are plain matmuls and the residual adds ride in them
      (`addmm`);
    - RMSNorm is 1/rms(x) by a vector norm, times x; π0's (1 + w) is folded into the projection that follows
      (diag(1 + w) · W), π0.5's adaRMS (1 + scale, shift, gate) of every step is computed in one batch;
    - q, rotate_half(q), k, rotate_half(k) and v come from one matmul: rotate_half (transformers' RoPE convention)
      is a signed permutation of the projection's output rows, so it is folded into a stacked weight exactly;
    - multi-query attention runs as batched matmuls over (token, head) rows against the single key/value head: no
      transposes, no head expansion; the additive mask and 1/sqrt(head_dim) ride along in one `baddbmm`;
    - π0's action-time MLP: the τ half of W_in · [W₁ a, φ(τ)] is computed for every step at once.
    `sample_actions_uncached` recomputes everything through `PI0.velocity`; the tests hold the two to 1e-5.
    """

    def __init__(self, model: PI0, cache: list[tuple[Tensor, Tensor]], rope: tuple[Tensor, Tensor], mask: Tensor,
                 time_cond: Tensor):
        e = model.cfg.expert
        if e.num_kv_heads != 1:
            raise ValueError(f"the cached expert step is written for multi-query attention (π0's Gemmas), got "
                             f"{e.num_kv_heads} key/value heads")
        self.model, self.pi05 = model, model.pi05
        self.heads, self.head_dim, self.mlp_dim = e.num_heads, e.head_dim, e.mlp_dim
        self.eps = torch.tensor(model.expert_norm.eps, dtype=torch.float32, device=time_cond.device)
        cos, sin = (t.flatten(0, 1) for t in rope)  # (B · H, head_dim): one row per action token
        self.cos, self.sin, self.cos_q, self.sin_q = cos, sin, cos[:, None], sin[:, None]  # (the q ones per head)
        b, h = rope[0].shape[:2]
        self.batch, self.tokens = b, h
        # each (token, head) row of the queries sees what its token sees
        self.mask = mask[:, :, None].expand(-1, -1, self.heads, -1).reshape(b, h * self.heads, mask.shape[-1])
        self.layers = []
        for layer, (k, v) in zip(model.expert_layers, cache):
            attn, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([attn.q_proj.weight, rotate_half_rows(attn.q_proj.weight, self.head_dim),
                             attn.k_proj.weight, rotate_half_rows(attn.k_proj.weight, self.head_dim),
                             attn.v_proj.weight])
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            self.layers.append(dict(
                qkv=self.fold(qkv, layer.input_layernorm), gate_up=self.fold(gate_up, layer.post_attention_layernorm),
                o=attn.o_proj.weight.t(), down=mlp.down_proj.weight.t(), k=k[:, 0], v=v[:, 0],
                ada=[self.ada_terms(n, time_cond) for n in (layer.input_layernorm, layer.post_attention_layernorm)]))
        self.out = self.fold(model.action_out_proj.weight, model.expert_norm)
        self.out_ada = self.ada_terms(model.expert_norm, time_cond)
        if not self.pi05:  # W_in [W₁ a, φ(τ)] + b_in = W_in,a (W₁ a) + (W_in,τ φ(τ) + b_in): the τ half for each step
            w = model.action_time_mlp_in.weight
            self.action_w = w[:, :e.width].t()
            self.time_bias = F.linear(time_cond, w[:, e.width:], model.action_time_mlp_in.bias)
            self.time_bias = self.time_bias.view(-1, b, 1, e.width).expand(-1, -1, h, -1).flatten(1, 2)

    def fold(self, weight: Tensor, norm: RMSNorm) -> Tensor:
        """The transposed weight of the projection after `norm`, with π0's (1 + w) folded in: diag(1 + w) · Wᵀ."""
        return weight.t() if norm.dense is not None else (1.0 + norm.weight)[:, None] * weight.t()

    def ada_terms(self, norm: RMSNorm, time_cond: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """π0.5's adaRMS (1 + scale, shift, gate) of every step, each (steps, B · H, width); None for π0."""
        if norm.dense is None:
            return None
        terms = norm.dense(time_cond).view(-1, self.batch, 1, norm.dense.out_features).chunk(3, dim=-1)
        scale, shift, gate = (t.expand(-1, -1, self.tokens, -1).flatten(1, 2) for t in terms)
        return 1.0 + scale, shift, gate

    def normalize(self, x: Tensor, ada, step: int) -> tuple[Tensor, Tensor | None]:
        """RMSNorm of the rows of x (its weight is in the next projection), or adaRMSNorm with its residual gate;
        in float32 like `RMSNorm` (a no-op for a float32 model)."""
        xf = x.float()
        norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)  # √(Σ x²)
        xf = xf * torch.addcmul(self.eps, norm, norm, value=1 / x.shape[-1]).rsqrt_()  # x / √(mean(x²) + ε)
        if ada is None:
            return xf.type_as(x), None
        scale, shift, gate = (t[step] for t in ada)
        return torch.addcmul(shift.float(), xf, scale.float()).type_as(x), gate

    @staticmethod
    def residual(x: Tensor, h: Tensor, w: Tensor, gate: Tensor | None) -> Tensor:
        """x + h · w (π0), or x + gate ⊙ (h · w) (π0.5's gated residual)."""
        return torch.addmm(x, h, w) if gate is None else torch.addcmul(x, h @ w, gate)

    def velocity(self, x_t: Tensor, step: int) -> Tensor:
        m, n, d, b = self.model, self.heads, self.head_dim, self.batch
        x = m.action_in_proj(x_t.flatten(0, 1))  # (B · H, width)
        if not self.pi05:  # action-time MLP (π0 App. B)
            x = m.action_time_mlp_out(F.silu(torch.addmm(self.time_bias[step], x, self.action_w)))
        for layer in self.layers:
            hid, gate = self.normalize(x, layer["ada"][0], step)
            q, q_rot, k, k_rot, v = (hid @ layer["qkv"]).split([n * d, n * d, d, d, d], dim=-1)
            q = torch.addcmul(q.unflatten(-1, (n, d)) * self.cos_q, q_rot.unflatten(-1, (n, d)), self.sin_q)  # RoPE
            k = torch.addcmul(k * self.cos, k_rot, self.sin)
            keys = torch.cat([layer["k"], k.view(b, -1, d)], dim=1)
            values = torch.cat([layer["v"], v.view(b, -1, d)], dim=1)
            scores = torch.baddbmm(self.mask, q.view(b, -1, d), keys.transpose(1, 2), alpha=d ** -0.5)
            attn = torch.softmax(scores, dim=-1) @ values  # (B, H · heads, head_dim): rows are (token, head)
            x = self.residual(x, attn.view(x.shape[0], n * d), layer["o"], gate)
            hid, gate = self.normalize(x, layer["ada"][1], step)
            g, u = (hid @ layer["gate_up"]).split(self.mlp_dim, dim=-1)
            x = self.residual(x, F.gelu(g, approximate="tanh") * u, layer["down"], gate)
        out, _ = self.normalize(x, self.out_ada, step)
        return torch.addmm(m.action_out_proj.bias, out, self.out).view_as(x_t)


def rotate_half_rows(weight: Tensor, head_dim: int) -> Tensor:
    """The rows of a q/k projection permuted and signed so that it outputs rotate_half(W · x) for every head:
    per head, [x₁, x₂] → [−x₂, x₁] (transformers' `rotate_half`, which RoPE uses)."""
    w = weight.view(-1, head_dim, weight.shape[-1])
    return torch.cat([-w[:, head_dim // 2:], w[:, :head_dim // 2]], dim=1).view_as(weight)
