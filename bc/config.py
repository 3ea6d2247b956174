"""Configuration of the BC baseline: one dataclass, named presets, CLI/YAML overrides via common.config."""

from dataclasses import dataclass

from common.envs.metaworld import MT10


@dataclass
class BCConfig:
    # --- data: scripted-expert demonstrations on Meta-World (collected once, cached by these fields)
    tasks: tuple[str, ...] = MT10  # Meta-World v3 tasks to learn (one multi-task policy)
    episodes_per_task: int = 50  # expert demonstrations per task (50: LIBERO's count; see benchmarks/README.md)
    demo_image_size: int = 128  # camera image side in the demos and at evaluation, pixels
    cameras: tuple[str, ...] = ("corner", "gripperPOV")  # Meta-World cameras, one image input each: the
    #                                                   third-person view and the wrist view, as a robot has
    demo_seed: int = 0  # placements of the demos (evaluation uses eval_seed: unseen placements)
    collect_workers: int = 2  # processes for demo collection
    dataset: str | None = None  # train on your demos instead: a directory of ours or a LeRobot v3.0 dataset
    #                             (common.lerobot.open_dataset); it must hold the --cameras images, --state_key and
    #                             --action_key; the evaluation stays Meta-World's (--eval_episodes 0 for another robot)
    action_key: str | None = None  # with --dataset: its action feature (None: "action", LeRobot's name)
    # --- model: ResNet-18 image encoder (shared by the cameras) + state + instruction embedding -> MLP -> chunk
    image_size: int = 64  # images are resized to this side before the ResNet (CPU budget)
    state_key: str = "observation.state"  # the robot's proprioception (hand xyz, gripper); the privileged 39-D
    #                                       "observation.environment_state" (object and goal poses) is the oracle
    horizon: int = 8  # H: actions predicted per chunk
    n_action_steps: int = 4  # actions of each chunk executed before predicting again
    hidden_dim: int = 512  # MLP width
    text_dim: int = 64  # instruction embedding width
    state_dim_embed: int = 64  # state embedding width
    vocab_size: int = 256  # BPE vocabulary trained on the instruction templates
    max_text_tokens: int = 16  # instruction length in tokens (truncated/padded)
    shift_augment: int = 4  # random-shift augmentation of the (resized) image, pixels (DrQ); 0 disables
    # --- optimisation
    steps: int = 3000  # optimizer steps
    batch_size: int = 32  # global batch (split over torchrun ranks)
    lr: float = 3e-4  # AdamW peak learning rate (cosine decay to 0)
    weight_decay: float = 1e-4  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm
    seed: int = 0  # drives Python, NumPy, torch and the data order
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    num_workers: int = 0  # DataLoader worker processes
    threads: int = 2  # torch CPU threads
    # --- bookkeeping
    run_dir: str = "runs/bc"  # checkpoints, metrics.jsonl, eval results
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


PRESETS = {
    "tiny": BCConfig(),
    # a minute-long smoke run for tests: two tasks, two demos each, small images, a few steps
    "smoke": BCConfig(tasks=("reach-v3", "drawer-close-v3"), episodes_per_task=2, demo_image_size=32, image_size=32,
                      hidden_dim=64, steps=6, batch_size=8, log_every=2, save_every=3, eval_episodes=1,
                      eval_max_steps=10, eval_workers=1, collect_workers=1,
                      cameras=("corner",)),
}
