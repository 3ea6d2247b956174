"""Re-evaluate a π0 / π0.5 checkpoint in closed loop: the standard split, another split or a probe of what the
policy uses; optionally with rollout videos.

    python eval.py --checkpoint runs/pi0                     # the run's last checkpoint, as trained
    python eval.py --checkpoint runs/pi0 --episodes 20 --video_dir runs/pi0/videos
    python eval.py --checkpoint runs/pi0 --seed 2000          # placements of another evaluation seed
    python eval.py --checkpoint runs/pi0 --instruction held_out   # paraphrases absent from training
    python eval.py --checkpoint runs/pi0 --instruction other_task --blank_images   # probes
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import tyro

from common.config import from_dict
from common.train import load_pretrained, read_config, resolve_checkpoint

from pi0.config import PI0Config
from pi0.train import build_policy, evaluate_policy
from pi0.model import Pi0Policy


@dataclass
class EvalArgs:
    checkpoint: Path  # a checkpoint directory (model.safetensors + config.json), or a run directory (its last one)
    episodes: int | None = None  # episodes per task (default: the training config's eval_episodes)
    tasks: tuple[str, ...] | None = None  # a subset of the trained tasks (default: all)
    seed: int | None = None  # evaluation placements (default: the training config's eval_seed)
    instruction: str = "canonical"  # canonical | held_out | other_task | empty (common.envs.metaworld.EvalConfig)
    blank_images: bool = False  # probe: black camera images
    video_dir: str | None = None  # save one rollout video per task here
    workers: int = 2  # evaluation processes
    out_dir: Path | None = None  # where eval.json / eval.md go (default: the checkpoint directory)


def load_policy(checkpoint: str | Path) -> tuple[Pi0Policy, PI0Config]:
    """The trained policy and its config, rebuilt from a checkpoint (or run) directory alone."""
    checkpoint = resolve_checkpoint(checkpoint)
    meta = read_config(checkpoint)
    cfg = from_dict(PI0Config, meta["config"])
    policy = build_policy(cfg, meta["stats"], meta["tokenizer"], meta["state_dim"], meta["action_dim"])
    load_pretrained(policy, checkpoint)
    return policy, cfg


def main(args: EvalArgs) -> dict:
    policy, cfg = load_policy(args.checkpoint)
    cfg = replace(cfg, eval_episodes=args.episodes or cfg.eval_episodes, tasks=args.tasks or cfg.tasks,
                  eval_seed=cfg.eval_seed if args.seed is None else args.seed, video_dir=args.video_dir,
                  eval_workers=args.workers)
    return evaluate_policy(policy, cfg, args.out_dir or resolve_checkpoint(args.checkpoint),
                         instruction=args.instruction, blank_images=args.blank_images)


if __name__ == "__main__":
    main(tyro.cli(EvalArgs, description=__doc__))
