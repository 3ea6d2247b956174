"""Our tiny π0 and OpenVLA-OFT in AReaL's roles, driven by a faithful fake of AReaL 1.0.4 (fake_areal.py: its
RolloutWorkflow, PPOActor.compute_logp / compute_advantages / ppo_update and grpo_loss_fn, reproduced from the
wheel): episodes from the workflow's `arun_episode`, log-probs recomputed by the engine at AReaL's shifted
positions equal to the rollout's, AReaL's masked GAE on the outcome reward checked by hand, its loss = -mean(A) at
ratio 1, and one `ppo_update` step that moves the taken chunks' log-probabilities along their advantages."""

import asyncio
import importlib
import sys
import types

import pytest
import torch

from adapters.tests import fake_areal
from adapters.tests.conftest import observations
from common.policy import load_policy

ENVS, CHUNKS = 4, 2
SUCCESS = [1.0, 0.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def adapter():
    """adapters.areal imported with the fake's RolloutWorkflow as `areal.api.workflow_api.RolloutWorkflow`."""
    api = types.ModuleType("areal.api.workflow_api")
    api.RolloutWorkflow = fake_areal.RolloutWorkflow
    modules = {"areal": types.ModuleType("areal"), "areal.api": types.ModuleType("areal.api"),
               "areal.api.workflow_api": api}
    with pytest.MonkeyPatch.context() as mp:
        for name, module in modules.items():
            mp.setitem(sys.modules, name, module)
        mp.delitem(sys.modules, "adapters.areal", raising=False)
        yield importlib.import_module("adapters.areal")
    sys.modules.pop("adapters.areal", None)  # later imports see the real (absent) AReaL again


class ChunkEnv:
    """An episode of CHUNKS chunk steps over fixed observations; reward SUCCESS[env] on the last chunk."""

    def __init__(self, env: int):
        self.env, self.t = env, 0

    def observation(self):
        return observations(ENVS, seed=self.t)[self.env:self.env + 1]

    def reset(self):
        self.t = 0
        return self.observation()

    def step(self, chunk):
        assert chunk.shape[0] == 1 and chunk.dim() == 3
        self.t += 1
        done = self.t == CHUNKS
        return self.observation(), SUCCESS[self.env] if done else 0.0, done


@pytest.mark.parametrize("method", ["pi0", "oft"])
def test_areal_ppo_actor_trains_our_policy(checkpoints, adapter, method):
    rollout_policy, policy = load_policy(checkpoints[method]), load_policy(checkpoints[method])
    rollout_policy.load_state_dict(policy.state_dict())  # the weight sync: the fresh value heads too
    workflow = adapter.VLAWorkflow(lambda data: ChunkEnv(data["env"]), max_chunks=5)
    assert isinstance(workflow, fake_areal.RolloutWorkflow)
    torch.manual_seed(0)
    rows = [asyncio.run(workflow.arun_episode(adapter.VLAInferenceEngine(rollout_policy), dict(env=i)))
            for i in range(ENVS)]
    data = {key: torch.cat([row[key] for row in rows]) for key in rows[0]}  # batched_call's concat (equal lengths)
    assert data["input_ids"].shape == (ENVS, CHUNKS + 1) and data["rgb"].shape[:2] == (ENVS, CHUNKS + 1)
    assert data["loss_mask"].tolist() == [[False, True, True]] * ENVS
    torch.testing.assert_close(data["rewards"], torch.tensor(SUCCESS))

    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    engine = adapter.VLATrainEngine(policy, optimizer, micro_batch_size=2)
    actor = fake_areal.PPOActor(fake_areal.PPOActorConfig(eps_clip=0.2, eps_clip_higher=0.28), engine)
    data["prox_logp"] = actor.compute_logp(data)
    # the engine's position i scores the chunk at i + 1: AReaL's roll(logprobs, -1). The workflow scores one env
    # at a time, the engine 6 positions at once: float32 matmuls round differently (OFT's |log-prob| ~ 10, so
    # rtol 2e-6 on top of atol 1e-5)
    torch.testing.assert_close(data["prox_logp"], torch.roll(data["logprobs"], -1, dims=-1), atol=1e-5, rtol=2e-6)

    data = actor.compute_advantages(data)
    # no critic, discount 1: every chunk's advantage is the episode's outcome; the last position carries none
    expected = torch.tensor(SUCCESS)[:, None] * torch.tensor([1.0, 1.0, 0.0])
    torch.testing.assert_close(data["advantages"], expected)
    torch.testing.assert_close(data["loss_mask"], torch.tensor([[1.0, 1.0, 0.0]] * ENVS))

    old = data["prox_logp"].clone()
    stats = actor.ppo_update(data)
    assert len(stats) == 1 and torch.isfinite(torch.tensor(stats[0]["grad_norm"]))
    mask = data["loss_mask"].bool()
    torch.testing.assert_close(torch.tensor(stats[0]["loss"]), -data["advantages"][mask].mean(), atol=1e-5, rtol=0)
    moved = (engine.forward(data) - old) * mask
    assert (data["advantages"] * moved).sum() > 0
