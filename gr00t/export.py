"""Export GR00T N1.5's chunk predictor to ONNX (`common/export.py`): the centre crop and resize, the Eagle backbone
(SigLIP, the connector, the Qwen3 layers up to `select_layer`), the action head's VL layers and its 4 Euler steps
(unrolled by torch.export), the normalisations, in one graph. The initial noise is an input, so the chunk is a
deterministic function of the inputs.

    python export.py --checkpoint runs/gr00t      # -> runs/gr00t/checkpoints/<last>/policy.onnx; parity and latency

The prompt (the image placeholders and the instruction, left-padded) is built outside the graph by the policy's own
`Gr00tPolicy.inputs` (`prompt_tokens`), which also gives the placeholders' mask.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import export

from gr00t.eval import load_policy
from gr00t.model import Gr00tPolicy


class ChunkPredictor(nn.Module):
    """Tensors in, the chunk out: images uint8 (B, cameras, S, S, 3) in `cfg.cameras` order, the raw state (B, D),
    the prompt's `input_ids`, `attention_mask` and `image_mask` (B, L) from `prompt_tokens`, and the noise
    (B, H, max_action_dim) -> (B, H, A) in environment units. `Gr00tPolicy.inputs` (evaluation: the centre crop) and
    `predict_chunk` with the prompt given."""

    def __init__(self, policy: Gr00tPolicy):
        super().__init__()
        self.policy = policy.eval()

    def forward(self, images: torch.Tensor, state: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, image_mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        policy, cfg = self.policy, self.policy.cfg
        h, w = images.shape[2:4]
        ch, cw = int(h * cfg.crop_scale), int(w * cfg.crop_scale)
        top, left = round(0.5 * (h - ch)), round(0.5 * (w - cw))
        pixels = []
        for c in range(images.shape[1]):
            # model.crop_and_resize's centre crop as one slice (its per-image loop does not export with a dynamic
            # batch), then the same resize, to [-1, 1]
            img = images[:, c, top:top + ch, left:left + cw].permute(0, 3, 1, 2).float() / 255
            img = F.interpolate(img, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
                                align_corners=False)
            pixels.append(img * 2 - 1)
        state = policy.normalizer.normalize(cfg.state_key, state.float())
        state = F.pad(state, (0, cfg.max_state_dim - policy.state_dim))[:, None]
        embodiment = input_ids.new_full((input_ids.shape[0],), cfg.embodiment_id)
        actions = policy.model.sample_actions(pixels, input_ids, attention_mask, image_mask.bool(), state, noise,
                                              embodiment)
        return policy.normalizer.unnormalize("action", actions[..., :policy.action_dim])


def prompt_tokens(policy: Gr00tPolicy, instructions: list[str], width: int | None = None) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and image_mask (B, L) of the prompts, as `Gr00tPolicy.inputs` builds them (black
    images stand in: the prompt does not depend on them); `width`: the exported graph's L (a prompt must fit)."""
    cfg, size = policy.cfg, policy.cfg.demo_image_size
    batch = {key: torch.zeros(len(instructions), size, size, 3, dtype=torch.uint8) for key in policy.image_keys}
    batch[cfg.state_key], batch["instruction"] = torch.zeros(len(instructions), policy.state_dim), instructions
    _, ids, mask, is_image, _, _ = policy.inputs(batch)
    if width is not None:
        if ids.shape[1] > width:
            raise ValueError(f"a prompt of {ids.shape[1]} tokens does not fit the exported graph's {width}: export "
                             f"again with a longer example prompt")
        pad = width - ids.shape[1]  # left padding, as Eagle's
        ids = F.pad(ids, (pad, 0), value=policy.tokenizer.pad_token_id)
        mask, is_image = F.pad(mask, (pad, 0)), F.pad(is_image, (pad, 0))
    return dict(input_ids=ids, attention_mask=mask, image_mask=is_image)


def example_inputs(policy: Gr00tPolicy, batch: int = 2, width: int | None = None) -> dict[str, torch.Tensor]:
    """Inputs of the exported graph's shapes and dtypes (random images, state and noise, a real prompt)."""
    cfg, generator = policy.cfg, torch.Generator().manual_seed(0)
    size = cfg.demo_image_size
    return dict(images=torch.randint(0, 256, (batch, len(cfg.cameras), size, size, 3), generator=generator,
                                     dtype=torch.uint8),
                state=torch.randn(batch, policy.state_dim, generator=generator),
                **prompt_tokens(policy, [export.EXAMPLE_INSTRUCTION] * batch, width),
                noise=torch.randn(batch, cfg.horizon, cfg.max_action_dim, generator=generator))


def load(checkpoint: str) -> tuple[ChunkPredictor, dict[str, torch.Tensor]]:
    policy, _ = load_policy(checkpoint)
    return ChunkPredictor(policy), example_inputs(policy, batch=2)  # not 1: torch.export would fix a batch of 1


def exported_policy(sess, policy: Gr00tPolicy, width: int, seed: int = 0) -> export.ExportedPolicy:
    """The closed-loop policy of an exported GR00T on an onnxruntime session whose prompts are `width` wide; its
    noise from a NumPy generator."""
    cfg, rng = policy.cfg, np.random.default_rng(seed)

    @functools.lru_cache(maxsize=None)
    def prompt(instruction: str) -> dict:  # the prompt depends on the instruction alone: built once for each
        return prompt_tokens(policy, [instruction], width)

    return export.ExportedPolicy(
        sess, cfg, policy.image_keys, tokens=lambda instruction, state: prompt(instruction),
        noise=lambda: rng.standard_normal((1, cfg.horizon, cfg.max_action_dim)).astype(np.float32))


if __name__ == "__main__":
    export.main(load, __doc__)
