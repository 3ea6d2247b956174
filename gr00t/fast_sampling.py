"""The Euler steps of `FlowMatchingActionHead.sample_actions`, folded for batch-1 latency on the CPU.

The same maths as `FlowMatchingActionHead.velocity` (held equal by `tests/test_gr00t.py::
test_fast_sampling_equals_the_plain_path`, every parameter random), with what does not change between the steps of
one chunk computed once:
- the time embedding, every block's AdaLN (scale, shift) and the output AdaLN of all steps, in one batch;
- the time half of the action encoder's W2 (its input is [W1·x_t, φ(k)]: the φ(k) rows of W2 applied once per step);
- the keys and values of the VL tokens in every cross-attention block (the VL tokens are fixed for the chunk);
- the position embedding and the future tokens, already joined.
Attention runs as one `scaled_dot_product_attention` on the block's own projection weights, and the feed-forward as
its two linear layers, not through diffusers' `Attention.forward` / `FeedForward.forward`, whose dispatch costs more
than the arithmetic at these sizes (dropout is off: sampling runs in eval mode). Only the action tokens go through the
output layers and the decoder (they are token-wise there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import sinusoidal_encoding

if TYPE_CHECKING:
    from .model import FlowMatchingActionHead


def split_heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, T, heads·d) → (B, heads, T, d)


class EulerSteps:
    """Everything the `num_steps` velocity evaluations of one chunk share. vl: the VL tokens after `vlln` and the
    VL self-attention; state_tokens: (B, 1, width); buckets: the time bucket of each step."""

    def __init__(self, head: FlowMatchingActionHead, vl: Tensor, state_tokens: Tensor, embodiment: Tensor,
                 buckets: list[int]):
        dit, enc = head.model, head.action_encoder
        self.head, self.embodiment, self.heads = head, embodiment, dit.transformer_blocks[0].attn1.heads
        b, width = state_tokens.shape[0], enc.width
        k = torch.tensor(buckets, device=vl.device)
        temb = F.silu(dit.timestep_encoder(k))  # (steps, width): the same for every sample
        self.ada = [block.norm1.linear(temb).chunk(2, dim=-1) for block in dit.transformer_blocks]  # (scale, shift)
        self.out_shift, self.out_scale = dit.proj_out_1(temb).chunk(2, dim=-1)
        # action encoder: W2 · [a, φ(k)] + b2 = a · W2[:width] + (φ(k) · W2[width:] + b2)
        w2, b2 = enc.W2.W[embodiment], enc.W2.b[embodiment]  # (B, 2·width, width), (B, width)
        phi = sinusoidal_encoding(k, width)  # (steps, width)
        self.time_term = torch.einsum("sw,bwo->sbo", phi, w2[:, width:]) + b2  # (steps, B, width)
        self.w1, self.b1 = enc.W1.W[embodiment], enc.W1.b[embodiment][:, None]
        self.w2a, self.w3, self.b3 = w2[:, :width], enc.W3.W[embodiment], enc.W3.b[embodiment][:, None]
        self.context_kv = [(split_heads(blk.attn1.to_k(vl), self.heads), split_heads(blk.attn1.to_v(vl), self.heads))
                           if i % 2 == 0 else None for i, blk in enumerate(dit.transformer_blocks)]
        prefix = [state_tokens]
        if head.cfg.num_future_tokens > 0:
            prefix.append(head.future_tokens.weight[None].expand(b, -1, -1))
        self.prefix = torch.cat(prefix, dim=1)
        self.pos = head.position_embedding.weight[:head.cfg.horizon]

    def velocity(self, x_t: Tensor, step: int) -> Tensor:
        head, dit = self.head, self.head.model
        a = torch.baddbmm(self.b1, x_t, self.w1)
        a = F.silu(torch.bmm(a, self.w2a) + self.time_term[step][:, None])
        a = torch.baddbmm(self.b3, a, self.w3) + self.pos
        h = a.shape[1]
        x = torch.cat([self.prefix, a], dim=1)
        for block, (scale, shift), kv in zip(dit.transformer_blocks, self.ada, self.context_kv):
            attn = block.attn1
            n = F.layer_norm(x, x.shape[-1:], eps=1e-5) * (1 + scale[step]) + shift[step]
            q = split_heads(attn.to_q(n), self.heads)
            k, v = kv if kv is not None else (split_heads(attn.to_k(n), self.heads),
                                              split_heads(attn.to_v(n), self.heads))
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
            x = x + attn.to_out[0](out)
            ff = block.ff.net
            x = x + ff[2](F.gelu(ff[0].proj(F.layer_norm(x, x.shape[-1:], eps=1e-5)), approximate="tanh"))
        x = x[:, -h:]  # only the action tokens are decoded (token-wise from here on)
        x = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + self.out_scale[step]) + self.out_shift[step]
        return head.action_decoder(dit.proj_out_2(x), self.embodiment)
