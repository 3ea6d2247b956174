"""Re-evaluate a BC checkpoint in closed loop: the standard split, another split or a probe of what the
policy uses; optionally with rollout videos.

    python eval.py --checkpoint runs/bc                     # the run's last checkpoint, as trained
    python eval.py --checkpoint runs/bc --episodes 20 --video_dir runs/bc/videos
    python eval.py --checkpoint runs/bc --seed 2000          # placements of another evaluation seed
    python eval.py --checkpoint runs/bc --instruction held_out   # paraphrases absent from training
    python eval.py --checkpoint runs/bc --instruction other_task --blank_images   # probes
"""

from __future__ import annotations

from pathlib import Path

import tyro

from common.envs.metaworld import EvalArgs
from common.train import rebuild_policy, resolve_checkpoint

from bc.config import BCConfig
from bc.model import BCPolicy
from bc.train import build_model, evaluate_model


def load_policy(checkpoint: str | Path) -> tuple[BCPolicy, BCConfig]:
    """The trained policy and its config, rebuilt from a checkpoint (or run) directory alone."""
    return rebuild_policy(checkpoint, BCConfig, build_model)


def main(args: EvalArgs) -> dict:
    policy, cfg = load_policy(args.checkpoint)
    return evaluate_model(policy, args.config(cfg), args.out_dir or resolve_checkpoint(args.checkpoint), **args.probes())


if __name__ == "__main__":
    main(tyro.cli(EvalArgs, description=__doc__))
