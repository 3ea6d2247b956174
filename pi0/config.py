"""Configuration of π0 / π0.5: one dataclass, named presets (`tiny` for the CPU, `paper` for the released sizes).

CLI/YAML overrides go through `common.config.parse_config`, e.g. `python train.py --variant pi05 --steps 500`.
"""

from dataclasses import dataclass, field
from typing import Literal

from common.envs.metaworld import MT10


@dataclass
class GemmaSize:
    """One Gemma-style transformer (π0 paper, Sec. 3 and App. B; openpi `gemma.get_config`)."""
    width: int = 2048  # hidden size
    depth: int = 18  # decoder layers
    mlp_dim: int = 16384  # GeGLU hidden size
    num_heads: int = 8  # query heads
    num_kv_heads: int = 1  # key/value heads (multi-query attention)
    head_dim: int = 256  # size of one head


@dataclass
class SigLIPSize:
    """The SigLIP vision tower (`transformers.SiglipVisionConfig` fields); default: So400m/14 of PaliGemma-3B."""
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14


@dataclass
class PI0Config:
    # --- model (defaults are the paper's sizes; presets below shrink them)
    variant: Literal["pi0", "pi05"] = "pi0"  # "pi0" (state token + action-time MLP) or "pi05" (state as text + adaRMSNorm time)
    vision: SigLIPSize = field(default_factory=SigLIPSize)  # SigLIP image encoder
    vlm: GemmaSize = field(default_factory=GemmaSize)  # the VLM's language model (Gemma 2B)
    expert: GemmaSize = field(default_factory=lambda: GemmaSize(width=1024, mlp_dim=4096))  # action expert (300M)
    image_size: int = 224  # square model input side, pixels (images are resized with padding)
    vocab_size: int = 257152  # token embeddings (PaliGemma's SentencePiece vocabulary)
    max_text_tokens: int = 48  # prompt length in tokens, right-padded, widened for a longer prompt (openpi: 48 for
    #                            π0, 200 for π0.5); 0 = the longest training prompt + 8 (fixed in the checkpoint)
    max_state_dim: int = 32  # states are zero-padded to this size (one model for many robots)
    max_action_dim: int = 32  # actions are zero-padded to this size
    horizon: int = 50  # H: actions per chunk
    n_action_steps: int = 50  # actions of each chunk executed before predicting again
    num_inference_steps: int = 10  # Euler steps from τ = 1 (noise) to τ = 0 (actions)
    time_beta_alpha: float = 1.5  # τ ~ Beta(α, β)·s + (1 − s)  (π0 paper Sec. B, "flow matching timestep")
    time_beta_beta: float = 1.0
    time_s: float = 0.999  # s: τ never reaches 0
    min_period: float = 4e-3  # sinusoidal time embedding periods (openpi `posemb_sincos`)
    max_period: float = 4.0
    state_bins: int = 256  # π0.5: each normalised state dimension becomes one of this many integers in the prompt
    # --- data: scripted-expert demonstrations on Meta-World (collected once, cached by these fields)
    tasks: tuple[str, ...] = MT10  # Meta-World v3 tasks to learn (one multi-task policy)
    episodes_per_task: int = 50  # expert demonstrations per task (50: LIBERO's count; see benchmarks/README.md)
    demo_image_size: int = 128  # camera image side in the demos and at evaluation, pixels
    cameras: tuple[str, ...] = ("corner", "gripperPOV")  # Meta-World cameras, one image each in the prefix:
    #                                                   the third-person view and the wrist view, as a robot has
    demo_seed: int = 0  # placements of the demos (evaluation uses eval_seed: unseen placements)
    collect_workers: int = 2  # processes for demo collection
    dataset: str | None = None  # train on your demos instead: a directory of ours or a LeRobot v3.0 dataset
    #                             (common.lerobot.open_dataset); it must hold the --cameras images, --state_key and
    #                             --action_key; the evaluation stays Meta-World's (--eval_episodes 0 for another robot)
    action_key: str | None = None  # with --dataset: its action feature (None: "action", LeRobot's name)
    state_key: str = "observation.state"  # the robot's proprioception (hand xyz, gripper); the privileged 39-D
    #                                       "observation.environment_state" (object and goal poses) is the oracle
    tokenizer_vocab: int = 1024  # BPE trained on the prompts (PaliGemma's tokenizer cannot be downloaded here)
    tokenizer_path: str | None = None  # a local tokenizer directory to use instead (e.g. PaliGemma's)
    shift_augment: int = 4  # random-shift augmentation of the model-size image, pixels (DrQ); 0 disables
    # --- optimisation (openpi: AdamW, warmup + cosine decay, clip 1.0)
    steps: int = 30_000  # optimizer steps
    batch_size: int = 32  # global batch (split over torchrun ranks)
    lr: float = 2.5e-5  # AdamW peak learning rate
    min_lr: float = 2.5e-6  # end of the cosine decay
    warmup_steps: int = 1000  # linear warmup
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 1e-10  # AdamW weight decay (openpi's default)
    grad_clip: float = 1.0  # max gradient norm
    seed: int = 0  # drives Python, NumPy, torch, the data order and the noise
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    dtype: Literal["float32", "bfloat16"] = "float32"  # "float32" or "bfloat16" autocast on CUDA
    fsdp: bool = False  # shard parameters with FSDP2 (`fully_shard`) instead of DDP under torchrun
    num_workers: int = 0  # DataLoader worker processes
    threads: int = 2  # torch CPU threads
    # --- bookkeeping
    run_dir: str = "runs/pi0"  # checkpoints, metrics.jsonl, eval results
    resume: bool = False  # continue from run_dir's last checkpoint
    log_every: int = 25  # steps between metric lines
    save_every: int = 500  # steps between checkpoints
    wandb_project: str | None = None  # log to wandb (offline unless WANDB_MODE says otherwise)
    # --- closed-loop evaluation after training
    eval_episodes: int = 10  # episodes per task
    eval_seed: int = 1000  # placements never seen in the demos
    eval_max_steps: int = 200  # step limit per episode
    eval_workers: int = 2  # evaluation processes
    video_dir: str | None = None  # save rollout videos here


