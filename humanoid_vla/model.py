"""A small humanoid vision-language-action policy: camera, instruction and body state in, whole-body joint targets out.

    front image (uint8) --resize, [shift], ImageNet norm--> ResNet-18 (GroupNorm) feature map --> one token per cell
                        [--film: each residual block scaled and shifted by the instruction (RT-1's FiLM)]
    instruction         --BPE tokens---------------------> token embeddings
    proprioception      --normalised, split by body part--> four tokens: legs, waist, arms (joint positions and
                                                            velocities of each part), base (gravity, gyro)
    [image | instruction | body] tokens --> transformer encoder (bidirectional, padding masked) --> context

and one of two action heads over a chunk of H joint-target vectors (29 joints):
    flow  an action decoder: H action tokens (the noisy chunk x_τ, the time τ, a position) self-attend and
          cross-attend to the context; it predicts the flow-matching velocity. Trained with π0's conditional flow
          matching (Black et al. 2024, Eq. 1-2): x_τ = τ·ε + (1 − τ)·A, target u = ε − A, τ ~ Beta(1.5, 1) (App. B);
          sampled by Euler steps from τ = 1 (noise) to τ = 0. The decoder reads the context through cross-attention,
          as GR00T's DiT and ACT's decoder do, so the context is computed once per chunk.
    mlp   the baseline: the mean of the context tokens --> MLP --> the chunk, L1 loss (ACT's, Zhao et al. 2023).

With `stability_weight` > 0, an auxiliary head reads the same pooled context and predicts the centre of mass'
horizontal offset from the middle of the feet at each of the H states that follow, the balance criterion of the IK
expert (and of ZMP/capture-point controllers); its squared error, weighted, joins the loss, so the context must
encode where the body's balance is going. The head is not used to act.

Per-body-part tokens follow the humanoid VLAs that tokenise the body by limb group (e.g. LeVERB's and GR00T's
embodiment-specific state encoders): the encoder can attend to the legs (balance) apart from the arms (the task).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.data import Normalizer, random_shift
from common.encoders import resnet18
from common.envs.humanoid import BODY_PARTS, IMAGE_KEY, N_JOINTS
from common.text import tokenize

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's statistics: the ResNet stem expects images normalised so
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_KEY = "observation.state"
DELTA_KEY = "delta_action"  # statistics of a_{t+k} − q_t over the demos' chunks (`delta_actions`)
COM_KEY = "com_offset"  # the centre of mass' horizontal offset from the feet's middle, (x, y) m (`stability_weight`)


def body_part_slices() -> dict[str, list[int]]:
    """Indices into the 64-D state of each body-part token: a part's joint positions and velocities; "base" is the
    gravity vector and gyro (the last six entries)."""
    parts = {name: [*joints, *(N_JOINTS + j for j in joints)] for name, joints in BODY_PARTS.items()}
    parts["base"] = list(range(2 * N_JOINTS, 2 * N_JOINTS + 6))
    return parts


def sample_time(batch: int, generator: torch.Generator | None = None) -> Tensor:
    """τ ~ Beta(1.5, 1)·0.999 + 0.001 (π0 App. B: more weight on noisy τ, never exactly 0); Beta as X / (X + Y) with
    Gamma draws, which take a generator (torch.distributions.Beta does not)."""
    x = torch._standard_gamma(torch.full((batch,), 1.5), generator=generator)
    y = torch._standard_gamma(torch.full((batch,), 1.0), generator=generator)
    return x / (x + y) * 0.999 + 0.001


def sinusoidal_embedding(t: Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> Tensor:
    """Sine-cosine embedding of τ ∈ [0, 1] (openpi's `posemb_sincos` periods)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * t[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class HumanoidVLA(nn.Module):
    def __init__(self, cfg, stats: dict[str, Any], tokenizer):
        super().__init__()
        if cfg.head not in ("flow", "mlp"):
            raise ValueError(f"head must be 'flow' or 'mlp', got {cfg.head!r}")
        self.cfg, self.tokenizer = cfg, tokenizer
        d = cfg.d_model
        self.action_key = DELTA_KEY if cfg.delta_actions else "action"  # what the head predicts, normalised
        modes = {STATE_KEY: "mean_std", self.action_key: "mean_std"}
        if cfg.stability_weight > 0:
            modes[COM_KEY] = "mean_std"
        self.normalizer = Normalizer(stats, modes)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.image_encoder = resnet18(norm="group")
        if cfg.image_stage == 3:  # layer3: 2x the resolution; at 64 px 229 vs 296 MFLOPs, 2.8M vs 11.2M weights
            self.image_encoder.layer4 = nn.Identity()
        if cfg.film:  # one (γ, β) projection per residual block; zero weights and bias: the identity at the start
            widths = [block.conv2.out_channels for block in self.residual_blocks()]
            self.film = nn.ModuleList(nn.Linear(cfg.d_model, 2 * width) for width in widths)
            for layer in self.film:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        stride, channels = (16, 256) if cfg.image_stage == 3 else (32, 512)
        cells = math.ceil(cfg.image_size / stride) ** 2
        self.image_proj = nn.Linear(channels, d)
        self.image_pos = nn.Parameter(torch.zeros(cells, d))
        self.token_embedding = nn.Embedding(len(tokenizer), d, padding_idx=tokenizer.pad_token_id)
        self.text_pos = nn.Parameter(torch.zeros(cfg.max_text_tokens, d))
        self.parts = body_part_slices()
        self.part_proj = nn.ModuleDict({name: nn.Linear(len(idx), d) for name, idx in self.parts.items()})
        self.part_embedding = nn.Parameter(torch.zeros(len(self.parts), d))
        for p in (self.image_pos, self.text_pos, self.part_embedding):
            nn.init.normal_(p, std=0.02)
        layer = dict(d_model=d, nhead=cfg.n_heads, dim_feedforward=4 * d, dropout=0.0, activation="gelu",
                     batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), cfg.encoder_layers,
                                             norm=nn.LayerNorm(d), enable_nested_tensor=False)
        if cfg.head == "flow":
            self.action_in = nn.Linear(N_JOINTS, d)
            self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            self.action_pos = nn.Parameter(torch.randn(cfg.horizon, d) * 0.02)
            self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), cfg.decoder_layers,
                                                 norm=nn.LayerNorm(d))
            self.action_out = nn.Linear(d, N_JOINTS)
        else:
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, 4 * d), nn.GELU(),
                                     nn.Linear(4 * d, cfg.horizon * N_JOINTS))
        if cfg.stability_weight > 0:
            self.com_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.horizon * 2))

    # ------------------------------------------------------------------------------------------------- context
    def encode(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The context tokens (B, L, d) and their padding mask (B, L), True = padding."""
        cfg = self.cfg
        x = batch[IMAGE_KEY].permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != cfg.image_size:
            x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        if self.training and cfg.shift_augment > 0:
            x = random_shift(x, cfg.shift_augment)
        tokens = tokenize(self.tokenizer, batch["instruction"], cfg.max_text_tokens)
        ids, words = tokens["input_ids"].to(x.device), tokens["attention_mask"].to(x.device)
        embedded = self.token_embedding(ids)
        cells = self.image_features((x - self.pixel_mean) / self.pixel_std, embedded, words)
        image = self.image_proj(cells.flatten(2).transpose(1, 2)) + self.image_pos
        text = embedded + self.text_pos[: ids.shape[1]]
        state = self.normalizer.normalize(STATE_KEY, batch[STATE_KEY].float())
        body = torch.stack([self.part_proj[name](state[:, idx]) for name, idx in self.parts.items()], 1)
        body = body + self.part_embedding
        b = image.shape[0]
        padding = torch.cat([torch.zeros(b, image.shape[1], dtype=torch.bool, device=image.device),
                             words == 0,
                             torch.zeros(b, body.shape[1], dtype=torch.bool, device=image.device)], 1)
        context = self.encoder(torch.cat([image, text, body], 1), src_key_padding_mask=padding)
        return context, padding

    def residual_blocks(self) -> list[nn.Module]:
        """ResNet-18's residual blocks up to `image_stage`, in order (two per stage)."""
        stages = [self.image_encoder.layer1, self.image_encoder.layer2, self.image_encoder.layer3,
                  self.image_encoder.layer4][: self.cfg.image_stage]
        return [block for stage in stages for block in stage]

    def image_features(self, x: Tensor, embedded: Tensor, words: Tensor) -> Tensor:
        """ResNet-18's feature map (B, C, h, w) of normalised images. With `film`, every residual block's output h
        becomes (1 + γ)·h + β, (γ, β) a linear map of the instruction's mean token embedding (RT-1's
        FiLM-EfficientNet, Brohan et al. 2022): the words can choose what the encoder extracts, e.g. which
        ball to locate."""
        encoder = self.image_encoder
        x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
        if self.cfg.film:
            mask = words[..., None].to(embedded.dtype)
            sentence = (embedded * mask).sum(1) / mask.sum(1).clamp(min=1)
        for i, block in enumerate(self.residual_blocks()):
            x = block(x)
            if self.cfg.film:
                gamma, beta = self.film[i](sentence)[:, :, None, None].chunk(2, dim=1)
                x = (1 + gamma) * x + beta
        return x

    # ------------------------------------------------------------------------------------------------- heads
    def velocity(self, context: Tensor, padding: Tensor, x_t: Tensor, time: Tensor) -> Tensor:
        """The flow head's v_θ(x_τ, τ | context): (B, H, 29) in normalised action units."""
        tokens = self.action_in(x_t) + self.action_pos + self.time_mlp(sinusoidal_embedding(time, self.cfg.d_model))[:, None]
        return self.action_out(self.decoder(tokens, context, memory_key_padding_mask=padding))

    def loss(self, batch: dict[str, Any]) -> Tensor:
        """Flow matching (π0 Eq. 1): ‖v_θ(x_τ, τ) − (ε − A)‖² with x_τ = τ·ε + (1 − τ)·A; or the MLP head's L1. Each
        sample's mean over its unpadded chunk steps, then the mean over samples. Plus `stability_weight` times the
        stability loss when it is on."""
        actions = self.normalizer.normalize(self.action_key, self.head_target(batch))
        context, padding = self.encode(batch)
        if self.cfg.head == "flow":
            noise = torch.randn_like(actions)
            time = sample_time(actions.shape[0]).to(actions.device)
            tau = time[:, None, None]
            x_t = tau * noise + (1 - tau) * actions
            error = (self.velocity(context, padding, x_t, time) - (noise - actions)).pow(2).mean(-1)
        else:
            error = (self.regress(context, padding) - actions).abs().mean(-1)
        valid = (~batch["action_is_pad"]).float()
        loss = ((error * valid).sum(1) / valid.sum(1)).mean()
        if self.cfg.stability_weight > 0:
            loss = loss + self.cfg.stability_weight * self.stability_loss(context, padding, batch)
        return loss

    def stability_loss(self, context: Tensor, padding: Tensor, batch: dict[str, Any]) -> Tensor:
        """‖ĉ − c‖² of the predicted centre-of-mass offsets of the next H states (normalised by the demos'
        statistics), each sample's mean over the states inside its episode (`com_is_pad` marks the others)."""
        target = self.normalizer.normalize(COM_KEY, batch[COM_KEY].float())
        predicted = self.com_head(self.pooled(context, padding)).view(target.shape)
        valid = (~batch["com_is_pad"]).float()
        error = (predicted - target).pow(2).mean(-1)
        return ((error * valid).sum(1) / valid.sum(1).clamp(min=1)).mean()

    def head_target(self, batch: dict[str, Any]) -> Tensor:
        """The chunk the head learns, unnormalised: the joint targets, or with `delta_actions` the targets minus the
        joint positions q_t of the observed state (openpi's DeltaActions)."""
        if self.cfg.delta_actions:
            return batch["action"] - batch[STATE_KEY][:, None, :N_JOINTS].float()
        return batch["action"]

    def joint_targets(self, chunk: Tensor, batch: dict[str, Any]) -> Tensor:
        """The head's normalised chunk back to joint targets in radians (adding q_t back with `delta_actions`)."""
        chunk = self.normalizer.unnormalize(self.action_key, chunk)
        if self.cfg.delta_actions:
            chunk = chunk + batch[STATE_KEY][:, None, :N_JOINTS].float()
        return chunk

    def pooled(self, context: Tensor, padding: Tensor) -> Tensor:
        """The mean of the context tokens that are not padding: (B, d)."""
        keep = (~padding).float()[..., None]
        return (context * keep).sum(1) / keep.sum(1)

    def regress(self, context: Tensor, padding: Tensor) -> Tensor:
        """The MLP head's chunk from the masked mean of the context: (B, H, 29), normalised."""
        return self.mlp(self.pooled(context, padding)).view(-1, self.cfg.horizon, N_JOINTS)

    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, Any]) -> Tensor:
        """The joint-target chunk in radians: (B, H, 29). The flow head integrates dx/dτ = v_θ with `flow_steps`
        Euler steps from T·ε, ε ~ N(0, I) (torch's global RNG), at τ = 1 to τ = 0; T = `noise_temperature`."""
        context, padding = self.encode(batch)
        if self.cfg.head == "mlp":
            return self.joint_targets(self.regress(context, padding), batch)
        b = context.shape[0]
        x_t = self.cfg.noise_temperature * torch.randn(b, self.cfg.horizon, N_JOINTS, device=context.device)
        dt = -1.0 / self.cfg.flow_steps
        for k in range(self.cfg.flow_steps):
            time = torch.full((b,), 1.0 + k * dt, device=context.device)
            x_t = x_t + dt * self.velocity(context, padding, x_t, time)
        return self.joint_targets(x_t, batch)


