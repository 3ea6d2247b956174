"""Online RL fine-tuning of an imitation policy on Meta-World (PPO; see ppo.py for the algorithm and its equations).

    python train.py --policy ../bc/runs/bc                  # PPO on a BC checkpoint, the default tasks and budget
    python train.py --policy RUN --tasks push-v3 --iterations 100 --reward dense
    python train.py --policy RUN --resume                    # continue run_dir's last checkpoint exactly
"""

import tyro

from online_rl.ppo import PPOConfig, train

if __name__ == "__main__":
    train(tyro.cli(PPOConfig, description=__doc__))
