"""The driving VLA through the policy contract (driving_vla/policy.py): `load_policy` round trips a smoke-trained
checkpoint, the recomputed log-probability equals the rollout's exactly (PPO's ratio is 1), deterministic actions are
the policy as trained, the value head leaves `predict` alone and passes no gradient to the actor, Flow-SDE maps onto
the head's own Euler step, and one policy-gradient step moves the probabilities the right way."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensordict import NonTensorStack, TensorDict

from common.envs import highway as hw
from common.policy import load_policy
from common.tests import contract, demo_cache
from common.train import last_checkpoint, read_config, save_pretrained

from driving_vla import policy as rl_policy
from driving_vla import train as dv_train
from driving_vla.config import PRESETS
from driving_vla.model import K, observation_batch, policy_from_meta

VARIANTS = {"vla-flow": dict(model="vla", head="flow"), "vla-mlp": dict(model="vla", head="mlp"),
            "bc": dict(model="bc")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke runs of each head (behaviour cloning only, no evaluation), their demos in a private cache."""
    root = tmp_path_factory.mktemp("runs")
    with demo_cache.private_cache(root / "cache"):
        for name, variant in VARIANTS.items():
            dv_train.train(dataclasses.replace(PRESETS["smoke"], run_dir=str(root / name), dagger_rounds=0,
                                               eval_seeds=0, gif=False, **variant))
        yield root


def benchmark_observations(n: int = 3) -> list[dict]:
    """n observations of the highway scenario, a few steps apart (different speeds, traffic, steering)."""
    env = hw.make_scenario("highway", 3, horizon_s=4.0)
    out = []
    for _ in range(n):
        out.append(env.observation())
        for _ in range(3):
            env.step(np.array([0.3, 0.02]))
    env.close()
    return out


def contract_obs(observations: list[dict]) -> TensorDict:
    """The contract's observation of the driving benchmark (as online_rl/driving.py builds it)."""
    return TensorDict({"bev": torch.from_numpy(np.stack([o["bev"] for o in observations])),
                       "proprio": torch.from_numpy(np.stack([o["state"] for o in observations])),
                       "command": torch.tensor([o["command"] for o in observations]),
                       "language": NonTensorStack(*(o["text"] for o in observations))},
                      batch_size=[len(observations)])


@pytest.fixture(scope="module")
def observations():
    return benchmark_observations()


@pytest.mark.parametrize("name", VARIANTS)
def test_load_policy_round_trips_a_smoke_checkpoint(runs, name, observations, tmp_path):
    checkpoint = last_checkpoint(runs / name)
    meta = read_config(checkpoint)
    assert meta["method"] == "driving_vla"  # what load_policy dispatches on
    policy = load_policy(runs / name)
    assert isinstance(policy, rl_policy.DrivingActorCritic) and policy.flow == (name == "vla-flow")
    trained = policy_from_meta(meta, load_file(checkpoint / "model.safetensors"))
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in policy.policy.state_dict().items())
    # predict is the trained policy's own plan of the live observations, bit for bit
    for i, obs in enumerate(observations):
        torch.manual_seed(i)
        expected = trained.predict_waypoints(observation_batch(obs))
        torch.manual_seed(i)
        assert torch.equal(policy.predict(contract_obs([obs])), expected)
    # an RL checkpoint (the actor-critic's weights with the training config.json) comes back whole
    with torch.no_grad():
        for p in policy.value_head.parameters():
            p.add_(0.5)
    save_pretrained(policy, meta, tmp_path / "rl")
    again = load_policy(tmp_path / "rl")
    assert policy.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in policy.state_dict().items())


@pytest.mark.parametrize("name", VARIANTS)
def test_recomputed_log_prob_equals_the_rollouts(runs, name, observations):
    policy = load_policy(runs / name)
    obs = contract_obs(observations)
    torch.manual_seed(0)
    with torch.no_grad():  # as the rollout samples
        out = policy(obs)
    assert out["action"].shape == (3, K, 2) and out["log_prob"].shape == (3,) and out["value"].shape == (3, 1)
    assert torch.isfinite(out["log_prob"]).all()
    policy.train()  # as the update recomputes: the imitation policy stays in eval mode, gradients on
    log_prob, entropy = policy.evaluate_actions(obs, out)
    assert torch.equal(log_prob, out["log_prob"])  # PPO's ratio is exactly 1 before an update
    assert log_prob.requires_grad and entropy.shape == (3,)
    torch.testing.assert_close(policy.get_value(obs), out["value"], rtol=0, atol=0)
    if not policy.flow:  # the Gaussian in closed form: σ = exp(log_std) per coordinate, summed over the plan
        sigma = policy.log_std.exp()
        gaussian, _ = policy.distribution(obs)
        manual = -((out["sample"] - gaussian.mean) ** 2) / (2 * sigma ** 2) - torch.log(sigma) - math.log(2 * math.pi) / 2
        torch.testing.assert_close(log_prob, manual.sum((1, 2)))
        torch.testing.assert_close(entropy, K * (0.5 * torch.log(2 * math.pi * math.e * sigma ** 2)).sum().expand(3))


