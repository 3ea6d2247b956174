"""A driving VLA and a plain BC baseline that predict ego-frame waypoints, on the embedded highway-env benchmark.

The VLA (`DrivingVLA`) reads three kinds of tokens and K = 5 learned waypoint queries through one transformer:

    BEV raster (5 x 64 x 64) ─ CNN (4 stride-2 stages) ─ 4 x 4 visual tokens ──┐
    route/ego text ─ byte-level BPE ─ token embeddings ─────────────────────────┤ transformer     ┌ MLP head
    ego state (speed, yaw rate, steering, acceleration, command) ─ MLP ─ 1 token ┤ (bidirectional) ┤
    K waypoint queries (learned) ────────────────────────────────────────────────┘ → K outputs     └ flow head

and `BCModel` is the baseline without language: the same BEV CNN and an ego-state MLP, fused by an MLP into the
K waypoints. Waypoints are the ego's positions +0.5, 1.0, ..., 2.5 s ahead in the current ego frame (x forward, y to
the driver's left, metres), normalised by the dataset's mean/std per coordinate; they are tracked by the
benchmark's pure pursuit (`waypoints_to_controls`).

Heads:
- **MLP** (`MLPHead`): each query's output → LayerNorm, Linear, GELU, Linear → (x, y); trained with L1 on normalised
  waypoints, or (`mlp_loss="gaussian_nll"`) the head also predicts log σ and the loss is the Gaussian negative
  log-likelihood ½·(log σ² + (a − μ)²/σ²) (`F.gaussian_nll_loss`).
- **Flow matching** (`FlowHead`), as π0 (Black et al., 2024, Eq. 1 and App. B, openpi's time convention): with
  noise ε ~ N(0, I) and τ ~ Beta(1.5, 1)·0.999 + 0.001, x_τ = τ·ε + (1 − τ)·a and the head regresses the velocity
  u = ε − a with ‖v_θ(x_τ, τ, o) − u‖²; sampling integrates dx/dτ = v_θ from τ = 1 (noise) to τ = 0 with 10 Euler
  steps δ = −0.1. π0's action expert attends to the whole prefix at every step; here the noisy waypoint tokens are
  conditioned on the K query outputs of the transformer (computed once per observation) and attend only to each
  other, so one observation costs one transformer pass plus 10 passes of a 2-layer, 5-token head.

Reading order: the interface functions (`process_ego_state`, `process_route`, `bev_to_tensor`), `DrivingVLA`
(`encode_bev_map`, `forward`, `loss`, `sample`), `BCModel`, then `DrivingPolicy` (normalisation, tokenizer,
`predict_waypoints`, `waypoints_to_controls`), `ClosedLoopPolicy` and `Shield`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.data import Normalizer
from common.envs import highway as hw
from common.text import tokenize

from .config import DrivingVLAConfig

K = len(hw.WAYPOINT_STEPS)  # waypoints per plan (+0.5 ... +2.5 s)
EGO_DIM = 8  # process_ego_state: speed, yaw rate, steering, acceleration, one-hot command (4)
COMMAND_PLACES = tuple(sorted({s.place for s in hw.SCENARIOS.values()}))  # "", "intersection", "roundabout"


# ------------------------------------------------------------------------------------------ the driving interface
def process_ego_state(speed: float, yaw_rate: float, steering: float, acceleration: float, command: int) -> np.ndarray:
    """The ego-state features (EGO_DIM,) float32, in the ego frame (left-positive angles, as NAVSIM/nuPlan):
    speed [m/s], yaw rate [rad/s], steering angle [rad], longitudinal acceleration [m/s²], and the route command
    (`hw.COMMANDS`: 0 follow the road, 1 turn left, 2 go straight, 3 turn right) one-hot. No world position or heading:
    the plan is ego-relative, so they would only let a model memorise the training maps."""
    if command not in range(len(hw.COMMANDS)):
        raise ValueError(f"command must be in 0..{len(hw.COMMANDS) - 1} ({hw.COMMANDS}), got {command}")
    onehot = np.eye(len(hw.COMMANDS), dtype=np.float32)[command]
    return np.concatenate([np.array([speed, yaw_rate, steering, acceleration], dtype=np.float32), onehot])


def ego_state_from_observation(obs: Mapping[str, Any]) -> np.ndarray:
    """`process_ego_state` of a benchmark observation: its raw state is highway-env's (x, y, heading, speed, yaw rate,
    steering, acceleration) with right-positive yaw rate and steering, which are flipped here."""
    x, y, heading, speed, yaw_rate, steering, acceleration = (float(v) for v in obs["state"])
    return process_ego_state(speed, -yaw_rate, -steering, acceleration, int(obs["command"]))


_HEADING = re.compile(r",? ?heading -?\d+(\.\d+)? deg")


def process_route(text: str) -> str:
    """The prompt the VLA reads, from the benchmark's ego/route sentence (`hw.describe`): lower-cased, whitespace
    collapsed, and the compass heading removed ("speed 9.0 m/s, heading 90 deg; in 23 m turn left at the
    intersection" → "speed 9.0 m/s; in 23 m turn left at the intersection"). The heading is an angle on highway-env's
    world-aligned map: the BEV is ego-aligned, and NAVSIM/CARLA plans are ego-relative, so it carries nothing a
    driver could use and would tie the model to the training maps."""
    return " ".join(_HEADING.sub("", text).lower().split())


def route_sentence(speed: float, command: int, distance: float | None, place: str = "") -> str:
    """The prompt for inputs that have no benchmark sentence (the adapters): `hw.describe_state` then `process_route`.
    `distance` None (unknown) becomes 0, "... now"."""
    return process_route(hw.describe_state(speed, 0.0, command, 0.0 if distance is None else distance, place))


def bev_to_tensor(bev: np.ndarray | Tensor) -> Tensor:
    """uint8 (..., H, W, 5) BEV rasters → float (..., 5, H, W) in [0, 1]."""
    bev = torch.as_tensor(np.asarray(bev) if not isinstance(bev, Tensor) else bev)
    return bev.movedim(-1, -3).float() / 255.0


def waypoints_to_controls(waypoints, speed: float) -> np.ndarray:
    """Ego-frame waypoints (K, 2) [m] → the benchmark's normalised [acceleration, steering]: common's pure pursuit,
    fitted to highway-env's bicycle model (`common.envs.highway.waypoints_to_controls`)."""
    return hw.waypoints_to_controls(np.asarray(waypoints, dtype=np.float64), speed)


# ---------------------------------------------------------------------------------------------- flow matching
def sample_time(batch: int, cfg: DrivingVLAConfig, generator: torch.Generator | None = None) -> Tensor:
    """τ ~ Beta(α, β)·s + (1 − s) with α = 1.5, β = 1, s = 0.999 (π0 App. B), drawn from `generator`
    (Beta(α, β) = X / (X + Y), X ~ Gamma(α), Y ~ Gamma(β))."""
    x = torch._standard_gamma(torch.full((batch,), cfg.time_beta_alpha), generator=generator)
    y = torch._standard_gamma(torch.full((batch,), cfg.time_beta_beta), generator=generator)
    return x / (x + y) * cfg.time_s + (1 - cfg.time_s)


def flow_targets(actions: Tensor, noise: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
    """π0 Eq. 1 (openpi's convention, τ = 1 is noise): x_τ = τ·ε + (1 − τ)·a and the velocity target u = ε − a."""
    t = time.view(-1, *([1] * (actions.dim() - 1)))
    return t * noise + (1 - t) * actions, noise - actions


def euler_times(num_steps: int) -> Tensor:
    """τ at the start of each Euler step: 1, 1 − 1/n, ..., 1/n."""
    return torch.tensor([1.0 - step / num_steps for step in range(num_steps)])


def sinusoidal_embedding(t: Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> Tensor:
    """Sine-cosine embedding of τ ∈ [0, 1] (openpi `posemb_sincos`, π0's periods)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * t[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


# ------------------------------------------------------------------------------------------------- modules
def transformer(width: int, depth: int, heads: int, mlp_ratio: int) -> nn.TransformerEncoder:
    """Pre-norm bidirectional transformer (GELU MLP, no dropout)."""
    layer = nn.TransformerEncoderLayer(width, heads, mlp_ratio * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class BEVEncoder(nn.Module):
    """The BEV raster (B, 5, 64, 64) → a grid of features (B, C, 64 / 2^n, 64 / 2^n): n stride-2 3x3 convolutions,
    each followed by GroupNorm and GELU, then a 3x3 convolution at the last resolution."""

    def __init__(self, channels: Sequence[int], in_channels: int = len(hw.BEV_CHANNELS)):
        super().__init__()
        layers, c_in = [], in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.GELU()]
            c_in = c
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.GroupNorm(min(8, c_in), c_in), nn.GELU()]
        self.net = nn.Sequential(*layers)
        self.out_channels = c_in
        self.grid = hw.BEV.size // 2 ** len(channels)

    def forward(self, bev: Tensor) -> Tensor:
        return self.net(bev)


class MLPHead(nn.Module):
    """Per waypoint query: LayerNorm, Linear, GELU, Linear → (x, y) (and (log σx, log σy) for the Gaussian NLL)."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, out))

    def forward(self, queries: Tensor) -> Tensor:
        return self.net(queries)


class FlowHead(nn.Module):
    """v_θ(x_τ, τ | query outputs): each noisy waypoint is embedded (`action_in`), fused with the sine-cosine time
    embedding by π0's action-time MLP (Linear on [action, time], swish, Linear), added to its query's output, and the
    K tokens go through a small bidirectional transformer and a linear map to the velocity (x, y)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.width = width
        self.action_in = nn.Linear(2, width)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)
        self.blocks = transformer(width, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 2)

    def forward(self, x_t: Tensor, time: Tensor, cond: Tensor) -> Tensor:
        """x_t (B, K, 2), time (B,), cond (B, K, width) → v (B, K, 2)."""
        action = self.action_in(x_t)
        t = sinusoidal_embedding(time, self.width)[:, None].expand_as(action)
        h = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([action, t], dim=-1))))
        return self.out(self.norm(self.blocks(h + cond)))


class DrivingVLA(nn.Module):
    """[visual tokens, text tokens, ego-state token, K waypoint queries] → transformer → head on the queries."""

    def __init__(self, cfg: DrivingVLAConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.bev_encoder = BEVEncoder(cfg.cnn_channels)
        self.bev_proj = nn.Linear(self.bev_encoder.out_channels, w)
        self.num_visual = self.bev_encoder.grid ** 2
        self.token_embedding = nn.Embedding(vocab_size, w)
        self.state_proj = nn.Sequential(nn.Linear(EGO_DIM, w), nn.GELU(), nn.Linear(w, w))
        self.queries = nn.Parameter(torch.randn(K, w) * 0.02)
        length = self.num_visual + cfg.max_text_tokens + 1 + K
        self.position = nn.Parameter(torch.randn(length, w) * 0.02)  # learned, one per slot of the fixed layout
        self.blocks = transformer(w, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(w)
        if cfg.head == "flow":
            self.head = FlowHead(w, cfg.flow_depth, cfg.num_heads, cfg.mlp_ratio)
        else:
            self.head = MLPHead(w, 4 if cfg.mlp_loss == "gaussian_nll" else 2)

    def encode_bev_map(self, bev: Tensor) -> Tensor:
        """(B, 5, H, W) in [0, 1] → visual tokens (B, grid², width), row-major from the top (far ahead) row."""
        return self.bev_proj(self.bev_encoder(bev).flatten(2).transpose(1, 2))

    def forward(self, bev: Tensor, input_ids: Tensor, attention_mask: Tensor, ego: Tensor) -> Tensor:
        """The K query outputs (B, K, width). `attention_mask` (B, T) is True on real text tokens; padding is never
        attended to."""
        b = bev.shape[0]
        tokens = torch.cat([self.encode_bev_map(bev), self.token_embedding(input_ids), self.state_proj(ego)[:, None],
                            self.queries.expand(b, -1, -1)], dim=1) + self.position
        pad = torch.ones(b, tokens.shape[1], dtype=torch.bool, device=bev.device)
        pad[:, self.num_visual:self.num_visual + input_ids.shape[1]] = attention_mask
        out = self.blocks(tokens, src_key_padding_mask=~pad)
        return self.norm(out[:, -K:])

    def loss(self, inputs: tuple, target: Tensor, noise: Tensor | None = None, time: Tensor | None = None) -> Tensor:
        """Training loss for normalised waypoints `target` (B, K, 2); `noise` (B, K, 2) and `time` (B,) for flow."""
        queries = self(*inputs)
        if self.cfg.head == "flow":
            x_t, u = flow_targets(target, noise, time)
            return F.mse_loss(self.head(x_t, time, queries), u)
        return regression_loss(self.head(queries), target, self.cfg.mlp_loss)

    @torch.no_grad()
    def sample(self, inputs: tuple, noise: Tensor | None = None) -> Tensor:
        """Normalised waypoints (B, K, 2): the MLP head's mean, or for flow `num_inference_steps` Euler steps
        x ← x + δ·v_θ(x, τ), δ = −1/n, from x = `noise` at τ = 1 (π0 Sec. 3 / App. B)."""
        queries = self(*inputs)
        if self.cfg.head != "flow":
            return self.head(queries)[..., :2]
        n = self.cfg.num_inference_steps
        x_t = noise if noise is not None else torch.randn(queries.shape[0], K, 2, device=queries.device)
        for time in euler_times(n).to(queries.device):
            x_t = x_t + (-1.0 / n) * self.head(x_t, time.expand(x_t.shape[0]), queries)
        return x_t


def regression_loss(out: Tensor, target: Tensor, kind: str) -> Tensor:
    """L1 (`out` = the mean, (..., 2)) or the Gaussian NLL ½·(log σ² + (a − μ)²/σ²) (`out` = [μ, log σ], (..., 4))."""
    if kind == "gaussian_nll":
        mean, log_std = out[..., :2], out[..., 2:].clamp(-7, 7)
        return F.gaussian_nll_loss(mean, target, torch.exp(2 * log_std))
    return F.l1_loss(out[..., :2], target)


class BCModel(nn.Module):
    """The baseline without language: BEV CNN features (flattened) and an ego-state MLP, concatenated, → MLP → K
    waypoints (TransFuser-style late fusion, without the camera/LiDAR transformer)."""

    def __init__(self, cfg: DrivingVLAConfig):
        super().__init__()
        self.cfg = cfg
        self.bev_encoder = BEVEncoder(cfg.cnn_channels)
        c, g, h = self.bev_encoder.out_channels, self.bev_encoder.grid, cfg.bc_hidden
        self.bev_proj = nn.Sequential(nn.Flatten(), nn.Linear(c * g * g, h), nn.GELU())
        self.state_mlp = nn.Sequential(nn.Linear(EGO_DIM, h), nn.GELU(), nn.Linear(h, h), nn.GELU())
        self.out = K * (4 if cfg.mlp_loss == "gaussian_nll" else 2)
        self.head = nn.Sequential(nn.Linear(2 * h, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, self.out))

    def encode_bev_map(self, bev: Tensor) -> Tensor:
        return self.bev_proj(self.bev_encoder(bev))

    def forward(self, bev: Tensor, ego: Tensor) -> Tensor:
        fused = torch.cat([self.encode_bev_map(bev), self.state_mlp(ego)], dim=-1)
        return self.head(fused).view(bev.shape[0], K, -1)

    def loss(self, inputs: tuple, target: Tensor, noise: Tensor | None = None, time: Tensor | None = None) -> Tensor:
        return regression_loss(self(*inputs), target, self.cfg.mlp_loss)

    @torch.no_grad()
    def sample(self, inputs: tuple, noise: Tensor | None = None) -> Tensor:
        return self(*inputs)[..., :2]


# ------------------------------------------------------------------------------------------------- the policy
def sanitize_stats(stats: Mapping[str, Mapping[str, Any]]) -> dict:
    """Statistics for the `Normalizer`: the one-hot command dimensions of "ego" are left as they are (mean 0, std 1),
    and every std is at least 1e-3 (a constant feature of the training data must not blow up at test time)."""
    out = {}
    for key in ("ego", "waypoints"):
        s = {name: np.asarray(v, dtype=np.float64).copy() for name, v in stats[key].items()}
        if key == "ego":
            s["mean"][4:], s["std"][4:] = 0.0, 1.0
        s["std"] = np.maximum(s["std"], 1e-3)
        out[key] = {name: v.tolist() for name, v in s.items()}
    return out


class DrivingPolicy(nn.Module):
    """A batch (or one observation) → model inputs → waypoints in metres; owns the normalisation statistics
    (buffers, saved with the weights) and the tokenizer. Batch keys: "bev" uint8 (B, 64, 64, 5), "ego" (B, EGO_DIM)
    from `process_ego_state`, "prompt" (list of B strings from `process_route`) or its tokens "input_ids" /
    "attention_mask", and for training "waypoints" (B, K·2) [m]."""

    def __init__(self, cfg: DrivingVLAConfig, stats: Mapping, tokenizer=None):
        super().__init__()
        if cfg.model == "vla" and tokenizer is None:
            raise ValueError("the VLA needs a tokenizer")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.normalizer = Normalizer(sanitize_stats(stats), {"ego": "mean_std", "waypoints": "mean_std"})
        self.net = DrivingVLA(cfg, len(tokenizer)) if cfg.model == "vla" else BCModel(cfg)

    @property
    def device(self) -> torch.device:
        return self.normalizer.ego__mean.device

    def inputs(self, batch: Mapping) -> tuple:
        device = self.device
        bev = bev_to_tensor(batch["bev"]).to(device)
        ego = self.normalizer.normalize("ego", torch.as_tensor(batch["ego"], dtype=torch.float32).to(device))
        if self.cfg.model == "bc":
            return bev, ego
        if "input_ids" not in batch:
            batch = {**batch, **tokenize(self.tokenizer, list(batch["prompt"]), self.cfg.max_text_tokens)}
        return bev, batch["input_ids"].to(device), batch["attention_mask"].to(device), ego

    def forward(self, batch: Mapping, noise: Tensor | None = None, time: Tensor | None = None) -> Tensor:
        """The training loss of a batch (`noise` (B, K, 2) and `time` (B,) for the flow head)."""
        target = torch.as_tensor(batch["waypoints"], dtype=torch.float32).to(self.device)
        target = self.normalizer.normalize("waypoints", target.view(-1, 2 * K)).view(-1, K, 2)
        return self.net.loss(self.inputs(batch), target, noise, time)

    @torch.no_grad()
    def predict_waypoints(self, batch: Mapping, noise: Tensor | None = None) -> Tensor:
        """Waypoints (B, K, 2) in metres, ego frame (x forward, y left). `noise` (B, K, 2) fixes the flow head's
        starting point (default: drawn from torch's global RNG)."""
        normalised = self.net.sample(self.inputs(batch), noise).reshape(-1, 2 * K)
        return self.normalizer.unnormalize("waypoints", normalised).view(-1, K, 2)

    @staticmethod
    def waypoints_to_controls(waypoints, speed: float) -> np.ndarray:
        return waypoints_to_controls(waypoints, speed)


def observation_batch(obs: Mapping[str, Any]) -> dict:
    """One benchmark observation as a batch of one."""
    return dict(bev=torch.as_tensor(np.asarray(obs["bev"]))[None],
                ego=torch.as_tensor(ego_state_from_observation(obs))[None], prompt=[process_route(obs["text"])])


class ClosedLoopPolicy:
    """The benchmark's policy interface: observation → normalised [acceleration, steering], re-planning every step
    (the waypoints of the last call are kept in `last_waypoints` for drawing). With a `Shield`, the controls pass
    through it. `generator` seeds the flow head's noise (one per episode for reproducible evaluation)."""

    def __init__(self, policy: DrivingPolicy, shield: "Shield | None" = None):
        self.policy, self.shield = policy.eval(), shield
        self.generator = torch.Generator().manual_seed(0)
        self.last_waypoints: np.ndarray | None = None

    def reset(self, seed: int = 0) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        noise = torch.randn(1, K, 2, generator=self.generator)
        waypoints = self.policy.predict_waypoints(observation_batch(obs), noise.to(self.policy.device))[0]
        self.last_waypoints = waypoints.cpu().numpy()
        speed = float(obs["state"][3])
        action = waypoints_to_controls(self.last_waypoints, speed)
        return self.shield(action, speed, obs["agents"]) if self.shield is not None else action


# ------------------------------------------------------------------------------------------------- safety shield
class Shield:
    """A rule-based safety layer on the controls: clamps the acceleration and steering to limits and brakes hard
    (full deceleration) when the time to collision with an agent ahead in the ego's path is below `ttc`.

    TTC: agents (the observation's `agents` rows: presence, x, y, vx, vy, cos, sin, ego frame) ahead (x > 0) whose
    lateral offset is within `corridor` metres of the ego's centre line; gap = x − `length` (two half car lengths),
    closing speed = ego speed − the agent's forward speed, TTC = gap / closing speed when closing > 0 (a constant
    velocity projection along the ego's axis, as nuPlan's TTC but 1-D)."""

    def __init__(self, ttc: float = 1.5, max_accel: float = 3.0, max_brake: float = 5.0, max_steer: float = 0.5,
                 corridor: float = 2.0, length: float = hw.Vehicle.LENGTH):
        self.ttc, self.corridor, self.length = ttc, corridor, length
        self.accel_range = (-max_brake / hw.ACCELERATION_RANGE, max_accel / hw.ACCELERATION_RANGE)
        self.steer_limit = max_steer / hw.STEERING_RANGE
        self.triggered = 0  # how many times it braked

    @classmethod
    def from_config(cls, cfg: DrivingVLAConfig) -> "Shield":
        return cls(cfg.shield_ttc, cfg.shield_max_accel, cfg.shield_max_brake, cfg.shield_max_steer)

    def time_to_collision(self, speed: float, agents: np.ndarray) -> float:
        agents = np.asarray(agents, dtype=np.float64).reshape(-1, hw.AGENT_FEATURES)
        present, x, y, vx = agents[:, 0] > 0.5, agents[:, 1], agents[:, 2], agents[:, 3]
        ahead = present & (x > 0) & (np.abs(y) < self.corridor)
        closing = speed - vx[ahead]
        gap = np.maximum(x[ahead] - self.length, 0.0)
        ttc = np.where(closing > 1e-6, gap / np.maximum(closing, 1e-6), np.inf)
        return float(ttc.min()) if len(ttc) else float("inf")

    def __call__(self, action, speed: float, agents: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64).copy()
        action[0] = np.clip(action[0], *self.accel_range)
        action[1] = np.clip(action[1], -self.steer_limit, self.steer_limit)
        if self.time_to_collision(speed, agents) < self.ttc:
            action[0] = self.accel_range[0]
            self.triggered += 1
        return action


# ------------------------------------------------------------------------------------------------- checkpoints
def policy_from_meta(meta: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None = None) -> DrivingPolicy:
    """Rebuild a policy from a checkpoint's config.json contents (config, stats, tokenizer JSON) and weights."""
    from common.config import from_dict
    from common.text import tokenizer_from_json
    cfg = from_dict(DrivingVLAConfig, meta["config"])
    tokenizer = tokenizer_from_json(meta["tokenizer"]) if meta.get("tokenizer") else None
    policy = DrivingPolicy(cfg, meta["stats"], tokenizer)
    if state_dict is not None:
        policy.load_state_dict(state_dict)
    return policy.eval()
