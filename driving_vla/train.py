"""Train a driving VLA (or the BC baseline) by imitation, then DAgger, and evaluate it in closed loop.

    python train.py                                  # tiny VLA (MLP head): expert demos, BC, 2 DAgger rounds, eval
    python train.py --head flow                      # the flow-matching head
    python train.py --model bc --dagger_rounds 0     # plain BC baseline (no language)
    python train.py --scenarios highway merge --eval_seeds 10 --shield   # any field of config.DrivingVLAConfig
    python train.py --resume                         # continue run_dir's last checkpoint exactly

Phases (one global step counter; a checkpoint at the end of every phase):
    0            behaviour cloning on the expert demonstrations, `steps` steps
    1 .. R       DAgger round i (Ross et al., 2011, Alg. 3.1): roll out π_i = β_i·expert + (1 − β_i)·learner with
                 β_i = p^i (`dagger_beta` = p; p = 0 is "β_1 = 1, then 0": round 0 is the expert's own data), relabel
                 the visited states with the expert (`expert_waypoints`), aggregate D ← D ∪ D_i, and fine-tune the
                 current policy on D for `dagger_steps` steps (the paper retrains; fine-tuning costs less)
then a closed-loop evaluation on held-out seeds of every scenario, a table, and a GIF.
"""

from __future__ import annotations

import json
import math
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads must not spin
from pathlib import Path

import torch

from common.config import parse_config, to_dict
from common.data import EpisodeDataset, write_json_atomic
from common.envs import highway as hw
from common.text import tokenizer_from_json, tokenizer_to_json, train_bpe_tokenizer
from common.train import (Logger, plot_metrics, resumable_loader, resume_last, save_checkpoint, save_pretrained,
                          seed_everything)

from driving_vla import rollouts
from driving_vla.config import PRESETS, DrivingVLAConfig
from driving_vla.model import COMMAND_PLACES, K, ClosedLoopPolicy, DrivingPolicy, Shield, route_sentence, sample_time


# ------------------------------------------------------------------------------------------------ building blocks
def build_tokenizer(cfg: DrivingVLAConfig, demos: EpisodeDataset) -> str:
    """A byte-level BPE trained on the demonstrations' prompts plus a grid of synthetic ones (every command and
    place, speeds 0-40 m/s, distances 0-60 m), so that no route sentence the model can meet is out of vocabulary
    in spirit; as JSON (stored in every checkpoint)."""
    synthetic = [route_sentence(v, c, d, place) for v in range(0, 41, 3) for c in range(4) for d in (0, 5, 17, 33, 60)
                 for place in COMMAND_PLACES]
    return tokenizer_to_json(train_bpe_tokenizer(rollouts.prompts_of([demos]) + synthetic,
                                                 vocab_size=cfg.tokenizer_vocab))


def checkpoint_meta(cfg: DrivingVLAConfig, stats: dict, tokenizer_json: str | None) -> dict:
    """What `eval.py` (and every evaluation worker) needs to rebuild the policy: config, statistics, tokenizer; and
    the method (this folder's name), which `common.policy.load_policy` dispatches on (to `policy.py`)."""
    return dict(method="driving_vla", config=to_dict(cfg), stats=stats, tokenizer=tokenizer_json)


def demo_spec(cfg: DrivingVLAConfig) -> hw.DemoSpec:
    return hw.DemoSpec(scenarios=cfg.scenarios, episodes_per_scenario=cfg.episodes_per_scenario,
                       horizon_s=cfg.horizon_s)


