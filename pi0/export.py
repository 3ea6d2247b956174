"""Export π0's (or π0.5's) chunk predictor to ONNX (`common/export.py`): the image resizing, the state
normalisation, the prefix's keys/values computed once, the Euler loop of `num_inference_steps` steps over the
action expert (`PI0.sample_actions`, unrolled by torch.export) and the action unnormalisation, in one graph. The
initial noise is an input, so the chunk is a deterministic function of the inputs.

    python export.py --checkpoint runs/pi0        # -> runs/pi0/checkpoints/<last>/policy.onnx; parity and latency

The prompt is tokenised outside the graph (`prompt_tokens`): π0's is the instruction; π0.5's carries the normalised
state as integer bins (`make_prompts`), so its tokens depend on the state too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import export
from common.text import tokenize

from pi0.eval import load_policy
from pi0.model import Pi0Policy, resize_with_pad


class ChunkPredictor(nn.Module):
    """Tensors in, the chunk out: images uint8 (B, cameras, S, S, 3) in `cfg.cameras` order, the raw state (B, D),
    the prompt's `input_ids` and `attention_mask` (B, L) from `prompt_tokens`, and the noise (B, H, max_action_dim)
    -> (B, H, A) in environment units. `Pi0Policy.inputs` and `predict_chunk` with the tokens given."""

    def __init__(self, policy: Pi0Policy):
        super().__init__()
        self.policy = policy.eval()

    def forward(self, images: torch.Tensor, state: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        policy, cfg = self.policy, self.policy.cfg
        pixels = [resize_with_pad(images[:, c].permute(0, 3, 1, 2).float() / 255, cfg.image_size) * 2 - 1
                  for c in range(images.shape[1])]
        masks = [images.new_ones(images.shape[0], dtype=torch.bool)] * len(pixels)
        state = policy.normalizer.normalize(cfg.state_key, state.float())
        state = F.pad(state, (0, cfg.max_state_dim - policy.state_dim))
        actions = policy.model.sample_actions(pixels, masks, input_ids, attention_mask, state, noise)
        return policy.normalizer.unnormalize("action", actions[..., :policy.action_dim])


def prompt_tokens(policy: Pi0Policy, instructions: list[str], state: torch.Tensor,
                  width: int | None = None) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of the prompts, `width` wide (the exported graph's; default `max_text_tokens`)."""
    cfg = policy.cfg
    prompts = policy.prompts(instructions, policy.normalizer.normalize(cfg.state_key, state.float()))
    width = width or cfg.max_text_tokens
    longest = max(len(ids) for ids in policy.tokenizer(prompts)["input_ids"])
    if longest > width:
        raise ValueError(f"a prompt of {longest} tokens does not fit the exported graph's {width}: export again "
                         f"with a longer example prompt")
    return tokenize(policy.tokenizer, prompts, width)


def example_inputs(policy: Pi0Policy, batch: int = 2) -> dict[str, torch.Tensor]:
    """Inputs of the exported graph's shapes and dtypes (random images, state and noise, a real prompt's tokens)."""
    cfg, generator = policy.cfg, torch.Generator().manual_seed(0)
    size = cfg.demo_image_size
    state = torch.randn(batch, policy.state_dim, generator=generator)
    return dict(images=torch.randint(0, 256, (batch, len(cfg.cameras), size, size, 3), generator=generator,
                                     dtype=torch.uint8),
                state=state, **prompt_tokens(policy, [export.EXAMPLE_INSTRUCTION] * batch, state),
                noise=torch.randn(batch, cfg.horizon, cfg.max_action_dim, generator=generator))


def load(checkpoint: str) -> tuple[ChunkPredictor, dict[str, torch.Tensor]]:
    policy, _ = load_policy(checkpoint)
    return ChunkPredictor(policy), example_inputs(policy, batch=2)  # not 1: torch.export would fix a batch of 1


def exported_policy(sess, policy: Pi0Policy, seed: int = 0) -> export.ExportedPolicy:
    """The closed-loop policy of an exported π0 on an onnxruntime session; its noise from a NumPy generator."""
    cfg, rng = policy.cfg, np.random.default_rng(seed)
    return export.ExportedPolicy(
        sess, cfg, policy.image_keys,
        tokens=lambda instruction, state: prompt_tokens(policy, [instruction], torch.as_tensor(state)),
        noise=lambda: rng.standard_normal((1, cfg.horizon, cfg.max_action_dim)).astype(np.float32))


if __name__ == "__main__":
    export.main(load, __doc__)
