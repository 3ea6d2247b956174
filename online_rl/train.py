"""Online RL fine-tuning of an imitation policy on Meta-World: PPO (ppo.py) or GRPO (grpo.py), the equations in
their files, the shared loop in loop.py.

    python train.py                                           # PPO on the default π0 run (../pi0/runs/pi0)
    python train.py ppo --policy ../bc/runs/bc --reward dense # any method's checkpoint, run dir or `last` pointer
    python train.py grpo --policy RUN --group_size 4          # GRPO: groups of 4 episodes per placement
    python train.py ppo --policy RUN --resume                 # continue run_dir's last checkpoint exactly
"""

from typing import Annotated, Union

import tyro

from online_rl import grpo, ppo

if __name__ == "__main__":
    cfg = tyro.cli(Union[Annotated[ppo.PPOConfig, tyro.conf.subcommand("ppo")],
                         Annotated[grpo.GRPOConfig, tyro.conf.subcommand("grpo")]],
                   default=ppo.PPOConfig(), description=__doc__)
    (ppo if isinstance(cfg, ppo.PPOConfig) else grpo).train(cfg)
