"""Re-evaluate a π0 / π0.5 checkpoint in closed loop: the standard split, another split or a probe of what the
policy uses; optionally with rollout videos.

    python eval.py --checkpoint runs/pi0                     # the run's last checkpoint, as trained
    python eval.py --checkpoint runs/pi0 --episodes 20 --video_dir runs/pi0/videos
    python eval.py --checkpoint runs/pi0 --seed 2000          # placements of another evaluation seed
    python eval.py --checkpoint runs/pi0 --instruction held_out   # paraphrases absent from training
    python eval.py --checkpoint runs/pi0 --instruction other_task --blank_images   # probes
"""

from __future__ import annotations

from pathlib import Path

import tyro

from common.envs.metaworld import EvalArgs
from common.train import rebuild_policy, resolve_checkpoint

from pi0.config import PI0Config
from pi0.model import Pi0Policy
from pi0.train import build_policy, evaluate_policy


def load_policy(checkpoint: str | Path) -> tuple[Pi0Policy, PI0Config]:
    """The trained policy and its config, rebuilt from a checkpoint (or run) directory alone."""
    return rebuild_policy(checkpoint, PI0Config, build_policy)


def main(args: EvalArgs) -> dict:
    policy, cfg = load_policy(args.checkpoint)
    return evaluate_policy(policy, args.config(cfg), args.out_dir or resolve_checkpoint(args.checkpoint), **args.probes())


if __name__ == "__main__":
    main(tyro.cli(EvalArgs, description=__doc__))
