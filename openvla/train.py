"""Train OpenVLA (or OpenVLA-OFT) on embedded Meta-World demos, then evaluate it in closed loop.

    python train.py                               # tiny OpenVLA: MT10, 10 demos/task, CPU, then closed-loop eval
    python train.py --variant oft                 # OpenVLA-OFT: a chunk of 8 in one pass, L1 head, proprio token
    python train.py --variant oft --use_film      # OFT+: FiLM on the vision features
    python train.py --tasks reach-v3 --steps 500  # any field of config.OpenVLAConfig can be overridden
    python train.py --resume                      # continue run_dir's last checkpoint exactly
    python train.py --dataset DIR --cameras top --eval_episodes 0   # your demos (ours or LeRobot v3.0)
    torchrun --nproc_per_node 2 train.py          # DDP (gloo on CPU, NCCL on GPU); same global batch
"""

from __future__ import annotations

import math
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads must not spin
from dataclasses import replace
from pathlib import Path

import torch

from common.config import parse_config, to_dict
from common.data import ChunkDataset, EpisodeDataset
from common.envs.metaworld import (IMAGE_KEY, eval_config, evaluate, save_results, training_demos,
                                   training_instructions)
from common.text import load_tokenizer, tokenizer_from_json, tokenizer_to_json, train_bpe_tokenizer
from common.train import (Logger, checkpoint_meta, cleanup_distributed, full_state, init_distributed, last_checkpoint,
                          load_pretrained, mean_over_ranks, plot_metrics, resumable_loader, resume_last,
                          save_checkpoint, seed_everything)

from openvla.config import PRESETS, OpenVLAConfig, resolve
from openvla.model import ClosedLoopPolicy, OpenVLAPolicy, make_prompt



def training_prompts(cfg: OpenVLAConfig, demos: EpisodeDataset | None) -> list[str]:
    """The prompt of every paraphrase (with --dataset: of the dataset's instructions)."""
    return [make_prompt(text) for text in training_instructions(cfg, demos)]


def build_tokenizer(cfg: OpenVLAConfig, demos: EpisodeDataset | None) -> str:
    """The prompt tokenizer as JSON: a byte-level BPE of `tokenizer_vocab` tokens trained on every training prompt
    (the action tokens are the ids after it); `tokenizer_path` loads a local one (e.g. Llama-2's) instead."""
    if cfg.tokenizer_path is not None:
        return tokenizer_to_json(load_tokenizer(cfg.tokenizer_path))
    return tokenizer_to_json(train_bpe_tokenizer(training_prompts(cfg, demos), vocab_size=cfg.tokenizer_vocab))


def prompt_length(cfg: OpenVLAConfig, tokenizer_json: str, demos: EpisodeDataset | None) -> int:
    """BOS + the longest training prompt in tokens + 8 of slack (used when max_text_tokens = 0)."""
    tokenizer = tokenizer_from_json(tokenizer_json)
    prompts = training_prompts(cfg, demos)
    return 1 + max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]) + 8


def build_policy(cfg: OpenVLAConfig, stats: dict, tokenizer_json: str, state_dim: int,
                 action_dim: int) -> OpenVLAPolicy:
    return OpenVLAPolicy(cfg, stats, tokenizer_from_json(tokenizer_json), state_dim, action_dim)


