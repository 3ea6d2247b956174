"""Re-evaluate a humanoid VLA checkpoint in closed loop, with a GIF per task and the probes of what it uses.

    python eval.py --checkpoint runs/humanoid_vla                        # the run's last checkpoint
    python eval.py --checkpoint runs/humanoid_vla --video_dir runs/humanoid_vla/gifs
    python eval.py --checkpoint runs/humanoid_vla --blank_images         # does it use its camera?
    python eval.py --checkpoint runs/humanoid_vla --other_instruction    # does it follow the instruction?
    python eval.py --checkpoint runs/humanoid_vla --temporal_ensemble 0.01   # ACT's temporal ensembling
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import tyro

from common.config import to_dict
from common.provenance import commit_label
from common.train import rebuild_policy, resolve_checkpoint

from humanoid_vla.config import HumanoidVLAConfig
from humanoid_vla.model import HumanoidVLA
from humanoid_vla.train import build_model, evaluate_model


@dataclass
class Args:
    checkpoint: str  # a checkpoint directory, or a run directory (its last checkpoint)
    episodes: int | None = None  # episodes per task (default: the config's eval_episodes, or 10 if that is 0)
    seed: int | None = None  # evaluation run seed (default: the config's eval_seed)
    workers: int = 2  # evaluation processes
    video_dir: str | None = None  # write a GIF of each task's first episode here
    noise_temperature: float | None = None  # flow head: starting-noise scale (default: the config's)
    temporal_ensemble: float | None = None  # ACT's temporal ensembling with this m, a chunk every step (default:
    #                                         the config's)
    blank_images: bool = False  # probe: black images
    other_instruction: bool = False  # probe: another task's instruction
    out_dir: str | None = None  # where eval.md, eval.json and eval_run.json go (default: the checkpoint directory)


def load_policy(checkpoint: str | Path) -> tuple[HumanoidVLA, HumanoidVLAConfig]:
    """The trained policy and its config, rebuilt from a checkpoint (or run) directory alone."""
    return rebuild_policy(checkpoint, HumanoidVLAConfig, build_model)


def main(args: Args) -> dict:
    """Evaluate; beside eval.json write eval_run.json, its stamp: the commit, the command, the checkpoint and the
    config the evaluation ran with."""
    code, started = commit_label(), time.time()  # the code as the evaluation starts (HEAD may move while it runs)
    model, cfg = load_policy(args.checkpoint)
    overrides = dict(eval_workers=args.workers, video_dir=args.video_dir,
                     eval_episodes=args.episodes or cfg.eval_episodes or 10)  # 0: trained without evaluation
    if args.seed is not None:
        overrides["eval_seed"] = args.seed
    for name in ("noise_temperature", "temporal_ensemble"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    cfg = replace(cfg, **overrides)
    model.cfg = cfg
    checkpoint = resolve_checkpoint(args.checkpoint)
    out_dir = Path(args.out_dir) if args.out_dir else checkpoint
    summary = evaluate_model(model, cfg, out_dir, blank_images=args.blank_images,
                             other_instruction=args.other_instruction)
    (out_dir / "eval_run.json").write_text(json.dumps(dict(
        commit=code, command=" ".join(["python humanoid_vla/eval.py", *sys.argv[1:]]), checkpoint=str(checkpoint),
        args=asdict(args), config=to_dict(cfg), eval_seconds=time.time() - started), indent=1))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
