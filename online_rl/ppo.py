"""PPO fine-tuning of an imitation policy in Meta-World, with chunk-level actions (Schulman et al. 2017, arXiv:1707.06347;
the chunk-level recipe of RLinf / πRL, arXiv:2510.25889).

Any method's policy comes through `common.policy.load_policy`, so this file knows no method. One decision is one
action chunk: the policy samples K actions, the environment executes them open loop, and the chunk is one PPO
"action" with one log-probability (the policy's: a Gaussian around a regression head, a flow policy's stochastic
denoising step, ...).

Each iteration (see online_rl/envs.py): every env plays one episode from its own placement, then
    GAE       delta_t = r_t + gamma * V_next_t - V(s_t)            V_next_t = V(s_{t+1}) if the episode goes on,
              A_t = delta_t + gamma * lambda * c_t * A_{t+1}       V(s_final) if the step limit cut it (truncation
              R_t = A_t + V(s_t)                                   is not failure), 0 after success; c_t: it goes on
              (Schulman et al. 2016, arXiv:1506.02438, eq. 16)
    policy    L = -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)],  rho = exp(log pi(a|s) - log pi_old(a|s))  (eq. 7)
    value     L_V = 1/2 E[max((V - R)^2, (V_old + clip(V - V_old, -eps_V, eps_V) - R)^2)]   (value clipping, as
              OpenAI baselines / CleanRL)
    for `update_epochs` passes over the iteration's chunks in minibatches, advantages normalised over the iteration.
The first `critic_warmup` iterations train the value head alone (the actor is unchanged while the critic learns
values of the starting policy).

Rewards: `success` (default) gives 1 on the chunk in which the task succeeds, which ends the episode (RLinf's
relative sparse reward); `dense` gives Meta-World's shaped reward summed over the chunk, times `dense_scale`.

Logged per iteration: the success rate of its episodes, the mean return, PPO's clip fraction, the approximate KL
between the rollout policy and the updated one, and the KL of the current policy to the starting one on the
rollout's chunks (Schulman's k3 estimator, E[(r - 1) - log r] with r = pi_start / pi).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.config import to_dict
from common.envs.metaworld import eval_config, evaluate, format_results
from common.policy import Policy, load_policy, observations
from common.train import Logger, read_config, resolve_checkpoint, resume_last, save_checkpoint, seed_everything

from online_rl.envs import ChunkEnvs


@dataclass
class PPOConfig:
    policy: str = "runs/bc"  # the imitation checkpoint to fine-tune: a checkpoint, run dir or its `last` pointer
    run_dir: str = "runs/ppo"  # checkpoints, metrics.jsonl, eval results
    tasks: tuple[str, ...] = ("reach-v3", "push-v3", "button-press-topdown-v3", "window-open-v3")  # trained tasks
    envs_per_task: int = 4  # episodes per task per iteration (envs)
    iterations: int = 50  # PPO iterations (one episode per env each)
    max_steps: int = 200  # environment steps per episode (as the imitation evaluation)
    placement_seed: int = 5000  # training placements (demos use 0, evaluation 1000 and 2000)
    reward: str = "success"  # "success": 1 on success (sparse); "dense": Meta-World's shaped reward x dense_scale
    dense_scale: float = 0.01  # the dense reward's scale (Meta-World's is 0..10 per step)
    gamma: float = 0.99  # discount per chunk
    gae_lambda: float = 0.95  # GAE's lambda
    clip: float = 0.2  # PPO's ratio clip epsilon
    value_clip: float = 0.2  # value clipping around the rollout's values (0: none)
    update_epochs: int = 4  # passes over each iteration's chunks
    minibatch_size: int = 32  # chunks per gradient step
    lr: float = 1e-5  # actor learning rate (RLinf's Meta-World pi0 setting)
    value_lr: float = 1e-4  # value-head learning rate
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.0  # entropy bonus (RLinf: 0)
    max_grad_norm: float = 1.0  # gradient clipping
    critic_warmup: int = 2  # first iterations update only the value head
    eval_episodes: int = 10  # closed-loop evaluation episodes per task, before and after (placements of seed 1000;
    #                           0: none)
    save_every: int = 5  # checkpoint every k iterations (and at the end)
    workers: int = 2  # environment processes (0: in this process)
    seed: int = 0  # seeds sampling, minibatch order and the value head's initialisation
    threads: int = 2  # torch CPU threads
    resume: bool = False  # continue run_dir's last checkpoint exactly
    device: str = "auto"  # "auto": CUDA when present, else CPU

    def __post_init__(self):
        if self.reward not in ("success", "dense"):
            raise ValueError(f"reward must be 'success' or 'dense', got {self.reward!r}")


# ---------------------------------------------------------------------------------------------------- the maths
def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, goes_on: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (T, N) chunk steps; `goes_on[t]`: the episode continues to t + 1.
    Returns (advantages, returns)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        running = delta + gamma * lam * goes_on[t].float() * running
        advantages[t] = running
    return advantages, advantages + values


def ppo_losses(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, value: torch.Tensor,
               old_value: torch.Tensor, returns: torch.Tensor, clip: float, value_clip: float) -> dict[str, torch.Tensor]:
    """The clipped surrogate (policy) and clipped value losses of one minibatch, with PPO's diagnostics."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    policy = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
    value_loss = (value - returns) ** 2
    if value_clip > 0:
        clipped = old_value + (value - old_value).clamp(-value_clip, value_clip)
        value_loss = torch.max(value_loss, (clipped - returns) ** 2)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # KL(old || new), Schulman's k3
        clip_fraction = ((ratio - 1).abs() > clip).float().mean()
    return dict(policy=policy, value=0.5 * value_loss.mean(), approx_kl=approx_kl, clip_fraction=clip_fraction)


