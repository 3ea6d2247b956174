"""Configuration of the driving VLA: one dataclass, named presets (`tiny` for the CPU, `base` for a GPU, `smoke`
for tests).

CLI/YAML overrides go through `common.config.parse_config`, e.g.
`python train.py --model vla --head flow --dagger_rounds 3 --scenarios highway merge`.
"""

from dataclasses import dataclass
from typing import Literal

from common.envs.highway import SCENARIOS

ALL_SCENARIOS = tuple(SCENARIOS)


@dataclass
class DrivingVLAConfig:
    # --- model
    model: Literal["bc", "vla"] = "vla"  # "bc": BEV CNN + ego-state MLP, no language; "vla": BEV + text + state tokens
    #                                      through a transformer with waypoint queries
    head: Literal["mlp", "flow"] = "mlp"  # VLA head: per-query MLP regression, or a flow-matching head (π0 Eq. 1)
    mlp_loss: Literal["l1", "gaussian_nll"] = "l1"  # MLP head (and bc): L1 on normalised waypoints, or a diagonal
    #                                                Gaussian negative log-likelihood (the head also predicts log σ)
    width: int = 64  # transformer width (tokens of every kind are projected to it)
    depth: int = 3  # transformer layers
    num_heads: int = 4  # attention heads
    mlp_ratio: int = 2  # feed-forward width = mlp_ratio · width
    cnn_channels: tuple[int, ...] = (16, 32, 64, 64)  # BEV CNN: one stride-2 3x3 conv stage per entry; 64 px -> 4 x 4
    #                                                  visual tokens of 16 m x 16 m
    max_text_tokens: int = 24  # prompt length in tokens (BOS included), right-padded
    tokenizer_vocab: int = 512  # byte-level BPE trained on the benchmark's sentences
    flow_depth: int = 2  # flow head: transformer layers over the K noisy waypoint tokens
    num_inference_steps: int = 10  # flow head: Euler steps from τ = 1 (noise) to τ = 0 (waypoints)
    time_beta_alpha: float = 1.5  # τ ~ Beta(α, β)·s + (1 − s) (π0 App. B)
    time_beta_beta: float = 1.0
    time_s: float = 0.999
    bc_hidden: int = 128  # bc: width of the fused MLP
    # --- data: rule-based expert demonstrations on the embedded highway-env scenarios (cached by these fields)
    scenarios: tuple[str, ...] = ALL_SCENARIOS  # common.envs.highway.SCENARIOS to train and evaluate on
    episodes_per_scenario: int = 10  # expert episodes per scenario (training seeds 0 .. n-1)
    horizon_s: float | None = None  # episode limit [s] of every scenario (None: each scenario's own, 15-20 s)
    collect_workers: int = 2  # processes for expert collection, DAgger rollouts and evaluation
    # --- optimisation (AdamW, linear warmup + cosine decay)
    steps: int = 3000  # behaviour-cloning steps on the expert data
    batch_size: int = 32
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0  # drives Python, NumPy, torch, the data order, the flow noise and the DAgger mixing
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    threads: int = 2  # torch CPU threads while training
    # --- DAgger (Ross et al., 2011): roll out the learner, relabel the visited states with the expert, aggregate
    dagger_rounds: int = 2  # rounds after behaviour cloning (0: plain BC)
    dagger_episodes: int = 2  # learner episodes per scenario per round (training seeds after the demos')
    dagger_beta: float = 0.0  # p of β_i = p^i: the probability that round i executes the expert's action (0: the
    #                           learner drives every step of every round, "β_1 = 1 then 0": round 0 is the expert's)
    dagger_relabel_every: int = 2  # relabel every k-th visited state (each label costs a 25-step expert rollout)
    dagger_steps: int = 1000  # fine-tuning steps on the aggregate after each round
    # --- closed-loop evaluation (held-out seeds)
    eval_seeds: int = 5  # episodes per scenario (seeds("eval", n))
    eval_each_round: bool = False  # also evaluate after BC and after every DAgger round (the DAgger curve)
    shield: bool = False  # safety shield on the learner's controls (clamp + brake on a short time to collision)
    shield_ttc: float = 1.5  # [s] brake hard below this time to collision with an agent ahead in the ego's path
    shield_max_accel: float = 3.0  # [m/s²] clamp of the commanded acceleration
    shield_max_brake: float = 5.0  # [m/s²] clamp of the commanded deceleration (5 = highway-env's full range)
    shield_max_steer: float = 0.5  # [rad] clamp of the steering angle
    gif: bool = True  # save a GIF of the first evaluation episode with the predicted waypoints drawn
    # --- bookkeeping
    run_dir: str = "runs/driving_vla"  # checkpoints, metrics.jsonl, DAgger data, eval results
    resume: bool = False  # continue from run_dir's last checkpoint
    log_every: int = 25
    save_every: int = 500
    wandb_project: str | None = None


PRESETS = {
    "tiny": DrivingVLAConfig(),
    # a bigger model for a GPU (no paper defines "the" driving VLA: see README)
    "base": DrivingVLAConfig(width=384, depth=8, num_heads=6, mlp_ratio=4, cnn_channels=(64, 128, 256, 384),
                             max_text_tokens=40, tokenizer_vocab=1024,
                             episodes_per_scenario=40, steps=30_000, batch_size=256, lr=3e-4, min_lr=3e-5,
                             warmup_steps=1000, dagger_rounds=4, dagger_episodes=4, dagger_steps=5000,
                             eval_seeds=20, bc_hidden=512),
    # seconds-long runs for tests: one scenario, two demos, a few steps, one DAgger round
    "smoke": DrivingVLAConfig(width=32, depth=1, num_heads=2, mlp_ratio=2, cnn_channels=(8, 16, 32),
                              tokenizer_vocab=300, flow_depth=1, bc_hidden=32, scenarios=("highway",),
                              episodes_per_scenario=2, horizon_s=4.0,
                              collect_workers=1, steps=6, batch_size=8, warmup_steps=2, dagger_rounds=1,
                              dagger_relabel_every=20, dagger_steps=4, eval_seeds=1, log_every=2, save_every=3,
                              threads=1),
}