def learning_rate(cfg: DrivingVLAConfig, step: int) -> float:
    """Per phase: linear warmup to `lr` (`warmup_steps`, at most a tenth of the phase), cosine decay to `min_lr`."""
    start, length = phase_of(cfg, step)[1:]
    warmup = min(cfg.warmup_steps, length // 10)
    local = step - start
    if local < warmup:
        return cfg.lr * (local + 1) / (warmup + 1)
    progress = min(1.0, (local - warmup) / max(1, length - warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def phase_of(cfg: DrivingVLAConfig, step: int) -> tuple[int, int, int]:
    """(phase, its first step, its length) of a global step: phase 0 is BC, phase i ≥ 1 the i-th DAgger round."""
    if step < cfg.steps or cfg.dagger_rounds == 0:
        return 0, 0, cfg.steps
    phase = min(cfg.dagger_rounds, 1 + (step - cfg.steps) // cfg.dagger_steps)
    return phase, cfg.steps + (phase - 1) * cfg.dagger_steps, cfg.dagger_steps


def total_steps(cfg: DrivingVLAConfig) -> int:
    return cfg.steps + cfg.dagger_rounds * cfg.dagger_steps


def training_noise(cfg: DrivingVLAConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow head's ε (B, K, 2) and τ (B,) of one step, seeded by (seed, step): exact on resume."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return torch.randn(cfg.batch_size, K, 2, generator=g), sample_time(cfg.batch_size, cfg, g)


def dagger_seeds(cfg: DrivingVLAConfig, round_: int) -> list[int]:
    """Training seeds of DAgger round i: after the demonstrations', disjoint across rounds (never evaluation seeds)."""
    first = cfg.episodes_per_scenario + (round_ - 1) * cfg.dagger_episodes
    return hw.seeds("train", first + cfg.dagger_episodes)[first:]


def weights(policy: DrivingPolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}


# ------------------------------------------------------------------------------------------------ training
def train(cfg: DrivingVLAConfig) -> dict:
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    run_dir = Path(cfg.run_dir)
    for name in cfg.scenarios:
        if name not in hw.SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; the benchmark has {', '.join(hw.SCENARIOS)}")

    demos = hw.collect_demos(demo_spec(cfg))
    tokenizer_json = build_tokenizer(cfg, demos) if cfg.model == "vla" else None
    tokenizer = tokenizer_from_json(tokenizer_json) if tokenizer_json else None
    if tokenizer is not None:  # a truncated prompt would lose its end: the command
        longest = max(len(ids) for ids in tokenizer(rollouts.prompts_of([demos]))["input_ids"])
        if longest > cfg.max_text_tokens:
            raise ValueError(f"the longest prompt has {longest} tokens > max_text_tokens {cfg.max_text_tokens}")
    meta = checkpoint_meta(cfg, rollouts.ego_and_waypoint_stats(demos), tokenizer_json)
    policy = DrivingPolicy(cfg, meta["stats"], tokenizer).to(device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(cfg, s) / cfg.lr)
    step = resume_last(run_dir, policy, optimizer, scheduler) if cfg.resume else 0
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"{cfg.model}{'/' + cfg.head if cfg.model == 'vla' else ''}: {n_params / 1e6:.2f}M parameters; "
          f"{len(demos.episodes)} expert episodes, {demos.num_frames} frames; {total_steps(cfg)} steps of batch "
          f"{cfg.batch_size} ({cfg.steps} BC + {cfg.dagger_rounds} DAgger rounds x {cfg.dagger_steps}) on {device}")

    datasets, results = [demos], {}
    logger = Logger(run_dir, total_steps(cfg), step, to_dict(cfg), cfg.wandb_project)
    for phase in range(cfg.dagger_rounds + 1):
        start = 0 if phase == 0 else cfg.steps + (phase - 1) * cfg.dagger_steps
        end = start + (cfg.steps if phase == 0 else cfg.dagger_steps)
        if phase > 0:  # the round's data, collected with the weights at the start of the phase (or found on disk)
            if step < start:
                raise RuntimeError(f"phase {phase} starts at step {start} but the policy is at step {step}")
            data = rollouts.collect_dagger(run_dir / "dagger" / f"round{phase}", meta, weights(policy), cfg.scenarios,
                                           dagger_seeds(cfg, phase), cfg.horizon_s, cfg.dagger_beta ** phase,
                                           cfg.dagger_relabel_every, cfg.seed * 100 + phase, cfg.collect_workers,
                                           cfg.shield)
            info = data.meta["info"]
            logger.bar.write(f"DAgger round {phase}: {len(data.episodes)} episodes, {info['steps']} steps "
                             f"({info['expert_steps']} by the expert), {info['collisions']} collisions, "
                             f"{data.num_frames} relabelled states")
            datasets.append(data)
        if step < end:
            step = train_phase(cfg, policy, optimizer, scheduler, datasets, tokenizer, step, start, end, meta, logger,
                               device)
            save_pretrained(policy, meta, run_dir / f"phase{phase}")  # kept for eval.py: BC, BC + 1 round, ...
        if cfg.eval_each_round and cfg.eval_seeds and phase < cfg.dagger_rounds:
            results[f"round {phase}"] = evaluate_once(cfg, meta, policy, run_dir / f"eval_round{phase}.json")
    logger.close()
    print(f"learning curve: {plot_metrics(run_dir, ('loss', 'lr'))}")
    if cfg.eval_seeds == 0:
        return {}
    results["final"] = evaluate_once(cfg, meta, policy, run_dir / "eval.json")
    return report(cfg, results, run_dir, policy)


def train_phase(cfg, policy, optimizer, scheduler, datasets, tokenizer, step, start, end, meta, logger, device) -> int:
    """Steps `step` .. `end` of a phase that starts at `start`, on the aggregate of `datasets`."""
    data = rollouts.WaypointDataset(datasets, tokenizer, cfg.max_text_tokens)
    batches = resumable_loader(data, cfg.batch_size, cfg.seed + 7919 * len(datasets), step - start)
    policy.train()
    while step < end:
        batch = {k: v.to(device) for k, v in next(batches).items()}
        noise, time = (x.to(device) for x in training_noise(cfg, step))
        loss = policy(batch, noise, time)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        logger.advance()
        if step % cfg.log_every == 0 or step == end:
            logger.log(step, dict(loss=loss.item(), grad_norm=grad_norm.item(), lr=scheduler.get_last_lr()[0],
                                  frames=len(data)))
        if step % cfg.save_every == 0 or step == end:
            save_checkpoint(cfg.run_dir, step, policy, meta, optimizer, scheduler)
    policy.eval()
    return step


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_once(cfg: DrivingVLAConfig, meta: dict, policy: DrivingPolicy, path: Path) -> list[dict]:
    """Closed-loop episode metrics on seeds("eval", eval_seeds) of every scenario; cached in `path` (a resumed run
    does not redo the evaluations it finished)."""
    if path.exists():
        return json.loads(path.read_text())
    rows = rollouts.evaluate(meta, weights(policy), cfg.scenarios, cfg.eval_seeds, cfg.horizon_s, cfg.collect_workers,
                             cfg.shield)
    write_json_atomic(path, rows)
    return rows


def method_name(cfg: DrivingVLAConfig) -> str:
    name = "BC" if cfg.model == "bc" else f"VLA ({cfg.head})"
    return name + (f" + DAgger x{cfg.dagger_rounds}" if cfg.dagger_rounds else "") + (" + shield" if cfg.shield else "")


def report(cfg: DrivingVLAConfig, results: dict[str, list[dict]], out_dir: Path, policy: DrivingPolicy) -> dict:
    """Print and write the table (eval.md) with the expert's rows on the same seeds, and save a GIF of the first
    evaluation episode."""
    seeds = hw.seeds("eval", cfg.eval_seeds)
    rows = {"expert": list(rollouts.expert_results(cfg.scenarios, cfg.eval_seeds, cfg.horizon_s,
                                                   cfg.collect_workers).values())}
    for name, r in results.items():
        label = method_name(cfg)
        if name != "final":  # round i of the same run: BC for round 0
            label = (("BC" if cfg.model == "bc" else f"VLA ({cfg.head})")
                     + (f" + DAgger x{name.split()[1]}" if name != "round 0" else ""))
        rows[label] = r
    text = rollouts.table(rows, cfg.scenarios)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.md").write_text(text + "\n")
    if cfg.gif:
        shield = Shield.from_config(cfg) if cfg.shield else None
        gif = rollouts.episode_gif(ClosedLoopPolicy(policy.cpu(), shield), cfg.scenarios[0], seeds[0],
                                   out_dir / f"{cfg.scenarios[0]}_seed{seeds[0]}.gif", cfg.horizon_s)
        print(f"GIF: {gif}")
    return {name: hw.aggregate(r) for name, r in rows.items()}


if __name__ == "__main__":
    train(parse_config(PRESETS, sys.argv[1:], description=__doc__))
