"""π0 (Black et al., 2024, arXiv:2410.24164) and π0.5 (Physical Intelligence, 2025, arXiv:2504.16054).

A PaliGemma VLM reads the images and the prompt (the *prefix*); a second, smaller Gemma, the *action expert*, reads
the robot state and a noisy action chunk (the *suffix*). Both transformers run layer by layer over one joint
sequence: every layer computes queries/keys/values of each stream with that stream's own weights, attends once over
the concatenation, and sends each stream through its own output projection and MLP (π0 Sec. 3: "a single
transformer with two sets of weights"). The expert predicts the flow-matching velocity of the action chunk.

Reading order: `PI0.forward` (the training loss, Eq. 1 of π0), `PI0.sample_actions` (Euler integration, Sec. 3 and
App. B), then the pieces they use. Time follows the openpi code: τ = 1 is pure noise, τ = 0 is the action chunk
(the paper's figure runs the other way: its τ is 1 − ours).

Checked against LeRobot 0.6.1's PyTorch port of openpi (`pi0/tests/test_pi0.py::test_parity_with_lerobot`, a
fixture made by `pi0/tools/lerobot_reference.py` from LeRobot's own code): with the same weights the per-element
training loss and the sampled chunk agree to ≤ 1e-5. Not compared with openpi's JAX code itself. Sampling runs its
Euler steps through `fast_sampling.py` (the same maths, folded for CPU latency).
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GemmaConfig
from transformers.models.gemma.modeling_gemma import GemmaMLP, GemmaRotaryEmbedding, apply_rotary_pos_emb

from common.data import Normalizer, random_shift
from common.encoders import siglip_vision_tower
from common.envs.metaworld import IMAGE_KEY, to_features
from common.text import tokenize

from .config import GemmaSize, PI0Config
from .fast_sampling import ActionExpertSteps

MASK_VALUE = -2.3819763e38  # openpi's additive attention mask (finite, so fully masked padding rows stay finite)


# ---------------------------------------------------------------------------------------------------- flow matching
def sample_time(batch: int, cfg: PI0Config, generator: torch.Generator) -> Tensor:
    """τ ~ Beta(1.5, 1)·s + (1 − s), s = 0.999 (π0 App. B: more weight on noisy τ, never exactly 0).

    Beta(α, β) = X / (X + Y) with X ~ Gamma(α), Y ~ Gamma(β), drawn from `generator` (torch.distributions.Beta
    only draws from the global RNG).
    """
    x = torch._standard_gamma(torch.full((batch,), cfg.time_beta_alpha), generator=generator)
    y = torch._standard_gamma(torch.full((batch,), cfg.time_beta_beta), generator=generator)
    return x / (x + y) * cfg.time_s + (1 - cfg.time_s)


def sinusoidal_embedding(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """Sine-cosine embedding of scalar τ (openpi `posemb_sincos`), computed in float64 as openpi does."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * t[:, None].double()
    return torch.cat([angle.sin(), angle.cos()], dim=1).to(torch.float32)


# -------------------------------------------------------------------------------------------------- attention mask
def block_attention_mask(pad_mask: Tensor, block_start: Tensor) -> Tensor:
    """Blockwise-causal mask (big_vision `make_attn_mask`; π0 Sec. 3 "blockwise causal attention mask").

    `block_start[b, i]` is 1 where a new block begins. Token i attends to token j iff both are real (not padding)
    and j's block is not later than i's: cumsum(start)[j] ≤ cumsum(start)[i]. π0 uses three blocks:
    [images, prompt] (flags 0) → [state] (flag 1) → [actions] (flags 1, 0, …, 0). So the prefix attends only to
    itself, the state token to the prefix and itself, and the actions to everything.
    Returns bool (B, L, L), True = may attend.
    """
    block = torch.cumsum(block_start.long(), dim=1)
    causal = block[:, None, :] <= block[:, :, None]
    return causal & pad_mask[:, None, :] & pad_mask[:, :, None]


