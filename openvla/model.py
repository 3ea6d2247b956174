"""OpenVLA (Kim et al., 2024, arXiv:2406.09246) and OpenVLA-OFT (Kim et al., 2025, arXiv:2502.19645).

A Prismatic VLM (Karamcheti et al., 2024): the image goes through DINOv2 and SigLIP side by side, their patch
features are concatenated per patch and projected by an MLP into the embedding space of a Llama-2 decoder, which
reads [BOS, image patches, prompt].

- **OpenVLA** predicts one action as `action_dim` ordinary tokens: each dimension, normalised to [-1, 1] by the
  1st/99th percentiles, is discretised into one of 256 bins, and a bin is one of the last 256 token ids of the
  vocabulary (OpenVLA Sec. 3.2). Training is next-token cross-entropy on those tokens; inference decodes them
  greedily, one per dimension, with a key/value cache.
- **OpenVLA-OFT** predicts a chunk of K actions in one pass (OFT Sec. 4): K·action_dim *empty* action embeddings
  (zeros) follow the prompt and attend to each other bidirectionally; their final hidden states go through an MLP
  (the L1 regression head) to continuous actions, trained with an L1 loss. The robot state enters as one token
  (the proprio projector) and, in OFT+, FiLM modulates the vision features with the language embedding.

Reading order: `OpenVLA.forward` (the losses), `OpenVLA.predict_action_tokens` / `OpenVLA.predict_chunk` (the two
decoders), then the pieces they use. `OpenVLAPolicy` at the end owns normalisation, images and the prompt.
Written by reading the official code (openvla/openvla `prismatic/`, moojink/openvla-oft `prismatic/`); see README for
what the tests compare (the action tokenizer's formulas, the Llama layers against transformers' `LlamaForCausalLM`,
the checkpoint layout) and what they do not (no output of the official modeling code).
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from common.data import Normalizer
from common.encoders import PrismaticFusedBackbone, openvla_vision_key_map
from common.envs.metaworld import IMAGE_KEY, to_features

from .config import LlamaSize, OpenVLAConfig

MASK_VALUE = torch.finfo(torch.float32).min / 2  # additive mask: finite, so a padding row (all masked) stays finite


# ------------------------------------------------------------------------------------------------- action tokenizer
class ActionTokenizer:
    """OpenVLA's action tokenizer (`prismatic/vla/action_tokenizer.py`, Sec. 3.2).

    `bins` = 256 uniformly spaced edges over [-1, 1]; an action value a (already normalised to [-1, 1]) becomes
    d = digitize(clip(a, -1, 1), bins) ∈ [1, 256] and the token `text_vocab - d`, i.e. one of the last 256 ids of the
    tokenizer's vocabulary. Decoding maps a token back to the centre of its bin; there are 255 centres between 256
    edges, so the top bin (d = 256, only a = 1 exactly) decodes to the last centre, as in the official code.
    """

    def __init__(self, text_vocab: int, n_bins: int = 256):
        self.text_vocab, self.n_bins = text_vocab, n_bins
        self.bins = torch.linspace(-1.0, 1.0, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2

    def encode(self, actions: Tensor) -> Tensor:
        """Normalised actions (..., A) → token ids (..., A). `bucketize(right=True)` is `np.digitize`."""
        digitized = torch.bucketize(actions.clamp(-1, 1), self.bins.to(actions.device), right=True)
        return self.text_vocab - digitized

    def decode(self, tokens: Tensor) -> Tensor:
        """Token ids (..., A) → normalised actions (..., A); a non-action token is clipped to the nearest end bin."""
        index = (self.text_vocab - tokens - 1).clamp(0, self.n_bins - 2)
        return self.bin_centers.to(tokens.device)[index]


# ------------------------------------------------------------------------------------------------ attention mask
def block_attention_mask(valid: Tensor, block_start: Tensor) -> Tensor:
    """Token i attends to token j iff both are real and j's block is not later than i's (blocks: cumsum of
    `block_start`). A causal LM is every token its own block; OFT's action tokens share one block, so they see
    each other (bidirectional) and everything before them. Returns the additive (B, 1, L, L) float mask."""
    block = torch.cumsum(block_start.long(), dim=1)
    allowed = (block[:, None, :] <= block[:, :, None]) & valid[:, None, :] & valid[:, :, None]
    return torch.where(allowed[:, None], 0.0, MASK_VALUE)


# -------------------------------------------------------------------------------------------------------- Llama-2
def llama_config(size: LlamaSize, vocab_size: int) -> LlamaConfig:
    return LlamaConfig(hidden_size=size.width, intermediate_size=size.mlp_dim, num_hidden_layers=size.depth,
                       num_attention_heads=size.num_heads, num_key_value_heads=size.num_kv_heads,
                       rope_theta=size.rope_theta, rms_norm_eps=size.rms_eps, vocab_size=vocab_size,
                       hidden_act="silu", attention_bias=False, mlp_bias=False)


class LlamaLayer(nn.Module):
    """One Llama decoder layer, pre-norm attention + SwiGLU MLP, with HF's parameter names.

    Written around `scaled_dot_product_attention` rather than using `LlamaDecoderLayer` so that one module takes a
    block mask (OFT's bidirectional action block) and a plain list-of-tensors key/value cache; the norms, MLP and
    rotary embedding are transformers' own (`tests/test_openvla.py` checks the whole decoder against
    `LlamaForCausalLM` with the same weights).
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        width = config.hidden_size
        self.input_layernorm = LlamaRMSNorm(width, eps=config.rms_norm_eps)
        self.self_attn = nn.ModuleDict(dict(
            q_proj=nn.Linear(width, self.num_heads * self.head_dim, bias=False),
            k_proj=nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False),
            v_proj=nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False),
            o_proj=nn.Linear(self.num_heads * self.head_dim, width, bias=False)))
        self.post_attention_layernorm = LlamaRMSNorm(width, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)  # down(silu(gate(x)) · up(x))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor,
                past_kv: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`past_kv`: the rotated keys/values of earlier tokens. Returns the output and the keys/values so far."""
        b, n, _ = x.shape
        h = self.input_layernorm(x)
        q = self.self_attn.q_proj(h).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.self_attn.k_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.self_attn.v_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rope)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype),
                                              enable_gqa=self.num_kv_heads != self.num_heads)
        x = x + self.self_attn.o_proj(attn.transpose(1, 2).flatten(2))
        return x + self.mlp(self.post_attention_layernorm(x)), (k, v)


# ---------------------------------------------------------------------------------------------------- projectors
class FusedMLPProjector(nn.Module):
    """Prismatic's projector for a fused backbone (`projectors.py` FusedMLPProjector; OpenVLA's `PrismaticProjector`
    with `use_fused_vision_backbone`): fc1 (vision → 4·vision), GELU, fc2 (→ LLM width), GELU, fc3 (→ LLM width)."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, patches: Tensor) -> Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(patches)))))


