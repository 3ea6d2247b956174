"""Export BC's chunk predictor to ONNX (`common/export.py`): one pass of the ResNet, the state and instruction
encoders and the MLP head, with the state normalisation and the action unnormalisation inside the graph.

    python export.py --checkpoint runs/bc        # -> runs/bc/checkpoints/<last>/policy.onnx; parity and latency
"""

from __future__ import annotations

import torch
from torch import nn

from common import export
from common.text import tokenize

from bc.eval import load_policy
from bc.model import BCPolicy


class ChunkPredictor(nn.Module):
    """Tensors in, the chunk out: images uint8 (B, cameras, S, S, 3) in `cfg.cameras` order, the raw state (B, D),
    the instruction's `input_ids` and `attention_mask` (B, max_text_tokens) -> (B, H, A) in environment units.
    `BCPolicy.features` and `predict_chunk` with the tokens given instead of the instruction's text."""

    def __init__(self, model: BCPolicy):
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor, state: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        model, cfg = self.model, self.model.cfg
        state = model.normalizer.normalize(cfg.state_key, state.float())
        batch, cameras = images.shape[:2]
        features = model.encode_image(images.transpose(0, 1).flatten(0, 1))  # camera-major, as features() batches
        # each sample's cameras side by side (features() concatenates the per-camera chunks; a reshape exports with
        # a dynamic batch, chunk() does not)
        features = features.view(cameras, batch, -1).transpose(0, 1).reshape(batch, -1)
        mask = attention_mask.unsqueeze(-1).float()
        text = (model.token_embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        chunk = model.head(torch.cat([features, model.state_encoder(state), text], -1))
        return model.normalizer.unnormalize("action", chunk.view(-1, cfg.horizon, model.action_dim))


def example_inputs(model: BCPolicy, batch: int = 2) -> dict[str, torch.Tensor]:
    """Inputs of the exported graph's shapes and dtypes (random images and state, a real instruction's tokens)."""
    cfg, generator = model.cfg, torch.Generator().manual_seed(0)
    size = cfg.demo_image_size
    tokens = tokenize(model.tokenizer, [export.EXAMPLE_INSTRUCTION] * batch, cfg.max_text_tokens)
    return dict(images=torch.randint(0, 256, (batch, len(cfg.cameras), size, size, 3), generator=generator,
                                     dtype=torch.uint8),
                state=torch.randn(batch, model.state_encoder[0].in_features, generator=generator),
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])


def load(checkpoint: str) -> tuple[ChunkPredictor, dict[str, torch.Tensor]]:
    model, _ = load_policy(checkpoint)
    return ChunkPredictor(model), example_inputs(model, batch=2)  # not 1: torch.export would fix a batch of 1


def exported_policy(sess, model: BCPolicy) -> export.ExportedPolicy:
    """The closed-loop policy of an exported BC on an onnxruntime session."""
    def tokens(instruction: str, state):
        return tokenize(model.tokenizer, [instruction], model.cfg.max_text_tokens)

    return export.ExportedPolicy(sess, model.cfg, model.image_keys, tokens)


if __name__ == "__main__":
    export.main(load, __doc__)