def additive(mask: Tensor) -> Tensor:
    """Bool (B, Lq, Lk) → additive float (B, 1, Lq, Lk) for scaled_dot_product_attention."""
    return torch.where(mask[:, None], 0.0, MASK_VALUE)


# ------------------------------------------------------------------------------------------------ Gemma components
class RMSNorm(nn.Module):
    """Gemma's RMSNorm, y = x / rms(x) · (1 + w), returning (y, None).

    With `cond_dim` it is π0.5's adaRMSNorm: (scale, shift, gate) = Linear(c), y = x / rms(x) · (1 + scale) + shift,
    and `gate` scales the residual branch that follows (π0.5 Sec. IV-C; openpi `gemma.RMSNorm`). Written here
    because transformers' GemmaRMSNorm has no conditioning input.
    """

    def __init__(self, dim: int, cond_dim: int | None = None, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        if cond_dim is None:
            self.weight = nn.Parameter(torch.zeros(dim))
            self.dense = None
        else:
            self.dense = nn.Linear(cond_dim, 3 * dim)
            nn.init.zeros_(self.dense.weight)  # starts as the identity map, like openpi

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # x / sqrt(mean(x²) + eps), one fused op
        if self.dense is None:
            return (normed * (1.0 + self.weight.float())).type_as(x), None
        scale, shift, gate = self.dense(cond)[:, None].chunk(3, dim=-1)
        return (normed * (1 + scale.float()) + shift.float()).type_as(x), gate.type_as(x)


def gemma_config(size: GemmaSize) -> GemmaConfig:
    return GemmaConfig(hidden_size=size.width, intermediate_size=size.mlp_dim, num_hidden_layers=size.depth,
                       num_attention_heads=size.num_heads, num_key_value_heads=size.num_kv_heads,
                       head_dim=size.head_dim, hidden_act="gelu_pytorch_tanh", rms_norm_eps=1e-6, vocab_size=256)


class GemmaLayer(nn.Module):
    """The weights of one Gemma decoder layer (pre-norm attention + GeGLU MLP), named as in transformers/openpi.

    The attention itself is computed by `joint_layer`, over the streams of several such layers at once.
    """

    def __init__(self, size: GemmaSize, cond_dim: int | None = None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = size.num_heads, size.num_kv_heads, size.head_dim
        self.input_layernorm = RMSNorm(size.width, cond_dim)
        self.self_attn = nn.ModuleDict(dict(
            q_proj=nn.Linear(size.width, size.num_heads * size.head_dim, bias=False),
            k_proj=nn.Linear(size.width, size.num_kv_heads * size.head_dim, bias=False),
            v_proj=nn.Linear(size.width, size.num_kv_heads * size.head_dim, bias=False),
            o_proj=nn.Linear(size.num_heads * size.head_dim, size.width, bias=False)))
        self.post_attention_layernorm = RMSNorm(size.width, cond_dim)
        self.mlp = GemmaMLP(gemma_config(size))  # down(gelu_tanh(gate(x)) · up(x))

    def qkv(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        h, gate = self.input_layernorm(x, cond)
        b, n, _ = h.shape
        q = self.self_attn.q_proj(h).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.self_attn.k_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.self_attn.v_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v, gate

    def finish(self, x: Tensor, attn: Tensor, gate: Tensor | None, cond: Tensor | None) -> Tensor:
        """Output projection and MLP, each a (gated, for adaRMS) residual branch."""
        out = self.self_attn.o_proj(attn)
        x = x + (out if gate is None else out * gate)
        h, gate = self.post_attention_layernorm(x, cond)
        out = self.mlp(h)
        return x + (out if gate is None else out * gate)


def joint_layer(layers: list[GemmaLayer], xs: list[Tensor], conds: list[Tensor | None], rope: tuple[Tensor, Tensor],
                mask: Tensor, needed: tuple[bool, ...]) -> tuple[list[Tensor | None], tuple[Tensor, Tensor]]:
    """One layer of the mixture of transformers: per-stream q/k/v, one attention over all streams, per-stream MLP.

    `xs[i]` goes through `layers[i]`; `rope` is (cos, sin) for the concatenated tokens. A stream whose `needed` flag
    is False stops after giving its keys/values (None is returned for it): the prefix's output after the last layer
    is never read. Returns the new streams and this layer's (keys, values), RoPE applied (the sampler caches them).
    Written by hand: no library attention module attends across two weight sets.
    """
    qkv = [layer.qkv(x, c) for layer, x, c in zip(layers, xs, conds)]
    q, k, v = (qkv[0][i] if len(qkv) == 1 else torch.cat([t[i] for t in qkv], dim=2) for i in range(3))
    q, k = apply_rotary_pos_emb(q, k, *rope)
    # scale 1/sqrt(head_dim) (Gemma 1); multi-query: one key/value head shared by all query heads
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), enable_gqa=True)
    attn = attn.transpose(1, 2).flatten(2)
    out, start = [], 0
    for layer, x, c, (_, _, _, gate), keep in zip(layers, xs, conds, qkv, needed):
        out.append(layer.finish(x, attn[:, start:start + x.shape[1]], gate, c) if keep else None)
        start += x.shape[1]
    return out, (k, v)


# ------------------------------------------------------------------------------------------------------------ model
class PI0(nn.Module):
    """π0 / π0.5 (by `cfg.variant`) on model-ready tensors; `Pi0Policy` below normalises, resizes and tokenises.

    images: list over cameras of (B, 3, S, S) in [-1, 1]; image_masks: list of (B,) bool (False = missing camera);
    tokens/token_masks: (B, T) prompt ids and validity; state: (B, max_state_dim) (unused by π0.5, whose state is in
    the prompt); actions/noise: (B, H, max_action_dim); time: (B,).
    """

    def __init__(self, cfg: PI0Config):
        super().__init__()
        self.cfg = cfg
        self.pi05 = cfg.variant == "pi05"
        v, e = cfg.vlm, cfg.expert
        if (v.depth, v.num_heads, v.num_kv_heads, v.head_dim) != (e.depth, e.num_heads, e.num_kv_heads, e.head_dim):
            raise ValueError("the VLM and the action expert attend jointly: they need the same depth, heads, "
                             f"key/value heads and head size, got vlm={v} expert={e}")
        # PaliGemma: SigLIP → linear projection → Gemma (π0 Sec. 3)
        self.vision_tower = siglip_vision_tower("tiny", image_size=cfg.image_size, **vars(cfg.vision))
        self.multi_modal_projector = nn.Linear(cfg.vision.hidden_size, v.width)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, v.width)
        self.vlm_layers = nn.ModuleList(GemmaLayer(v) for _ in range(v.depth))
        # (the VLM's final norm and LM head are not used: only the expert's outputs are read)
        # action expert
        cond_dim = e.width if self.pi05 else None
        self.expert_layers = nn.ModuleList(GemmaLayer(e, cond_dim) for _ in range(e.depth))
        self.expert_norm = RMSNorm(e.width, cond_dim)
        self.rope = GemmaRotaryEmbedding(gemma_config(v))  # θ = 10000, shared by both streams
        self.action_in_proj = nn.Linear(cfg.max_action_dim, e.width)
        self.action_out_proj = nn.Linear(e.width, cfg.max_action_dim)
        if self.pi05:  # time conditions every norm through adaRMS (π0.5 Sec. IV-C)
            self.time_mlp_in = nn.Linear(e.width, e.width)
            self.time_mlp_out = nn.Linear(e.width, e.width)
        else:  # π0: a state token, and τ fused into each action token by the action-time MLP (π0 App. B)
            self.state_proj = nn.Linear(cfg.max_state_dim, e.width)
            self.action_time_mlp_in = nn.Linear(2 * e.width, e.width)
            self.action_time_mlp_out = nn.Linear(e.width, e.width)

    # ------------------------------------------------------------------------------------------------- embeddings
    def embed_prefix(self, images: list[Tensor], image_masks: list[Tensor], tokens: Tensor, token_masks: Tensor):
        """Image tokens of every camera, then the prompt: one bidirectional block (all block-start flags 0)."""
        embs, pads = [], []
        for img, ok in zip(images, image_masks):
            x = self.multi_modal_projector(self.vision_tower(pixel_values=img).last_hidden_state)
            embs.append(x)
            pads.append(ok[:, None].expand(x.shape[:2]))
        # Gemma scales token embeddings by sqrt(width); image features enter unscaled (openpi `embed_prefix`)
        embs.append(self.embed_tokens(tokens) * math.sqrt(self.cfg.vlm.width))
        pads.append(token_masks)
        pad = torch.cat(pads, dim=1)
        return torch.cat(embs, dim=1), pad, torch.zeros_like(pad)

    def time_condition(self, time: Tensor) -> Tensor:
        """π0: the sinusoidal embedding φ(τ) that the action-time MLP fuses into each action token; π0.5: the adaRMS
        condition swish(W₂ · swish(W₁ · φ(τ))) shared by every expert norm. (B,) → (B, expert width)."""
        time_emb = sinusoidal_embedding(time, self.cfg.expert.width, self.cfg.min_period, self.cfg.max_period)
        if self.pi05:
            return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_emb))))
        return time_emb

    def embed_actions(self, x_t: Tensor, time_cond: Tensor) -> tuple[Tensor, Tensor | None]:
        """The H noisy-action tokens of the suffix, and the adaRMS condition (π0.5) or None (π0)."""
        actions = self.action_in_proj(x_t)
        if self.pi05:
            return actions, time_cond
        # action-time MLP: W3 · swish(W2 · [W1 a, φ(τ)]) (π0 App. B)
        fused = torch.cat([actions, time_cond[:, None].expand_as(actions)], dim=-1)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused))), None

    def context_layout(self, prefix: Tensor, prefix_pad: Tensor, prefix_start: Tensor, state: Tensor | None):
        """The tokens no action token can influence: the prefix and, for π0, the state token, which starts its own
        block (it sees the prefix and itself). Returns the streams and the context's validity and block starts."""
        if self.pi05:
            return [prefix], prefix_pad, prefix_start
        ones = prefix_pad.new_ones(prefix_pad.shape[0], 1)
        return ([prefix, self.state_proj(state)[:, None]], torch.cat([prefix_pad, ones], dim=1),
                torch.cat([prefix_start, ones.long()], dim=1))

    # ------------------------------------------------------------------------------------------------------- loss
    def forward(self, images, image_masks, tokens, token_masks, state, actions: Tensor, noise: Tensor,
                time: Tensor) -> Tensor:
        """Per-element flow-matching loss (π0 Eq. 1): ‖v_θ(x_τ, o) − u‖² with x_τ = τ·ε + (1 − τ)·a, u = ε − a.

        Returns the squared error (B, H, max_action_dim); `flow_matching_loss` averages it over the real steps and
        action dimensions.
        """
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions
        u_t = noise - actions
        return (u_t - self.velocity(images, image_masks, tokens, token_masks, state, x_t, time)).pow(2)

    def velocity(self, images, image_masks, tokens, token_masks, state, x_t: Tensor, time: Tensor) -> Tensor:
        """v_θ(x_τ, o): one pass of both transformers over the joint sequence [prefix, (state,) actions]."""
        prefix, prefix_pad, prefix_start = self.embed_prefix(images, image_masks, tokens, token_masks)
        context, context_pad, context_start = self.context_layout(prefix, prefix_pad, prefix_start, state)
        actions, cond = self.embed_actions(x_t, self.time_condition(time))
        b, h = x_t.shape[:2]
        pad = torch.cat([context_pad, context_pad.new_ones(b, h)], dim=1)
        action_start = torch.zeros(b, h, dtype=torch.long, device=x_t.device)
        action_start[:, 0] = 1  # the actions form one new block, after everything else
        mask = additive(block_attention_mask(pad, torch.cat([context_start, action_start], dim=1)))
        positions = torch.cumsum(pad, dim=1) - 1  # padding does not advance the position
        rope = self.rope(prefix, positions)
        suffix = actions if self.pi05 else torch.cat([context[1], actions], dim=1)  # π0: [state, actions]
        xs, depth = [prefix, suffix], len(self.vlm_layers)
        for i, (vlm_layer, expert_layer) in enumerate(zip(self.vlm_layers, self.expert_layers)):
            xs, _ = joint_layer([vlm_layer, expert_layer], xs, [None, cond], rope, mask, needed=(i < depth - 1, True))
        out, _ = self.expert_norm(xs[1], cond)
        return self.action_out_proj(out[:, -h:])

    # --------------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_actions(self, images, image_masks, tokens, token_masks, state, noise: Tensor,
                       num_steps: int | None = None) -> Tensor:
        """Integrate dx/dτ = v_θ from τ = 1 (noise) to τ = 0 with Euler steps δ = −1/num_steps (π0 Sec. 3, App. B)."""
        num_steps = num_steps or self.cfg.num_inference_steps
        expert = self.expert_steps(images, image_masks, tokens, token_masks, state, noise.shape[1], num_steps)
        x_t, dt = noise, -1.0 / num_steps
        for step in range(num_steps):
            x_t = torch.add(x_t, expert.velocity(x_t, step), alpha=dt)  # x_{τ+δ} = x_τ + δ · v_θ(x_τ, o)
        return x_t

    def expert_steps(self, images, image_masks, tokens, token_masks, state, horizon: int,
                     num_steps: int) -> ActionExpertSteps:
        """v_θ at each of `num_steps` Euler steps of one chunk, as `ActionExpertSteps(...).velocity(x_τ, step)`.

        No action token is seen by the prefix or by π0's state token, so their keys/values (the *context*) are
        computed once and reused by every step; each step runs the action expert alone over the H action tokens.
        The time conditions of all steps are computed up front, in one batch.
        """
        prefix, prefix_pad, prefix_start = self.embed_prefix(images, image_masks, tokens, token_masks)
        xs, context_pad, context_start = self.context_layout(prefix, prefix_pad, prefix_start, state)
        mask = additive(block_attention_mask(context_pad, context_start))
        rope = self.rope(prefix, torch.cumsum(context_pad, dim=1) - 1)
        layers = list(zip(self.vlm_layers, self.expert_layers))
        cache = []
        for i, pair in enumerate(layers):
            keep = i < len(layers) - 1  # the last layer's outputs are never read: stop after its keys/values
            xs, kv = joint_layer(list(pair[:len(xs)]), xs, [None] * len(xs), rope, mask, needed=(keep,) * len(xs))
            cache.append(kv)
        # the action tokens see every real context token and each other; mask and positions are the same each step
        b, h = prefix.shape[0], horizon
        mask = additive(torch.cat([context_pad[:, None, :].expand(-1, h, -1), context_pad.new_ones(b, h, h)], dim=2))
        positions = context_pad.sum(-1, keepdim=True) + torch.arange(h, device=prefix.device)
        return ActionExpertSteps(self, cache, self.rope(prefix, positions), mask[:, 0],
                                 self.time_condition(euler_times(num_steps, prefix.device).repeat_interleave(b)))

    @torch.no_grad()
    def sample_actions_uncached(self, images, image_masks, tokens, token_masks, state, noise: Tensor,
                                num_steps: int | None = None) -> Tensor:
        """The same integration recomputing the whole sequence at every step (the reference for the cache test)."""
        num_steps = num_steps or self.cfg.num_inference_steps
        x_t, dt = noise, -1.0 / num_steps
        for time in euler_times(num_steps, noise.device):
            time = time.expand(noise.shape[0])
            x_t = x_t + dt * self.velocity(images, image_masks, tokens, token_masks, state, x_t, time)
        return x_t