# ---------------------------------------------------------------------------------------------------- rollouts
@torch.no_grad()
def rollout(policy: Policy, envs: ChunkEnvs, cfg: PPOConfig, iteration: int, device: torch.device) -> dict:
    """One episode per env from this iteration's placements, as (T, N) tensors of chunk steps; rows of envs whose
    episode has ended hold their last values and are masked out by `valid`. The policy runs on the active envs."""
    cameras, state_key = policy.cfg.cameras, policy.cfg.state_key
    # env i runs task i % len(tasks); its episodes (placements) are new every iteration
    episodes = [iteration * cfg.envs_per_task + i // len(cfg.tasks) for i in range(envs.n)]
    current = envs.reset(cfg.placement_seed, episodes)
    active = np.ones(envs.n, bool)
    success, returns, steps, out = np.zeros(envs.n, bool), np.zeros(envs.n), [], None
    while active.any():
        obs = observations(current, cameras, state_key, device)
        rows = torch.as_tensor(np.flatnonzero(active))
        sampled = policy(obs[rows])
        if out is None:
            out = sampled.exclude("action").clone()
        out[rows] = sampled.exclude("action")  # inactive rows keep stale values (masked)
        actions = np.zeros((envs.n, *sampled["action"].shape[1:]), np.float32)
        actions[rows.numpy()] = sampled["action"].cpu().numpy()
        result = envs.step(actions, active)
        reward = result.dense * cfg.dense_scale if cfg.reward == "dense" else result.success.astype(float)
        next_value = torch.zeros(envs.n, device=device)  # 0 after success; set below where the episode goes on
        cut = np.flatnonzero(result.truncated)
        if len(cut):  # the step limit ended these episodes: bootstrap with the value of where they stopped
            final = observations([result.obs[i] for i in cut], cameras, state_key, device)
            next_value[torch.as_tensor(cut)] = policy.get_value(final)[:, 0]
        steps.append(dict(obs=obs, out=out.clone(), reward=torch.as_tensor(np.where(active, reward, 0.0)),
                          valid=torch.as_tensor(active.copy()), goes_on=torch.as_tensor(active & ~result.done),
                          next_value=next_value))
        returns += np.where(active, reward, 0.0)
        success |= result.success & active
        current = [o if o is not None else c for o, c in zip(result.obs, current)]
        active &= ~result.done
    stacked = {key: torch.stack([s[key] for s in steps]) for key in steps[0]}
    values = stacked["out"]["value"][..., 0]
    goes_on = stacked["goes_on"].to(device)
    next_values = stacked["next_value"]
    next_values[:-1] = torch.where(goes_on[:-1], values[1:], next_values[:-1])  # V(s_{t+1}) where it goes on
    return dict(obs=stacked["obs"], out=stacked["out"], rewards=stacked["reward"].float().to(device), values=values,
                next_values=next_values, goes_on=goes_on, valid=stacked["valid"].to(device), success=success,
                returns=returns)


# ---------------------------------------------------------------------------------------------------- training
def make_optimizer(policy: torch.nn.Module, cfg: PPOConfig) -> torch.optim.Optimizer:
    """AdamW with the value head at its own learning rate (RLinf: actor 1e-5, critic 1e-4; betas 0.9, 0.95)."""
    value = [p for n, p in policy.named_parameters() if n.startswith("value_head.") and p.requires_grad]
    actor = [p for n, p in policy.named_parameters() if not n.startswith("value_head.") and p.requires_grad]
    return torch.optim.AdamW([dict(params=actor, lr=cfg.lr), dict(params=value, lr=cfg.value_lr)],
                             betas=(0.9, 0.95), weight_decay=0.0)


def update(policy: Policy, reference: Policy, optimizer: torch.optim.Optimizer, batch: dict, cfg: PPOConfig,
           warmup: bool, generator: torch.Generator) -> dict[str, float]:
    """`update_epochs` passes of minibatch PPO over the valid chunks of one iteration."""
    valid = batch["valid"].flatten().nonzero()[:, 0]
    obs, out = batch["obs"].reshape(-1)[valid], batch["out"].reshape(-1)[valid]
    advantages, returns = (x.flatten()[valid] for x in gae(batch["rewards"], batch["values"], batch["next_values"],
                                                          batch["goes_on"], cfg.gamma, cfg.gae_lambda))
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8) if len(valid) > 1 else advantages
    with torch.no_grad():  # KL(pi || pi_start) on the rollout's chunks, which pi sampled (k3)
        log_ratio = reference.evaluate_actions(obs, out)[0] - out["log_prob"]
        kl_start = ((log_ratio.exp() - 1) - log_ratio).mean().item()
    policy.train()
    stats: dict[str, list[float]] = {}
    for _ in range(cfg.update_epochs):
        order = torch.randperm(len(valid), generator=generator)
        for start in range(0, len(valid), cfg.minibatch_size):
            mb = order[start:start + cfg.minibatch_size]
            log_prob, entropy = policy.evaluate_actions(obs[mb], out[mb])
            value = policy.get_value(obs[mb])[:, 0]
            losses = ppo_losses(log_prob, out["log_prob"][mb], advantages[mb], value, out["value"][mb, 0],
                                returns[mb], cfg.clip, cfg.value_clip)
            loss = cfg.vf_coef * losses["value"]
            if not warmup:
                loss = loss + losses["policy"] - cfg.ent_coef * entropy.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                       cfg.max_grad_norm)
            optimizer.step()
            for key, value in dict(losses, entropy=entropy.mean(), grad_norm=grad_norm).items():
                stats.setdefault(key, []).append(float(value.detach()))
    policy.eval()
    return dict({k: float(np.mean(v)) for k, v in stats.items()}, kl_start=kl_start)


