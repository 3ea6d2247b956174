"""Checks of the policy contract (`common.policy`) that every method's policy must pass, shared by the tests of
online_rl (the Meta-World policies) and driving_vla (the driving policy)."""

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
