"""Configuration of GR00T N1.5: one dataclass, named presets (`tiny` for the CPU, `paper` for the released N1.5-3B).

The `paper` values are the released checkpoint's `config.json` (nvidia/GR00T-N1.5-3B; Isaac-GR00T tag n1.5-release,
`FlowmatchingActionHeadConfig` and `EagleBackbone`). CLI/YAML overrides go through `common.config.parse_config`,
e.g. `python train.py --steps 500 --no-tune_llm`.
"""

from dataclasses import dataclass, field

from common.envs.metaworld import MT10


@dataclass
class SigLIPSize:
    """The Eagle 2.5 vision tower (`transformers.SiglipVisionConfig` fields): SigLIP So400m/14 at 224 px."""
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    vision_use_head: bool = True  # the attention-pooling head: in the release (and its parameter count), output unused


@dataclass
class Qwen3Size:
    """The Eagle 2.5 language model (Qwen3-1.7B), of which only the first `select_layer` decoder layers are kept."""
    hidden_size: int = 2048
    intermediate_size: int = 6144  # SwiGLU MLP width
    num_attention_heads: int = 16
    num_key_value_heads: int = 8  # grouped-query attention
    head_dim: int = 128
    rope_theta: float = 1e6
    vocab_size: int = 151680


@dataclass
class TransformerSize:
    """A stack of GR00T's `BasicTransformerBlock`s (the DiT, or the self-attention over the VL tokens)."""
    num_layers: int = 16
    num_heads: int = 32
    head_dim: int = 48  # width = num_heads · head_dim
    dropout: float = 0.2  # on the attention output (twice: to_out and final_dropout) and in the feed-forward


@dataclass
class Gr00tConfig:
    # --- System 2: the Eagle 2.5 VLM (GR00T N1 Sec. 2.1)
    vision: SigLIPSize = field(default_factory=SigLIPSize)
    llm: Qwen3Size = field(default_factory=Qwen3Size)
    select_layer: int = 12  # the LLM is cut after this many decoder layers; its final RMSNorm is kept (N1.5: 12)
    image_size: int = 224  # square model input side, pixels (256 tokens per image at patch 14)
    tune_llm: bool = False  # train the language model (the release freezes it)
    tune_visual: bool = False  # train the vision tower and the connector (the release finetune script: False)
    max_text_tokens: int = 0  # instruction length in tokens, left-padded (Eagle pads left), widened for a longer
    #                           one (never truncated); 0 = the longest training instruction + 4 (fixed in the checkpoint)
    tokenizer_vocab: int = 1024  # BPE trained on the instructions (Eagle's Qwen3 tokenizer cannot be downloaded here)
    tokenizer_path: str | None = None  # a local tokenizer directory to use instead
    # --- System 1: the flow-matching action head (GR00T N1 Sec. 2.1-2.2)
    vl_self_attention: TransformerSize = field(
        default_factory=lambda: TransformerSize(num_layers=4, num_heads=32, head_dim=64))  # over the VL tokens; its
    #                                                                     width must equal llm.hidden_size
    dit: TransformerSize = field(default_factory=TransformerSize)  # the DiT; width = input_embedding_dim
    hidden_size: int = 1024  # state-encoder hidden width, DiT output width, action-decoder width
    num_future_tokens: int = 32  # learned tokens between the state token and the actions (N1.5; N1.6+ has none)
    max_seq_len: int = 1024  # rows of the action tokens' learned position embedding
    max_state_dim: int = 64  # states are zero-padded to this size (one model for many robots)
    max_action_dim: int = 32  # actions are zero-padded to this size; the loss masks the padding
    num_embodiments: int = 32  # embodiment slots of every embodiment-specific layer
    embodiment_id: int = 31  # this robot's slot (Isaac-GR00T's "new_embodiment" tag is 31)
    horizon: int = 16  # H: actions per chunk
    n_action_steps: int = 16  # actions of each chunk executed before predicting again
    num_inference_steps: int = 4  # Euler steps from t = 0 (noise) to t = 1 (actions)
    num_timestep_buckets: int = 1000  # t enters both time embeddings as the integer ⌊1000·t⌋
    noise_beta_alpha: float = 1.5  # t = (s − u)/s, u ~ Beta(α, β): most samples near t = 0 (noise)
    noise_beta_beta: float = 1.0
    noise_s: float = 0.999
    crop_scale: float = 0.95  # training images: a random crop of this fraction of each side, resized back (centre
    #                           crop at evaluation), as the release's data transforms; 1 disables
    color_jitter: bool = False  # training images: the release's VideoColorJitter after the crop (brightness 0.3,
    #                             contrast 0.4, saturation 0.5, hue 0.08, in a random order); off in the MT10 table,
    #                             whose methods all train without it
    # --- data: scripted-expert demonstrations on Meta-World (collected once, cached by these fields)
    tasks: tuple[str, ...] = MT10  # Meta-World v3 tasks to learn (one multi-task policy)
    episodes_per_task: int = 50  # expert demonstrations per task (the same demos as π0 and OpenVLA)
    demo_image_size: int = 128  # camera image side in the demos and at evaluation, pixels
    cameras: tuple[str, ...] = ("corner", "gripperPOV")  # Meta-World cameras, one image each in the prompt:
    #                                                   the third-person view and the wrist view
    demo_seed: int = 0  # placements of the demos (evaluation uses eval_seed: unseen placements)
    collect_workers: int = 2  # processes for demo collection
    dataset: str | None = None  # train on your demos instead: a directory of ours or a LeRobot v3.0 dataset
    #                             (common.lerobot.open_dataset); it must hold the --cameras images, --state_key and
    #                             --action_key; the evaluation stays Meta-World's (--eval_episodes 0 for another robot)
    action_key: str | None = None  # with --dataset: its action feature (None: "action", LeRobot's name)
    embodiment: str | None = None  # an Isaac-GR00T modality spec (a modality.json, or a dataset directory with
    #                                meta/modality.json; gr00t/modality.py): the cameras, and the state and action as
    #                                named slices of the data's; None: --dataset's meta/modality.json if it has one
    state_key: str = "observation.state"  # the robot's proprioception (hand xyz, gripper); the privileged 39-D
    #                                       "observation.environment_state" (object and goal poses) is the oracle
    # --- optimisation (Isaac-GR00T's finetune script: AdamW, lr 1e-4, wd 1e-5, 5% warmup, cosine)
    steps: int = 10_000  # optimizer steps
    batch_size: int = 32  # global batch (split over torchrun ranks)
    lr: float = 1e-4  # AdamW peak learning rate
    warmup_ratio: float = 0.05  # linear warmup over this fraction of the steps, then cosine decay to 0
    betas: tuple[float, float] = (0.95, 0.999)  # AdamW betas (the release's training args)
    weight_decay: float = 1e-5  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm
    seed: int = 0  # drives Python, NumPy, torch, the data order and the noise
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    dtype: str = "float32"  # "float32" or "bfloat16" autocast on CUDA (the release trains with bf16 autocast)
    fsdp: bool = False  # shard parameters with FSDP2 (`fully_shard`) instead of DDP under torchrun
    num_workers: int = 0  # DataLoader worker processes
    threads: int = 2  # torch CPU threads
    # --- bookkeeping
    run_dir: str = "runs/gr00t"  # checkpoints, metrics.jsonl, eval results
    resume: bool = False  # continue from run_dir's last checkpoint
    init_from: str | None = None  # start from this checkpoint's weights (e.g. to fine-tune onto another embodiment)
    log_every: int = 25  # steps between metric lines
    save_every: int = 500  # steps between checkpoints
    wandb_project: str | None = None  # log to wandb (offline unless WANDB_MODE says otherwise)
    # --- closed-loop evaluation after training
    eval_episodes: int = 10  # episodes per task
    eval_seed: int = 1000  # placements never seen in the demos
    eval_max_steps: int = 200  # step limit per episode
    eval_workers: int = 2  # evaluation processes
    video_dir: str | None = None  # save rollout videos here


