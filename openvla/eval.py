"""Re-evaluate an OpenVLA / OpenVLA-OFT checkpoint in closed loop, optionally saving rollout videos.

    python eval.py --checkpoint runs/openvla/checkpoints/00003000 --episodes 20 --video-dir runs/openvla/videos
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import tyro

from common.config import from_dict
from common.train import load_pretrained, read_config

from openvla.config import OpenVLAConfig
from openvla.train import build_policy, evaluate_policy


@dataclass
class EvalArgs:
    checkpoint: Path  # a checkpoint directory (holds model.safetensors + config.json)
    episodes: int | None = None  # episodes per task (default: the training config's eval_episodes)
    tasks: tuple[str, ...] | None = None  # a subset of the trained tasks (default: all)
    video_dir: str | None = None  # save one rollout video per task here
    workers: int = 2  # evaluation processes
    out_dir: Path | None = None  # where eval.json / eval.md go (default: the checkpoint directory)


def main(args: EvalArgs) -> dict:
    meta = read_config(args.checkpoint)
    cfg = from_dict(OpenVLAConfig, meta["config"])
    cfg = replace(cfg, eval_episodes=args.episodes or cfg.eval_episodes, tasks=args.tasks or cfg.tasks,
                  video_dir=args.video_dir, eval_workers=args.workers)
    policy = build_policy(cfg, meta["stats"], meta["tokenizer"], meta["state_dim"], meta["action_dim"])
    load_pretrained(policy, args.checkpoint)
    return evaluate_policy(policy, cfg, args.out_dir or args.checkpoint)


if __name__ == "__main__":
    main(tyro.cli(EvalArgs, description=__doc__))
