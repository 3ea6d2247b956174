"""CORL's side of offline_rl's parity tests: CORL's own IQL, TD3+BC and CQL updates, imported from a checkout of
github.com/corl-team/CORL at run time, on fixed random weights and batches, written as a safetensors fixture.

    python offline_rl/tools/corl_reference.py --corl /path/to/CORL   # -> tests/fixtures/corl_updates.safetensors

The tests (`test_{iql,td3_bc,cql}_updates_match_corl`) load the same initial weights into our agents through the
layout mapping, feed the same batches, and compare the losses of every update and every parameter afterwards
(targets included), so they need no CORL checkout. `iql_trainer` and `cql_trainer` are also how
benchmarks/offline_rl_vs_corl.py builds CORL's side, so the timed trainers carry the configuration the fixture
checks. Nothing from CORL is copied into this repository.

What is run, per algorithm (obs_dim 5, act_dim 2, batch 16, hidden width 32, everything else CORL's defaults):
* IQL: CORL's `TwinQ`, `ValueFunction`, `GaussianPolicy` (built at hidden_dim 32) and `ImplicitQLearning` with
  expectile 0.7, β = 3, discount 0.99, τ 0.005, Adam 3e-4 on all three, the actor's cosine schedule over
  max_steps = 3; three `train()` calls.
* TD3+BC: CORL's `Actor` / `Critic` hard-code width 256, so their `net` is rebuilt at width 32 with the same layers
  (Linear-ReLU-Linear-ReLU-Linear, and the actor's Tanh); their `forward` (concatenation, max_action = 1) and
  `TD3_BC.train` are CORL's. α 2.5, policy noise 0.2 clipped at 0.5, policy_freq 2, Adam 3e-4; four `train()`
  calls, each after `torch.manual_seed(100 + k)` so that the target-smoothing noise can be drawn again here.
* CQL: CORL's `FullyConnectedQFunction` (orthogonal init) and `TanhGaussianPolicy`, their `network` /
  `base_network` rebuilt at width 32 (three hidden layers, CORL's `init_module_weights`), and `ContinuousCQL` with
  the locomotion config of benchmarks/offline_rl_vs_corl.py (α_cql 10, 10 actions per source, importance
  sampling, automatic entropy, actor 3e-5, critics 3e-4); three `train()` calls, each after
  `torch.manual_seed(200 + k)`: our update draws the same random numbers in the same order (the policy sample for
  the actor loss, the next action, the uniform actions, the policy samples at s then at s').
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Callable

import torch
from torch import nn

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "corl_updates.safetensors"
OBS_DIM, ACT_DIM, BATCH, HIDDEN = 5, 2, 16, 32
IQL_UPDATES, TD3_UPDATES, CQL_UPDATES = 3, 4, 3


def load_corl(corl: Path, name: str) -> types.ModuleType:
    """Import CORL's algorithms/offline/<name>.py as corl_<name>, with empty stand-ins for d4rl, gym, pyrallis and
    wandb (only CORL's `train()` entry point uses them, and nothing here calls it)."""
    gym = types.ModuleType("gym")
    gym.Env, gym.wrappers = type("Env", (), {}), types.SimpleNamespace()
    pyrallis = types.ModuleType("pyrallis")
    pyrallis.wrap, pyrallis.dump = (lambda *a, **k: (lambda f: f)), (lambda *a, **k: None)
    wandb = types.ModuleType("wandb")
    wandb.init = wandb.log = lambda *a, **k: None
    for mod_name, mod in (("gym", gym), ("d4rl", types.ModuleType("d4rl")), ("pyrallis", pyrallis),
                          ("wandb", wandb)):
        sys.modules.setdefault(mod_name, mod)
    path = corl / "algorithms" / "offline" / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: --corl must point at a checkout of github.com/corl-team/CORL")
    spec = importlib.util.spec_from_file_location(f"corl_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def batches(seed: int, n: int) -> list[dict[str, torch.Tensor]]:
    """n random batches: observations N(0, 1), actions U(−1, 1), rewards N(0, 1), dones with probability 0.2."""
    g = torch.Generator().manual_seed(seed)
    return [dict(obs=torch.randn(BATCH, OBS_DIM, generator=g),
                 actions=torch.rand(BATCH, ACT_DIM, generator=g) * 2 - 1,
                 rewards=torch.randn(BATCH, generator=g),
                 next_obs=torch.randn(BATCH, OBS_DIM, generator=g),
                 dones=(torch.rand(BATCH, generator=g) < 0.2).float()) for _ in range(n)]


def as_corl(b: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """CORL's batch: a list, with rewards and dones as (B, 1)."""
    return [b["obs"], b["actions"], b["rewards"][:, None], b["next_obs"], b["dones"][:, None]]


def train_on_batches(trainer, prefix: str, seed: int, updates: int, rng_seed: int | None,
                     losses: Callable[[dict], list[float]]) -> dict[str, torch.Tensor]:
    """`updates` calls of CORL's `trainer.train` on fresh batches (each after `torch.manual_seed(rng_seed + k)` when
    given): the batches and the (update, loss) table, as fixture entries."""
    out, table = {}, []
    for k, b in enumerate(batches(seed, updates)):
        out.update({f"{prefix}.batch{k}.{name}": t for name, t in b.items()})
        if rng_seed is not None:
            torch.manual_seed(rng_seed + k)
        table.append(losses(trainer.train(as_corl(b))))
    out[f"{prefix}.losses"] = torch.tensor(table, dtype=torch.float64)
    return out


def iql_trainer(m: types.ModuleType, q: nn.Module, v: nn.Module, actor: nn.Module, max_steps: int, device: str):
    """CORL's `ImplicitQLearning` with its locomotion hyperparameters (expectile 0.7, β 3, Adam 3e-4)."""
    return m.ImplicitQLearning(
        max_action=1.0, actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), lr=3e-4),
        q_network=q, q_optimizer=torch.optim.Adam(q.parameters(), lr=3e-4),
        v_network=v, v_optimizer=torch.optim.Adam(v.parameters(), lr=3e-4),
        iql_tau=0.7, beta=3.0, max_steps=max_steps, discount=0.99, tau=0.005, device=device)


def cql_trainer(m: types.ModuleType, critic_1: nn.Module, critic_2: nn.Module, actor: nn.Module, act_dim: int,
                device: str):
    """CORL's `ContinuousCQL` with its locomotion config (α_cql 10, 10 actions per source, importance sampling,
    automatic entropy, no BC warm-up, actor 3e-5, critics 3e-4)."""
    return m.ContinuousCQL(
        critic_1=critic_1, critic_1_optimizer=torch.optim.Adam(list(critic_1.parameters()), 3e-4),
        critic_2=critic_2, critic_2_optimizer=torch.optim.Adam(list(critic_2.parameters()), 3e-4),
        actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), 3e-5),
        target_entropy=-float(act_dim), discount=0.99, alpha_multiplier=1.0, use_automatic_entropy_tuning=True,
        backup_entropy=False, policy_lr=3e-5, qf_lr=3e-4, soft_target_update_rate=5e-3, bc_steps=0,
        target_update_period=1, cql_n_actions=10, cql_importance_sample=True, cql_lagrange=False,
        cql_target_action_gap=-1.0, cql_temp=1.0, cql_alpha=10.0, cql_max_target_backup=False,
        cql_clip_diff_min=-float("inf"), cql_clip_diff_max=float("inf"), device=device)


