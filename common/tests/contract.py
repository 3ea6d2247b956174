"""Checks of the policy contract (`common.policy`) that every method's policy must pass, shared by the tests of
online_rl (the Meta-World policies) and driving_vla (the driving policy)."""

import math

import torch


def assert_value_head_apart(policy, obs, batch: int) -> None:
    """The value head changes no prediction, gives (B, 1) values, and passes no gradient to the actor (the critic
    reads the policy's features detached), while its own parameters get one."""
    torch.manual_seed(0)
    before = policy.predict(obs)
    with torch.no_grad():
        for p in policy.value_head.parameters():
            p.add_(1.0)
    torch.manual_seed(0)
    assert torch.equal(policy.predict(obs), before)
    value = policy.get_value(obs)
    assert value.shape == (batch, 1)
    value.sum().backward()
    assert all(p.grad is None for p in policy.policy.parameters())
    assert all(p.grad is not None for p in policy.value_head.parameters())


def assert_flow_sde_scores_the_stored_step(policy, obs, n_entries: int):
    """Flow-SDE (`common.policy.flow_sde_chain`): one stochastic step per call, the same for the whole batch; the
    entropy is that step's Gaussian over the `n_entries` executed entries, in closed form; another sample of the same
    step gets another log-probability. Returns the sampled TensorDict and its log-probability."""
    with torch.no_grad():
        out = policy(obs)
        k = out["step"]
        assert (k == k[0]).all() and 0 <= k[0] < policy.cfg.num_inference_steps
        log_prob, entropy = policy.evaluate_actions(obs, out)
        _, std = policy._sde_step(out["x_k"], out["x_k"], k)
    torch.testing.assert_close(entropy, n_entries * 0.5 * torch.log(2 * math.pi * math.e * std.flatten() ** 2))
    moved = out.clone()
    moved["x_next"] = out["x_next"] + 0.1
    assert not torch.allclose(policy.evaluate_actions(obs, moved)[0], log_prob)
    return out, log_prob
