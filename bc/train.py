"""Train the BC baseline on embedded Meta-World demos, then evaluate it in closed loop.

    python train.py                              # tiny preset: MT10, 10 demos/task, ~15 min of CPU, then eval
    python train.py --tasks reach-v3 --steps 500 # any field of config.BCConfig can be overridden
    python train.py --resume                     # continue run_dir's last checkpoint exactly
    python train.py --dataset ~/my_lerobot_dataset --cameras top --eval_episodes 0   # your demos (LeRobot v3.0)
    torchrun --nproc_per_node 2 train.py         # DDP (gloo on CPU, NCCL on GPU); same global batch
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from common.config import parse_config, to_dict
from common.data import ChunkDataset, EpisodeDataset
from common.envs.metaworld import (IMAGE_KEY, eval_config, evaluate, save_results, training_demos,
                                   training_instructions)
from common.text import tokenizer_from_json, tokenizer_to_json, train_bpe_tokenizer
from common.train import (Logger, checkpoint_meta, cleanup_distributed, init_distributed, mean_over_ranks, plot_metrics,
                          resumable_loader, resume_last, save_checkpoint, seed_everything)

from bc.config import PRESETS, BCConfig
from bc.model import BCPolicy, ClosedLoopPolicy



def instruction_tokenizer(cfg: BCConfig, demos: EpisodeDataset) -> str:
    """A BPE vocabulary (deterministic for a fixed corpus), as JSON, trained on every paraphrase of the Meta-World
    tasks, or with --dataset on the dataset's instructions."""
    corpus = training_instructions(cfg, demos)
    return tokenizer_to_json(train_bpe_tokenizer(corpus, vocab_size=cfg.vocab_size))


def build_model(cfg: BCConfig, stats: dict, tokenizer_json: str, state_dim: int, action_dim: int) -> BCPolicy:
    return BCPolicy(cfg, stats, tokenizer_from_json(tokenizer_json), state_dim, action_dim)


def train(cfg: BCConfig) -> dict:
    dist = init_distributed(cfg.device)
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)

    # Data: collected (or, from --dataset, imported) once on rank 0 and cached on disk, then read by every rank.
    keys = [*(IMAGE_KEY.format(camera=c) for c in cfg.cameras), cfg.state_key]
    if dist.is_main:
        training_demos(cfg, keys, workers=cfg.collect_workers)
    if dist.world_size > 1:
        torch.distributed.barrier()
    demos = training_demos(cfg, keys, progress=False)
    data = ChunkDataset(demos, cfg.horizon, keys)
    state_dim = demos.features[cfg.state_key]["shape"][0]
    action_dim = demos.features["action"]["shape"][0]
    tokenizer_json = instruction_tokenizer(cfg, demos)
    model = build_model(cfg, demos.stats, tokenizer_json, state_dim, action_dim).to(dist.device)
    meta = checkpoint_meta("bc", cfg, demos.stats, tokenizer_json, state_dim, action_dim)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    step = resume_last(run_dir, model, optimizer, scheduler) if cfg.resume else 0
    ddp = torch.nn.parallel.DistributedDataParallel(model) if dist.world_size > 1 else model
    batches = resumable_loader(data, cfg.batch_size, cfg.seed, step, dist.rank, dist.world_size, cfg.num_workers)
    n_params = sum(p.numel() for p in model.parameters())
    if dist.is_main:
        print(f"BC policy: {n_params / 1e6:.2f}M parameters; {len(demos.episodes)} demos, {len(data)} samples; "
              f"{cfg.steps} steps of batch {cfg.batch_size} on {dist.world_size} x {dist.device}")
    logger = Logger(run_dir, cfg.steps, step, to_dict(cfg), cfg.wandb_project, enabled=dist.is_main)

    model.train()
    while step < cfg.steps:
        batch = {k: v.to(dist.device) if torch.is_tensor(v) else v for k, v in next(batches).items()}
        loss = model.loss(ddp(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        logger.advance()
        if step % cfg.log_every == 0 or step == cfg.steps:
            logger.log(step, dict(loss=mean_over_ranks(loss).item(), grad_norm=grad_norm.item(),
                                  lr=scheduler.get_last_lr()[0]))
        if dist.is_main and (step % cfg.save_every == 0 or step == cfg.steps):
            save_checkpoint(run_dir, step, model, meta, optimizer, scheduler)
    logger.close()
    if dist.is_main:
        print(f"learning curve: {plot_metrics(run_dir, ('loss', 'grad_norm'))}")

    results = {}
    if dist.is_main and cfg.eval_episodes > 0:
        results = evaluate_model(model.cpu(), cfg, run_dir)
    cleanup_distributed()
    return results


def evaluate_model(model: BCPolicy, cfg: BCConfig, out_dir: Path, **probes) -> dict:
    """Closed-loop success per task on placements never seen in the demos; writes eval.json and eval.md. `probes`:
    EvalConfig fields that change what the policy is told or shown (e.g. instruction="held_out", blank_images=True)."""
    results = evaluate(ClosedLoopPolicy(model), eval_config(cfg, **probes))
    return save_results(results, out_dir)


if __name__ == "__main__":
    train(parse_config(PRESETS, sys.argv[1:], description=__doc__))
