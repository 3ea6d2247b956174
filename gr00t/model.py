"""GR00T N1.5 (NVIDIA, 2025; GR00T N1 paper arXiv:2503.14734, N1.5 release notes and Isaac-GR00T tag n1.5-release).

A dual-system VLA. *System 2* is a vision-language model, Eagle 2.5: a SigLIP vision tower, one linear connector and
a Qwen3 decoder cut after its 12th layer; its hidden states (after the final RMSNorm) are the vision-language (VL)
features. *System 1* is a flow-matching action head: a LayerNorm and 4 self-attention blocks over the VL features,
then a diffusion transformer (DiT) whose even blocks cross-attend to them and whose odd blocks self-attend over
[state token, 32 learned future tokens, H noisy-action tokens], conditioned on the flow time through adaptive
LayerNorms (N1 paper Sec. 2.1-2.2, Fig. 2). State, action encoders and the action decoder are *embodiment-specific*:
each holds one weight per embodiment slot, picked by the sample's embodiment id, so one model serves many robots whose
states and actions are zero-padded to 64 / 32 dimensions.

Reading order: `FlowMatchingActionHead.forward` (the training loss, N1 Eq. 1-2 with the release's time law),
`FlowMatchingActionHead.sample_actions` (4 Euler steps), `DiT`, then the embodiment-specific layers and the backbone.
Time follows the release: t = 0 is pure noise, t = 1 the action chunk (the opposite of π0/openpi).

Checked against LeRobot 0.6.1's GR00T action head (`tests/test_gr00t.py::test_action_head_matches_lerobot`, a
fixture made by `tools/lerobot_reference.py` from LeRobot's own code, which ships N1.7): with its alternating VL-DiT
off and no future tokens, our head gives the same VL tokens, velocity, loss and 4-step chunk to ≤ 1e-5. The N1.5
parts that N1.7 dropped (future tokens, the time law) have their own tests. The backbone is transformers' SigLIP and
Qwen3 modules, wired as Isaac-GR00T's `EagleBackbone` (read side by side; no test compares its outputs).
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn
from transformers import Qwen3Config, Qwen3Model

from common.data import Normalizer
from common.encoders import siglip_vision_tower
from common.envs.metaworld import ACTION_DIM, IMAGE_KEY, to_features
from common.text import tokenize

from .config import Gr00tConfig, TransformerSize
from .modality import ModalitySpec


# ---------------------------------------------------------------------------------------------------- flow matching
def sample_time(batch: int, cfg: Gr00tConfig, generator: torch.Generator) -> Tensor:
    """t = (s − u) / s with u ~ Beta(1.5, 1), s = 0.999 (release `sample_time`; N1 Sec. 2.2 "we sample τ from a
    shifted Beta distribution that emphasises the noisier timesteps"). t lies in (−0.001, 1], mostly near 0 (noise).

    N1.6 and later draw t = (1 − u)·s instead. Beta(α, β) = X / (X + Y), X ~ Gamma(α), Y ~ Gamma(β), drawn from
    `generator` (torch.distributions.Beta only draws from the global RNG).
    """
    x = torch._standard_gamma(torch.full((batch,), cfg.noise_beta_alpha), generator=generator)
    y = torch._standard_gamma(torch.full((batch,), cfg.noise_beta_beta), generator=generator)
    return (cfg.noise_s - x / (x + y)) / cfg.noise_s


def time_buckets(t: Tensor, num_buckets: int) -> Tensor:
    """⌊num_buckets · t⌋ as integers (truncation, as the release's `.long()`): both time embeddings read this."""
    return (t * num_buckets).long()


def sinusoidal_encoding(k: Tensor, dim: int) -> Tensor:
    """The action encoder's time code (release `SinusoidalPositionalEncoding`): [sin(k·f), cos(k·f)] with
    f_i = 10000^(−i/(dim/2)), i < dim/2. (B, T) → (B, T, dim). Not the DiT's code (diffusers `Timesteps`: cos first,
    divisor dim/2 − 1)."""
    half = dim // 2
    freqs = torch.exp(-torch.arange(half, dtype=torch.float32, device=k.device) * (math.log(10000.0) / half))
    angle = k.float()[..., None] * freqs
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


# ----------------------------------------------------------------------------------- embodiment-specific layers
class CategorySpecificLinear(nn.Module):
    """y = x · W[e] + b[e]: one weight per embodiment slot e, applied as a batched matmul (release
    `CategorySpecificLinear`; W is stored (slots, in, out), the transpose of nn.Linear's)."""

    def __init__(self, num_categories: int, input_dim: int, output_dim: int):
        super().__init__()
        self.W = nn.Parameter(0.02 * torch.randn(num_categories, input_dim, output_dim))
        self.b = nn.Parameter(torch.zeros(num_categories, output_dim))

    def forward(self, x: Tensor, embodiment: Tensor) -> Tensor:
        return torch.bmm(x, self.W[embodiment]) + self.b[embodiment][:, None]


class CategorySpecificMLP(nn.Module):
    """layer2(relu(layer1(x))), both embodiment-specific: the state encoder and the action decoder."""

    def __init__(self, num_categories: int, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.layer1 = CategorySpecificLinear(num_categories, input_dim, hidden_dim)
        self.layer2 = CategorySpecificLinear(num_categories, hidden_dim, output_dim)

    def forward(self, x: Tensor, embodiment: Tensor) -> Tensor:
        return self.layer2(F.relu(self.layer1(x, embodiment)), embodiment)


class MultiEmbodimentActionEncoder(nn.Module):
    """Noisy action chunk + time → action tokens: W3 · swish(W2 · [W1 · a, φ(k)]) (N1 Sec. 2.1 "action encoder"),
    every W embodiment-specific, φ the sinusoidal code of the time bucket k."""

    def __init__(self, num_categories: int, action_dim: int, width: int):
        super().__init__()
        self.width = width
        self.W1 = CategorySpecificLinear(num_categories, action_dim, width)
        self.W2 = CategorySpecificLinear(num_categories, 2 * width, width)
        self.W3 = CategorySpecificLinear(num_categories, width, width)

    def forward(self, actions: Tensor, buckets: Tensor, embodiment: Tensor) -> Tensor:
        a = self.W1(actions, embodiment)
        tau = sinusoidal_encoding(buckets[:, None].expand(-1, actions.shape[1]), self.width).to(a.dtype)
        return self.W3(F.silu(self.W2(torch.cat([a, tau], dim=-1), embodiment)), embodiment)


# ------------------------------------------------------------------------------------------------------------ DiT
class AdaLayerNorm(nn.Module):
    """LayerNorm(x)·(1 + scale) + shift, (scale, shift) = Linear(silu(temb)) (release `AdaLayerNorm`). Written here:
    diffusers' AdaLayerNorm splits a batched temb along the batch axis (chunk_dim=0) or in (shift, scale) order."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=False)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class BasicTransformerBlock(nn.Module):
    """Pre-norm attention + GELU-tanh feed-forward, each a residual branch (release `BasicTransformerBlock`).

    One attention per block: cross-attention to `context` when the block was built with `context_dim`, else
    self-attention. In the DiT the first norm is adaptive (time-conditioned) and the second has no affine
    parameters; over the VL tokens both are plain affine LayerNorms. No attention mask: N1.5 attends to padding.
    """

    def __init__(self, dim: int, size: TransformerSize, context_dim: int | None = None, adaptive: bool = False):
        super().__init__()
        self.norm1 = AdaLayerNorm(dim) if adaptive else nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(query_dim=dim, cross_attention_dim=context_dim, heads=size.num_heads,
                               dim_head=size.head_dim, dropout=size.dropout, bias=True, out_bias=True)
        self.final_dropout = nn.Dropout(size.dropout)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=not adaptive)
        self.ff = FeedForward(dim, dropout=size.dropout, activation_fn="gelu-approximate", final_dropout=True)

    def forward(self, x: Tensor, context: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        h = self.norm1(x, temb) if temb is not None else self.norm1(x)
        x = x + self.final_dropout(self.attn1(h, encoder_hidden_states=context))
        return x + self.ff(self.norm3(x))


class TimestepEncoder(nn.Module):
    """temb = MLP(sinusoid(k)) with diffusers' `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)` and
    `TimestepEmbedding` (linear → SiLU → linear), as the release's DiT."""

    def __init__(self, dim: int):
        super().__init__()
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=dim)

    def forward(self, buckets: Tensor) -> Tensor:
        return self.timestep_embedder(self.time_proj(buckets).to(self.timestep_embedder.linear_1.weight.dtype))


class DiT(nn.Module):
    """The diffusion transformer of System 1 (N1 Sec. 2.1; release `DiT` with `interleave_self_attention`): block i
    cross-attends to the VL tokens when i is even and self-attends over the state/future/action tokens when i is odd;
    every block's first norm is AdaLN on the time embedding; the output passes an AdaLN (shift, scale) and a linear
    layer to `output_dim`."""

    def __init__(self, size: TransformerSize, context_dim: int, output_dim: int):
        super().__init__()
        dim = size.num_heads * size.head_dim
        self.timestep_encoder = TimestepEncoder(dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(dim, size, context_dim if i % 2 == 0 else None, adaptive=True)
            for i in range(size.num_layers))
        self.norm_out = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, output_dim)

    def forward(self, x: Tensor, context: Tensor, buckets: Tensor) -> Tensor:
        temb = self.timestep_encoder(buckets)
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, context if i % 2 == 0 else None, temb)
        shift, scale = self.proj_out_1(F.silu(temb)).chunk(2, dim=1)  # (shift, scale): the opposite of AdaLayerNorm
        return self.proj_out_2(self.norm_out(x) * (1 + scale[:, None]) + shift[:, None])


