"""Train GR00T N1.5 on embedded Meta-World demos, then evaluate it in closed loop.

    python train.py                                   # tiny GR00T: MT10, 50 demos/task, CPU, then closed-loop eval
    python train.py --no-tune_llm --no-tune_visual   # the release's frozen VLM (random at tiny size)
    python train.py --tasks reach-v3 --steps 500      # any field of config.Gr00tConfig can be overridden
    python train.py --resume                          # continue run_dir's last checkpoint exactly
    python train.py --dataset DIR --cameras top --eval_episodes 0   # your demos (ours or LeRobot v3.0)
    python train.py --init_from runs/gr00t --embodiment_id 30 --cameras gripperPOV --run_dir runs/gr00t_wrist
                                                      # fine-tune onto another embodiment: shared weights kept,
                                                      # the new slot of every embodiment-specific layer fresh
    torchrun --nproc_per_node 2 train.py --threads 1  # DDP (gloo on CPU, NCCL on GPU); same global batch
"""

from __future__ import annotations

import math
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads must not spin
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.config import parse_config, to_dict
from common.data import ChunkDataset, EpisodeDataset
from common.envs.metaworld import (IMAGE_KEY, eval_config, evaluate, save_results, training_demos,
                                   training_instructions)
from common.text import load_tokenizer, tokenizer_from_json, tokenizer_to_json, train_bpe_tokenizer
from common.train import (Logger, checkpoint_meta, cleanup_distributed, full_state, init_distributed, last_checkpoint,
                          load_pretrained, mean_over_ranks, plot_metrics, read_config, resolve_checkpoint,
                          resumable_loader, resume_last, save_checkpoint, seed_everything)

from gr00t.config import PRESETS, Gr00tConfig
from gr00t.modality import MODALITY_PATH, ModalitySpec
from gr00t.model import CategorySpecificLinear, ClosedLoopPolicy, Gr00tPolicy, sample_time


def build_tokenizer(cfg: Gr00tConfig, demos: EpisodeDataset | None) -> str:
    """The instruction tokenizer as JSON: a byte-level BPE trained on every paraphrase of the tasks (with --dataset:
    on the dataset's instructions; Eagle's Qwen3 tokenizer cannot be downloaded here); `tokenizer_path` loads a
    local one instead."""
    if cfg.tokenizer_path is not None:
        return tokenizer_to_json(load_tokenizer(cfg.tokenizer_path))
    return tokenizer_to_json(train_bpe_tokenizer(training_instructions(cfg, demos), vocab_size=cfg.tokenizer_vocab))


def instruction_length(cfg: Gr00tConfig, tokenizer_json: str, demos: EpisodeDataset | None) -> int:
    """The longest training instruction in tokens plus 4 of slack (used when max_text_tokens = 0)."""
    texts = training_instructions(cfg, demos)
    return max(len(ids) for ids in tokenizer_from_json(tokenizer_json)(texts)["input_ids"]) + 4


def embodiment_spec(cfg: Gr00tConfig) -> ModalitySpec | None:
    """The run's modality spec: --embodiment's, else --dataset's meta/modality.json if it has one, else None (the
    config's cameras and state_key, the data's whole action)."""
    if cfg.embodiment:
        return ModalitySpec.read(cfg.embodiment)
    if cfg.dataset and (Path(cfg.dataset) / MODALITY_PATH).exists():
        return ModalitySpec.read(cfg.dataset)
    return None


def build_policy(cfg: Gr00tConfig, stats: dict, tokenizer_json: str, state_dim: int, action_dim: int) -> Gr00tPolicy:
    return Gr00tPolicy(cfg, stats, tokenizer_from_json(tokenizer_json), state_dim, action_dim)