class ProprioProjector(nn.Module):
    """OFT's proprio projector (`projectors.py` ProprioProjector): fc1 (state → LLM width), GELU, fc2; its output is
    one token placed after the image patches."""

    def __init__(self, state_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(state_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, state: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(state)))


class MLPResNetBlock(nn.Module):
    """x + ReLU(Linear(LayerNorm(x))) (OFT `action_heads.py` MLPResNetBlock, `ffn` = [LayerNorm, Linear, ReLU])."""

    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ffn(x)


class L1RegressionActionHead(nn.Module):
    """OFT's action head (`action_heads.py` L1RegressionActionHead → MLPResNet with 2 blocks): the final hidden states
    of one action's A slots, concatenated (A·width), → LayerNorm → fc1 → ReLU → 2 residual blocks → LayerNorm → fc2
    → the A action values. Applied to every action of the chunk."""

    def __init__(self, llm_dim: int, action_dim: int, num_blocks: int = 2):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(llm_dim * action_dim)
        self.fc1 = nn.Linear(llm_dim * action_dim, llm_dim)
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(llm_dim) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(llm_dim)
        self.fc2 = nn.Linear(llm_dim, action_dim)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, K·A, width) → (B, K, A)."""
        b, n, d = hidden.shape
        x = F.relu(self.fc1(self.layer_norm1(hidden.reshape(b, -1, self.fc2.out_features * d))))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class FiLM(nn.Module):
    """OFT+'s FiLM for one ViT (`film_vit_wrapper.py`): in every block, between the attention and the MLP residual
    branches, x ← x·(1 + γ) + β, with γ = scale(c), β = shift(c) and c the mean language embedding (OFT Sec. 5)."""

    def __init__(self, llm_dim: int, vit_dim: int, depth: int):
        super().__init__()
        self.scale = nn.ModuleList(nn.Linear(llm_dim, vit_dim) for _ in range(depth))
        self.shift = nn.ModuleList(nn.Linear(llm_dim, vit_dim) for _ in range(depth))

    def forward(self, vit, x: Tensor, language: Tensor) -> Tensor:
        """The patch tokens after the second-to-last block of timm ViT `vit` (Prismatic's feature layer), FiLM-ed.
        Re-traces `VisionTransformer.get_intermediate_layers` with the modulation inside each block."""
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for i, block in enumerate(vit.blocks[:len(vit.blocks) - 1]):
            x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
            x = x * (1 + self.scale[i](language)[:, None]) + self.shift[i](language)[:, None]
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x[:, vit.num_prefix_tokens:]


# --------------------------------------------------------------------------------------------------------- model
class OpenVLA(nn.Module):
    """OpenVLA or OpenVLA-OFT (by `cfg.variant`) on model-ready tensors; `OpenVLAPolicy` below normalises, resizes and
    tokenises.

    pixel_values: (B, 6·N, S, S), N images each DINOv2- then SigLIP-normalised (`PrismaticFusedBackbone.normalize`); prompt_ids:
    (B, T) = [BOS, padding…, prompt tokens] (the prompt left-padded after BOS, so every sequence ends at the same
    index); prompt_valid: (B, T) bool; state: (B, state_dim) normalised, read by OFT with `use_proprio`.
    """

    def __init__(self, cfg: OpenVLAConfig, action_dim: int, state_dim: int = 0, eos_id: int = 2):
        super().__init__()
        self.cfg, self.action_dim, self.eos_id = cfg, action_dim, eos_id
        self.oft = cfg.variant == "oft"
        config = llama_config(cfg.llm, cfg.vocab_size)
        width = cfg.llm.width
        # Prismatic: fused DINOv2 + SigLIP patch features → MLP projector → Llama-2 (OpenVLA Sec. 3.1)
        self.vision_backbone = PrismaticFusedBackbone(cfg.vision, cfg.image_size)
        self.projector = FusedMLPProjector(self.vision_backbone.embed_dim, width)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, width)
        self.layers = nn.ModuleList(LlamaLayer(config) for _ in range(cfg.llm.depth))
        self.norm = LlamaRMSNorm(width, eps=cfg.llm.rms_eps)
        self.rope = LlamaRotaryEmbedding(config)
        if not self.oft:
            self.lm_head = nn.Linear(width, cfg.vocab_size, bias=False)  # untied, as Llama-2
            return
        self.action_head = L1RegressionActionHead(width, action_dim)
        self.proprio_projector = ProprioProjector(state_dim, width) if cfg.use_proprio else None
        if cfg.use_film:
            dino, siglip = self.vision_backbone.featurizer, self.vision_backbone.fused_featurizer
            self.film_dino = FiLM(width, dino.embed_dim, len(dino.blocks) - 1)
            self.film_siglip = FiLM(width, siglip.embed_dim, len(siglip.blocks) - 1)

    # ------------------------------------------------------------------------------------------------ the sequence
    def image_tokens(self, pixel_values: Tensor, language: Tensor | None = None) -> Tensor:
        """Projected patch features (B, N·P, width) of N images stacked on the channel dim, 6 channels each (OFT's
        `num_images_in_input`: each image through the fused backbone, the patches concatenated in camera order);
        with FiLM, modulated by the language embedding `language`."""
        b, n = pixel_values.shape[0], pixel_values.shape[1] // 6
        images = pixel_values.unflatten(1, (n, 6)).transpose(0, 1).flatten(0, 1)  # (N·B, 6, S, S): one backbone pass
        if language is None or not self.cfg.use_film:
            patches = self.vision_backbone(images)
        else:
            dino, siglip = torch.split(images, [3, 3], dim=1)
            backbone, language = self.vision_backbone, language.repeat(n, 1)
            patches = torch.cat([self.film_dino(backbone.featurizer, dino, language),
                                 self.film_siglip(backbone.fused_featurizer, siglip, language)], dim=2)
        return self.projector(patches.unflatten(0, (n, b)).transpose(0, 1).flatten(1, 2))

    def prefix(self, pixel_values: Tensor, prompt_ids: Tensor, prompt_valid: Tensor, state: Tensor | None = None,
               suffix: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[BOS, image patches, (proprio token), prompt, suffix] embeddings and their validity.

        OpenVLA inserts the patches right after BOS (`modeling_prismatic.py`); OFT puts the proprio token after the
        patches. FiLM's language embedding is the mean input embedding of the real text tokens (suffix included).
        """
        text = self.embed_tokens(prompt_ids)
        language = None
        if self.oft and self.cfg.use_film:
            weights = prompt_valid.to(text.dtype)[..., None]
            total, count = (text * weights).sum(1), weights.sum(1)
            if suffix is not None:
                total, count = total + suffix.sum(1), count + suffix.shape[1]
            language = total / count
        images = self.image_tokens(pixel_values, language)
        parts = [text[:, :1], images]
        if self.oft and self.proprio_projector is not None:
            parts.append(self.proprio_projector(state)[:, None])
        parts.append(text[:, 1:])
        n_extra = sum(p.shape[1] for p in parts[1:-1])
        valid = torch.cat([prompt_valid[:, :1], prompt_valid.new_ones(prompt_valid.shape[0], n_extra),
                           prompt_valid[:, 1:]], dim=1)
        return torch.cat(parts, dim=1), valid

    def decoder(self, x: Tensor, valid: Tensor, causal: bool) -> Tensor:
        """The Llama layers and final norm over a whole sequence. RoPE positions are `cumsum(valid) − 1`, so the
        padding inside the prompt neither advances positions nor is attended to: each row computes what it would
        unpadded."""
        start = torch.ones_like(valid, dtype=torch.long) if causal else torch.zeros_like(valid, dtype=torch.long)
        mask = block_attention_mask(valid, start)
        rope = self.rope(x, torch.cumsum(valid.long(), dim=1) - 1)
        for layer in self.layers:
            x, _ = layer(x, rope, mask)
        return self.norm(x)

    # ---------------------------------------------------------------------------------------- OpenVLA: tokens
    def forward(self, pixel_values: Tensor, prompt_ids: Tensor, prompt_valid: Tensor, action_tokens: Tensor) -> Tensor:
        """OpenVLA's training pass (teacher forcing): the logits (B, A, vocab) that predict each action token from
        the tokens before it; the cross-entropy over them is the loss (OpenVLA Sec. 3.2)."""
        return self.lm_head(self.token_states(pixel_values, prompt_ids, prompt_valid, action_tokens))

    def token_states(self, pixel_values: Tensor, prompt_ids: Tensor, prompt_valid: Tensor,
                     action_tokens: Tensor) -> Tensor:
        """The final hidden states (B, A, width) at the positions that predict each action token."""
        x, valid = self.prefix(pixel_values, prompt_ids, prompt_valid)
        x = torch.cat([x, self.embed_tokens(action_tokens)], dim=1)
        valid = torch.cat([valid, valid.new_ones(action_tokens.shape)], dim=1)
        a = action_tokens.shape[1]
        return self.decoder(x, valid, causal=True)[:, -a - 1:-1]  # position i predicts token i + 1

    @torch.no_grad()
    def predict_action_tokens(self, pixel_values: Tensor, prompt_ids: Tensor, prompt_valid: Tensor,
                              choose=None) -> Tensor:
        """Greedy decoding of `action_dim` tokens with a key/value cache (OpenVLA's `predict_action` calls
        `generate(max_new_tokens=action_dim)`): the prefix once, then one token per step. (B, A) token ids.
        `choose(logits (B, 1, vocab)) -> (B, 1) ids` replaces the argmax (sampling, for RL)."""
        choose = choose or (lambda logits: logits.argmax(-1))
        x, valid = self.prefix(pixel_values, prompt_ids, prompt_valid)
        rope = self.rope(x, torch.cumsum(valid.long(), dim=1) - 1)
        mask = block_attention_mask(valid, torch.ones_like(valid, dtype=torch.long))
        cache = []
        for layer in self.layers:
            x, kv = layer(x, rope, mask)
            cache.append(kv)
        position = valid.sum(1, keepdim=True) - 1
        tokens = [choose(self.lm_head(self.norm(x[:, -1:])))]
        for _ in range(self.action_dim - 1):
            position = position + 1
            valid = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], dim=1)
            mask = torch.where(valid[:, None, None], 0.0, MASK_VALUE)  # the new token sees every real token
            x = self.embed_tokens(tokens[-1])
            rope = self.rope(x, position)
            for i, layer in enumerate(self.layers):
                x, cache[i] = layer(x, rope, mask, past_kv=cache[i])
            tokens.append(choose(self.lm_head(self.norm(x))))
        return torch.cat(tokens, dim=1)

    # ---------------------------------------------------------------------------------------- OFT: parallel chunk
    def predict_chunk(self, pixel_values: Tensor, prompt_ids: Tensor, prompt_valid: Tensor,
                      state: Tensor | None = None) -> Tensor:
        """OFT's parallel decoding (OFT Sec. 4): K·A empty (zero) action embeddings and the stop token follow the
        prompt; one pass with bidirectional attention over the whole sequence (the official Llama attention is
        patched non-causal); the final hidden states one position before each action slot, grouped per action,
        go through the L1 regression head. (B, K, A) normalised actions; also the training forward pass."""
        return self.action_head(self.chunk_states(pixel_values, prompt_ids, prompt_valid, state))

    def chunk_states(self, pixel_values: Tensor, prompt_ids: Tensor, prompt_valid: Tensor,
                     state: Tensor | None = None) -> Tensor:
        """OFT: the final hidden states (B, K·A, width) one position before each action slot."""
        b, n = prompt_ids.shape[0], self.cfg.horizon * self.action_dim
        slots = self.embed_tokens.weight.new_zeros(b, n, self.cfg.llm.width)
        stop = self.embed_tokens(prompt_ids.new_full((b, 1), self.eos_id))
        x, valid = self.prefix(pixel_values, prompt_ids, prompt_valid, state, suffix=stop)
        x = torch.cat([x, slots, stop], dim=1)
        valid = torch.cat([valid, valid.new_ones(b, n + 1)], dim=1)
        return self.decoder(x, valid, causal=False)[:, -n - 2:-2]