@pytest.mark.parametrize("name", VARIANTS)
def test_deterministic_actions_are_the_policy_as_trained(runs, name, observations):
    """The mean / the ODE from the same noise; equal up to the last bits (the contract's passes take the autograd
    kernels of the transformer layers, `predict` their inference kernels)."""
    policy = load_policy(runs / name)
    obs = contract_obs(observations)
    torch.manual_seed(3)
    expected = policy.predict(obs)
    torch.manual_seed(3)
    with torch.no_grad():
        out = policy(obs, deterministic=True)
    torch.testing.assert_close(out["action"], expected, rtol=0, atol=1e-5)
    assert not torch.equal(policy(obs)["action"], out["action"])  # sampling does move the plan


@pytest.mark.parametrize("name", VARIANTS)
def test_value_head_does_not_change_predict(runs, name, observations):
    contract.assert_value_head_apart(load_policy(runs / name), contract_obs(observations), batch=3)


def test_flow_variant_trains_the_flow_head_not_the_backbone(runs):
    trainable = {n for n, p in load_policy(runs / "vla-flow").named_parameters() if p.requires_grad}
    assert any(n.startswith("value_head.") for n in trainable)
    assert any(n.startswith("policy.net.head.") for n in trainable)
    assert not any(n.startswith(("policy.net.blocks.", "policy.net.bev_encoder.", "policy.net.token_embedding."))
                   for n in trainable)
    gaussian = {n for n, p in load_policy(runs / "vla-mlp").named_parameters() if p.requires_grad}
    assert {"log_std", "policy.net.queries"} <= gaussian  # the regression variants train the whole network


def test_flow_sde_without_noise_is_the_samplers_euler_step(runs, monkeypatch):
    """a = 0 leaves `DrivingVLA.sample`'s step x − v/n: the head's time is openpi's, as `flow_sde_step` expects."""
    policy = load_policy(runs / "vla-flow")
    monkeypatch.setattr(rl_policy, "NOISE_LEVEL", 0.0)
    n = policy.cfg.num_inference_steps
    x, v = torch.randn(2, 4, K, 2, generator=torch.Generator().manual_seed(0))
    for k in range(n):
        mean, std = policy._sde_step(x, v, torch.full((4,), k))
        torch.testing.assert_close(mean, x - v / n)
        assert (std == 0).all()


def test_flow_sde_scores_the_stored_step_and_its_entropy(runs, observations):
    torch.manual_seed(1)
    contract.assert_flow_sde_scores_the_stored_step(load_policy(runs / "vla-flow"), contract_obs(observations),
                                                    n_entries=2 * K)


@pytest.mark.parametrize("name", VARIANTS)
def test_one_step_raises_the_probability_of_a_positively_advantaged_plan(runs, name, observations):
    policy = load_policy(runs / name)
    obs = contract_obs(observations[:2])
    torch.manual_seed(2)
    with torch.no_grad():
        out = policy(obs)
    log_prob, _ = policy.evaluate_actions(obs, out)
    advantages = torch.tensor([1.0, -1.0])
    (-(advantages * (log_prob - out["log_prob"]).exp()).mean()).backward()  # PPO's surrogate at ratio 1
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1e-3).step()
    with torch.no_grad():
        after, _ = policy.evaluate_actions(obs, out)
    assert after[0] > out["log_prob"][0] and after[1] < out["log_prob"][1]


def test_a_missing_observation_key_is_named(runs, observations):
    policy = load_policy(runs / "vla-mlp")
    obs = contract_obs(observations)
    with pytest.raises(KeyError, match="bev"):
        policy(obs.exclude("bev"))
    with pytest.raises(KeyError, match="instruction|language"):
        policy(obs.exclude("language"))
    load_policy(runs / "bc")(obs.exclude("language"))  # the BC model reads no text