def evaluate_policy(policy: Policy, cfg: PPOConfig, out_dir: Path) -> dict:
    """Closed-loop success on held-out placements (evaluation seed 1000), the policy acting deterministically."""
    policy_cfg = policy.cfg

    def act(obs: dict) -> np.ndarray:
        with torch.no_grad():
            td = observations([obs], policy_cfg.cameras, policy_cfg.state_key, next(policy.parameters()).device)
            return policy(td, deterministic=True)["action"][0].cpu().numpy()

    results = evaluate(act, eval_config(policy_cfg, tasks=cfg.tasks, episodes_per_task=cfg.eval_episodes, workers=1,
                                        max_steps=cfg.max_steps, video_dir=None))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.md").write_text(format_results(results) + "\n")
    summary = {task: r.as_dict() for task, r in results.items()}
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=1))
    return summary


def train(cfg: PPOConfig) -> dict:
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    run_dir = Path(cfg.run_dir)
    start = resolve_checkpoint(cfg.policy)
    policy = load_policy(start).to(device).eval()
    reference = copy.deepcopy(policy).requires_grad_(False)  # the starting policy, for the KL to it
    optimizer = make_optimizer(policy, cfg)
    meta = dict(read_config(start), online_rl=dict(algorithm="ppo", config=to_dict(cfg), start=str(start)))
    iteration = resume_last(run_dir, policy, optimizer) if cfg.resume else 0
    if iteration == 0 and cfg.eval_episodes:
        before = evaluate_policy(policy, cfg, run_dir / "eval_before")
        print(f"before RL: {np.mean([r['success_rate'] for r in before.values()]):.1%}")
    generator = torch.Generator().manual_seed(cfg.seed)
    tasks = [cfg.tasks[i % len(cfg.tasks)] for i in range(cfg.envs_per_task * len(cfg.tasks))]
    envs = ChunkEnvs(tasks, policy.cfg.demo_image_size, policy.cfg.cameras, cfg.max_steps, cfg.workers)
    logger = Logger(run_dir, cfg.iterations, iteration, to_dict(cfg), desc="ppo")
    try:
        while iteration < cfg.iterations:
            generator.manual_seed(cfg.seed * 1_000_003 + iteration)  # each iteration's draws depend on it alone
            torch.manual_seed(cfg.seed * 1_000_003 + iteration)
            batch = rollout(policy, envs, cfg, iteration, device)
            stats = update(policy, reference, optimizer, batch, cfg, iteration < cfg.critic_warmup, generator)
            iteration += 1
            logger.log(iteration, dict(success=batch["success"].mean(), episode_return=batch["returns"].mean(),
                                       chunks=int(batch["valid"].sum()), **stats))
            logger.advance()
            if iteration % cfg.save_every == 0 or iteration == cfg.iterations:
                save_checkpoint(run_dir, iteration, policy, meta, optimizer)
    finally:
        envs.close()
        logger.close()
    if not cfg.eval_episodes:
        return {}
    after = evaluate_policy(policy, cfg, run_dir / "eval_after")
    print(f"after RL: {np.mean([r['success_rate'] for r in after.values()]):.1%}")
    return after