# ------------------------------------------------------------------------------------- the official checkpoint layout
# `openvla/openvla-7b` (HF `modeling_prismatic.py`, OpenVLAForActionPrediction) onto our modules. The vision keys go
# through `common.encoders.openvla_vision_key_map` (timm layout; DINOv2's LayerScale `scale_factor` → `gamma`).
OFFICIAL_TO_OURS = [
    (r"projector\.(fc[123])\.(weight|bias)", r"projector.\1.\2"),
    (r"language_model\.model\.embed_tokens\.weight", "embed_tokens.weight"),
    (r"language_model\.model\.layers\.(\d+)\.(.+)", r"layers.\1.\2"),
    (r"language_model\.model\.norm\.weight", "norm.weight"),
    (r"language_model\.lm_head\.weight", "lm_head.weight"),
]


def official_key_to_ours(key: str) -> str:
    """Our parameter name for a key of the official OpenVLA checkpoint; KeyError for anything unknown."""
    if key.startswith("vision_backbone."):
        return "vision_backbone." + openvla_vision_key_map(key)
    for pattern, target in OFFICIAL_TO_OURS:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    raise KeyError(f"unknown key in the official OpenVLA layout: {key!r}")


def load_official_state_dict(model: OpenVLA, state_dict: Mapping[str, Tensor],
                             action_head: Mapping[str, Tensor] | None = None,
                             proprio_projector: Mapping[str, Tensor] | None = None) -> None:
    """Load OpenVLA's `model-*.safetensors` (merged into one dict) into `model`; for OFT also the separately saved
    `action_head--*.pt` and `proprio_projector--*.pt` state dicts (their DDP `module.` and the head's `model.`
    prefixes are removed). OFT never reads the LM head, so its `lm_head` is skipped. Every one of our parameters
    must be covered; a missing, unexpected or mis-shaped key is an error that names it."""
    ours = {}
    for key, value in state_dict.items():
        name = official_key_to_ours(key)
        if not (model.oft and name == "lm_head.weight"):
            ours[name] = value
    for prefix, extra in (("action_head.", action_head), ("proprio_projector.", proprio_projector)):
        for key, value in (extra or {}).items():
            ours[prefix + key.removeprefix("module.").removeprefix("model.")] = value
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise KeyError(f"official checkpoint does not match this {model.cfg.variant} config: missing {missing[:8]}"
                       f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}")
    for name, value in ours.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} != model {tuple(expected[name].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()})


