"""Configuration of DreamerV3: one dataclass, named presets (`tiny` for a CPU, the paper's `small` … `xlarge`).

Defaults follow the DreamerV3 paper (Hafner et al. 2023, arXiv:2301.04104v1) and its code at that version
(danijar/dreamerv3 @84ecf19, `configs.yaml`, `dmc_vision`); CLI/YAML overrides go through
`common.config.parse_config`, e.g. `python train.py --task dmc/walker-walk --preset small`.
"""

from dataclasses import dataclass
from typing import Literal


@dataclass
class DreamerConfig:
    # --- environment
    task: str = "dmc/cartpole-balance"  # "dmc/<domain>-<task>" (dm-control from pixels) or "gym/<env id>"
    obs: Literal["image", "vector"] = "image"  # what the agent sees: 64 px renders (CNN encoder/decoder) or the
    #                                             simulator's state vector (MLP encoder/decoder on symlog inputs)
    image_size: int = 64  # square pixel observations
    action_repeat: int = 2  # environment steps per agent step (rewards summed), DreamerV3's DMC setting
    fast_render: bool = False  # shadows, reflections and multisampling off: ~6x faster, different pixels
    time_limit: int | None = None  # environment steps per episode at most (None: the task's own; dm-control 1000)
    # --- world model (Sec. 2; sizes: the presets below)
    deter: int = 4096  # GRU recurrent state h
    units: int = 1024  # hidden units of every MLP (RSSM, heads, actor, critic)
    layers: int = 5  # hidden layers of the heads, actor and critic
    cnn_depth: int = 96  # channels of the first CNN stage (doubled per stage, down to 4x4)
    stoch: int = 32  # categorical latents z ...
    classes: int = 32  # ... of this many classes each
    unimix: float = 0.01  # mix 1% uniform into every categorical (latents and discrete actions)
    bins: int = 255  # two-hot bins of the reward and critic, uniform in symlog space over [-20, 20]
    free_nats: float = 1.0  # free bits: KL terms below 1 nat are clipped
    # --- loss scales (Eq. 5 and Sec. 3)
    scale_image: float = 1.0
    scale_vector: float = 1.0  # symlog squared error of vector observations
    scale_reward: float = 1.0
    scale_cont: float = 1.0
    scale_dyn: float = 0.5  # β_dyn, KL(sg(posterior) ‖ prior)
    scale_rep: float = 0.1  # β_rep, KL(posterior ‖ sg(prior))
    scale_slowreg: float = 1.0  # critic regulariser towards its EMA
    # --- actor-critic (Sec. 3)
    imag_horizon: int = 15  # imagined steps from every replayed posterior state
    horizon: int = 333  # γ = 1 − 1/333 = 0.997
    return_lambda: float = 0.95  # λ of the λ-returns
    actent: float = 3e-4  # η, actor entropy scale
    # continuous actions: "backprop" (the paper, through the dynamics) or "reinforce" (the official code at HEAD);
    # discrete actions always use REINFORCE
    actor_grad_cont: Literal["backprop", "reinforce"] = "backprop"
    retnorm_decay: float = 0.99  # EMA of the return percentiles
    retnorm_low: float = 5.0  # percentiles of the return range S
    retnorm_high: float = 95.0
    min_std: float = 0.1  # continuous actions: Normal(tanh(μ), σ), σ ∈ [min_std, max_std]
    max_std: float = 1.0
    slow_critic_fraction: float = 0.02  # EMA rate of the slow critic (updated every step)
    # --- optimisation (Adam with global-norm clipping)
    model_lr: float = 1e-4
    model_eps: float = 1e-8
    model_clip: float = 1000.0
    actor_lr: float = 3e-5
    critic_lr: float = 3e-5
    ac_eps: float = 1e-5
    ac_clip: float = 100.0
    # --- replay and schedule
    batch_size: int = 16  # sequences per batch
    batch_length: int = 64  # steps per sequence
    train_ratio: int = 512  # replayed steps per agent step (DMC: 512 = one update every 2 agent steps)
    prefill: int = 1024  # agent steps of a uniform random policy before training
    replay_size: int = 1_000_000  # agent steps kept (FIFO)
    steps: int = 1_000_000  # agent steps in all
    # --- bookkeeping
    seed: int = 0  # drives Python, NumPy, JAX and the environment
    run_dir: str = "runs/dreamer"  # checkpoints, metrics.jsonl, returns.png
    resume: bool = False  # continue from run_dir's last checkpoint
    save_every: int = 10_000  # agent steps between checkpoints
    eval_episodes: int = 5  # episodes of the final evaluation


# The paper's sizes (DreamerV3 v1, Table B.1 / `configs.yaml`: small, medium, large, xlarge) and a CPU preset.
SIZES = {
    "tiny": dict(deter=128, units=128, layers=1, cnn_depth=8, stoch=8, classes=8),
    "small": dict(deter=512, units=512, layers=2, cnn_depth=32),
    "medium": dict(deter=1024, units=640, layers=3, cnn_depth=48),
    "large": dict(deter=2048, units=768, layers=4, cnn_depth=64),
    "xlarge": dict(deter=4096, units=1024, layers=5, cnn_depth=96),
}
PRESETS = {
    # CPU: a tiny model and short sequences on the easiest pixel task we found that it learns in ~30 min here,
    # gymnasium's CartPole-v1 from 64 px renders (README: cartpole-balance needs ~10x more updates). One update per
    # agent step (ratio 128 = batch 8 x 16): an update costs ~0.5 s on the 2-core CPU, mostly the 64 px
    # convolutions, so updates, not environment steps, are the budget.
    "tiny": DreamerConfig(**SIZES["tiny"], task="gym/CartPole-v1", batch_size=8, batch_length=16, train_ratio=128,
                          prefill=500, steps=3500, replay_size=100_000, save_every=1000),
    **{name: DreamerConfig(**sizes) for name, sizes in SIZES.items() if name != "tiny"},
}