# The CPU preset. Sizes keep LeRobot's constraints (8 heads, VLM and expert share depth, heads and head size) so the
# benchmark can build the same model in LeRobot.
TINY = dict(
    vision=SigLIPSize(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                      patch_size=8),
    vlm=GemmaSize(width=128, depth=4, mlp_dim=512, num_heads=8, num_kv_heads=1, head_dim=16),
    expert=GemmaSize(width=64, depth=4, mlp_dim=256, num_heads=8, num_kv_heads=1, head_dim=16),
    image_size=64, vocab_size=1024, tokenizer_vocab=1024, max_text_tokens=0, max_state_dim=40, max_action_dim=4, horizon=8,
    n_action_steps=4, steps=3000, lr=3e-4, min_lr=3e-5, warmup_steps=200, weight_decay=1e-4,
)

PRESETS = {
    "tiny": PI0Config(**TINY),
    "paper": PI0Config(),
    # a minute-long smoke run for tests: two tasks, two demos each, small images, a few steps
    "smoke": PI0Config(**{**TINY, **dict(
        vision=SigLIPSize(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          patch_size=8),
        vlm=GemmaSize(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=8),
        expert=GemmaSize(width=16, depth=2, mlp_dim=32, num_heads=8, num_kv_heads=1, head_dim=8),
        image_size=32, demo_image_size=32, tasks=("reach-v3", "drawer-close-v3"), episodes_per_task=2,
        tokenizer_vocab=300, steps=6, batch_size=8, warmup_steps=2, log_every=2, save_every=3, eval_episodes=1,
        eval_max_steps=10, eval_workers=1, collect_workers=1,
        cameras=("corner",))}),
}
