"""Online RL fine-tuning of an imitation policy on Meta-World, or on the driving benchmark (`--env driving`): PPO
(ppo.py), GRPO (grpo.py) or SAC (sac.py, for the Gaussian-head policies), the equations in their files, the shared
loop in loop.py, the driving envs in driving.py.

    python train.py                                           # PPO on the default π0 run (trains it first if absent)
    python train.py ppo --policy ../bc/runs/bc --reward dense # any method's checkpoint, run dir or `last` pointer
    python train.py grpo --policy ../openvla/runs/oft         # GRPO: groups of 4 episodes per placement
    python train.py sac --policy ../bc/runs/bc                # SAC: twin critics, replay, learned temperature
    python train.py ppo --policy RUN --resume                 # continue run_dir's last checkpoint exactly
    python train.py ppo --env driving --policy ../driving_vla/runs/driving_vla --tasks highway merge --reward score
"""

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Union

import tyro

from online_rl import grpo, ppo, sac
from online_rl.loop import RLConfig

HERE = Path(__file__).resolve().parent


def ensure_default_policy(cfg: RLConfig) -> None:
    """The default `--policy` is π0's default run; if it is absent, train it first (`cd pi0 && python train.py`,
    by name, as a user would: this folder imports no method)."""
    default = RLConfig.policy
    if cfg.policy != default or (HERE / default / "checkpoints" / "last").exists():
        return
    print(f"no checkpoint at {default}: training the default π0 run first (cd pi0 && python train.py)", flush=True)
    subprocess.run([sys.executable, "train.py"], cwd=HERE.parent / "pi0", check=True)


if __name__ == "__main__":
    cfg = tyro.cli(Union[Annotated[ppo.PPOConfig, tyro.conf.subcommand("ppo")],
                         Annotated[grpo.GRPOConfig, tyro.conf.subcommand("grpo")],
                         Annotated[sac.SACConfig, tyro.conf.subcommand("sac")]],
                   default=ppo.PPOConfig(), description=__doc__)
    ensure_default_policy(cfg)
    {ppo.PPOConfig: ppo, grpo.GRPOConfig: grpo, sac.SACConfig: sac}[type(cfg)].train(cfg)