def euler_times(num_steps: int, device=None) -> Tensor:
    """τ at the start of each Euler step: 1, 1 − 1/n, …, 1/n."""
    return torch.tensor([1.0 - step / num_steps for step in range(num_steps)], device=device)


def flow_matching_loss(sq_err: Tensor, action_is_pad: Tensor, action_dim: int) -> Tensor:
    """The squared error averaged per sample over its real (unpadded) chunk steps and the robot's real action
    dimensions, then over the batch (so a torchrun global batch's loss is the mean of its shards' losses)."""
    valid = (~action_is_pad).to(sq_err.dtype)[:, :, None]
    per_sample = (sq_err[..., :action_dim] * valid).sum((1, 2)) / (valid.sum((1, 2)) * action_dim)
    return per_sample.mean()


# ------------------------------------------------------------------------------------- the official checkpoint layout
# openpi's PyTorch checkpoints and LeRobot's (prefixed "model."), in the module layout of transformers 5
# (`paligemma.model.language_model.layers`, `paligemma.model.vision_tower.vision_model`) or 4.x
# (`paligemma.language_model.model.layers`, `paligemma.vision_tower.vision_model`).
_PALIGEMMA = r"paligemma_with_expert\.paligemma\.(?:model\.)?"
OFFICIAL_TO_OURS = [
    (_PALIGEMMA + r"vision_tower\.(?:vision_model\.)?(.+)", r"vision_tower.\1"),
    (_PALIGEMMA + r"multi_modal_projector\.linear\.(.+)", r"multi_modal_projector.\1"),
    (_PALIGEMMA + r"language_model\.(?:model\.)?embed_tokens\.weight", "embed_tokens.weight"),
    (_PALIGEMMA + r"language_model\.(?:model\.)?layers\.(\d+)\.(.+)", r"vlm_layers.\1.\2"),
    (r"paligemma_with_expert\.gemma_expert\.model\.layers\.(\d+)\.(.+)", r"expert_layers.\1.\2"),
    (r"paligemma_with_expert\.gemma_expert\.model\.norm\.(.+)", r"expert_norm.\1"),
    (r"(state_proj|action_in_proj|action_out_proj|action_time_mlp_in|action_time_mlp_out|time_mlp_in|time_mlp_out)"
     r"\.(weight|bias)", r"\1.\2"),
]
# present in the official files but never read by π0: the VLM's final norm and both LM heads
OFFICIAL_UNUSED = [_PALIGEMMA + r"language_model\.(?:model\.)?norm\.weight", r"paligemma_with_expert\.paligemma\.lm_head\..+",
                   r"paligemma_with_expert\.gemma_expert\.lm_head\..+"]