# The CPU preset: every module of the release at a width that trains on 2 cores. A randomly initialised VLM has
# nothing worth freezing, so tiny tunes everything (the release freezes the LLM; `--no-tune_llm --no-tune_visual` is
# that variant, reported in the README).
TINY = dict(
    vision=SigLIPSize(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                      patch_size=8, vision_use_head=False),
    llm=Qwen3Size(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  vocab_size=1024),
    select_layer=2, image_size=64, tune_llm=True, tune_visual=True,
    vl_self_attention=TransformerSize(num_layers=1, num_heads=4, head_dim=32, dropout=0.0),
    dit=TransformerSize(num_layers=4, num_heads=4, head_dim=32, dropout=0.0),
    hidden_size=128, num_future_tokens=8, max_seq_len=64, max_state_dim=40, max_action_dim=4, horizon=8,
    n_action_steps=4, steps=3000, lr=3e-4,
)

PRESETS = {
    "tiny": Gr00tConfig(**TINY),
    "paper": Gr00tConfig(),
    # a minute-long smoke run for tests: two tasks, two demos each, small images, a few steps
    "smoke": Gr00tConfig(**{**TINY, **dict(
        vision=SigLIPSize(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          patch_size=8, vision_use_head=False),
        llm=Qwen3Size(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=16, vocab_size=300),
        select_layer=1, vl_self_attention=TransformerSize(num_layers=1, num_heads=2, head_dim=16, dropout=0.0),
        dit=TransformerSize(num_layers=2, num_heads=2, head_dim=16, dropout=0.0), hidden_size=32,
        num_future_tokens=2, image_size=32, demo_image_size=32, tasks=("reach-v3", "drawer-close-v3"),
        episodes_per_task=2, tokenizer_vocab=300, steps=6, batch_size=8, log_every=2, save_every=3, eval_episodes=1,
        eval_max_steps=10, eval_workers=1, collect_workers=1,
        cameras=("corner",))}),
}