def to_official_state_dict(model: OpenVLA) -> dict[str, Tensor]:
    """Our OpenVLA weights under the official names (the inverse of `official_key_to_ours`; OFT heads excluded)."""
    names = {r"vision_backbone\.(.+)": r"vision_backbone.\1", r"projector\.(.+)": r"projector.\1",
             r"embed_tokens\.weight": "language_model.model.embed_tokens.weight",
             r"layers\.(.+)": r"language_model.model.layers.\1", r"norm\.weight": "language_model.model.norm.weight",
             r"lm_head\.weight": "language_model.lm_head.weight"}
    out = {}
    for key, value in model.state_dict().items():
        new = next((re.sub(p, t, key) for p, t in names.items() if re.fullmatch(p, key)), None)
        if new is not None:
            out[new.replace(".gamma", ".scale_factor")] = value
    return out


# ----------------------------------------------------------------------------------------------------------- policy
def make_prompt(instruction: str) -> str:
    """OpenVLA's prompt (PurePromptBuilder): "In: What action should the robot take to {instruction}?\\nOut:"."""
    return f"In: What action should the robot take to {instruction.strip().lower()}?\nOut:"


def tokenize_prompts(tokenizer, prompts: list[str], length: int) -> tuple[Tensor, Tensor]:
    """[BOS, padding…, prompt] ids (B, width) and validity: left-padded after BOS, so the action tokens (OpenVLA) or
    slots (OFT) that follow sit at the same index in every row. The width is `length`, or more when a prompt needs
    it (a paraphrase unseen in training, whose words our BPE splits finely): RoPE positions skip padding, so the
    width changes no row's result, and OpenVLA itself never truncates a prompt."""
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    length = max(length, 1 + max(map(len, encoded), default=0))
    ids = torch.full((len(prompts), length), tokenizer.pad_token_id, dtype=torch.long)
    ids[:, 0] = tokenizer.bos_token_id
    valid = torch.zeros(len(prompts), length, dtype=torch.bool)
    valid[:, 0] = True
    for row, tokens in enumerate(encoded):
        if tokens:
            ids[row, -len(tokens):] = torch.tensor(tokens)
            valid[row, -len(tokens):] = True
    return ids, valid


