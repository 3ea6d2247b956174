"""Our tiny π0 and OpenVLA-OFT inside the real verl 0.9.1: chunks from the rollout's `generate_sequences` on
DataProto, episodes in verl's (B, T) layout, log-probabilities recomputed by the actor equal to the rollout's, verl's
own GAE / GRPO estimators and PPO policy loss, one `update_policy` step that moves the taken chunks' log-probabilities
along their advantages, and the weights synced back into the rollout through `update_weights`."""

import asyncio

import numpy as np
import pytest
import torch

pytest.importorskip("verl", reason="verl is installed by requirements/frameworks.txt (setup.sh)")

from verl import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402

from adapters.tests.conftest import observations  # noqa: E402
from adapters.verl import VLAActor, VLARollout, episodes  # noqa: E402
from common.policy import load_policy  # noqa: E402

STEPS, ENVS, GROUP = 2, 4, 2  # chunks per episode, envs (two GRPO groups of two)


def prompts(step: int, validate: bool = False) -> DataProto:
    obs = observations(ENVS, seed=step)
    return DataProto.from_dict(tensors=dict(rgb=obs["rgb"], proprio=obs["proprio"]),
                               non_tensors=dict(language=np.array(list(obs["language"]), dtype=object)),
                               meta_info=dict(validate=validate))


def actor_config(**overrides) -> ActorConfig:
    return ActorConfig(**dict(dict(strategy="fsdp", rollout_n=GROUP, ppo_mini_batch_size=ENVS,
                                   ppo_micro_batch_size_per_gpu=2, clip_ratio_low=0.2, clip_ratio_high=0.28,
                                   use_torch_compile=False), **overrides))


@pytest.mark.parametrize("method", ["pi0", "oft"])
@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_verl_trains_our_policy_with_its_own_estimator_and_loss(checkpoints, method, estimator):
    rollout, policy = VLARollout(load_policy(checkpoints[method])), load_policy(checkpoints[method])
    asyncio.run(rollout.update_weights(iter(policy.state_dict().items())))  # verl's sync: the fresh value heads
    torch.manual_seed(0)
    steps = [rollout.generate_sequences(prompts(t)) for t in range(STEPS)]
    assert steps[0].batch["actions"].shape[0] == ENVS and steps[0].batch["old_log_probs"].shape == (ENVS,)
    success = torch.tensor([1.0, 0.0, 0.0, 1.0])
    rewards = torch.zeros(ENVS, STEPS)
    rewards[:, -1] = success
    uid = np.array(["placement-0"] * GROUP + ["placement-1"] * GROUP, dtype=object)
    batch = episodes(steps, rewards, torch.ones(ENVS, STEPS), uid)
    assert batch.batch["rgb"].shape[:2] == (ENVS, STEPS) and batch.batch["old_log_probs"].shape == (ENVS, STEPS)

    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    actor = VLAActor(policy, actor_config(), optimizer)
    log_prob, entropy = actor.compute_log_prob(batch)
    torch.testing.assert_close(log_prob, batch.batch["old_log_probs"], atol=1e-5, rtol=0)
    assert torch.isfinite(entropy).all()

    mask = batch.batch["response_mask"]
    if estimator == "gae":
        values = actor.compute_values(batch)
        torch.testing.assert_close(values, batch.batch["values"])
        advantages, returns = core_algos.get_adv_estimator_fn("gae")(
            token_level_rewards=rewards, values=values, response_mask=mask, gamma=0.99, lam=0.95)
        torch.testing.assert_close(returns[:, 1], success)  # the episode's end is terminal
        torch.testing.assert_close(returns[:, 0], 0.99 * values[:, 1] - values[:, 0] + 0.99 * 0.95
                                   * (success - values[:, 1]) + values[:, 0])
    else:
        advantages, returns = core_algos.get_adv_estimator_fn("grpo")(token_level_rewards=rewards, response_mask=mask,
                                                                      index=uid)
        expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / torch.tensor([1.0, 0.0]).std()
        torch.testing.assert_close(advantages, expected[:, None].expand(ENVS, STEPS), atol=1e-4, rtol=0)
        batch.pop(batch_keys=["values"])  # GRPO: no critic
    batch.batch["advantages"], batch.batch["returns"] = advantages, returns

    # verl's own loss before any step: ratio 1, loss = -mean(A) over the chunks
    loss, metrics = core_algos.get_policy_loss_fn("vanilla")(
        old_log_prob=batch.batch["old_log_probs"], log_prob=log_prob, advantages=advantages, response_mask=mask,
        loss_agg_mode="token-mean", config=actor.config)
    torch.testing.assert_close(loss, -advantages.mean())
    assert metrics["actor/ppo_kl"] == pytest.approx(0.0, abs=1e-6) and metrics["actor/pg_clipfrac"] == 0.0

    trainable = [p for p in policy.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    stats = actor.update_policy(batch)  # one minibatch of all 4 episodes: one optimizer step
    assert len([k for k in stats if k.startswith("critic/")]) == (2 if estimator == "gae" else 0)
    assert stats["actor/ppo_kl"] == pytest.approx(0.0, abs=1e-5) and np.isfinite(stats["actor/pg_loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))
    change = actor.compute_log_prob(batch)[0] - batch.batch["old_log_probs"]
    assert (advantages * change).sum() > 0  # the surrogate's first-order effect: up where A > 0, down where A < 0

    # the rollout still holds the old weights until verl syncs the actor's into it
    assert not torch.allclose(VLAActor(rollout.policy, actor.config, optimizer).compute_log_prob(batch)[0],
                              actor.compute_log_prob(batch)[0])
    asyncio.run(rollout.update_weights(iter(policy.state_dict().items())))
    torch.testing.assert_close(VLAActor(rollout.policy, actor.config, optimizer).compute_log_prob(batch)[0],
                               actor.compute_log_prob(batch)[0])


def test_validate_rollouts_take_the_deterministic_chunk(checkpoints):
    rollout = VLARollout(load_policy(checkpoints["oft"]))
    data = prompts(0, validate=True)
    out = rollout.generate_sequences(data)
    expected = rollout.policy(observations(ENVS, seed=0), deterministic=True)["action"]
    torch.testing.assert_close(out.batch["actions"], expected)
    assert list(out.non_tensor_batch["language"]) == list(data.non_tensor_batch["language"])
