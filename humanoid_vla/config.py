"""Configuration of the humanoid VLA: one dataclass, named presets, CLI/YAML overrides via common.config."""

from dataclasses import dataclass

from common.envs.humanoid import TASK_NAMES, resolve_tasks


@dataclass
class HumanoidVLAConfig:
    # --- data: whole-body IK expert demonstrations on the embedded G1 benchmark (collected once, cached)
    tasks: tuple[str, ...] = TASK_NAMES  # humanoid tasks to learn (one language-conditioned policy)
    episodes_per_task: int = 20  # expert demonstrations per task
    demo_image_size: int = 64  # front-camera image side in the demos and at evaluation, pixels
    demo_seed: int = 0  # episodes of the demos (evaluation uses eval_seed: unseen placements and postures)
    collect_workers: int = 2  # processes for demo collection and DAgger rollouts
    # --- model: ResNet-18 image tokens + instruction tokens + per-body-part proprio tokens -> transformer encoder;
    #     an action decoder (flow matching, or an MLP regressor as the baseline) over the 29 joint targets
    head: str = "flow"  # "flow": flow-matching action decoder (π0's loss); "mlp": L1 regression of the chunk
    image_size: int = 64  # images are resized to this side before the ResNet
    image_stage: int = 4  # ResNet-18 stage whose feature map gives the image tokens: 4 (stride 32, 512 channels:
    #                       2×2 tokens at 64 px) or 3 (stride 16, 256 channels: 4×4 tokens; layer4 is not built)
    film: bool = False  # FiLM (Perez et al. 2018) of every ResNet block's output by the instruction, as RT-1
    #                     conditions its EfficientNet (Brohan et al. 2022): γ, β from the mean instruction-token
    #                     embedding, zero-initialised so training starts from the plain encoder
    d_model: int = 128  # transformer width
    n_heads: int = 4  # attention heads
    encoder_layers: int = 3  # transformer layers over [image, instruction, proprio] tokens
    decoder_layers: int = 2  # flow head: layers over the action tokens (self-attention + cross-attention)
    horizon: int = 10  # H: joint-target chunk length (0.2 s at 50 Hz)
    n_action_steps: int = 5  # actions of each chunk executed before predicting again
    flow_steps: int = 10  # flow head: Euler steps from noise (τ = 1) to actions (τ = 0) at inference
    noise_temperature: float = 0.0  # flow head: the starting noise at inference is T·ε (Glow's temperature,
    #                                 Kingma & Dhariwal 2018); 1 is π0's sampling, 0 starts every chunk from ε = 0
    #                                 (measured in README: independent samples per chunk make the body jitter)
    temporal_ensemble: float | None = None  # ACT's temporal ensembling (Zhao et al. 2023, Sec. 3.3): predict a
    #                                 chunk every step and execute the weighted mean of every chunk's prediction for
    #                                 that step, weights exp(-m·i), i = 0 the oldest; this is m. None: execute
    #                                 n_action_steps of each chunk open loop
    delta_actions: bool = False  # predict each chunk relative to the current joint positions, a_{t+k} − q_t, and
    #                                add q_t back at inference (openpi's DeltaActions for π0 on joint-space robots);
    #                                normalised by the demos' statistics of these deltas. False: absolute targets
    stability_weight: float = 0.0  # weight of the stability auxiliary loss: from the context, predict the centre of
    #                                 mass' horizontal offset from the middle of the feet at each of the H states that
    #                                 follow (a lean ahead is a fall ahead); 0 disables it (measured: no gain, README)
    vocab_size: int = 256  # BPE vocabulary trained on the instruction paraphrases
    max_text_tokens: int = 12  # instruction length in tokens (truncated/padded)
    shift_augment: int = 3  # random-shift augmentation of the image, pixels (DrQ); 0 disables
    # --- optimisation: behaviour cloning, then DAgger rounds on the aggregated data
    steps: int = 3000  # optimizer steps of behaviour cloning on the expert demos
    dagger_rounds: int = 2  # rounds of DAgger after BC (0: plain BC)
    dagger_episodes_per_task: int = 5  # learner rollouts per task per round, relabelled by the IK expert
    dagger_steps: int = 1000  # optimizer steps after each round, on demos + every round's relabelled rollouts
    batch_size: int = 32  # batch size
    lr: float = 3e-4  # AdamW peak learning rate (cosine decay over each phase)
    weight_decay: float = 1e-4  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm
    seed: int = 0  # drives Python, NumPy, torch and the data order
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    threads: int = 2  # torch CPU threads
    # --- bookkeeping
    run_dir: str = "runs/humanoid_vla"  # checkpoints, metrics.jsonl, DAgger data, eval results
    resume: bool = False  # continue from run_dir's last checkpoint
    log_every: int = 50  # steps between metric lines
    save_every: int = 500  # steps between checkpoints
    wandb_project: str | None = None  # log to wandb (offline unless WANDB_MODE says otherwise)
    # --- closed-loop evaluation after training
    eval_episodes: int = 10  # episodes per task
    eval_seed: int = 1000  # episodes never seen in the demos or DAgger rounds
    eval_workers: int = 2  # evaluation processes
    video_dir: str | None = None  # write a GIF per task here

    def __post_init__(self):  # a bad value is one error naming it, before any demo is collected
        resolve_tasks(self.tasks)
        if self.image_stage not in (3, 4):
            raise ValueError(f"image_stage must be 3 or 4 (ResNet-18's last two stages), got {self.image_stage}")
        if self.head not in ("flow", "mlp"):
            raise ValueError(f"head must be 'flow' or 'mlp', got {self.head!r}")
        if self.noise_temperature < 0:
            raise ValueError(f"noise_temperature must be >= 0, got {self.noise_temperature}")
        if self.stability_weight < 0:
            raise ValueError(f"stability_weight must be >= 0, got {self.stability_weight}")
        if self.temporal_ensemble is not None and self.temporal_ensemble < 0:
            raise ValueError(f"temporal_ensemble (ACT's m) must be >= 0 or None, got {self.temporal_ensemble}")
        if not 0 < self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps must be in [1, horizon={self.horizon}], got {self.n_action_steps}")


PRESETS = {
    "tiny": HumanoidVLAConfig(),
    "mlp": HumanoidVLAConfig(head="mlp", run_dir="runs/humanoid_vla_mlp"),
    # seconds-long smoke run for tests: two tasks, one demo each, tiny images and model, a few steps
    "smoke": HumanoidVLAConfig(tasks=("squat", "reach_red_ball"), episodes_per_task=1, demo_image_size=32,
                               image_size=32, d_model=32, n_heads=2, encoder_layers=1, decoder_layers=1, steps=6,
                               dagger_rounds=1, dagger_episodes_per_task=1, dagger_steps=4, batch_size=8,
                               log_every=2, save_every=3, eval_episodes=1, eval_workers=1, collect_workers=1,
                               flow_steps=2),
}