def learning_rate(cfg: OpenVLAConfig, step: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `steps` (min_lr = lr: OpenVLA's constant rate)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def crop_offsets(cfg: OpenVLAConfig, step: int, rank: int, world_size: int) -> torch.Tensor | None:
    """The random-crop positions (2, B) of one step, drawn for the whole global batch from a generator seeded by
    (seed, step), then sliced to this rank: the same training on any number of processes, and exact on resume."""
    if cfg.crop_scale >= 1.0:
        return None
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    offsets = torch.rand(2, cfg.batch_size, generator=g)
    n = cfg.batch_size
    return offsets[:, rank * n // world_size:(rank + 1) * n // world_size]


def train(cfg: OpenVLAConfig) -> dict:
    cfg = resolve(cfg)
    dist = init_distributed(cfg.device)
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {dist.world_size} processes")

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
    tokenizer_json = build_tokenizer(cfg, demos)
    if cfg.max_text_tokens == 0:
        cfg = replace(cfg, max_text_tokens=prompt_length(cfg, tokenizer_json, demos))
    policy = build_policy(cfg, demos.stats, tokenizer_json, state_dim, action_dim).to(dist.device)
    meta = checkpoint_meta("openvla", cfg, demos.stats, tokenizer_json, state_dim, action_dim)
    sharded = cfg.fsdp and dist.world_size > 1
    if sharded:  # FSDP2: each decoder layer one unit, the rest of the policy the root unit
        from torch.distributed.fsdp import fully_shard
        for layer in policy.model.layers:
            fully_shard(layer)
        fully_shard(policy)

    # fused: one kernel per step instead of ~10 ops per tensor
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(cfg, s) / cfg.lr)
    step = resume_last(run_dir, policy, optimizer, scheduler, sharded) if cfg.resume else 0
    # static graph: each ViT's last block, final norm and SigLIP's pooling head are in the checkpoint but never read
    ddp = (torch.nn.parallel.DistributedDataParallel(policy, static_graph=True) if dist.world_size > 1 and not sharded
           else policy)
    batches = resumable_loader(data, cfg.batch_size, cfg.seed, step, dist.rank, dist.world_size, cfg.num_workers)
    if dist.is_main:
        n_params = sum(p.numel() for p in policy.parameters())
        print(f"{cfg.variant}: {n_params / 1e6:.2f}M parameters; {len(demos.episodes)} demos, {len(data)} samples; "
              f"prompt {cfg.max_text_tokens} tokens; chunk {cfg.horizon}; {cfg.steps} steps of batch "
              f"{cfg.batch_size} on {dist.world_size} x {dist.device}")
    logger = Logger(run_dir, cfg.steps, step, to_dict(cfg), cfg.wandb_project, enabled=dist.is_main)

    autocast = torch.autocast("cuda", torch.bfloat16, enabled=cfg.dtype == "bfloat16" and dist.device.type == "cuda")
    policy.train()
    while step < cfg.steps:
        batch = next(batches)
        offsets = crop_offsets(cfg, step, dist.rank, dist.world_size)
        with autocast:
            loss, metrics = ddp(batch, offsets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        optimizer.step()
        scheduler.step()
        step += 1
        logger.advance()
        if step % cfg.log_every == 0 or step == cfg.steps:
            logged = {k: mean_over_ranks(v.detach()).item() for k, v in dict(loss=loss, **metrics).items()}
            logger.log(step, dict(logged, grad_norm=grad_norm.item(), lr=scheduler.get_last_lr()[0]))
        if step % cfg.save_every == 0 or step == cfg.steps:
            weights, optimizer_state = full_state(policy, optimizer) if sharded else (policy, optimizer)
            if dist.is_main:
                save_checkpoint(run_dir, step, weights, meta, optimizer_state, scheduler)
    logger.close()
    if dist.is_main:
        print(f"learning curve: {plot_metrics(run_dir, ('loss', 'grad_norm'))}")

    results = {}
    if dist.is_main and cfg.eval_episodes > 0:
        if sharded:  # evaluate an unsharded copy of the final weights
            policy = build_policy(cfg, demos.stats, tokenizer_json, state_dim, action_dim)
            load_pretrained(policy, last_checkpoint(run_dir))
        results = evaluate_policy(policy.cpu(), cfg, run_dir)
    cleanup_distributed()
    return results


def evaluate_policy(policy: OpenVLAPolicy, cfg: OpenVLAConfig, out_dir: Path, **probes) -> dict:
    """Closed-loop success per task on placements never seen in the demos; writes eval.json and eval.md. `probes`:
    EvalConfig fields that change what the policy is told or shown (e.g. instruction="held_out", blank_images=True)."""
    torch.set_num_threads(1)  # one thread per evaluation process
    results = evaluate(ClosedLoopPolicy(policy), eval_config(cfg, **probes))
    return save_results(results, out_dir)


if __name__ == "__main__":
    train(parse_config(PRESETS, sys.argv[1:], description=__doc__))