def named(prefix: str, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{m}.{k}": v.detach().clone() for m, module in modules.items()
            for k, v in module.state_dict().items()}


def iql_fixture(corl: Path) -> dict[str, torch.Tensor]:
    m = load_corl(corl, "iql")
    torch.manual_seed(0)
    q, v = m.TwinQ(OBS_DIM, ACT_DIM, hidden_dim=HIDDEN), m.ValueFunction(OBS_DIM, hidden_dim=HIDDEN)
    actor = m.GaussianPolicy(OBS_DIM, ACT_DIM, 1.0, hidden_dim=HIDDEN, dropout=None)
    out = named("iql.init", dict(q=q, v=v, actor=actor))
    trainer = iql_trainer(m, q, v, actor, IQL_UPDATES, "cpu")
    out.update(train_on_batches(trainer, "iql", 1, IQL_UPDATES, None,  # losses: (update, [V, Q, π])
                                lambda log: [log["value_loss"], log["q_loss"], log["actor_loss"]]))
    out.update(named("iql.final", dict(q=q, q_target=trainer.q_target, v=v, actor=actor)))
    return out


def td3_bc_fixture(corl: Path) -> dict[str, torch.Tensor]:
    m = load_corl(corl, "td3_bc")
    torch.manual_seed(0)
    actor, critic_1, critic_2 = m.Actor(OBS_DIM, ACT_DIM, 1.0), m.Critic(OBS_DIM, ACT_DIM), m.Critic(OBS_DIM, ACT_DIM)
    actor.net = nn.Sequential(nn.Linear(OBS_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                              nn.Linear(HIDDEN, ACT_DIM), nn.Tanh())
    for critic in (critic_1, critic_2):
        critic.net = nn.Sequential(nn.Linear(OBS_DIM + ACT_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN),
                                   nn.ReLU(), nn.Linear(HIDDEN, 1))
    out = named("td3_bc.init", dict(actor=actor, critic_1=critic_1, critic_2=critic_2))
    trainer = m.TD3_BC(
        max_action=1.0, actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), lr=3e-4),
        critic_1=critic_1, critic_1_optimizer=torch.optim.Adam(critic_1.parameters(), lr=3e-4),
        critic_2=critic_2, critic_2_optimizer=torch.optim.Adam(critic_2.parameters(), lr=3e-4),
        discount=0.99, tau=0.005, policy_noise=0.2, noise_clip=0.5, policy_freq=2, alpha=2.5, device="cpu")
    out.update(train_on_batches(trainer, "td3_bc", 2, TD3_UPDATES, 100,  # the seed: the target-smoothing noise
                                lambda log: [log["critic_loss"], log.get("actor_loss", float("nan"))]))
    out.update(named("td3_bc.final", dict(actor=actor, critic_1=critic_1, critic_2=critic_2,
                                          actor_target=trainer.actor_target, critic_1_target=trainer.critic_1_target,
                                          critic_2_target=trainer.critic_2_target)))
    return out


