import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from common.encoders import (
    PrismaticFusedBackbone,
    dinov2_vit,
    load_local_weights,
    openvla_vision_key_map,
    resnet18,
    siglip_vision_tower,
    siglip_vit_timm,
    strip_prefix,
)

torch.set_num_threads(1)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------------------- sizes
def test_siglip_so400m_matches_paligemma_and_siglip_counts():
    with torch.device("meta"):
        paligemma_tower = siglip_vision_tower("so400m")
        with_head = siglip_vision_tower("so400m", vision_use_head=True)
        timm_siglip = siglip_vit_timm("paper")
    # PaliGemma-3B-224 has 2,923,335,408 parameters (keras-hub preset `pali_gemma_3b_224`); minus Gemma-2B with the
    # 257,152-token vocabulary (2,508,531,712) and the 1152->2048 projector (2,361,344) leaves this tower, no head.
    assert num_params(paligemma_tower) == 2_923_335_408 - 2_508_531_712 - 2_361_344 == 412_442_352
    assert paligemma_tower.config.image_size // paligemma_tower.config.patch_size == 16  # 256 image tokens
    # With SigLIP's attention-pool head: "428M params" (timm/vit_so400m_patch14_siglip_224.webli), same as timm's.
    assert abs(num_params(with_head) - 428e6) / 428e6 < 0.005
    assert num_params(with_head) == num_params(timm_siglip) == 427_680_704


def test_dinov2_large_reg4_matches_published_count():
    with torch.device("meta"):
        dino_518 = dinov2_vit("paper", image_size=518)  # timm's native resolution: model card says 304.4M
        dino_224 = dinov2_vit("paper", image_size=224)  # as used by OpenVLA
    assert round(num_params(dino_518) / 1e6, 1) == 304.4
    assert num_params(dino_518) - num_params(dino_224) == (37**2 - 16**2) * 1024  # only the position table shrinks
    assert dino_224.num_prefix_tokens == 5 and len(dino_224.blocks) == 24 and dino_224.embed_dim == 1024


def test_paper_fused_backbone_dims():
    with torch.device("meta"):
        backbone = PrismaticFusedBackbone("paper", image_size=224)
        out = backbone(torch.zeros(1, 6, 224, 224))
    assert backbone.embed_dim == 1024 + 1152 == 2176 and backbone.num_patches == 256
    assert out.shape == (1, 256, 2176)


# ---------------------------------------------------------------------------------------------------------- shapes
def test_tiny_siglip_tower_shape():
    model = siglip_vision_tower("tiny", image_size=64).eval()
    out = model(pixel_values=torch.randn(2, 3, 64, 64)).last_hidden_state
    assert out.shape == (2, 16, 64) and torch.isfinite(out).all()
    assert not hasattr(model, "head")  # PaliGemma layout: no pooling head


def test_tiny_timm_vits_shapes():
    dino, siglip = dinov2_vit("tiny", image_size=56).eval(), siglip_vit_timm("tiny", image_size=56).eval()
    x = torch.randn(2, 3, 56, 56)
    assert dino.forward_features(x).shape == (2, 1 + 4 + 16, 64)  # class + 4 registers + 4x4 patches
    assert siglip.forward_features(x).shape == (2, 16, 64)  # no class token
    assert dino(x).shape == siglip(x).shape == (2, 64)  # pooled (num_classes=0)


# ---------------------------------------------------------------------------------------------------------- fused
def manual_patch_tokens(vit, x, num_blocks):
    """Patch tokens after the first `num_blocks` blocks, written out from timm's ViT forward."""
    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    for block in vit.blocks[:num_blocks]:
        h = block(h)
    return h[:, vit.num_prefix_tokens:]


def test_fused_backbone_uses_second_to_last_block():
    backbone = PrismaticFusedBackbone("tiny", image_size=56).eval()
    for name, param in backbone.named_parameters():  # DINOv2's LayerScale starts at 1e-5: blocks ~ identity
        if name.endswith(".gamma"):
            nn.init.constant_(param, 1.0)
    images = torch.rand(2, 3, 56, 56)
    pixel_values = backbone.normalize(images)
    with torch.no_grad():
        out = backbone(pixel_values)
        dino_x, siglip_x = pixel_values[:, :3], pixel_values[:, 3:]
        dino_expected = manual_patch_tokens(backbone.featurizer, dino_x, 2)
        siglip_expected = manual_patch_tokens(backbone.fused_featurizer, siglip_x, 2)
        expected = torch.cat([dino_expected, siglip_expected], dim=2)
        last_block = manual_patch_tokens(backbone.featurizer, dino_x, 3)
        from_dict = backbone({"dino": dino_x, "siglip": siglip_x})
    assert len(backbone.featurizer.blocks) == len(backbone.fused_featurizer.blocks) == 3
    assert out.shape == (2, 16, backbone.embed_dim) and backbone.embed_dim == 64 + 64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(out[..., :64], last_block, atol=1e-3)  # the last block's output is NOT used
    torch.testing.assert_close(from_dict, out, rtol=0, atol=0)