class ClosedLoopPolicy:
    """The closed-loop interface of `common.envs.humanoid.evaluate`: observation -> the next `n_action_steps` joint
    targets of a predicted chunk (executed open loop), or, with `temporal_ensemble` = m set, one joint target per
    step: ACT's temporal ensembling (Zhao et al. 2023, Sec. 3.3), a chunk predicted every step and the executed
    target the mean of every overlapping chunk's prediction for this step, weighted exp(-m·i), i = 0 the oldest."""

    def __init__(self, model: HumanoidVLA):
        self.model = model.eval()
        self.reset()

    def reset(self) -> None:
        """A new episode: forget the chunks of the last one."""
        self.step = 0
        self.chunks: list[tuple[int, np.ndarray]] = []  # (the step it was predicted at, its H targets)

    @torch.no_grad()
    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        device = self.model.pixel_mean.device
        batch = {IMAGE_KEY: torch.as_tensor(obs["images"]["front"])[None].to(device),
                 STATE_KEY: torch.as_tensor(obs["state"])[None].to(device), "instruction": [obs["instruction"]]}
        chunk = self.model.predict_chunk(batch)[0].cpu().numpy()
        m = self.model.cfg.temporal_ensemble
        if m is None:
            return chunk[: self.model.cfg.n_action_steps]
        horizon = len(chunk)
        self.chunks = [(t, c) for t, c in self.chunks if self.step - t < horizon] + [(self.step, chunk)]
        predictions = np.stack([c[self.step - t] for t, c in self.chunks])  # oldest first
        weights = np.exp(-m * np.arange(len(predictions)))
        self.step += 1
        return (weights @ predictions / weights.sum())[None]
