"""Train π0 (or π0.5) on embedded Meta-World demos, then evaluate it in closed loop.

    python train.py                               # tiny π0: MT10, 10 demos/task, CPU, then closed-loop eval
    python train.py --variant pi05                # π0.5
    python train.py --tasks reach-v3 --steps 500  # any field of config.PI0Config can be overridden
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

import numpy as np
import torch

from common.config import parse_config, to_dict
from common.data import ChunkDataset, EpisodeDataset
from common.envs.metaworld import (IMAGE_KEY, eval_config, evaluate, save_results, training_demos,
                                   training_instructions)
from common.text import load_tokenizer, tokenizer_from_json, tokenizer_to_json, train_bpe_tokenizer
from common.train import (Logger, checkpoint_meta, cleanup_distributed, full_state, init_distributed, last_checkpoint,
                          load_pretrained, mean_over_ranks, plot_metrics, resumable_loader, resume_last,
                          save_checkpoint, seed_everything)

from pi0.config import PRESETS, PI0Config
from pi0.model import ClosedLoopPolicy, Pi0Policy, make_prompts, sample_time, state_normalizer



def build_tokenizer(cfg: PI0Config, demos: EpisodeDataset) -> str:
    """The prompt tokenizer as JSON: a byte-level BPE trained on every paraphrase and, for π0.5, on the prompts of
    a subsample of demo frames, so state integers get tokens of their own. `tokenizer_path` loads a local one
    (e.g. PaliGemma's) instead."""
    if cfg.tokenizer_path is not None:
        return tokenizer_to_json(load_tokenizer(cfg.tokenizer_path))
    return tokenizer_to_json(train_bpe_tokenizer(training_prompts(cfg, demos), vocab_size=cfg.tokenizer_vocab))


def training_prompts(cfg: PI0Config, demos: EpisodeDataset, stride: int = 7) -> list[str]:
    """Every paraphrase (with --dataset: the dataset's instructions), paired with the states of every `stride`-th demo
    frame (π0.5 puts the state in the prompt)."""
    frames = np.arange(0, demos.num_frames, stride)
    state = torch.as_tensor(demos.arrays[cfg.state_key][frames])
    state = state_normalizer(cfg, demos.stats).normalize(cfg.state_key, state)
    paraphrases = training_instructions(cfg, demos)
    return make_prompts(cfg, [paraphrases[i % len(paraphrases)] for i in range(len(frames))], state) + paraphrases


def prompt_length(cfg: PI0Config, tokenizer_json: str, demos: EpisodeDataset) -> int:
    """The longest training prompt in tokens plus 8 of slack (used when max_text_tokens = 0)."""
    tokenizer = tokenizer_from_json(tokenizer_json)
    return max(len(ids) for ids in tokenizer(training_prompts(cfg, demos, stride=3))["input_ids"]) + 8


def build_policy(cfg: PI0Config, stats: dict, tokenizer_json: str, state_dim: int, action_dim: int) -> Pi0Policy:
    return Pi0Policy(cfg, stats, tokenizer_from_json(tokenizer_json), state_dim, action_dim)


def learning_rate(cfg: PI0Config, step: int) -> float:
    """openpi's schedule: linear warmup to `lr`, then cosine decay to `min_lr` at `steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def shard(policy: Pi0Policy) -> None:
    """FSDP2 (`fully_shard`): each decoder layer is one unit, the rest of the policy the root unit. A layer's weights
    are used through `qkv` and `finish` (the attention joins two layers), so those are its registered forward
    methods; a layer's gathered weights are kept from its forward to its backward (one all-gather per layer)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    for layer in [*policy.model.vlm_layers, *policy.model.expert_layers]:
        fully_shard(layer, reshard_after_forward=False)
        register_fsdp_forward_method(layer, "qkv")
        register_fsdp_forward_method(layer, "finish")
    fully_shard(policy)


def training_noise(cfg: PI0Config, step: int, rank: int, world_size: int):
    """ε, τ and the image shifts of one step, drawn for the whole global batch from a generator seeded by (seed,
    step), then sliced to this rank: the same training on any number of processes, and exact on resume."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    n = cfg.batch_size
    noise = torch.randn(n, cfg.horizon, cfg.max_action_dim, generator=g)
    time = sample_time(n, cfg, g)
    shift = torch.randint(0, 2 * cfg.shift_augment + 1, (2, n), generator=g)
    per_rank = slice(rank * n // world_size, (rank + 1) * n // world_size)
    return noise[per_rank], time[per_rank], shift[:, per_rank]


def train(cfg: PI0Config) -> dict:
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
    meta = checkpoint_meta("pi0", cfg, demos.stats, tokenizer_json, state_dim, action_dim)
    sharded = cfg.fsdp and dist.world_size > 1
    if sharded:
        shard(policy)

    # fused: one kernel per step instead of ~10 ops per tensor (measured 20 -> 6 ms per step for tiny on 2 CPU cores)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(cfg, s) / cfg.lr)
    step = resume_last(run_dir, policy, optimizer, scheduler, sharded) if cfg.resume else 0
    # static graph: the last VLM layer's output projection and MLP never get a gradient (their output is not read)
    ddp = (torch.nn.parallel.DistributedDataParallel(policy, static_graph=True) if dist.world_size > 1 and not sharded
           else policy)
    batches = resumable_loader(data, cfg.batch_size, cfg.seed, step, dist.rank, dist.world_size, cfg.num_workers)
    if dist.is_main:
        n_params = sum(p.numel() for p in policy.parameters())
        print(f"{cfg.variant}: {n_params / 1e6:.2f}M parameters; {len(demos.episodes)} demos, {len(data)} samples; "
              f"prompt {cfg.max_text_tokens} tokens; {cfg.steps} steps of batch {cfg.batch_size} on "
              f"{dist.world_size} x {dist.device}")
    logger = Logger(run_dir, cfg.steps, step, to_dict(cfg), cfg.wandb_project, enabled=dist.is_main)

    autocast = torch.autocast("cuda", torch.bfloat16, enabled=cfg.dtype == "bfloat16" and dist.device.type == "cuda")
    policy.train()
    while step < cfg.steps:
        batch = next(batches)
        noise, time, shift = (x.to(dist.device) for x in training_noise(cfg, step, dist.rank, dist.world_size))
        with autocast:
            loss = ddp(batch, noise, time, shift)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        optimizer.step()
        scheduler.step()
        step += 1
        logger.advance()
        if step % cfg.log_every == 0 or step == cfg.steps:
            logger.log(step, dict(loss=mean_over_ranks(loss.detach()).item(), grad_norm=grad_norm.item(),
                                  lr=scheduler.get_last_lr()[0]))
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


def evaluate_policy(policy: Pi0Policy, cfg: PI0Config, out_dir: Path, **probes) -> dict:
    """Closed-loop success per task on placements never seen in the demos; writes eval.json and eval.md. `probes`:
    EvalConfig fields that change what the policy is told or shown (e.g. instruction="held_out", blank_images=True)."""
    torch.set_num_threads(1)  # one thread per evaluation process
    results = evaluate(ClosedLoopPolicy(policy), eval_config(cfg, **probes))
    return save_results(results, out_dir)


if __name__ == "__main__":
    train(parse_config(PRESETS, sys.argv[1:], description=__doc__))
