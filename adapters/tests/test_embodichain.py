"""Our tiny π0 and OpenVLA-OFT inside the real EmbodiChain 0.3.2: a subclass of its RL `Policy`, steps sampled
through its `get_action`, the rollout in its [num_envs, T + 1] layout, log-probabilities re-scored through
`evaluate_actions` on its own `transition_view` equal to the rollout's, and one real `PPO.update` / `GRPO.update`
(built by its `build_algo`) that moves the taken chunks' log-probabilities along their advantages."""

import pytest
import torch

pytest.importorskip("embodichain", reason="EmbodiChain is installed by requirements/frameworks.txt (setup.sh)")

from embodichain.learning.rl.algo import compute_gae  # noqa: E402
from embodichain.learning.rl.buffer import transition_view  # noqa: E402
from embodichain.learning.rl.policies import Policy as EmbodiChainBase  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from adapters.embodichain import EmbodiChainPolicy, algorithm, rollout  # noqa: E402
from adapters.tests.conftest import ACTION_DIM, observations  # noqa: E402
from common.policy import load_policy  # noqa: E402

STEPS, ENVS, GROUP = 2, 4, 2  # chunk steps, envs (two GRPO groups of two)
GAMMA, LAMBDA = 0.99, 0.95


def collect(policy: EmbodiChainPolicy) -> TensorDict:
    """STEPS chunk steps of ENVS envs as EmbodiChain's collector takes them (`policy.train()`, `get_action`);
    envs 0 and 3 succeed on the last chunk."""
    torch.manual_seed(0)
    policy.train()
    steps = [policy.get_action(TensorDict(obs=observations(ENVS, seed=t), batch_size=[ENVS])) for t in range(STEPS)]
    reward = torch.zeros(ENVS, STEPS)
    reward[:, -1] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    terminated = torch.zeros(ENVS, STEPS, dtype=torch.bool)
    terminated[:, -1] = True
    return rollout(policy, steps, observations(ENVS, seed=STEPS), reward, terminated, torch.zeros_like(terminated))


@pytest.mark.parametrize("method", ["pi0", "oft"])
def test_embodichain_ppo_trains_our_policy(checkpoints, method):
    policy = EmbodiChainPolicy(load_policy(checkpoints[method]))
    assert isinstance(policy, EmbodiChainBase)
    data = collect(policy)
    assert data.batch_size == (ENVS, STEPS + 1)
    assert data["action", "action"].shape[:2] == (ENVS, STEPS + 1) and data["action", "action"].shape[-1] == ACTION_DIM
    assert data["sample_log_prob"].shape == data["value"].shape == (ENVS, STEPS + 1)

    # re-scored through the wrapper on EmbodiChain's own flat view: equal to the rollout's
    flat = transition_view(data, flatten=True)
    assert list(flat["obs", "language"]) == [text for env in range(ENVS) for text in
                                             [observations(ENVS, seed=t)["language"][env] for t in range(STEPS)]]
    with torch.no_grad():
        scored = policy.evaluate_actions(flat)
    torch.testing.assert_close(scored["sample_log_prob"], flat["sample_log_prob"], atol=1e-5, rtol=0)
    torch.testing.assert_close(scored["value"], flat["value"], atol=1e-5, rtol=0)
    assert torch.isfinite(scored["entropy"]).all()

    # EmbodiChain's GAE on our values: the last chunk is terminal, the first bootstraps from the second's value
    advantages, returns = compute_gae(data.clone(recurse=False), gamma=GAMMA, gae_lambda=LAMBDA)
    value, success = data["value"], data["reward"][:, 1]
    torch.testing.assert_close(returns[:, 1], success)
    delta0 = GAMMA * value[:, 1] - value[:, 0]
    torch.testing.assert_close(advantages[:, 0], delta0 + GAMMA * LAMBDA * (success - value[:, 1]))
    normalised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)  # PPO.update normalises them

    # one real PPO.update: one epoch, one minibatch -> one SGD step
    ppo = algorithm("ppo", dict(n_epochs=1, batch_size=ENVS * STEPS, ent_coef=0.0, max_grad_norm=1.0,
                                optimizer=dict(name="sgd", learning_rate=1e-3)), policy)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    metrics = ppo.update(data)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert abs(metrics["actor_loss"]) < 1e-5  # ratio 1: -mean(normalised A) = 0
    torch.testing.assert_close(torch.tensor(metrics["value_loss"]),  # MSE(V, returns) before the step
                               torch.nn.functional.mse_loss(value[:, :-1], returns).float(), atol=1e-5, rtol=0)
    assert any(not torch.equal(p, before[name]) for name, p in policy.named_parameters())
    with torch.no_grad():
        moved = policy.evaluate_actions(flat)["sample_log_prob"] - flat["sample_log_prob"]
    assert (normalised.reshape(-1) * moved).sum() > 0


def test_embodichain_grpo_trains_our_policy(checkpoints):
    """GRPO (algo/grpo.py): group-normalised returns; groups of GROUP consecutive envs, one succeeds in each."""
    policy = EmbodiChainPolicy(load_policy(checkpoints["pi0"]))
    data = collect(policy)
    grpo = algorithm("grpo", dict(n_epochs=1, batch_size=ENVS * STEPS, group_size=GROUP, kl_coef=0.0, gamma=1.0,
                                  max_grad_norm=1.0, optimizer=dict(name="sgd", learning_rate=1e-3)), policy)
    metrics = grpo.update(data)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    # per-step returns 1 / 0 in each group of two -> advantages +1 / -1 (population std 0.5) at every step
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])[:, None].expand(ENVS, STEPS).reshape(-1)
    flat = transition_view(data, flatten=True)
    with torch.no_grad():
        moved = policy.evaluate_actions(flat)["sample_log_prob"] - flat["sample_log_prob"]
    assert (advantages * moved).sum() > 0


def test_embodichain_refuses_the_action_bound_penalty(checkpoints):
    policy = EmbodiChainPolicy(load_policy(checkpoints["oft"]))
    with pytest.raises(ValueError, match="action_bound_coef"):
        algorithm("ppo", dict(action_bound_coef=0.1), policy)