def official_key_to_ours(key: str, variant: str) -> str | None:
    """Our parameter name for an official one; None for the unused ones; KeyError for anything unknown."""
    key = key.removeprefix("model.")
    if any(re.fullmatch(p, key) for p in OFFICIAL_UNUSED):
        return None
    for pattern, target in OFFICIAL_TO_OURS:
        if re.fullmatch(pattern, key):
            ours = re.sub(pattern, target, key)
            if variant == "pi0" and ours.startswith("time_mlp_"):  # some π0 exports name it time_mlp_* (LeRobot)
                ours = "action_" + ours
            return ours
    raise KeyError(f"unknown key in the official π0 layout: {key!r}")


def load_official_state_dict(model: PI0, state_dict: Mapping[str, Tensor]) -> None:
    """Load an openpi/LeRobot π0 or π0.5 state dict into `model`; every one of our parameters must be covered.

    PaliGemma ties its token embeddings to the LM head; files that keep only `lm_head.weight` give it to
    `embed_tokens`.
    """
    ours = {}
    for key, value in state_dict.items():
        name = official_key_to_ours(key, model.cfg.variant)
        if name is not None:
            ours[name] = value
        elif key.removeprefix("model.") == "paligemma_with_expert.paligemma.lm_head.weight":
            ours.setdefault("embed_tokens.weight", value)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise KeyError(f"official checkpoint does not match this {model.cfg.variant} config: missing {missing[:8]}"
                       f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}")
    for name, value in ours.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} != model {tuple(expected[name].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()})


