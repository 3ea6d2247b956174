"""Configuration of OpenVLA / OpenVLA-OFT: one dataclass, named presets (`tiny` for the CPU, `paper` for OpenVLA-7B).

CLI/YAML overrides go through `common.config.parse_config`, e.g. `python train.py --variant oft --steps 500`.
"""

from dataclasses import dataclass, field, replace
from typing import Literal

from common.envs.metaworld import MT10


@dataclass
class LlamaSize:
    """One Llama-2 decoder (Touvron et al. 2023; HF `LlamaConfig` fields). Default: Llama-2 7B."""
    width: int = 4096  # hidden size
    depth: int = 32  # decoder layers
    mlp_dim: int = 11008  # SwiGLU hidden size
    num_heads: int = 32  # query heads
    num_kv_heads: int = 32  # key/value heads (Llama-2 7B: full multi-head attention)
    rope_theta: float = 10000.0  # RoPE base
    rms_eps: float = 1e-5  # RMSNorm epsilon (Llama-2's config)


@dataclass
class OpenVLAConfig:
    # --- model (defaults are OpenVLA-7B's sizes; presets below shrink them)
    variant: Literal["openvla", "oft"] = "openvla"  # "openvla": one action, autoregressive tokens; "oft": a chunk in
    #                                                 one parallel pass, L1 regression head (OpenVLA-OFT)
    vision: Literal["tiny", "paper"] = "paper"  # fused DINOv2 ViT-L/14 + SigLIP So400m/14 (`common.encoders`)
    llm: LlamaSize = field(default_factory=LlamaSize)  # the language model (Llama-2 7B)
    image_size: int = 224  # square model input side, pixels (resized without padding: "resize-naive")
    text_vocab: int = 32000  # the tokenizer's vocabulary; the action tokens are its last `action_bins` ids
    vocab_size: int = 32064  # rows of the embedding/LM head: text_vocab padded to a multiple of 64 (as OpenVLA)
    action_bins: int = 256  # uniform bins per action dimension over [-1, 1] after q01/q99 normalisation
    max_text_tokens: int = 0  # prompt length in tokens (BOS, left padding, prompt), widened for a longer prompt
    #                           (never truncated); 0 = the longest training prompt + 8
    horizon: int = 0  # actions per forward pass; 0 = the variant's: 1 (OpenVLA), K = 8 (OFT, its LIBERO setting)
    n_action_steps: int = 0  # actions of each prediction executed before predicting again; 0 = all of them (as
    #                          both papers do)
    # --- OFT only (Kim et al. 2025, Sec. 4)
    use_proprio: bool = True  # OFT: the robot state enters the LLM as one token (proprio projector)
    use_film: bool = False  # OFT+: FiLM-modulate the vision features with the mean language embedding
    # --- data: scripted-expert demonstrations on Meta-World (collected once, cached by these fields)
    tasks: tuple[str, ...] = MT10  # Meta-World v3 tasks to learn (one multi-task policy)
    episodes_per_task: int = 50  # expert demonstrations per task (50: LIBERO's count; see benchmarks/README.md)
    demo_image_size: int = 128  # camera image side in the demos and at evaluation, pixels
    cameras: tuple[str, ...] = ("corner", "gripperPOV")  # Meta-World cameras; each image's patches enter the LLM
    #   in turn. OFT reads a third-person and a wrist image, as here; OpenVLA itself one (--cameras corner)
    demo_seed: int = 0  # placements of the demos (evaluation uses eval_seed: unseen placements)
    collect_workers: int = 2  # processes for demo collection
    dataset: str | None = None  # train on your demos instead: a directory of ours or a LeRobot v3.0 dataset
    #                             (common.lerobot.open_dataset); it must hold the --cameras images, --state_key and
    #                             --action_key; the evaluation stays Meta-World's (--eval_episodes 0 for another robot)
    action_key: str | None = None  # with --dataset: its action feature (None: "action", LeRobot's name)
    state_key: str = "observation.state"  # OFT's proprio input: the robot's hand xyz and gripper; the privileged
    #                                       39-D "observation.environment_state" (object and goal poses) is the oracle
    tokenizer_vocab: int = 1024  # BPE trained on the prompts (Llama-2's tokenizer cannot be downloaded here)
    tokenizer_path: str | None = None  # a local tokenizer directory to use instead (e.g. Llama-2's)
    crop_scale: float = 0.9  # OpenVLA's image augmentation: a random crop of this area fraction, resized back;
    #                          evaluation takes the centre crop of the same size. 1.0 disables
    # --- optimisation
    steps: int = 200_000  # optimizer steps
    batch_size: int = 32  # global batch (split over torchrun ranks)
    lr: float = 2e-5  # AdamW peak learning rate (OpenVLA: 2e-5 constant; OFT: 5e-4 with LoRA)
    min_lr: float = 2e-5  # end of the cosine decay (equal to lr: a constant rate, as OpenVLA)
    warmup_steps: int = 0  # linear warmup
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm
    seed: int = 0  # drives Python, NumPy, torch, the data order and the crops
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    dtype: Literal["float32", "bfloat16"] = "float32"  # "float32" or "bfloat16" autocast on CUDA
    fsdp: bool = False  # shard parameters with FSDP2 (`fully_shard`) instead of DDP under torchrun
    num_workers: int = 0  # DataLoader worker processes
    threads: int = 2  # torch CPU threads
    # --- bookkeeping
    run_dir: str = ""  # checkpoints, metrics.jsonl, eval results; "" = runs/<variant>
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


# The CPU preset, trained from scratch: the same data, steps and optimiser as pi0's tiny preset.
TINY = dict(
    vision="tiny", llm=LlamaSize(width=128, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=4),
    image_size=112, text_vocab=1024 + 256, vocab_size=1280, tokenizer_vocab=1024,
    steps=3000, lr=3e-4, min_lr=3e-5, warmup_steps=200, weight_decay=1e-4,
)

PRESETS = {
    "tiny": OpenVLAConfig(**TINY),
    "paper": OpenVLAConfig(),
    # a minute-long smoke run for tests: two tasks, two demos each, small images, a few steps
    "smoke": OpenVLAConfig(**{**TINY, **dict(
        llm=LlamaSize(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=2),
        image_size=56, demo_image_size=32, tasks=("reach-v3", "drawer-close-v3"), episodes_per_task=2,
        tokenizer_vocab=300, text_vocab=300 + 256, vocab_size=576, steps=6, batch_size=8, warmup_steps=2,
        log_every=2, save_every=3, eval_episodes=1, eval_max_steps=10, eval_workers=1, collect_workers=1,
        cameras=("corner",))}),
}


def resolve(cfg: OpenVLAConfig) -> OpenVLAConfig:
    """The config with the variant's defaults filled in (horizon, n_action_steps, run_dir)."""
    horizon = cfg.horizon or (1 if cfg.variant == "openvla" else 8)
    return replace(cfg, horizon=horizon, n_action_steps=cfg.n_action_steps or horizon,
                   run_dir=cfg.run_dir or f"runs/{cfg.variant}")