class SelfAttentionTransformer(nn.Module):
    """Self-attention blocks over the VL tokens (release `SelfAttentionTransformer`, N1.5's "VL adapter")."""

    def __init__(self, size: TransformerSize):
        super().__init__()
        dim = size.num_heads * size.head_dim
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(dim, size) for _ in range(size.num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.transformer_blocks:
            x = block(x)
        return x


# -------------------------------------------------------------------------------------------------- action head
class FlowMatchingActionHead(nn.Module):
    """System 1 on model-ready tensors. vl: (B, L, V) backbone features; state: (B, 1, max_state_dim);
    actions/noise: (B, H, max_action_dim); action_mask: (B, H, max_action_dim) (True = a real action dimension);
    t: (B,); embodiment: (B,) slot ids."""

    def __init__(self, cfg: Gr00tConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.dit.num_heads * cfg.dit.head_dim  # the DiT's token width (the release's input_embedding_dim)
        vl_width = cfg.vl_self_attention.num_heads * cfg.vl_self_attention.head_dim
        if vl_width != cfg.llm.hidden_size:
            raise ValueError(f"the VL self-attention is {vl_width} wide (heads × head_dim) but the backbone features "
                             f"are {cfg.llm.hidden_size}")
        e = cfg.num_embodiments
        self.model = DiT(cfg.dit, context_dim=vl_width, output_dim=cfg.hidden_size)
        self.state_encoder = CategorySpecificMLP(e, cfg.max_state_dim, cfg.hidden_size, width)
        self.action_encoder = MultiEmbodimentActionEncoder(e, cfg.max_action_dim, width)
        self.action_decoder = CategorySpecificMLP(e, cfg.hidden_size, cfg.hidden_size, cfg.max_action_dim)
        if cfg.num_future_tokens > 0:
            self.future_tokens = nn.Embedding(cfg.num_future_tokens, width)
            nn.init.normal_(self.future_tokens.weight, std=0.02)
        self.vlln = nn.LayerNorm(vl_width)
        self.vl_self_attention = SelfAttentionTransformer(cfg.vl_self_attention)
        self.position_embedding = nn.Embedding(cfg.max_seq_len, width)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    def process_backbone_output(self, features: Tensor) -> Tensor:
        return self.vl_self_attention(self.vlln(features))

    def velocity(self, vl: Tensor, state_tokens: Tensor, x_t: Tensor, buckets: Tensor, embodiment: Tensor) -> Tensor:
        """v_θ(x_t): the DiT over [state, future tokens, action tokens]; the last H outputs, decoded."""
        b, h = x_t.shape[:2]
        actions = self.action_encoder(x_t, buckets, embodiment) + self.position_embedding.weight[:h]
        parts = [state_tokens, actions]
        if self.cfg.num_future_tokens > 0:
            parts.insert(1, self.future_tokens.weight[None].expand(b, -1, -1))
        out = self.model(torch.cat(parts, dim=1), vl, buckets)
        return self.action_decoder(out[:, -h:], embodiment)  # the release decodes every token, then keeps the last H

    def forward(self, vl: Tensor, state: Tensor, actions: Tensor, action_mask: Tensor, noise: Tensor, t: Tensor,
                embodiment: Tensor) -> Tensor:
        """The flow-matching loss (N1 Eq. 2): x_t = (1 − t)·ε + t·a, target a − ε; ‖v_θ(x_t, k) − (a − ε)‖² summed
        over the real action dimensions of the whole batch and divided by their number (the release's reduction)."""
        vl = self.process_backbone_output(vl)
        state_tokens = self.state_encoder(state, embodiment)
        tt = t[:, None, None]
        x_t = (1 - tt) * noise + tt * actions
        v = self.velocity(vl, state_tokens, x_t, time_buckets(t, self.cfg.num_timestep_buckets), embodiment)
        mask = action_mask.to(v.dtype)
        return ((v - (actions - noise)).pow(2) * mask).sum() / mask.sum()

    @torch.no_grad()
    def sample_actions(self, vl: Tensor, state: Tensor, noise: Tensor, embodiment: Tensor,
                       num_steps: int | None = None) -> Tensor:
        """Euler integration from t = 0 (noise) to t = 1: x ← x + v_θ(x, ⌊1000·i/n⌋)/n, i = 0 … n − 1 (release
        `get_action`; n = 4). The VL tokens and the state token are computed once; the steps run through
        `fast_sampling.EulerSteps`, the same maths as `velocity` with what the steps share computed once."""
        from .fast_sampling import EulerSteps  # here: that module reads this one
        n = num_steps or self.cfg.num_inference_steps
        buckets = [int(i / n * self.cfg.num_timestep_buckets) for i in range(n)]
        steps = EulerSteps(self, self.process_backbone_output(vl), self.state_encoder(state, embodiment), embodiment,
                           buckets)
        x = noise
        for i in range(n):
            x = x + steps.velocity(x, i) / n
        return x

    @torch.no_grad()
    def sample_actions_plain(self, vl: Tensor, state: Tensor, noise: Tensor, embodiment: Tensor,
                             num_steps: int | None = None) -> Tensor:
        """The same integration through `velocity` (the reference the fast path is tested against)."""
        n = num_steps or self.cfg.num_inference_steps
        vl = self.process_backbone_output(vl)
        state_tokens = self.state_encoder(state, embodiment)
        x = noise
        for i in range(n):
            buckets = torch.full((noise.shape[0],), int(i / n * self.cfg.num_timestep_buckets), device=noise.device)
            x = x + self.velocity(vl, state_tokens, x, buckets, embodiment) / n
        return x


# ----------------------------------------------------------------------------------------------------- backbone
def qwen3_config(cfg: Gr00tConfig) -> Qwen3Config:
    q = cfg.llm
    return Qwen3Config(hidden_size=q.hidden_size, intermediate_size=q.intermediate_size,
                       num_hidden_layers=cfg.select_layer, num_attention_heads=q.num_attention_heads,
                       num_key_value_heads=q.num_key_value_heads, head_dim=q.head_dim, rope_theta=q.rope_theta,
                       vocab_size=q.vocab_size, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       max_position_embeddings=40960)


class EagleBackbone(nn.Module):
    """System 2 (release `EagleBackbone` around Eagle 2.5-VL): SigLIP patches → `mlp1` (one linear layer, no pixel
    shuffle) → placed at the image-placeholder positions of the prompt → the first `select_layer` Qwen3 layers
    (causal) → the final RMSNorm. The release deletes the layers above `select_layer`; so do we (we never build
    them). Its LM head is tied to the embeddings and unused: not built."""

    def __init__(self, cfg: Gr00tConfig):
        super().__init__()
        self.vision_model = siglip_vision_tower("tiny", image_size=cfg.image_size, **vars(cfg.vision))
        self.mlp1 = nn.Sequential(nn.Linear(cfg.vision.hidden_size, cfg.llm.hidden_size))
        self.language_model = Qwen3Model(qwen3_config(cfg))
        self.vision_model.requires_grad_(cfg.tune_visual)
        self.mlp1.requires_grad_(cfg.tune_visual)
        self.language_model.requires_grad_(cfg.tune_llm)
        self.frozen = [m for m, tuned in ((self.vision_model, cfg.tune_visual), (self.language_model, cfg.tune_llm))
                       if not tuned]

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (release `set_frozen_modules_to_eval_mode`)."""
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, images: list[Tensor], input_ids: Tensor, attention_mask: Tensor, image_mask: Tensor) -> Tensor:
        """images: per camera (B, 3, S, S) in [−1, 1]; input_ids/attention_mask (B, L); image_mask (B, L): True at
        the image placeholders, which take the cameras' patch features in order. Returns (B, L, llm width)."""
        patches = torch.cat([self.vision_model(pixel_values=img).last_hidden_state for img in images], dim=1)
        vit = self.mlp1(patches)
        embeds = self.language_model.embed_tokens(input_ids)
        embeds = embeds.masked_scatter(image_mask[..., None], vit.to(embeds.dtype))  # row-major, as the release
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state


class GR00T(nn.Module):
    """GR00T N1.5 on model-ready tensors: `backbone` (System 2) and `action_head` (System 1)."""

    def __init__(self, cfg: Gr00tConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = EagleBackbone(cfg)
        self.action_head = FlowMatchingActionHead(cfg)

    def forward(self, images, input_ids, attention_mask, image_mask, state, actions, action_mask, noise, t,
                embodiment) -> Tensor:
        vl = self.backbone(images, input_ids, attention_mask, image_mask)
        return self.action_head(vl, state, actions, action_mask, noise, t, embodiment)

    @torch.no_grad()
    def sample_actions(self, images, input_ids, attention_mask, image_mask, state, noise, embodiment) -> Tensor:
        vl = self.backbone(images, input_ids, attention_mask, image_mask)
        return self.action_head.sample_actions(vl, state, noise, embodiment)


# ------------------------------------------------------------------------------------- the official checkpoint layout
# Release names (nvidia/GR00T-N1.5-3B `model.safetensors`; LeRobot adds `_groot_model.`) → ours. The action head's
# names are the release's own; the backbone drops Eagle's wrapper levels.
_EAGLE = r"backbone\.eagle_model\."
OFFICIAL_TO_OURS = [
    (_EAGLE + r"vision_model\.vision_model\.(.+)", r"backbone.vision_model.\1"),
    (_EAGLE + r"mlp1\.(.+)", r"backbone.mlp1.\1"),
    (_EAGLE + r"language_model\.model\.(.+)", r"backbone.language_model.\1"),
    (_EAGLE + r"language_model\.lm_head\.weight", "backbone.language_model.embed_tokens.weight"),  # tied
    (r"(action_head\..+)", r"\1"),
]


def official_key_to_ours(key: str) -> str:
    key = key.removeprefix("_groot_model.")
    for pattern, target in OFFICIAL_TO_OURS:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    raise KeyError(f"unknown key in the GR00T N1.5 layout: {key!r}")


def to_official_state_dict(model: GR00T) -> dict[str, Tensor]:
    """Our weights under the release's names (the inverse of `official_key_to_ours`; embeddings stored once)."""
    inverse = [(r"backbone\.vision_model\.(.+)", r"backbone.eagle_model.vision_model.vision_model.\1"),
               (r"backbone\.mlp1\.(.+)", r"backbone.eagle_model.mlp1.\1"),
               (r"backbone\.language_model\.(.+)", r"backbone.eagle_model.language_model.model.\1")]
    out = {}
    for key, value in model.state_dict().items():
        out[next((re.sub(p, t, key) for p, t in inverse if re.fullmatch(p, key)), key)] = value
    return out


def load_official_state_dict(model: GR00T, state_dict: Mapping[str, Tensor]) -> None:
    """Load a release/LeRobot N1.5 state dict (fp32 or bf16) into `model`; every one of our tensors must be covered
    and every shape must agree."""
    ours = {official_key_to_ours(k): v for k, v in state_dict.items()}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise KeyError(f"checkpoint does not match this config: missing {missing[:6]}, unexpected {unexpected[:6]}")
    for name, value in ours.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} != model {tuple(expected[name].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()})


# ----------------------------------------------------------------------------------------------------------- policy
def min_max_normalizer(cfg: Gr00tConfig, stats: Mapping) -> Normalizer:
    """The release's `min_max` mode, 2·(x − min)/(max − min) − 1, for the state and the actions: common's quantile
    mode with the minimum and maximum in place of the 1st and 99th percentiles. (Where min = max the release writes
    0 and this gives −1; no Meta-World dimension is constant.)"""
    keys = (cfg.state_key, "action")
    bounds = {k: {**stats[k], "q01": stats[k]["min"], "q99": stats[k]["max"]} for k in keys}
    return Normalizer(bounds, {k: "quantile" for k in keys})


def crop_and_resize(images: Tensor, size: int, scale: float, offsets: Tensor | None) -> Tensor:
    """(B, 3, H, W) in [0, 1] → (B, 3, size, size): a crop of `scale` of each side — at `offsets` (2, B) fractions
    in [0, 1] during training, centred at evaluation (release `VideoCrop`) — then a bilinear antialiased resize
    (release `VideoResize`)."""
    h, w = images.shape[-2:]
    ch, cw = int(h * scale), int(w * scale)
    if offsets is None:
        offsets = torch.full((2, images.shape[0]), 0.5)
    tops = (offsets[0] * (h - ch)).round().long().tolist()
    lefts = (offsets[1] * (w - cw)).round().long().tolist()
    crops = torch.stack([img[:, y:y + ch, x:x + cw] for img, y, x in zip(images, tops, lefts)])
    return F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


JITTER = (0.3, 0.4, 0.5, 0.08)  # the release's VideoColorJitter: brightness, contrast, saturation, hue


def color_jitter(images: Tensor, draws: Tensor) -> Tensor:
    """The release's `VideoColorJitter` (torchvision's ColorJitter(0.3, 0.4, 0.5, 0.08)) on (B, 3, S, S) images in
    [0, 1], with its random numbers given: `draws` (B, 8) holds four uniform u in [0, 1) and a permutation of 0..3,
    the order of the operations. Brightness, contrast and saturation factors are 1 + j·(2u − 1), the hue shift
    0.08·(2u − 1), each image its own, as torchvision draws them per call. A loop over the batch: torchvision's
    adjustments take one factor per call."""
    from torchvision.transforms.v2 import functional as TF
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for image, d in zip(images, draws):
        factors = [1 + j * (2 * u - 1) for j, u in zip(JITTER[:3], d[:3].tolist())] + [JITTER[3] * (2 * d[3].item() - 1)]
        for op in d[4:].long().tolist():
            image = adjust[op](image, factors[op])
        out.append(image)
    return torch.stack(out)


class Gr00tPolicy(nn.Module):
    """A dataset/environment batch → model tensors → an unnormalised action chunk (the release's `GR00TTransform`
    and `Gr00tPolicy`): min-max normalisation, zero-padding of state and actions with a mask of the real action
    dimensions, images cropped, resized and mapped to [−1, 1], the prompt [image placeholders, instruction] left-padded
    (Eagle's padding side), and this robot's embodiment slot."""

    def __init__(self, cfg: Gr00tConfig, stats: Mapping, tokenizer, state_dim: int, action_dim: int):
        super().__init__()
        if state_dim > cfg.max_state_dim or action_dim > cfg.max_action_dim:
            raise ValueError(f"state {state_dim}-D / action {action_dim}-D exceed max_state_dim "
                             f"{cfg.max_state_dim} / max_action_dim {cfg.max_action_dim}")
        if len(tokenizer) > cfg.llm.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM's vocabulary is "
                             f"{cfg.llm.vocab_size}")
        if not 0 <= cfg.embodiment_id < cfg.num_embodiments:
            raise ValueError(f"embodiment_id {cfg.embodiment_id} is not one of the {cfg.num_embodiments} slots")
        self.cfg, self.tokenizer, self.state_dim, self.action_dim = cfg, tokenizer, state_dim, action_dim
        self.image_keys = [IMAGE_KEY.format(camera=c) for c in cfg.cameras]
        self.image_tokens = (cfg.image_size // cfg.vision.patch_size) ** 2
        self.normalizer = min_max_normalizer(cfg, stats)
        self.model = GR00T(cfg)
        self.modality: ModalitySpec | None = None  # the embodiment's spec when it was trained on one (its
        #                                            checkpoint holds it): ClosedLoopPolicy maps the robot through it

    @property
    def device(self) -> torch.device:
        return self.model.action_head.position_embedding.weight.device

    def inputs(self, batch: Mapping, crop: Tensor | None = None, jitter: Tensor | None = None):
        """images, input_ids, attention_mask, image_mask, padded state (B, 1, max_state_dim), embodiment ids.
        `crop`: (2, B) crop offsets in [0, 1] (training) or None (centre crop); `jitter`: (B, cameras, 8) colour
        jitter draws (`color_jitter`; training with cfg.color_jitter) or None."""
        cfg, device = self.cfg, self.device
        images = [crop_and_resize(batch[k].to(device).permute(0, 3, 1, 2).float() / 255, cfg.image_size,
                                  cfg.crop_scale, crop) for k in self.image_keys]
        if jitter is not None:
            images = [color_jitter(image, jitter[:, i]) for i, image in enumerate(images)]
        images = [image * 2 - 1 for image in images]
        b = images[0].shape[0]
        # Eagle never truncates: an instruction longer than max_text_tokens (a paraphrase unseen in training, whose
        # words our BPE splits finely) widens the batch instead of being cut
        longest = max(len(ids) for ids in self.tokenizer(list(batch["instruction"]))["input_ids"])
        text = tokenize(self.tokenizer, batch["instruction"], max(cfg.max_text_tokens, longest))
        n_img = self.image_tokens * len(images)
        ids = torch.cat([torch.full((b, n_img), self.tokenizer.pad_token_id), text["input_ids"]], dim=1)
        valid = torch.cat([torch.ones(b, n_img, dtype=torch.bool), text["attention_mask"].bool()], dim=1)
        is_image = torch.cat([torch.ones(b, n_img, dtype=torch.bool), torch.zeros_like(text["attention_mask"],
                                                                                     dtype=torch.bool)], dim=1)
        order = torch.argsort(valid.int(), dim=1, stable=True)  # left padding: the padding first, order kept
        ids, valid, is_image = (x.gather(1, order).to(device) for x in (ids, valid, is_image))
        state = self.normalizer.normalize(cfg.state_key, batch[cfg.state_key].to(device).float())
        state = F.pad(state, (0, cfg.max_state_dim - self.state_dim))[:, None]
        embodiment = torch.full((b,), cfg.embodiment_id, dtype=torch.long, device=device)
        return images, ids, valid.long(), is_image, state, embodiment

    def forward(self, batch: Mapping, noise: Tensor, t: Tensor, crop: Tensor | None = None,
                jitter: Tensor | None = None) -> Tensor:
        """The training loss of a batch for given noise ε (B, H, max_action_dim) and t (B,). As in the release,
        chunk steps past an episode's end (the last action repeated) are learned like any other."""
        actions = self.normalizer.normalize("action", batch["action"].to(noise.device).float())
        actions = F.pad(actions, (0, self.cfg.max_action_dim - self.action_dim))
        action_mask = torch.zeros_like(actions, dtype=torch.bool)
        action_mask[..., :self.action_dim] = True
        images, ids, mask, is_image, state, embodiment = self.inputs(batch, crop, jitter)
        return self.model(images, ids, mask, is_image, state, actions, action_mask, noise, t, embodiment)

    @torch.no_grad()
    def predict_chunk(self, batch: Mapping, noise: Tensor | None = None) -> Tensor:
        """(B, H, action_dim) actions in the dataset's units."""
        images, ids, mask, is_image, state, embodiment = self.inputs(batch)
        if noise is None:
            noise = torch.randn(ids.shape[0], self.cfg.horizon, self.cfg.max_action_dim, device=ids.device)
        actions = self.model.sample_actions(images, ids, mask, is_image, state, noise, embodiment)
        return self.normalizer.unnormalize("action", actions[..., :self.action_dim])


class ClosedLoopPolicy:
    """The interface of `common.envs.metaworld.evaluate`: observation → the first `n_action_steps` of a chunk."""

    def __init__(self, policy: Gr00tPolicy):
        self.policy = policy.eval()

    @torch.no_grad()
    def __call__(self, obs: dict) -> np.ndarray:
        policy, spec = self.policy, self.policy.modality
        features = to_features(obs)
        if spec is not None:  # the robot's observation as the embodiment's spec sees it
            features = spec.observation(features, policy.cfg.state_key)
        batch = {k: torch.as_tensor(np.asarray(features[k]))[None] for k in (*policy.image_keys, policy.cfg.state_key)}
        batch["instruction"] = [obs["instruction"]]
        actions = policy.predict_chunk(batch)[0, :policy.cfg.n_action_steps].cpu().numpy()
        return actions if spec is None else spec.robot_action(actions, ACTION_DIM)