def to_official_state_dict(model: PI0) -> dict[str, Tensor]:
    """Our weights under openpi's PyTorch names (transformers 5 layout), e.g. to hand a model to LeRobot."""
    names = {r"vision_tower\.(.+)": r"paligemma_with_expert.paligemma.model.vision_tower.vision_model.\1",
             r"multi_modal_projector\.(.+)": r"paligemma_with_expert.paligemma.model.multi_modal_projector.linear.\1",
             r"embed_tokens\.weight": "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight",
             r"vlm_layers\.(.+)": r"paligemma_with_expert.paligemma.model.language_model.layers.\1",
             r"expert_layers\.(.+)": r"paligemma_with_expert.gemma_expert.model.layers.\1",
             r"expert_norm\.(.+)": r"paligemma_with_expert.gemma_expert.model.norm.\1"}
    out = {}
    for key, value in model.state_dict().items():
        new = next((re.sub(p, t, key) for p, t in names.items() if re.fullmatch(p, key)), key)
        out[new] = value
    return out


# ----------------------------------------------------------------------------------------------------------- policy
def resize_with_pad(images: Tensor, size: int) -> Tensor:
    """(B, 3, H, W) in [0, 1] → (B, 3, size, size): keep the aspect ratio, pad with black (openpi `resize_with_pad`).

    Bilinear with antialiasing, as `jax.image.resize` does when openpi shrinks an image.
    """
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    ratio = max(h / size, w / size)
    nh, nw = int(h / ratio), int(w / ratio)
    images = F.interpolate(images, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (size - nh) // 2, (size - nw) // 2
    return F.pad(images, (left, size - nw - left, top, size - nh - top))


def make_prompts(cfg: PI0Config, instructions: list[str], state: Tensor) -> list[str]:
    """π0: the instruction. π0.5: each normalised state dimension becomes an integer bin in [0, state_bins) inside
    the prompt (openpi `PaligemmaTokenizer`); values outside [-1, 1] are clipped first."""
    if cfg.variant == "pi0":
        return list(instructions)
    edges = torch.linspace(-1, 1, cfg.state_bins + 1, device=state.device)[1:-1]
    bins = torch.bucketize(state.clamp(-1, 1), edges, right=True).tolist()
    return [f"Task: {text.strip()}, State: {' '.join(map(str, b))};\nAction: " for text, b in zip(instructions, bins)]


def state_normalizer(cfg: PI0Config, stats: Mapping) -> Normalizer:
    """Mean/std for π0 (LeRobot's default), quantiles to [-1, 1] for π0.5 (openpi), for the state and the actions."""
    mode = "quantile" if cfg.variant == "pi05" else "mean_std"
    return Normalizer(stats, {cfg.state_key: mode, "action": mode})


class Pi0Policy(nn.Module):
    """A dataset/environment batch → model tensors → an unnormalised action chunk.

    Owns what π0's "policy" layer does in openpi/LeRobot: state/action normalisation (mean/std for π0, quantiles
    for π0.5, statistics stored as buffers), zero-padding to `max_*_dim`, image resizing to [-1, 1], and the prompt
    (π0: the instruction; π0.5: "Task: …, State: …;\\nAction: " with the state discretised into `state_bins` integers).
    """

    def __init__(self, cfg: PI0Config, stats: Mapping, tokenizer, state_dim: int, action_dim: int):
        super().__init__()
        if state_dim > cfg.max_state_dim or action_dim > cfg.max_action_dim:
            raise ValueError(f"state {state_dim}-D / action {action_dim}-D exceed max_state_dim "
                             f"{cfg.max_state_dim} / max_action_dim {cfg.max_action_dim}")
        if len(tokenizer) > cfg.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but vocab_size is {cfg.vocab_size}")
        self.cfg, self.tokenizer, self.state_dim, self.action_dim = cfg, tokenizer, state_dim, action_dim
        self.image_keys = [IMAGE_KEY.format(camera=c) for c in cfg.cameras]
        self.normalizer = state_normalizer(cfg, stats)
        self.model = PI0(cfg)

    def prompts(self, instructions: list[str], state: Tensor) -> list[str]:
        return make_prompts(self.cfg, instructions, state)

    def inputs(self, batch: Mapping, shift: Tensor | None = None):
        """images, image_masks, tokens, token_masks, padded state. `shift`: (2, B) random-shift offsets or None."""
        cfg = self.cfg
        device = self.model.action_in_proj.weight.device
        images = []
        for key in self.image_keys:
            img = resize_with_pad(batch[key].to(device).permute(0, 3, 1, 2).float() / 255, cfg.image_size)
            if shift is not None and cfg.shift_augment > 0:
                img = random_shift(img, cfg.shift_augment, shift)
            images.append(img * 2 - 1)
        state = self.normalizer.normalize(cfg.state_key, batch[cfg.state_key].to(device).float())
        prompts = self.prompts(batch["instruction"], state)
        # openpi cuts a prompt at its max_token_len (48 PaliGemma tokens, ample there); our BPE, trained on the
        # training prompts only, splits an unseen paraphrase finely, so a longer prompt widens its batch instead of
        # losing its end (π0.5: the state and "Action:"); positions skip padding, so no row's result changes
        longest = max(len(ids) for ids in self.tokenizer(prompts)["input_ids"])
        text = tokenize(self.tokenizer, prompts, max(cfg.max_text_tokens, longest))
        masks = [torch.ones(images[0].shape[0], dtype=torch.bool, device=device)] * len(images)
        return (images, masks, text["input_ids"].to(device), text["attention_mask"].to(device),
                F.pad(state, (0, cfg.max_state_dim - self.state_dim)))

    def forward(self, batch: Mapping, noise: Tensor, time: Tensor, shift: Tensor | None = None) -> Tensor:
        """The training loss of a batch for given noise ε (B, H, max_action_dim) and τ (B,)."""
        actions = self.normalizer.normalize("action", batch["action"].to(noise.device).float())
        actions = F.pad(actions, (0, self.cfg.max_action_dim - self.action_dim))
        sq_err = self.model(*self.inputs(batch, shift), actions, noise, time)
        return flow_matching_loss(sq_err, batch["action_is_pad"].to(noise.device), self.action_dim)

    @torch.no_grad()
    def predict_chunk(self, batch: Mapping, noise: Tensor | None = None) -> Tensor:
        """(B, H, action_dim) actions in the dataset's units."""
        cfg = self.cfg
        images, image_masks, tokens, token_masks, state = self.inputs(batch)
        if noise is None:
            noise = torch.randn(tokens.shape[0], cfg.horizon, cfg.max_action_dim, device=tokens.device)
        actions = self.model.sample_actions(images, image_masks, tokens, token_masks, state, noise)
        return self.normalizer.unnormalize("action", actions[..., :self.action_dim])


class ClosedLoopPolicy:
    """The interface of `common.envs.metaworld.evaluate`: observation → the first `n_action_steps` of a chunk."""

    def __init__(self, policy: Pi0Policy):
        self.policy = policy.eval()

    @torch.no_grad()
    def __call__(self, obs: dict) -> np.ndarray:
        policy = self.policy
        features = to_features(obs)
        batch = {k: torch.as_tensor(np.asarray(features[k]))[None] for k in (*policy.image_keys, policy.cfg.state_key)}
        batch["instruction"] = [obs["instruction"]]
        return policy.predict_chunk(batch)[0, :policy.cfg.n_action_steps].cpu().numpy()