def cql_fixture(corl: Path) -> dict[str, torch.Tensor]:
    m = load_corl(corl, "cql")
    torch.manual_seed(0)
    critics = [m.FullyConnectedQFunction(OBS_DIM, ACT_DIM, True, 3) for _ in range(2)]
    actor = m.TanhGaussianPolicy(OBS_DIM, ACT_DIM, 1.0, log_std_multiplier=1.0, orthogonal_init=True)
    for critic in critics:  # CORL hard-codes width 256: the same layers at 32, initialised by CORL's function
        critic.network = nn.Sequential(nn.Linear(OBS_DIM + ACT_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN),
                                       nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))
        m.init_module_weights(critic.network, True)
    actor.base_network = nn.Sequential(nn.Linear(OBS_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                       nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * ACT_DIM))
    m.init_module_weights(actor.base_network)
    out = named("cql.init", dict(actor=actor, critic_1=critics[0], critic_2=critics[1]))
    trainer = cql_trainer(m, critics[0], critics[1], actor, ACT_DIM, "cpu")
    out.update(train_on_batches(trainer, "cql", 3, CQL_UPDATES, 200,  # the seed: policy samples, uniform actions
                                lambda log: [log["policy_loss"], log["alpha_loss"], log["qf1_loss"] + log["qf2_loss"],
                                             (log["cql_qf1_diff"] + log["cql_qf2_diff"]) / 2]))
    out.update(named("cql.final", dict(actor=actor, critic_1=critics[0], critic_2=critics[1],
                                       critic_1_target=trainer.target_critic_1,
                                       critic_2_target=trainer.target_critic_2, log_alpha=trainer.log_alpha)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corl", type=Path, required=True, help="a checkout of github.com/corl-team/CORL")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    tensors = {k: v.contiguous() for part in (iql_fixture, td3_bc_fixture, cql_fixture)
               for k, v in part(args.corl).items()}
    head = subprocess.run(["git", "-C", str(args.corl), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    meta = dict(obs_dim=OBS_DIM, act_dim=ACT_DIM, batch=BATCH, hidden=HIDDEN, iql_updates=IQL_UPDATES,
                td3_updates=TD3_UPDATES, cql_updates=CQL_UPDATES, torch=torch.__version__, corl_commit=head.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out, metadata={"config": json.dumps(meta)})
    print(f"wrote {args.out}: {len(tensors)} tensors, {sum(v.numel() for v in tensors.values()):,} numbers")


if __name__ == "__main__":
    main()
