"""Re-evaluate a driving-VLA checkpoint in closed loop and save a GIF of an episode with its planned waypoints.

    python eval.py --checkpoint runs/driving_vla/checkpoints/00005000
    python eval.py --checkpoint ... --scenarios roundabout --seeds 10 --shield True --gif-scenario roundabout
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import tyro
from safetensors.torch import load_file

from common.data import write_json_atomic
from common.envs import highway as hw
from common.train import read_config

from driving_vla import rollouts
from driving_vla.model import ClosedLoopPolicy, Shield, policy_from_meta
from driving_vla.train import method_name


@dataclass
class EvalArgs:
    checkpoint: Path  # a checkpoint directory (model.safetensors + config.json)
    scenarios: tuple[str, ...] | None = None  # default: the training config's
    seeds: int | None = None  # evaluation episodes per scenario (default: the training config's eval_seeds)
    shield: bool | None = None  # override the training config's safety shield
    workers: int = 2  # evaluation processes
    gif_scenario: str | None = None  # the GIF's scenario (default: the first evaluated); "" for no GIF
    gif_seed: int = 0  # index into the evaluation seeds
    out_dir: Path | None = None  # where eval.json / eval.md / the GIF go (default: the checkpoint directory)


def main(args: EvalArgs) -> dict:
    torch.set_num_threads(1)
    meta = read_config(args.checkpoint)
    state_dict = load_file(args.checkpoint / "model.safetensors")
    policy = policy_from_meta(meta, state_dict)
    cfg = policy.cfg
    cfg = replace(cfg, scenarios=args.scenarios or cfg.scenarios, eval_seeds=args.seeds or cfg.eval_seeds,
                  shield=cfg.shield if args.shield is None else args.shield)
    seeds = hw.seeds("eval", cfg.eval_seeds)
    rows = rollouts.evaluate(meta, state_dict, cfg.scenarios, cfg.eval_seeds, cfg.horizon_s, args.workers, cfg.shield)
    expert = list(rollouts.expert_results(cfg.scenarios, cfg.eval_seeds, cfg.horizon_s, args.workers).values())
    table = rollouts.table({"expert": expert, method_name(cfg): rows}, cfg.scenarios)
    print(table)
    out = Path(args.out_dir or args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.md").write_text(table + "\n")
    write_json_atomic(out / "eval.json", rows)
    scenario = cfg.scenarios[0] if args.gif_scenario is None else args.gif_scenario
    if scenario:
        shield = Shield.from_config(cfg) if cfg.shield else None
        gif = rollouts.episode_gif(ClosedLoopPolicy(policy, shield), scenario, seeds[args.gif_seed],
                                   out / f"{scenario}_seed{seeds[args.gif_seed]}.gif", cfg.horizon_s)
        print(f"GIF: {gif}")
    return {"rows": rows, "aggregate": hw.aggregate(rows)}


if __name__ == "__main__":
    main(tyro.cli(EvalArgs, description=__doc__))