def test_fused_backbone_normalisation_per_stream():
    backbone = PrismaticFusedBackbone("tiny", image_size=56)
    gray = torch.full((1, 3, 56, 56), 0.5)
    pixel_values = backbone.normalize(gray)
    assert pixel_values.shape == (1, 6, 56, 56)
    imagenet_mean, imagenet_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(pixel_values[0, :3, 0, 0], (0.5 - imagenet_mean) / imagenet_std)  # DINOv2
    assert (pixel_values[:, 3:] == 0).all()  # SigLIP: (x - 0.5) / 0.5
    assert not any("mean" in k or "std" in k for k in backbone.state_dict())  # not checkpoint keys
    with pytest.raises(ValueError, match="normalize"):
        backbone(gray)


def test_fused_backbone_loads_openvla_checkpoint_layout(tmp_path):
    source = PrismaticFusedBackbone("tiny", image_size=56).eval()
    # The OpenVLA HF checkpoint layout: `vision_backbone.` prefix, LayerScale `gamma` stored as `scale_factor`,
    # plus keys of the projector and LLM that the backbone must skip.
    official = {f"vision_backbone.{k}".replace(".gamma", ".scale_factor"): v for k, v in source.state_dict().items()}
    official["projector.fc1.weight"] = torch.zeros(4, 4)
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in official
    save_file(official, tmp_path / "model-00001-of-00001.safetensors")
    loaded = PrismaticFusedBackbone("tiny", image_size=56, pretrained_path=tmp_path).eval()  # a shard directory
    x = source.normalize(torch.rand(2, 3, 56, 56))
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    assert openvla_vision_key_map("language_model.model.embed_tokens.weight") is None


# ---------------------------------------------------------------------------------------------------------- loading
def test_load_local_weights_round_trip_safetensors(tmp_path):
    source = siglip_vision_tower("tiny", image_size=32).eval()
    save_file(source.state_dict(), tmp_path / "siglip.safetensors")
    loaded = siglip_vision_tower("tiny", image_size=32, pretrained_path=tmp_path / "siglip.safetensors").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).last_hidden_state, source(pixel_values=x).last_hidden_state)


def test_load_local_weights_key_map_renames_and_drops(tmp_path):
    source = siglip_vision_tower("tiny", image_size=32).eval()
    paligemma_like = {f"vision_tower.vision_model.{k}": v for k, v in source.state_dict().items()}
    paligemma_like["language_model.lm_head.weight"] = torch.zeros(3)
    torch.save(paligemma_like, tmp_path / "weights.pt")
    target = siglip_vision_tower("tiny", image_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(target(pixel_values=x).last_hidden_state, source(pixel_values=x).last_hidden_state)
        load_local_weights(target, tmp_path / "weights.pt", key_map=strip_prefix("vision_tower.vision_model."))
        assert torch.equal(target(pixel_values=x).last_hidden_state, source(pixel_values=x).last_hidden_state)


def test_load_local_weights_strict_names_missing_and_unexpected_keys(tmp_path):
    state = siglip_vision_tower("tiny", image_size=32).state_dict()
    missing_key = "post_layernorm.weight"
    state.pop(missing_key)
    state["stray.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(RuntimeError, match=missing_key) as error:
        load_local_weights(siglip_vision_tower("tiny", image_size=32), tmp_path / "broken.safetensors")
    assert "stray.weight" in str(error.value)
    missing, unexpected = load_local_weights(
        siglip_vision_tower("tiny", image_size=32), tmp_path / "broken.safetensors", strict=False
    )
    assert missing == [missing_key] and unexpected == ["stray.weight"]
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_local_weights(nn.Linear(1, 1), tmp_path / "nowhere.safetensors")


# ---------------------------------------------------------------------------------------------------------- ResNet
def test_resnet18_group_norm_has_no_batch_norm():
    model = resnet18(norm="group").eval()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    group_norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(group_norms) == 20 and all(m.num_channels // m.num_groups == 16 for m in group_norms)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features, pooled = model.feature_map(x), model(x)
    assert features.shape == (2, 512, 2, 2) and pooled.shape == (2, 512)
    torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))


def test_resnet18_batch_norm_is_torchvision_without_head(tmp_path):
    reference = torchvision.models.resnet18(weights=None).eval()
    model = resnet18(norm="batch")
    reference_keys = [k for k in reference.state_dict() if not k.startswith("fc.")]
    assert list(model.state_dict()) == reference_keys
    assert num_params(model) == 11_689_512 - (512 * 1000 + 1000)  # ResNet-18 minus its ImageNet classifier
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")  # a torchvision checkpoint, fc included
    loaded = resnet18(norm="batch", pretrained_path=tmp_path / "resnet18.pth").eval()
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
