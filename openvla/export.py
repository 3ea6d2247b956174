"""Export OpenVLA-OFT's chunk predictor to ONNX (`common/export.py`): the centre crop and resize, the two vision
backbones' normalisations, BOUNDS_Q99 on the state, OFT's one parallel-decoding pass and the L1 head, and the
unnormalisation, in one graph. (OpenVLA's autoregressive action tokens are not exported.)

    python export.py --checkpoint runs/oft        # -> runs/oft/checkpoints/<last>/policy.onnx; parity and latency

The prompt is tokenised outside the graph (`prompt_tokens`: OpenVLA's prompt, BOS and left padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common import export

from openvla.eval import load_policy
from openvla.model import OpenVLAPolicy, bounds_q99, make_prompt, tokenize_prompts


class ChunkPredictor(nn.Module):
    """Tensors in, the chunk out: images uint8 (B, cameras, S, S, 3) in `cfg.cameras` order, the raw state (B, D),
    the prompt's `input_ids` and `attention_mask` (B, L) from `prompt_tokens` -> (B, K, A) in environment units.
    `OpenVLAPolicy.inputs` (evaluation: the centre crop) and `predict_chunk` with the tokens given."""

    def __init__(self, policy: OpenVLAPolicy):
        super().__init__()
        if policy.cfg.variant != "oft":
            raise ValueError(f"only OpenVLA-OFT's parallel chunk is exported, not variant {policy.cfg.variant!r}")
        self.policy = policy.eval()

    def forward(self, images: torch.Tensor, state: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        policy, cfg = self.policy, self.policy.cfg
        h, w = images.shape[2:4]
        ch, cw = round(h * cfg.crop_scale ** 0.5), round(w * cfg.crop_scale ** 0.5)
        top, left = (h - ch) // 2, (w - cw) // 2
        pixels = []
        for c in range(images.shape[1]):
            # model.crop_and_resize's centre crop as one slice (its per-image loop does not export with a dynamic
            # batch), then the same resize
            img = images[:, c, top:top + ch, left:left + cw].permute(0, 3, 1, 2).float() / 255
            if (ch, cw) != (cfg.image_size, cfg.image_size):
                img = F.interpolate(img, size=(cfg.image_size, cfg.image_size), mode="bicubic", antialias=True,
                                    align_corners=False).clamp(0, 1)
            pixels.append(policy.model.vision_backbone.normalize(img))
        state = bounds_q99(policy.normalizer, cfg.state_key, state.float())
        actions = policy.model.predict_chunk(torch.cat(pixels, dim=1), input_ids, attention_mask.bool(), state)
        return policy.normalizer.unnormalize("action", actions)


def prompt_tokens(policy: OpenVLAPolicy, instructions: list[str], width: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of OpenVLA's prompts, `width` wide (the exported graph's)."""
    ids, valid = tokenize_prompts(policy.tokenizer, [make_prompt(t) for t in instructions], width)
    if ids.shape[1] > width:
        raise ValueError(f"a prompt of {ids.shape[1]} tokens does not fit the exported graph's {width}: export "
                         f"again with a longer example prompt")
    return dict(input_ids=ids, attention_mask=valid)


def example_inputs(policy: OpenVLAPolicy, batch: int = 2, width: int | None = None) -> dict[str, torch.Tensor]:
    """Inputs of the exported graph's shapes and dtypes (random images and state, a real prompt's tokens). The
    prompt width is `max_text_tokens`, or the example prompt's length when that is wider (0 = as long as needed)."""
    cfg, generator = policy.cfg, torch.Generator().manual_seed(0)
    prompts = [make_prompt(export.EXAMPLE_INSTRUCTION)] * batch
    width = width or tokenize_prompts(policy.tokenizer, prompts, cfg.max_text_tokens)[0].shape[1]
    size = cfg.demo_image_size
    return dict(images=torch.randint(0, 256, (batch, len(cfg.cameras), size, size, 3), generator=generator,
                                     dtype=torch.uint8),
                state=torch.randn(batch, policy.state_dim, generator=generator),
                **prompt_tokens(policy, [export.EXAMPLE_INSTRUCTION] * batch, width))


def load(checkpoint: str) -> tuple[ChunkPredictor, dict[str, torch.Tensor]]:
    policy, _ = load_policy(checkpoint)
    return ChunkPredictor(policy), example_inputs(policy, batch=2)  # not 1: torch.export would fix a batch of 1


def exported_policy(sess, policy: OpenVLAPolicy, width: int) -> export.ExportedPolicy:
    """The closed-loop policy of an exported OFT on an onnxruntime session whose prompts are `width` tokens wide."""
    return export.ExportedPolicy(sess, policy.cfg, policy.image_keys,
                                 tokens=lambda instruction, state: prompt_tokens(policy, [instruction], width))


if __name__ == "__main__":
    export.main(load, __doc__)
