"""Our tiny π0 and OpenVLA-OFT in siiRL's embodied roles (adapters/siirl.py: drop-ins for `EmbodiedHFRollout` and
`RobDataParallelPPOActor`), driven by a faithful fake of siiRL 0.2.0's embodied training step (fake_siirl.py:
its DAG worker's generate / compute_reward / compute_advantage / compute_old_log_prob / train_actor, the embodied
reward manager, verl's real GRPO advantage and vanilla PPO loss): 4 episodes of at most 2 chunks on an env with
LIBEROAdapter's protocol, log-probs recomputed by the actor equal to the rollout's, GRPO's ±1/√2 checked by hand,
the loss = -mean(A) at ratio 1, and one `update_policy` step that moves the chunks' log-probs along A."""

import importlib
import sys

import pytest
import torch
from tensordict import TensorDict

from adapters.tests import fake_siirl
from adapters.tests.conftest import observations
from common.policy import load_policy

ENVS, CHUNKS = 4, 2
TASK_ID, TRIAL_ID = [0, 0, 1, 1], [0, 1, 0, 1]  # rollout.n = 2 samples of 2 tasks: GRPO groups by task


@pytest.fixture(scope="module")
def adapter():
    """adapters.siirl imported against the fake's `siirl.*` modules."""
    with pytest.MonkeyPatch.context() as mp:
        fake_siirl.install(mp)
        mp.delitem(sys.modules, "adapters.siirl", raising=False)
        yield importlib.import_module("adapters.siirl")
    sys.modules.pop("adapters.siirl", None)


class ScriptedLibero:
    """LIBEROAdapter's protocol (siirl/environment/embodied/adapters/libero.py `_blocking_reset` /
    `_blocking_step`: per env one dict with obs, active, complete, finish_step counted in env steps), over fixed
    observations; episode (task, trial) succeeds after `success_at[(task, trial)]` env steps, or stops at
    `max_steps`."""

    def __init__(self, max_steps: int, success_at: dict[tuple[int, int], int]):
        self.max_steps, self.success_at = max_steps, success_at

    def _obs(self, slot: int) -> dict:
        row = 2 * self.ids[slot][0] + self.ids[slot][1]
        obs = observations(ENVS, seed=self.count[slot])[row]
        return {"rgb": obs["rgb"].numpy(), "proprio": obs["proprio"].numpy()}

    def _blocking_reset(self, task_ids, trial_ids):
        self.ids, self.count = list(zip(task_ids, trial_ids)), [0] * len(task_ids)
        texts = observations(ENVS)["language"]
        return [dict(obs=self._obs(i), task_description=texts[2 * task + trial], active=True, complete=False,
                     finish_step=0, task_file_name=f"task{task}_trial{trial}", valid_images=[])
                for i, (task, trial) in enumerate(self.ids)]

    def _blocking_step(self, action):
        actions, active = action["actions"], set(action["indices"])
        results = [None] * actions.shape[0]
        for _ in range(actions.shape[1]):
            for i in sorted(active):
                self.count[i] += 1
                done = self.count[i] == self.success_at.get(self.ids[i], -1)
                if done or self.count[i] >= self.max_steps:
                    results[i] = dict(obs=self._obs(i), active=False, complete=done, finish_step=self.count[i])
                    active.remove(i)
        for i in active:
            results[i] = dict(obs=self._obs(i), active=True, complete=False, finish_step=self.count[i])
        return results


