"""Re-evaluate a GR00T N1.5 checkpoint in closed loop: the standard split, another split or a probe of what the
policy uses; optionally with rollout videos.

    python eval.py --checkpoint runs/gr00t                     # the run's last checkpoint, as trained
    python eval.py --checkpoint runs/gr00t --episodes 20 --video_dir runs/gr00t/videos
    python eval.py --checkpoint runs/gr00t --seed 2000          # placements of another evaluation seed
    python eval.py --checkpoint runs/gr00t --instruction held_out   # paraphrases absent from training
    python eval.py --checkpoint runs/gr00t --instruction other_task --blank_images   # probes
"""

from __future__ import annotations

from pathlib import Path

import tyro

from common.envs.metaworld import EvalArgs
from common.train import read_config, rebuild_policy, resolve_checkpoint

from gr00t.config import Gr00tConfig
from gr00t.modality import ModalitySpec
from gr00t.model import Gr00tPolicy
from gr00t.train import build_policy, evaluate_policy


def load_policy(checkpoint: str | Path) -> tuple[Gr00tPolicy, Gr00tConfig]:
    """The trained policy and its config, rebuilt from a checkpoint (or run) directory alone (with the embodiment's
    modality spec when it was trained on one)."""
    policy, cfg = rebuild_policy(checkpoint, Gr00tConfig, build_policy)
    written = read_config(resolve_checkpoint(checkpoint))
    if "modality" in written:
        policy.modality = ModalitySpec.from_dict(written["modality"])
    return policy, cfg


def main(args: EvalArgs) -> dict:
    policy, cfg = load_policy(args.checkpoint)
    return evaluate_policy(policy, args.config(cfg), args.out_dir or resolve_checkpoint(args.checkpoint), **args.probes())


if __name__ == "__main__":
    main(tyro.cli(EvalArgs, description=__doc__))
