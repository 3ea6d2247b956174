"""Re-evaluate an OpenVLA / OpenVLA-OFT checkpoint in closed loop: the standard split, another split or a probe of what the
policy uses; optionally with rollout videos.

    python eval.py --checkpoint runs/openvla                     # the run's last checkpoint, as trained
    python eval.py --checkpoint runs/openvla --episodes 20 --video_dir runs/openvla/videos
    python eval.py --checkpoint runs/openvla --seed 2000          # placements of another evaluation seed
    python eval.py --checkpoint runs/openvla --instruction held_out   # paraphrases absent from training
    python eval.py --checkpoint runs/openvla --instruction other_task --blank_images   # probes
"""

from __future__ import annotations

from pathlib import Path

import tyro

from common.envs.metaworld import EvalArgs
from common.train import rebuild_policy, resolve_checkpoint

from openvla.config import OpenVLAConfig
from openvla.model import OpenVLAPolicy
from openvla.train import build_policy, evaluate_policy


def load_policy(checkpoint: str | Path) -> tuple[OpenVLAPolicy, OpenVLAConfig]:
    """The trained policy and its config, rebuilt from a checkpoint (or run) directory alone."""
    return rebuild_policy(checkpoint, OpenVLAConfig, build_policy)


def main(args: EvalArgs) -> dict:
    policy, cfg = load_policy(args.checkpoint)
    return evaluate_policy(policy, args.config(cfg), args.out_dir or resolve_checkpoint(args.checkpoint), **args.probes())


if __name__ == "__main__":
    main(tyro.cli(EvalArgs, description=__doc__))
