"""Vision backbones shared by several methods, built from configs (nothing is downloaded).

Each constructor takes a `preset` ("tiny" for CPU tests and training, the paper's size otherwise) and an optional
`pretrained_path`: a local checkpoint loaded through `load_local_weights`. Module names follow the official checkpoint
layouts (HF SigLIP as in PaliGemma/pi0, timm ViTs as in Prismatic/OpenVLA, torchvision ResNet) so those checkpoints load
with at most a prefix-stripping `key_map`.
"""

from __future__ import annotations

import functools

from pathlib import Path
from typing import Callable

import timm
import torch
import torchvision
import transformers
from safetensors import safe_open
from torch import nn

KeyMap = Callable[[str], "str | None"]


# --------------------------------------------------------------------------------------------------------------------
# Loading local checkpoints
# --------------------------------------------------------------------------------------------------------------------
def load_local_weights(module: nn.Module, path: str | Path, key_map: KeyMap | None = None, strict: bool = True):
    """Load a local checkpoint into `module` and return torch's `(missing_keys, unexpected_keys)`.

    `path` is a `.safetensors` file, a `.bin`/`.pt`/`.pth` file (read with `torch.load(weights_only=True)`), or a
    directory of sharded `*.safetensors` files (the HF layout of PaliGemma, pi0 and OpenVLA checkpoints).
    `key_map` renames each checkpoint key to the module's key; returning None drops the key (e.g. the language model
    when only the vision tower is wanted). With `strict`, any missing or unexpected key is an error that names them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    key_map = key_map or (lambda key: key)
    state_dict = {}
    if path.is_dir() or path.suffix == ".safetensors":
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {path}")
        for file in files:
            with safe_open(file, framework="pt") as f:  # reads only the tensors that are kept
                for key in f.keys():
                    if (new_key := key_map(key)) is not None:
                        state_dict[new_key] = f.get_tensor(key)
    elif path.suffix in (".bin", ".pt", ".pth"):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = {new: value for key, value in loaded.items() if (new := key_map(key)) is not None}
    else:
        raise ValueError(f"unsupported checkpoint format {path.suffix!r} ({path}); use .safetensors, .bin or .pt")

    result = module.load_state_dict(state_dict, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise RuntimeError(
            f"checkpoint {path} does not match {type(module).__name__}: "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:5]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:5]}"
        )
    return result


def strip_prefix(prefix: str) -> KeyMap:
    """Key map keeping only the keys under `prefix`, with the prefix removed (other keys are dropped)."""
    return lambda key: key[len(prefix):] if key.startswith(prefix) else None


# --------------------------------------------------------------------------------------------------------------------
# SigLIP, Hugging Face layout (PaliGemma, pi0)
# --------------------------------------------------------------------------------------------------------------------
SIGLIP_PRESETS = {
    # SigLIP So400m/14 of PaliGemma-3B and pi0; 224 px -> 256 tokens.
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                   patch_size=14),
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=16),
}


def siglip_vision_tower(preset: str = "tiny", image_size: int = 224, pretrained_path: str | Path | None = None,
                        **overrides) -> transformers.SiglipVisionModel:
    """SigLIP vision tower (Zhai et al. 2023) as `transformers.SiglipVisionModel`, the PaliGemma/pi0 checkpoint layout.

    Returns per-patch features `model(pixel_values).last_hidden_state` of shape (B, (image_size/patch)^2, hidden),
    after the final LayerNorm, for images normalised to [-1, 1] (mean 0.5, std 0.5). As in PaliGemma, the attention
    pooling head is left out (`vision_use_head=False`); pass `vision_use_head=True` for the contrastive SigLIP layout.
    `pretrained_path` is a file in this model's key layout (`embeddings.*`, `encoder.layers.*`, `post_layernorm.*`;
    transformers 5 drops the `vision_model.` level of 4.x); from a PaliGemma checkpoint directory use
    `load_local_weights(model, path, key_map=strip_prefix("vision_tower.vision_model."))`. `overrides`:
    `SiglipVisionConfig` fields.
    """
    if preset not in SIGLIP_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {list(SIGLIP_PRESETS)}")
    config = transformers.SiglipVisionConfig(
        **{**SIGLIP_PRESETS[preset], "image_size": image_size, "vision_use_head": False, **overrides}
    )
    model = transformers.SiglipVisionModel(config)
    if pretrained_path is not None:
        load_local_weights(model, pretrained_path)
    return model


# --------------------------------------------------------------------------------------------------------------------
# timm ViTs (Prismatic / OpenVLA)
# --------------------------------------------------------------------------------------------------------------------
DINOV2_TIMM_NAME = "vit_large_patch14_reg4_dinov2.lvd142m"  # DINOv2 ViT-L/14 with 4 registers (Darcet et al. 2024)
SIGLIP_TIMM_NAME = "vit_so400m_patch14_siglip_224"  # SigLIP So400m/14, 224 px
TIMM_TINY = dict(embed_dim=64, depth=3, num_heads=4)  # depth 3, so "second-to-last block" is neither first nor last


def _timm_vit(name: str, preset: str, image_size: int, pretrained_path, overrides) -> timm.models.VisionTransformer:
    if preset not in ("tiny", "paper"):
        raise ValueError(f"unknown preset {preset!r}; use 'tiny' or 'paper'")
    sizes = TIMM_TINY if preset == "tiny" else {}
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size, **{**sizes, **overrides})
    if pretrained_path is not None:
        load_local_weights(model, pretrained_path)
    return model


def dinov2_vit(preset: str = "tiny", image_size: int = 224, pretrained_path: str | Path | None = None,
               **overrides) -> timm.models.VisionTransformer:
    """DINOv2 ViT-L/14 with 4 registers (timm `vit_large_patch14_reg4_dinov2.lvd142m`): Prismatic/OpenVLA's DINO half.

    `paper`: embed 1024, 24 blocks, 16 heads, patch 14, LayerScale, 1 class + 4 register tokens (303.2M parameters at
    224 px, 304.4M at timm's native 518 px). `tiny`: embed 64, 3 blocks, 4 heads, patch 14. Images use ImageNet
    mean/std. `overrides` go to `timm.create_model`. Weights use timm's key layout; a checkpoint made at another image
    size needs its `pos_embed` resampled first (timm's own loader does that, `load_local_weights` does not).
    """
    return _timm_vit(DINOV2_TIMM_NAME, preset, image_size, pretrained_path, overrides)


def siglip_vit_timm(preset: str = "tiny", image_size: int = 224, pretrained_path: str | Path | None = None,
                    **overrides) -> timm.models.VisionTransformer:
    """SigLIP So400m/14 (timm `vit_so400m_patch14_siglip_224`), the SigLIP half of Prismatic/OpenVLA.

    `paper`: embed 1152, 27 blocks, 16 heads, MLP 4304, no class token, attention-pool ("map") head kept as in the
    OpenVLA checkpoint (~428M parameters). `tiny`: embed 64, 3 blocks, 4 heads, patch 14. Images use mean/std 0.5.
    """
    return _timm_vit(SIGLIP_TIMM_NAME, preset, image_size, pretrained_path, overrides)


def openvla_vision_key_map(key: str) -> str | None:
    """Map an OpenVLA (HF `modeling_prismatic.py`) checkpoint key onto `PrismaticFusedBackbone`.

    OpenVLA stores the backbone under `vision_backbone.` and renames timm's LayerScale `gamma` to `scale_factor`
    (HF would otherwise rewrite parameters named gamma); the projector and LLM keys are dropped. Keys already in this
    module's layout (`featurizer.*`, `fused_featurizer.*`) pass unchanged, so our own saved files load too.
    """
    if key.startswith("vision_backbone."):
        key = key.removeprefix("vision_backbone.")
    elif not key.startswith(("featurizer.", "fused_featurizer.")):
        return None
    return key.replace(".scale_factor", ".gamma")


class PrismaticFusedBackbone(nn.Module):
    """Fused DINOv2 + SigLIP backbone of Prismatic VLMs (Karamcheti et al. 2024) and OpenVLA (Kim et al. 2024).

    Written from TRI-ML/prismatic-vlms `dinosiglip_vit.py` and openvla `prismatic/extern/hf/modeling_prismatic.py`:
    - each ViT returns `get_intermediate_layers(x, n={len(blocks) - 2})`: the patch tokens output by the
      SECOND-TO-LAST block (the last block, final norm and SigLIP's pooling head are not used), with the class and
      register tokens removed and no final LayerNorm;
    - the two token sequences are concatenated on the channel dim -> (B, num_patches, dino_dim + siglip_dim);
    - input is a dict {"dino": x, "siglip": x} (Prismatic) or one (B, 6, H, W) tensor, DINO channels first
      (OpenVLA), each stream normalised for its own backbone: `normalize` does it from [0, 1] images;
    - `featurizer` (DINOv2) and `fused_featurizer` (SigLIP) are the OpenVLA checkpoint's names, so its file loads with
      `openvla_vision_key_map` (the default key map here).
    `paper` = "dinosiglip-vit-so-224px" (OpenVLA-7B): ViT-L/14 reg4 + So400m/14 at 224 px -> (B, 256, 2176).
    """

    def __init__(self, preset: str = "tiny", image_size: int = 224, pretrained_path: str | Path | None = None):
        super().__init__()
        self.featurizer = dinov2_vit(preset, image_size)
        self.fused_featurizer = siglip_vit_timm(preset, image_size)
        self.embed_dim = self.featurizer.embed_dim + self.fused_featurizer.embed_dim
        self.num_patches = self.featurizer.patch_embed.num_patches
        # Each backbone's own normalisation (timm's data config: ImageNet mean/std for DINOv2, 0.5/0.5 for SigLIP).
        # Non-persistent buffers: they follow .to(device) but are not checkpoint keys.
        for prefix, vit in (("dino", self.featurizer), ("siglip", self.fused_featurizer)):
            data_config = timm.data.resolve_model_data_config(vit)
            self.register_buffer(f"{prefix}_mean", torch.tensor(data_config["mean"]).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"{prefix}_std", torch.tensor(data_config["std"]).view(1, 3, 1, 1), persistent=False)
        if pretrained_path is not None:
            load_local_weights(self, pretrained_path, key_map=openvla_vision_key_map)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1], already resized to `image_size` -> (B, 6, H, W) input (DINO, then SigLIP)."""
        return torch.cat([(images - self.dino_mean) / self.dino_std, (images - self.siglip_mean) / self.siglip_std], 1)

    @staticmethod
    def _second_to_last_block(vit: timm.models.VisionTransformer, x: torch.Tensor) -> torch.Tensor:
        return vit.get_intermediate_layers(x, n={len(vit.blocks) - 2})[0]

    def forward(self, pixel_values: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(pixel_values, dict):
            dino_input, siglip_input = pixel_values["dino"], pixel_values["siglip"]
        elif pixel_values.shape[1] == 6:
            dino_input, siglip_input = torch.split(pixel_values, [3, 3], dim=1)
        else:
            raise ValueError(
                f"expected a dict {{'dino', 'siglip'}} or a (B, 6, H, W) tensor, got shape "
                f"{tuple(pixel_values.shape)}; build it from [0, 1] images with `normalize`"
            )
        dino_patches = self._second_to_last_block(self.featurizer, dino_input)
        siglip_patches = self._second_to_last_block(self.fused_featurizer, siglip_input)
        return torch.cat([dino_patches, siglip_patches], dim=2)


# --------------------------------------------------------------------------------------------------------------------
# ResNet-18 (Diffusion Policy, ACT, BC baselines)
# --------------------------------------------------------------------------------------------------------------------
class ResNet18Encoder(torchvision.models.ResNet):
    """torchvision ResNet-18 (He et al. 2016) without the classification head: (B, 3, H, W) -> (B, 512).

    The module is torchvision's own ResNet (same parameter names, minus `fc`), so a torchvision checkpoint loads (its
    `fc.*` keys are dropped). `feature_map` gives the spatial features (B, 512, H/32, W/32) before pooling, for
    spatial-softmax or attention heads.
    """

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)


def _group_norm(channels: int, features_per_group: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels // features_per_group, channels)


def resnet18(pretrained_path: str | Path | None = None, norm: str = "group",
             features_per_group: int = 16) -> ResNet18Encoder:
    """ResNet-18 image encoder, built as `torchvision.models.resnet18(weights=None)` with the `fc` head removed.

    norm="group" replaces every BatchNorm by GroupNorm with `features_per_group` channels per group (64 channels ->
    4 groups ... 512 -> 32), as Diffusion Policy does (Chi et al. 2023; `replace_bn_with_gn(features_per_group=16)`
    in its code). The paper reports that BatchNorm makes training unstable together with the EMA of the weights; its
    running statistics, averaged over training batches, also do not match single-observation rollouts, whereas
    GroupNorm computes the same thing in train and eval. norm="batch" is torchvision's original, the layout of its
    ImageNet checkpoint.
    """
    if norm == "group":
        norm_layer = functools.partial(_group_norm, features_per_group=features_per_group)  # picklable, unlike a lambda
    elif norm == "batch":
        norm_layer = nn.BatchNorm2d
    else:
        raise ValueError(f"unknown norm {norm!r}; use 'group' or 'batch'")
    model = ResNet18Encoder(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], norm_layer=norm_layer)
    del model.fc  # no classification head: forward returns the 512-d pooled features
    if pretrained_path is not None:
        load_local_weights(model, pretrained_path, key_map=lambda key: None if key.startswith("fc.") else key)
    return model