def init_from_checkpoint(policy: Gr00tPolicy, checkpoint: str | Path) -> list[str]:
    """Start from another run's GR00T weights (not its normalisation: the data may differ). When this run's
    embodiment slot differs from that run's, the new slot of every embodiment-specific layer is initialised afresh
    (the release's CategorySpecificLinear init) and all shared weights are kept. Returns the re-initialised names."""
    checkpoint = resolve_checkpoint(checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    source = read_config(checkpoint)["config"]["embodiment_id"]
    model_weights = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    policy.model.load_state_dict(model_weights)
    slot, fresh = policy.cfg.embodiment_id, []
    if slot != source:
        g = torch.Generator().manual_seed(policy.cfg.seed)
        for name, module in policy.model.named_modules():
            if isinstance(module, CategorySpecificLinear):
                with torch.no_grad():
                    module.W[slot] = 0.02 * torch.randn(module.W.shape[1:], generator=g)
                    module.b[slot] = 0.0
                fresh.append(name)
    return fresh


def learning_rate(cfg: Gr00tConfig, step: int) -> float:
    """The release's schedule (HF Trainer "cosine" with warmup_ratio): linear warmup, then cosine decay to 0."""
    warmup = math.ceil(cfg.warmup_ratio * cfg.steps)
    if step < warmup:
        return cfg.lr * step / max(1, warmup)
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def shard(policy: Gr00tPolicy) -> None:
    """FSDP2 (`fully_shard`): each Qwen3 layer, SigLIP layer and DiT block is one unit, the rest the root unit."""
    from torch.distributed.fsdp import fully_shard
    backbone, head = policy.model.backbone, policy.model.action_head
    for layer in [*backbone.vision_model.encoder.layers, *backbone.language_model.layers,
                  *head.model.transformer_blocks]:
        fully_shard(layer)
    fully_shard(policy)


def training_noise(cfg: Gr00tConfig, step: int, rank: int, world_size: int):
    """ε, t, the image crop offsets and (with cfg.color_jitter, else None) the colour-jitter draws of one step, drawn
    for the whole global batch from a generator seeded by (seed, step), then sliced to this rank: the same training
    on any number of processes, and exact on resume. The jitter is drawn last, so it leaves the rest unchanged."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    n = cfg.batch_size
    noise = torch.randn(n, cfg.horizon, cfg.max_action_dim, generator=g)
    t = sample_time(n, cfg, g)
    crop = torch.rand(2, n, generator=g)
    per_rank = slice(rank * n // world_size, (rank + 1) * n // world_size)
    jitter = None
    if cfg.color_jitter:  # per image and camera: four uniforms and the order of the four adjustments
        order = torch.argsort(torch.rand(n, len(cfg.cameras), 4, generator=g), dim=-1).float()
        jitter = torch.cat([torch.rand(n, len(cfg.cameras), 4, generator=g), order], dim=-1)[per_rank]
    return noise[per_rank], t[per_rank], crop[:, per_rank], jitter


def train(cfg: Gr00tConfig) -> dict:
    dist = init_distributed(cfg.device)
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {dist.world_size} processes")

    # Data: collected (or, from --dataset, imported) once on rank 0 and cached on disk, then read by every rank;
    # with a modality spec, as that embodiment sees it (its cameras, its state and action slices)
    spec = embodiment_spec(cfg)
    keys = ([*(IMAGE_KEY.format(camera=c) for c in cfg.cameras), cfg.state_key] if spec is None else
            [*(key for _, key in spec.video), *{f.original_key for f in spec.state}])
    if dist.is_main:
        training_demos(cfg, keys, workers=cfg.collect_workers)
    if dist.world_size > 1:
        torch.distributed.barrier()
    demos: EpisodeDataset = training_demos(cfg, keys, progress=False)
    if spec is not None:
        demos, cfg = spec.view(demos, cfg.state_key), replace(cfg, cameras=spec.cameras)
    data = ChunkDataset(demos, cfg.horizon, [*(IMAGE_KEY.format(camera=c) for c in cfg.cameras), cfg.state_key])
    state_dim = demos.features[cfg.state_key]["shape"][0]
    action_dim = demos.features["action"]["shape"][0]
    tokenizer_json = build_tokenizer(cfg, demos)
    if cfg.max_text_tokens == 0:
        cfg = replace(cfg, max_text_tokens=instruction_length(cfg, tokenizer_json, demos))
    policy = build_policy(cfg, demos.stats, tokenizer_json, state_dim, action_dim)
    if cfg.init_from is not None and not cfg.resume:
        fresh = init_from_checkpoint(policy, cfg.init_from)
        if dist.is_main:
            print(f"initialised from {cfg.init_from}; embodiment slot {cfg.embodiment_id} fresh in {len(fresh)} layers")
    policy.to(dist.device)
    meta = checkpoint_meta("gr00t", cfg, demos.stats, tokenizer_json, state_dim, action_dim)
    if spec is not None:  # the checkpoint carries the spec: the evaluation maps the robot's observations through it
        meta["modality"], policy.modality = dict(spec.raw), spec
    sharded = cfg.fsdp and dist.world_size > 1
    if sharded:
        shard(policy)

    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(cfg, s) / cfg.lr)
    step = resume_last(run_dir, policy, optimizer, scheduler, sharded) if cfg.resume else 0
    ddp = (torch.nn.parallel.DistributedDataParallel(policy, static_graph=True) if dist.world_size > 1 and not sharded
           else policy)
    batches = resumable_loader(data, cfg.batch_size, cfg.seed, step, dist.rank, dist.world_size, cfg.num_workers)
    if dist.is_main:
        n_params, n_train = sum(p.numel() for p in policy.parameters()), sum(p.numel() for p in trainable)
        print(f"GR00T N1.5: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trained; tune_llm={cfg.tune_llm}, "
              f"tune_visual={cfg.tune_visual}); {len(demos.episodes)} demos, {len(data)} samples; {cfg.steps} steps "
              f"of batch {cfg.batch_size} on {dist.world_size} x {dist.device}")
    logger = Logger(run_dir, cfg.steps, step, to_dict(cfg), cfg.wandb_project, enabled=dist.is_main)

    autocast = torch.autocast("cuda", torch.bfloat16, enabled=cfg.dtype == "bfloat16" and dist.device.type == "cuda")
    policy.train()
    while step < cfg.steps:
        batch = next(batches)
        noise, t, crop, jitter = (x if x is None else x.to(dist.device)
                                  for x in training_noise(cfg, step, dist.rank, dist.world_size))
        with autocast:
            loss = ddp(batch, noise, t, crop, jitter)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
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
            policy.modality = spec
        results = evaluate_policy(policy.cpu(), cfg, run_dir)
    cleanup_distributed()
    return results


def evaluate_policy(policy: Gr00tPolicy, cfg: Gr00tConfig, out_dir: Path, **probes) -> dict:
    """Closed-loop success per task on placements never seen in the demos; writes eval.json and eval.md. `probes`:
    EvalConfig fields that change what the policy is told or shown (e.g. instruction="held_out", blank_images=True)."""
    torch.set_num_threads(1)  # one thread per evaluation process
    results = evaluate(ClosedLoopPolicy(policy), eval_config(cfg, **probes))
    return save_results(results, out_dir)


if __name__ == "__main__":
    train(parse_config(PRESETS, sys.argv[1:], description=__doc__))
