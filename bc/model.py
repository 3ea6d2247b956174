"""A small visuomotor behaviour-cloning policy: the baseline that proves the data -> train -> closed-loop pipe.

    image (uint8, S x S) --resize, [random shift], ImageNet norm--> ResNet-18 (GroupNorm) --> 512 per camera
    state (normalised)   --Linear + ReLU------------------------------------------------> 64
    instruction          --BPE tokens -> mean of token embeddings-------------------------> 64
    concat --> MLP (2 hidden layers) --> H x 4 normalised actions (an action chunk, as in ACT: Zhao et al. 2023)

Trained with an L1 loss on the unpadded steps of the chunk (ACT's choice for chunked BC). At run time the policy
predicts a chunk and executes its first `n_action_steps` actions before predicting again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.data import Normalizer, random_shift
from common.encoders import resnet18
from common.envs.metaworld import IMAGE_KEY, to_features
from common.text import tokenize

# torchvision's ImageNet statistics: the ResNet stem expects images normalised this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BCPolicy(nn.Module):
    def __init__(self, cfg, stats: dict[str, Any], tokenizer, state_dim: int, action_dim: int):
        super().__init__()
        self.cfg, self.tokenizer, self.action_dim = cfg, tokenizer, action_dim
        self.image_keys = [IMAGE_KEY.format(camera=c) for c in cfg.cameras]
        self.normalizer = Normalizer(stats, {cfg.state_key: "mean_std", "action": "mean_std"})
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.image_encoder = resnet18(norm="group")
        self.state_encoder = nn.Sequential(nn.Linear(state_dim, cfg.state_dim_embed), nn.ReLU())
        self.token_embedding = nn.Embedding(len(tokenizer), cfg.text_dim, padding_idx=tokenizer.pad_token_id)
        self.head = nn.Sequential(
            nn.Linear(512 * len(cfg.cameras) + cfg.state_dim_embed + cfg.text_dim, cfg.hidden_dim), nn.ReLU(),
            nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.ReLU(),
            nn.Linear(cfg.hidden_dim, cfg.horizon * action_dim))

    # ------------------------------------------------------------------------------------------------- encoders
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> (B, 512); random shift augmentation (Kostrikov et al. 2020) only in training."""
        x = images.permute(0, 3, 1, 2).float() / 255.0
        size = self.cfg.image_size
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if self.training and self.cfg.shift_augment > 0:
            x = random_shift(x, self.cfg.shift_augment)
        return self.image_encoder((x - self.pixel_mean) / self.pixel_std)

    def encode_instruction(self, instructions: list[str]) -> torch.Tensor:
        """Mean of the token embeddings over the real (unpadded) tokens: (B, text_dim)."""
        tokens = tokenize(self.tokenizer, instructions, self.cfg.max_text_tokens)
        ids = tokens["input_ids"].to(self.pixel_mean.device)
        mask = tokens["attention_mask"].to(ids.device).unsqueeze(-1).float()
        return (self.token_embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """The concatenated image, state and instruction embeddings the head reads: (B, feature_dim)."""
        state = self.normalizer.normalize(self.cfg.state_key, batch[self.cfg.state_key].float())
        # the cameras go through the shared ResNet as one batch, then each sample's features are concatenated
        images = self.encode_image(torch.cat([batch[key] for key in self.image_keys]))
        images = torch.cat(images.chunk(len(self.image_keys)), dim=-1)
        return torch.cat([images, self.state_encoder(state), self.encode_instruction(batch["instruction"])], -1)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Predicted action chunk in normalised units: (B, H, action_dim)."""
        return self.head(self.features(batch)).view(-1, self.cfg.horizon, self.action_dim)

    def loss(self, predicted: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """L1 between `predicted = self(batch)` and the demonstrated chunk (both normalised): each sample's mean over
        its unpadded steps, then the mean over samples.

        Averaging per sample first keeps the loss of a global batch equal to the mean of its DDP shards' losses
        (equal shard sizes), so torchrun training matches one process. It takes the prediction rather than calling
        forward itself, so that under DDP the forward pass goes through the DistributedDataParallel wrapper."""
        target = self.normalizer.normalize("action", batch["action"])
        error = (predicted - target).abs().mean(-1)  # (B, H)
        valid = (~batch["action_is_pad"]).float()
        return ((error * valid).sum(1) / valid.sum(1)).mean()

    # ------------------------------------------------------------------------------------------------- acting
    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, Any]) -> torch.Tensor:
        """Action chunk in environment units: (B, H, action_dim)."""
        return self.normalizer.unnormalize("action", self(batch))


class ClosedLoopPolicy:
    """The closed-loop interface of `common.envs.metaworld.evaluate`: observation dict -> the next actions to run.

    Predicts a chunk of H actions and returns its first `n_action_steps`, which the evaluator executes open loop.
    """

    def __init__(self, model: BCPolicy):
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        model, cfg = self.model, self.model.cfg
        features = to_features(obs)
        batch = {k: torch.as_tensor(np.asarray(features[k]))[None].to(model.pixel_mean.device)
                 for k in (*model.image_keys, cfg.state_key)}
        batch["instruction"] = [obs["instruction"]]
        return model.predict_chunk(batch)[0, : cfg.n_action_steps].cpu().numpy()