def crop_and_resize(images: Tensor, size: int, crop_scale: float, offsets: Tensor | None) -> Tensor:
    """(B, 3, H, W) in [0, 1] → a square crop of `crop_scale` of the area → (B, 3, size, size), bicubic with
    antialiasing ("resize-naive": no padding). `offsets` (2, B) in [0, 1] place a random crop (OpenVLA's
    `random_resized_crop` with scale and ratio fixed); None takes the centre crop (OpenVLA's evaluation)."""
    h, w = images.shape[-2:]
    ch, cw = round(h * crop_scale ** 0.5), round(w * crop_scale ** 0.5)
    if offsets is None:
        tops, lefts = [(h - ch) // 2] * len(images), [(w - cw) // 2] * len(images)
    else:
        tops, lefts = (offsets[0] * (h - ch)).round().long().tolist(), (offsets[1] * (w - cw)).round().long().tolist()
    crops = torch.stack([img[:, t:t + ch, l:l + cw] for img, t, l in zip(images, tops, lefts)])
    if (ch, cw) == (size, size):
        return crops
    return F.interpolate(crops, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def bounds_q99(normalizer: Normalizer, key: str, x: Tensor) -> Tensor:
    """OpenVLA's BOUNDS_Q99 normalisation: [q01, q99] → [-1, 1], clipped; a dimension with q01 = q99 becomes 0."""
    q01, q99 = normalizer._stat(key, "q01"), normalizer._stat(key, "q99")
    return torch.where(q99 > q01, normalizer.normalize(key, x).clamp(-1, 1), 0.0)


def l1_loss(error: Tensor, action_is_pad: Tensor) -> Tensor:
    """OFT's L1 loss: |error| (B, K, A) averaged per sample over its real (unpadded) chunk steps, then over the batch
    (so a torchrun global batch's loss is the mean of its shards'). The official loader drops the last K − 1 start
    frames of an episode instead of padding; with no padding this is its `L1Loss()` mean."""
    real = (~action_is_pad).to(error.dtype)[..., None]
    return ((error * real).sum((1, 2)) / (real.sum((1, 2)) * error.shape[-1])).mean()


class OpenVLAPolicy(nn.Module):
    """A dataset/environment batch → model tensors → an unnormalised action chunk (B, K, A) (K = 1 for OpenVLA).

    Owns the prompt, the image pipeline (crop, resize, the two backbones' normalisations), BOUNDS_Q99 normalisation
    of actions (and of the OFT proprio state) with statistics stored as buffers, and the action tokenizer.
    """

    def __init__(self, cfg: OpenVLAConfig, stats: Mapping, tokenizer, state_dim: int, action_dim: int):
        super().__init__()
        if len(tokenizer) > cfg.text_vocab or cfg.text_vocab > cfg.vocab_size:
            raise ValueError(f"need len(tokenizer) {len(tokenizer)} <= text_vocab {cfg.text_vocab} <= vocab_size "
                             f"{cfg.vocab_size}")
        if cfg.tokenizer_path is None and len(tokenizer) > cfg.text_vocab - cfg.action_bins:
            raise ValueError(f"the trained tokenizer's {len(tokenizer)} tokens overlap the {cfg.action_bins} action "
                             f"tokens at the end of text_vocab {cfg.text_vocab}")
        if cfg.variant == "openvla" and cfg.horizon != 1:
            raise ValueError(f"OpenVLA predicts one action per pass (horizon 1), got horizon {cfg.horizon}")
        self.cfg, self.tokenizer, self.state_dim, self.action_dim = cfg, tokenizer, state_dim, action_dim
        self.image_keys = [IMAGE_KEY.format(camera=c) for c in cfg.cameras]
        self.normalizer = Normalizer(stats, {"action": "quantile", cfg.state_key: "quantile"})
        self.action_tokenizer = ActionTokenizer(cfg.text_vocab, cfg.action_bins)
        self.model = OpenVLA(cfg, action_dim, state_dim, tokenizer.eos_token_id)

    def inputs(self, batch: Mapping, crop_offsets: Tensor | None = None):
        """pixel_values, prompt_ids, prompt_valid, normalised state. `crop_offsets`: (2, B) in [0, 1], or None for
        the centre crop."""
        cfg = self.cfg
        device = self.model.embed_tokens.weight.device
        pixel_values = []
        for key in self.image_keys:  # every camera cropped at the same place
            img = batch[key].to(device).permute(0, 3, 1, 2).float() / 255
            img = crop_and_resize(img, cfg.image_size, cfg.crop_scale, crop_offsets)
            pixel_values.append(self.model.vision_backbone.normalize(img))
        ids, valid = tokenize_prompts(self.tokenizer, [make_prompt(t) for t in batch["instruction"]],
                                      cfg.max_text_tokens)
        state = bounds_q99(self.normalizer, cfg.state_key, batch[cfg.state_key].to(device).float())
        return torch.cat(pixel_values, dim=1), ids.to(device), valid.to(device), state

    def forward(self, batch: Mapping, crop_offsets: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss and detached metrics. OpenVLA: cross-entropy on the action tokens; OFT: L1 between the
        predicted and true normalised chunk over its real (unpadded) steps."""
        pixel_values, ids, valid, state = self.inputs(batch, crop_offsets)
        target = bounds_q99(self.normalizer, "action", batch["action"].to(ids.device).float())  # (B, K, A)
        if self.cfg.variant == "openvla":
            tokens = self.action_tokenizer.encode(target[:, 0])
            logits = self.model(pixel_values, ids, valid, tokens)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
            predicted = logits.argmax(-1)
            l1 = (self.action_tokenizer.decode(predicted) - target[:, 0]).abs().mean()
            return loss, dict(accuracy=(predicted == tokens).float().mean(), l1=l1)
        error = (self.model.predict_chunk(pixel_values, ids, valid, state) - target).abs()
        loss = l1_loss(error, batch["action_is_pad"].to(ids.device))
        return loss, dict(l1=loss.detach())

    @torch.no_grad()
    def predict_chunk(self, batch: Mapping) -> Tensor:
        """(B, K, action_dim) actions in the dataset's units."""
        pixel_values, ids, valid, state = self.inputs(batch)
        if self.cfg.variant == "openvla":
            actions = self.action_tokenizer.decode(self.model.predict_action_tokens(pixel_values, ids, valid))[:, None]
        else:
            actions = self.model.predict_chunk(pixel_values, ids, valid, state)
        return self.normalizer.unnormalize("action", actions)


class ClosedLoopPolicy:
    """The interface of `common.envs.metaworld.evaluate`: observation → the first `n_action_steps` of a chunk."""

    def __init__(self, policy: OpenVLAPolicy):
        self.policy = policy.eval()

    @torch.no_grad()
    def __call__(self, obs: dict) -> np.ndarray:
        policy = self.policy
        features = to_features(obs)
        batch = {k: torch.as_tensor(np.asarray(features[k]))[None] for k in (*policy.image_keys, policy.cfg.state_key)}
        batch["instruction"] = [obs["instruction"]]
        return policy.predict_chunk(batch)[0, :policy.cfg.n_action_steps].cpu().numpy()