@pytest.mark.parametrize("method", ["pi0", "oft"])
def test_siirl_embodied_step_trains_our_policy(checkpoints, adapter, method):
    rollout_policy, policy = load_policy(checkpoints[method]), load_policy(checkpoints[method])
    rollout_policy.load_state_dict(policy.state_dict())  # the weight sync: the fresh value heads too
    with torch.no_grad():
        chunk = rollout_policy(observations(1), deterministic=True)["action"].shape[1]
    # (task 0, trial 0) succeeds in its first env step, (1, 1) in the last step of chunk 2; the others time out
    env = ScriptedLibero(max_steps=CHUNKS * chunk, success_at={(0, 0): 1, (1, 1): CHUNKS * chunk})
    rollout = adapter.EmbodiedRollout(rollout_policy, env, num_envs=ENVS, max_steps=CHUNKS * chunk)
    config = fake_siirl.ActorArguments(ppo_mini_batch_size=ENVS, ppo_micro_batch_size_per_gpu=2,
                                       traj_mini_batch_size=1, clip_ratio_high=0.28, embodied_type="load_policy",
                                       action_token_len=1, action_chunks_len=1)
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    actor = adapter.EmbodiedActor(config, policy, optimizer, device="cpu")
    worker = fake_siirl.EmbodiedDAGWorker(rollout, actor, fake_siirl.EmbodiedRewardManager(action_token_len=1),
                                          n_samples=2)
    prompts = TensorDict(task_id=torch.tensor(TASK_ID), trial_id=torch.tensor(TRIAL_ID),
                         uid=torch.tensor(TASK_ID), batch_size=[ENVS])

    torch.manual_seed(0)
    batch = worker.generate(prompts)  # two rollout chunks of num_envs // n_samples = 2 episodes
    assert batch["responses"].shape == (ENVS, CHUNKS, 1) and batch["rgb"].shape[:2] == (ENVS, CHUNKS)
    assert batch["finish_step"].tolist() == [1, 2, 2, 2] and batch["complete"].tolist() == [True, False, False, True]
    valid = torch.tensor([[1, 0], [1, 1], [1, 1], [1, 1]])
    assert torch.equal(batch["response_mask"], valid)
    assert adapter.decode_text(batch["task_file_name"])[3] == "task1_trial1"

    batch = worker.compute_reward(batch)  # the success on the episode's last chunk
    torch.testing.assert_close(batch["token_level_rewards"], torch.tensor([[1.0, 0], [0, 0], [0, 0], [0, 1.0]]))
    batch = worker.compute_advantage(batch)  # GRPO per task: outcomes (1, 0) and (0, 1) -> ±1/√2 on valid chunks
    a = 0.5 / (0.5 ** 0.5 + 1e-6)
    torch.testing.assert_close(batch["advantages"], torch.tensor([[a, 0], [-a, -a], [-a, -a], [a, a]]))

    batch, metrics = worker.compute_old_log_prob(batch)
    # the rollout scores 2 envs a step, the actor 2 episodes x 2 chunks at once: float32 rounds differently
    torch.testing.assert_close(batch["old_log_probs"], batch["rollout_log_probs"], atol=1e-5, rtol=2e-6)
    assert torch.isfinite(torch.tensor(metrics["actor/entropy_loss"]))
    mask = batch["response_mask"].bool()
    loss, clipfrac, kl, _ = fake_siirl.compute_policy_loss_vanilla(
        batch["old_log_probs"], batch["old_log_probs"], batch["advantages"], mask, config=config)
    torch.testing.assert_close(loss, -batch["advantages"][mask].mean())  # ratio 1: the clipped surrogate is -A
    assert clipfrac == 0 and kl == 0

    old, before = batch["old_log_probs"].clone(), [p.detach().clone() for p in policy.parameters()]
    metrics = worker.train_actor(batch)  # one minibatch of 4 = 2 micro-batches x 2 one-chunk trajectory slices
    assert len(metrics["actor/grad_norm"]) == 1 and len(metrics["actor/pg_loss"]) == 2
    # ratio 1 throughout (the step comes after both micro-batches): each micro-batch's loss is -mean(A) over it
    expected = [-batch["advantages"][rows][mask[rows]].mean().item() for rows in (slice(0, 2), slice(2, 4))]
    assert metrics["actor/pg_loss"] == pytest.approx(expected, abs=1e-5)
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))
    new, _ = actor.compute_log_prob(batch)
    assert ((new - old) * batch["advantages"] * mask).sum() > 0


def test_siirl_refuses_token_layouts_and_temperature(checkpoints, adapter):
    policy = load_policy(checkpoints["pi0"])
    with pytest.raises(ValueError, match="one position per chunk"):
        adapter.EmbodiedActor(fake_siirl.ActorArguments(action_token_len=7, action_chunks_len=8), policy)
    actor = adapter.EmbodiedActor(fake_siirl.ActorArguments(action_token_len=1, action_chunks_len=1), policy)
    with pytest.raises(ValueError, match="temperature"):
        actor.compute_log_prob(TensorDict(temperature=0.5, batch_size=[]))
