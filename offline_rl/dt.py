"""Decision Transformer (Chen et al., 2021, arXiv:2106.01345), with CORL's hyperparameters.

RL as sequence modelling: a causal transformer reads the last K = 20 timesteps as the token sequence
(R̂₁, s₁, a₁, R̂₂, s₂, a₂, …), where R̂_t = Σ_{t' ≥ t} r_t' is the return-to-go, and predicts a_t from the token of
s_t (Sec. 3, Alg. 1). Each modality has its own linear embedding; a learned embedding of the episode timestep is
added to all three tokens of that step. Training minimises the squared error of the predicted actions over the
real (unpadded) steps. At test time R̂₁ is a target return and R̂ drops by each reward received.

    python offline_rl/dt.py
    python offline_rl/dt.py --preset corl --dataset /data/hopper-medium-v2.hdf5 --env_id Hopper-v5 --target_return 3600
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config import parse_config
from offline_rl.data import OfflineDataset
from offline_rl.runner import RunConfig, run


@dataclass
class DTConfig(RunConfig):
    batch_size: int = 64  # sequences per step (CORL: 64)
    context: int = 20  # K, timesteps per sequence
    embed_dim: int = 128  # token width
    layers: int = 3  # transformer blocks
    heads: int = 1  # attention heads
    dropout: float = 0.1  # embedding, attention and residual dropout
    lr: float = 1e-4  # AdamW
    weight_decay: float = 1e-4  # AdamW
    warmup_steps: int = 10_000  # linear learning-rate warm-up
    grad_clip: float = 0.25  # gradient-norm clip
    reward_scale: float = 0.001  # returns-to-go are multiplied by this (CORL, locomotion)
    target_return: float = 0.0  # R̂₁ at evaluation (unscaled); 0 = the dataset's expert reference return
    episode_len: int = 0  # timestep-embedding size; 0 = the environment's time limit


PRESETS = {
    # ~0.5 s per update on one CPU core (64 × 60 tokens through 3 blocks): a short budget by default
    "default": DTConfig(updates=1_000, warmup_steps=100, eval_every=500, checkpoint_every=500),
    "corl": DTConfig(updates=100_000, eval_every=10_000, checkpoint_every=10_000),  # CORL's D4RL budget
}


class DecisionTransformer(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, cfg: DTConfig, episode_len: int):
        super().__init__()
        d = cfg.embed_dim
        self.timestep = nn.Embedding(episode_len + cfg.context, d)
        self.embed_return, self.embed_state, self.embed_action = (nn.Linear(1, d), nn.Linear(obs_dim, d),
                                                                  nn.Linear(act_dim, d))
        self.embed_norm, self.embed_drop = nn.LayerNorm(d), nn.Dropout(cfg.dropout)
        # pre-norm GPT blocks (GELU MLP of width 4d) from torch, causal through the mask in forward
        block = nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, cfg.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d)
        self.action_head = nn.Sequential(nn.Linear(d, act_dim), nn.Tanh())
        for m in self.modules():  # GPT-2 init (as CORL): N(0, 0.02) weights, zero biases
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, returns: Tensor, states: Tensor, actions: Tensor, timesteps: Tensor,
                pad: Tensor | None = None) -> Tensor:
        """returns (B, K), states (B, K, S), actions (B, K, A), timesteps (B, K); pad (B, K) True = padding.
        Returns the predicted actions (B, K, A), each read from its state token."""
        b, k = returns.shape
        time = self.timestep(timesteps)
        tokens = torch.stack([self.embed_return(returns[..., None]) + time, self.embed_state(states) + time,
                              self.embed_action(actions) + time], dim=2).reshape(b, 3 * k, -1)  # R̂₁ s₁ a₁ R̂₂ …
        x = self.embed_drop(self.embed_norm(tokens))
        causal = torch.ones(3 * k, 3 * k, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        key_pad = None if pad is None else pad.repeat_interleave(3, dim=1)
        x = self.out_norm(self.blocks(x, mask=causal, src_key_padding_mask=key_pad, is_causal=True))
        return self.action_head(x[:, 1::3])


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """R̂_t = Σ_{t' ≥ t} r_t' (undiscounted, DT Sec. 3)."""
    return np.cumsum(rewards[::-1])[::-1].copy()


class DT(nn.Module):
    def __init__(self, cfg: DTConfig, ds: OfflineDataset):
        super().__init__()
        self.cfg = cfg
        spec = gym.spec(ds.env_id)
        self.episode_len = cfg.episode_len or spec.max_episode_steps or 1000
        self.episodes = [dict(states=ds.observations[s], actions=ds.actions[s],
                              rtg=returns_to_go(ds.rewards[s]) * cfg.reward_scale) for s in ds.episode_slices()]
        lengths = np.array([len(e["states"]) for e in self.episodes])
        if lengths.max() > self.episode_len:
            raise ValueError(f"an episode has {lengths.max()} steps, longer than episode_len={self.episode_len}")
        self.sample_prob = torch.as_tensor(lengths / lengths.sum())  # episodes drawn in proportion to length
        self.target_return = cfg.target_return or ds.ref_max_score or float(ds.episode_returns().max())
        self.model = DecisionTransformer(ds.observations.shape[1], ds.actions.shape[1], cfg, self.episode_len)
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():  # no weight decay on biases, norms and embeddings (minGPT)
            (decay if p.ndim >= 2 and "timestep" not in name else no_decay).append(p)
        self.optimizers = dict(model=torch.optim.AdamW([dict(params=decay, weight_decay=cfg.weight_decay),
                                                        dict(params=no_decay, weight_decay=0.0)], lr=cfg.lr))
        self.schedulers = dict(model=torch.optim.lr_scheduler.LambdaLR(
            self.optimizers["model"], lambda step: min((step + 1) / cfg.warmup_steps, 1.0)))

    def sample(self) -> tuple[Tensor, ...]:
        """B windows of K steps: an episode in proportion to its length, a uniform start, right-padded."""
        k, device = self.cfg.context, self.cfg.device
        chosen = torch.multinomial(self.sample_prob, self.cfg.batch_size, replacement=True).tolist()
        out = {n: [] for n in ("rtg", "states", "actions", "timesteps", "pad")}
        for i in chosen:
            ep = self.episodes[i]
            start = int(torch.randint(len(ep["states"]), ()))
            n = min(k, len(ep["states"]) - start)
            for name in ("rtg", "states", "actions"):
                x = ep[name][start:start + n]
                out[name].append(np.concatenate([x, np.zeros((k - n, *x.shape[1:]), np.float32)]))
            out["timesteps"].append(np.arange(start, start + k))
            out["pad"].append(np.arange(k) >= n)
        return tuple(torch.as_tensor(np.stack(out[n]), device=device) for n in out)

    def update(self) -> dict[str, float]:
        rtg, states, actions, timesteps, pad = self.sample()
        predicted = self.model(rtg.float(), states, actions, timesteps, pad)
        loss = (F.mse_loss(predicted, actions, reduction="none").mean(-1) * ~pad).sum() / (~pad).sum()
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        opt.step()
        self.schedulers["model"].step()
        return dict(loss=loss.detach(), lr=self.schedulers["model"].get_last_lr()[0])

    @torch.no_grad()
    def evaluate(self, env_id: str, episodes: int, seed: int, obs_mean, obs_std, max_action: float) -> np.ndarray:
        """Roll out with R̂₁ = target_return, conditioning on the last K steps (DT Alg. 1, test time)."""
        env, k, device = gym.make(env_id), self.cfg.context, self.cfg.device
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        totals = []
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            states = torch.zeros(1, self.episode_len + 1, obs_dim, device=device)
            actions = torch.zeros(1, self.episode_len, act_dim, device=device)
            rtg = torch.zeros(1, self.episode_len + 1, device=device)
            rtg[0, 0] = self.target_return * self.cfg.reward_scale
            timesteps = torch.arange(self.episode_len, device=device)[None]
            total, done, t = 0.0, False, 0
            while not done:
                x = obs if obs_mean is None else (obs - obs_mean) / obs_std
                states[0, t] = torch.as_tensor(x, dtype=torch.float32)
                lo = max(0, t + 1 - k)
                predicted = self.model(rtg[:, lo:t + 1], states[:, lo:t + 1], actions[:, lo:t + 1],
                                       timesteps[:, lo:t + 1])
                actions[0, t] = predicted[0, -1]
                obs, reward, terminated, truncated, _ = env.step(predicted[0, -1].cpu().numpy() * max_action)
                rtg[0, t + 1] = rtg[0, t] - reward * self.cfg.reward_scale
                total, done, t = total + float(reward), terminated or truncated, t + 1
            totals.append(total)
        env.close()
        return np.array(totals)


def main(args: list[str] | None = None) -> dict:
    cfg = parse_config(PRESETS, args, default="default", description=__doc__)
    return run(cfg, "dt", lambda ds: DT(cfg, ds))


if __name__ == "__main__":
    main()
