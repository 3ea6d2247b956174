"""Train the humanoid VLA on the embedded G1 benchmark: behaviour cloning on IK-expert demos, then DAgger rounds in
which the policy drives and the expert relabels the states it reaches; then evaluate in closed loop.

    python train.py                          # tiny preset: 11 tasks, 20 demos each, BC + 2 DAgger rounds, eval
    python train.py --preset mlp             # the MLP-head baseline
    python train.py --dagger_rounds 0        # plain BC
    python train.py --delta_actions          # chunks relative to the current joint positions (openpi's DeltaActions)
    python train.py --resume                 # continue run_dir's last checkpoint exactly (DAgger data included)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from common.config import parse_config, to_dict
from common.data import ChunkDataset
from common.envs.humanoid import (IMAGE_KEY, N_JOINTS, STATE_DIM, TASKS, DemoSpec, EvalConfig, collect_demos,
                                  collect_relabelled, evaluate, save_results)
from common.text import tokenizer_from_json, tokenizer_to_json, train_bpe_tokenizer
from common.train import (Logger, checkpoint_meta, plot_metrics, resumable_loader, resume_last, save_checkpoint,
                          seed_everything)

from humanoid_vla.config import PRESETS, HumanoidVLAConfig
from humanoid_vla.model import DELTA_KEY, STATE_KEY, ClosedLoopPolicy, HumanoidVLA

DAGGER_SEED = 10_000  # round r's rollouts use run seed DAGGER_SEED + r: neither the demos' nor evaluation's episodes


def instruction_tokenizer(cfg: HumanoidVLAConfig) -> str:
    """A BPE vocabulary trained on every paraphrase of the tasks (deterministic for a fixed corpus), as JSON."""
    corpus = [text for task in cfg.tasks for text in TASKS[task]]
    return tokenizer_to_json(train_bpe_tokenizer(corpus, vocab_size=cfg.vocab_size))


def floor_std(stats: dict, floor: float = 1e-2) -> dict:
    """The demos' statistics with every standard deviation at least `floor` (rad, rad/s): a joint the expert never
    moves (a wrist) has std ~0, and DAgger's labels or a learner's states there would be normalised to huge values."""
    return {k: dict(v, std=[max(s, floor) for s in v["std"]]) if "std" in v else v for k, v in stats.items()}


def delta_action_stats(dataset, horizon: int) -> dict[str, list[float]]:
    """Per-joint mean, std and 1st/99th percentiles of a_{t+k} − q_t over every (frame t, chunk step k < H) inside
    an episode: the normalisation statistics of `delta_actions` chunks (openpi computes its statistics on the
    transformed chunks)."""
    deltas = []
    for i in range(len(dataset.episodes)):
        episode = dataset.episode(i)
        q, a = np.asarray(episode[STATE_KEY][:, :N_JOINTS], np.float64), np.asarray(episode["action"], np.float64)
        deltas += [a[k:] - q[: len(q) - k] for k in range(min(horizon, len(q)))]
    deltas = np.concatenate(deltas)
    q01, q99 = np.quantile(deltas, [0.01, 0.99], axis=0)
    return dict(mean=deltas.mean(0).tolist(), std=deltas.std(0).tolist(), q01=q01.tolist(), q99=q99.tolist())


def build_model(cfg: HumanoidVLAConfig, stats: dict, tokenizer_json: str, state_dim: int = STATE_DIM,
                action_dim: int = N_JOINTS) -> HumanoidVLA:
    """The policy from its config, statistics and tokenizer (`common.train.rebuild_policy`'s builder signature; the
    sizes are the G1's, fixed by the benchmark)."""
    if (state_dim, action_dim) != (STATE_DIM, N_JOINTS):
        raise ValueError(f"the G1 policy reads {STATE_DIM}-D states and writes {N_JOINTS} joint targets, "
                         f"got {state_dim} and {action_dim}")
    return HumanoidVLA(cfg, stats, tokenizer_from_json(tokenizer_json))


def demo_spec(cfg: HumanoidVLAConfig) -> DemoSpec:
    return DemoSpec(tasks=cfg.tasks, episodes_per_task=cfg.episodes_per_task, image_size=cfg.demo_image_size,
                    seed=cfg.demo_seed)


def phase_ends(cfg: HumanoidVLAConfig) -> list[int]:
    """The step at which each phase ends: BC, then one phase per DAgger round."""
    return [cfg.steps + r * cfg.dagger_steps for r in range(cfg.dagger_rounds + 1)]


def learning_rate_factor(cfg: HumanoidVLAConfig, step: int) -> float:
    """Cosine decay from the peak to 0 over each phase (each DAgger round restarts it on the aggregated data)."""
    start = 0
    for end in phase_ends(cfg):
        if step < end:
            return 0.5 * (1 + math.cos(math.pi * (step - start) / (end - start)))
        start = end
    return 0.0


def train(cfg: HumanoidVLAConfig) -> dict:
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    run_dir = Path(cfg.run_dir)
    demos = collect_demos(demo_spec(cfg), workers=cfg.collect_workers)
    stats = floor_std({**demos.stats, DELTA_KEY: delta_action_stats(demos, cfg.horizon)} if cfg.delta_actions else
                      demos.stats)
    tokenizer_json = instruction_tokenizer(cfg)
    model = build_model(cfg, stats, tokenizer_json).to(device)
    meta = checkpoint_meta("humanoid_vla", cfg, stats, tokenizer_json, STATE_DIM, N_JOINTS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(cfg, s))
    step = resume_last(run_dir, model, optimizer, scheduler) if cfg.resume else 0
    ends = phase_ends(cfg)
    print(f"humanoid VLA ({cfg.head} head): {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
          f"{len(demos.episodes)} demos; {ends[-1]} steps of batch {cfg.batch_size} on {device}")
    logger = Logger(run_dir, ends[-1], step, to_dict(cfg), cfg.wandb_project)

    datasets, start = [demos], 0
    for phase, end in enumerate(ends):
        if phase > 0:  # DAgger round `phase`: the current policy drives, the expert labels (reused when resuming)
            model.eval()
            datasets.append(collect_relabelled(
                ClosedLoopPolicy(model.cpu()), run_dir / "dagger" / f"round_{phase}", cfg.tasks,
                cfg.dagger_episodes_per_task, DAGGER_SEED + phase, cfg.demo_image_size, cfg.collect_workers))
            model.to(device)
            info = datasets[-1].meta["info"]
            logger.log(start, dict(dagger_round=phase, learner_success=info["learner_successes"] / info["episodes"],
                                   learner_falls=info["learner_falls"] / info["episodes"]))
        if step < end:
            data = torch.utils.data.ConcatDataset([ChunkDataset(d, cfg.horizon, [IMAGE_KEY, STATE_KEY])
                                                   for d in datasets])
            batches = resumable_loader(data, cfg.batch_size, cfg.seed + phase, step - start)
            model.train()
            while step < end:
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(batches).items()}
                loss = model.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                logger.advance()
                if step % cfg.log_every == 0 or step == end:
                    logger.log(step, dict(loss=loss.item(), grad_norm=grad_norm.item(), lr=scheduler.get_last_lr()[0]))
                if step % cfg.save_every == 0 or step == end:  # always at a phase's end: DAgger resumes from there
                    save_checkpoint(run_dir, step, model, meta, optimizer, scheduler)
        start = end
    logger.close()
    print(f"learning curve: {plot_metrics(run_dir, ('loss', 'grad_norm'))}")
    return evaluate_model(model.cpu(), cfg, run_dir) if cfg.eval_episodes > 0 else {}


def eval_config(cfg: HumanoidVLAConfig, **overrides) -> EvalConfig:
    fields = dict(tasks=cfg.tasks, episodes_per_task=cfg.eval_episodes, seed=cfg.eval_seed,
                  image_size=cfg.demo_image_size, workers=cfg.eval_workers, video_dir=cfg.video_dir)
    return EvalConfig(**{**fields, **overrides})


def evaluate_model(model: HumanoidVLA, cfg: HumanoidVLAConfig, out_dir: Path, **probes) -> dict:
    """Closed-loop success and falls per task on episodes never seen in training; writes eval.json and eval.md.
    `probes`: EvalConfig fields (blank_images=True, other_instruction=True)."""
    results = evaluate(ClosedLoopPolicy(model), eval_config(cfg, **probes))
    return save_results(results, out_dir)


if __name__ == "__main__":
    train(parse_config(PRESETS, sys.argv[1:], description=__doc__))
