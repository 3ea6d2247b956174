"""Train the humanoid VLA on the embedded G1 benchmark: behaviour cloning on IK-expert demos, then DAgger rounds in
which the policy drives and the expert relabels the states it reaches; then evaluate in closed loop.

    python train.py                          # tiny preset: 11 tasks, 20 demos each, BC + 2 DAgger rounds, eval
    python train.py --preset mlp             # the MLP-head baseline
    python train.py --dagger_rounds 0        # plain BC
    python train.py --delta_actions          # chunks relative to the current joint positions (openpi's DeltaActions)
    python train.py --stability_weight 0.1   # + the auxiliary loss on the centre of mass' offset over the chunk
    python train.py --resume                 # continue run_dir's last checkpoint exactly (DAgger data included)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import mujoco
import numpy as np
import torch

from common.config import parse_config, to_dict
from common.data import ChunkDataset, array_stats
from common.envs.humanoid import (IMAGE_KEY, N_JOINTS, STATE_DIM, TASKS, DemoSpec, EvalConfig, HumanoidEnv,
                                  collect_demos, collect_relabelled, evaluate, save_results)
from common.text import tokenizer_from_json, tokenizer_to_json, train_bpe_tokenizer
from common.train import (Logger, checkpoint_meta, plot_metrics, resumable_loader, resume_last, save_checkpoint,
                          seed_everything)

from humanoid_vla.config import PRESETS, HumanoidVLAConfig
from humanoid_vla.model import COM_KEY, DELTA_KEY, STATE_KEY, ClosedLoopPolicy, HumanoidVLA

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
    return array_stats(np.concatenate(deltas))


def com_offsets(states: np.ndarray) -> np.ndarray:
    """The centre of mass' horizontal offset from the middle of the feet, (N, 2) metres, for each 64-D
    proprioceptive state: forward kinematics of the G1 at its joint positions with the pelvis' roll and pitch read
    from the gravity vector. The heading and the position of the pelvis do not change this offset, so it comes out
    in the pelvis' heading frame (x forward, y left) and a real robot could compute it from its own sensors."""
    env = HumanoidEnv(render_images=False)
    m, d = env.model, env.data
    pelvis, feet = m.body("pelvis").id, [m.site(s).id for s in ("left_foot", "right_foot")]
    offsets = np.empty((len(states), 2))
    for i, state in enumerate(np.asarray(states, np.float64)):
        up = -state[2 * N_JOINTS: 2 * N_JOINTS + 3]  # the world's up axis in the pelvis frame: R's third row
        roll, pitch = np.arctan2(up[1], up[2]), np.arctan2(-up[0], np.hypot(up[1], up[2]))
        d.qpos[3:7] = [np.cos(roll / 2) * np.cos(pitch / 2), np.sin(roll / 2) * np.cos(pitch / 2),  # the quaternion
                       np.cos(roll / 2) * np.sin(pitch / 2), -np.sin(roll / 2) * np.sin(pitch / 2)]  # of Ry·Rx
        d.qpos[env.joint_qpos] = state[:N_JOINTS]
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        offsets[i] = d.subtree_com[pelvis, :2] - d.site_xpos[feet, :2].mean(0)
    env.close()
    return offsets


class WithFutureCoM(torch.utils.data.Dataset):
    """A `ChunkDataset`'s samples plus the stability loss' targets: `com_offset` (H, 2), the centre-of-mass offsets
    of the H states that follow the observed one (t+1 .. t+H: where the body's balance goes while the chunk runs;
    in a DAgger round, under the learner that drove), and `com_is_pad` (H,) where they run past the episode."""

    def __init__(self, chunks: ChunkDataset):
        self.chunks = chunks
        self.offsets = com_offsets(chunks.dataset.arrays[STATE_KEY]).astype(np.float32)  # per frame of the dataset

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict:
        item, t, data = self.chunks[i], int(self.chunks.frames[i]), self.chunks.dataset
        episode = data.episodes[data.episode_of_frame[t]]
        end = episode["start"] + episode["length"]
        steps = t + 1 + np.arange(self.chunks.horizon)
        item.update({COM_KEY: torch.from_numpy(self.offsets[np.minimum(steps, end - 1)]),
                     "com_is_pad": torch.from_numpy(steps >= end)})
        return item


def training_data(dataset, cfg: HumanoidVLAConfig) -> torch.utils.data.Dataset:
    """The samples of one dataset (demos or a DAgger round): chunks, with the stability targets when they are on."""
    chunks = ChunkDataset(dataset, cfg.horizon, [IMAGE_KEY, STATE_KEY])
    return WithFutureCoM(chunks) if cfg.stability_weight > 0 else chunks


def run_stats(demos, cfg: HumanoidVLAConfig) -> dict:
    """The statistics the model normalises with: the demos', with those of the delta actions and the centre-of-mass
    offsets when they are used, every std floored."""
    stats = dict(demos.stats)
    if cfg.delta_actions:
        stats[DELTA_KEY] = delta_action_stats(demos, cfg.horizon)
    if cfg.stability_weight > 0:
        stats[COM_KEY] = array_stats(com_offsets(demos.arrays[STATE_KEY]))
    return floor_std(stats)


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
    stats = run_stats(demos, cfg)
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

    samples, start = [training_data(demos, cfg)], 0  # one entry per dataset, built once: demos, then each round
    for phase, end in enumerate(ends):
        if phase > 0:  # DAgger round `phase`: the current policy drives, the expert labels (reused when resuming)
            model.eval()
            relabelled = collect_relabelled(
                ClosedLoopPolicy(model.cpu()), run_dir / "dagger" / f"round_{phase}", cfg.tasks,
                cfg.dagger_episodes_per_task, DAGGER_SEED + phase, cfg.demo_image_size, cfg.collect_workers)
            samples.append(training_data(relabelled, cfg))
            model.to(device)
            info = relabelled.meta["info"]
            logger.log(start, dict(dagger_round=phase, learner_success=info["learner_successes"] / info["episodes"],
                                   learner_falls=info["learner_falls"] / info["episodes"]))
        if step < end:
            data = torch.utils.data.ConcatDataset(samples)
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
