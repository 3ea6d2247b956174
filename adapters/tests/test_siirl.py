"""Our tiny π0 and OpenVLA-OFT in siiRL's embodied roles, through its FSDP worker with our policy swapped in
(adapters/siirl.py `PolicyActorRolloutRefWorker`: `EmbodiedRollout` / `EmbodiedActor` where siiRL builds OpenVLA's),
driven as siiRL 0.2.0's DAG worker drives it, on a faithful fake of siiRL (fake_siirl.py: the worker's
generate_sequences / compute_log_prob / compute_ref_log_prob / update_actor, the DAG worker's steps, the embodied
reward manager, verl's real GRPO advantage and vanilla PPO loss). 4 episodes of at most 2 chunks on a scripted env
with LIBEROAdapter's constructor and protocol and raw LIBERO observations: the env gets the policy's chunks, the
policy sees LIBERO's images and state through `libero_obs_to_input`, log-probs recomputed by the actor and the
reference equal the rollout's, GRPO's ±1/√2 checked by hand, the loss = -mean(A) at ratio 1, one `update_actor`
step moves the chunks' log-probs along A, and `save_checkpoint` writes a checkpoint `load_policy` reads back."""

import importlib
import math
import sys

import numpy as np
import pytest
import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict

from adapters.tests import fake_siirl
from common.envs.metaworld_instructions import INSTRUCTIONS
from common.policy import load_policy

ENVS, CHUNKS, RENDER = 4, 2, 48  # envs, chunks per episode at most, LIBERO's render size here (it renders 256)
TASK_ID, TRIAL_ID = [0, 0, 1, 1], [0, 1, 0, 1]  # rollout.n = 2 samples of 2 tasks: GRPO groups by task
TEXTS = INSTRUCTIONS["reach-v3"] + INSTRUCTIONS["drawer-close-v3"]  # what the tiny policies' tokenizer knows


class ScriptedLIBERO:
    """LIBEROAdapter's constructor and protocol (siirl/environment/embodied/adapters/libero.py:51-85 `__init__`,
    :87-203 `_blocking_reset`, :209-282 `_blocking_step`): per env one dict with a raw robosuite `obs` (agent-view and
    wrist images as robosuite renders them, upside down; end-effector position and quaternion; gripper joints),
    `active`, `complete`, `finish_step` in env steps. Episode (task, trial) succeeds after `success_at[(task, trial)]`
    env steps or stops at `max_steps`. It keeps what it was given and what it answered in `log`."""
    success_at: dict[tuple[int, int], int] = {}

    def __init__(self, env_name: str, num_envs: int, max_steps: int, num_steps_wait: int = 10,
                 model_family: str = "openvla", gpu_ids: list[int] = [0], seed: int = 0):
        self.env_name, self.num_envs, self.max_steps, self.log = env_name, num_envs, max_steps, []

    def _obs(self, slot: int) -> dict:
        g = np.random.default_rng([*self.ids[slot], self.count[slot]])
        quat = g.normal(size=4)
        return {"agentview_image": g.integers(0, 256, (RENDER, RENDER, 3), dtype=np.uint8),
                "robot0_eye_in_hand_image": g.integers(0, 256, (RENDER, RENDER, 3), dtype=np.uint8),
                "robot0_eef_pos": g.normal(size=3), "robot0_eef_quat": quat / np.linalg.norm(quat),
                "robot0_gripper_qpos": g.normal(size=2)}

    def _blocking_reset(self, task_ids, trial_ids):
        self.ids, self.count = list(zip(task_ids, trial_ids)), [0] * len(task_ids)
        results = [dict(obs=self._obs(i), task_description=TEXTS[2 * task + trial], active=True, complete=False,
                        finish_step=0, task_file_name=f"task{task}_trial{trial}", valid_images=[])
                   for i, (task, trial) in enumerate(self.ids)]
        self.log.append(("reset", results))
        return results

    def _blocking_step(self, action):
        actions, active = action["actions"], set(action["indices"])
        self.log.append(("step", sorted(active), actions.copy()))
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


@pytest.fixture(scope="module")
def adapter():
    """adapters.siirl imported against the fake's `siirl.*` modules (LIBERO: the scripted env)."""
    with pytest.MonkeyPatch.context() as mp:
        fake_siirl.install(mp, libero_adapter=ScriptedLIBERO)
        mp.delitem(sys.modules, "adapters.siirl", raising=False)
        yield importlib.import_module("adapters.siirl")
    sys.modules.pop("adapters.siirl", None)


def siirl_config(checkpoint, chunk: int) -> fake_siirl.ActorRolloutRefArguments:
    """`actor_rollout_ref` of an embodied GRPO run: 2 prompts x rollout.n = 2 per mini-batch, micro-batches of 2,
    one-chunk trajectory slices, siiRL's AdamW; one position per chunk."""
    f = fake_siirl
    return f.ActorRolloutRefArguments(
        model=f.ModelArguments(path=str(checkpoint), model_type="embodied"),
        actor=f.ActorArguments(ppo_mini_batch_size=2, ppo_micro_batch_size_per_gpu=2, traj_mini_batch_size=1,
                               clip_ratio_high=0.28, optim=f.OptimizerArguments(lr=1e-4, weight_decay=0.0)),
        rollout=f.RolloutArguments(name="hf", n=2, log_prob_micro_batch_size_per_gpu=2),
        embodied=f.EmbodiedArguments(embodied_type="load_policy", action_token_len=1, action_chunks_len=1,
                                     env=f.EnvironmentArgs(num_envs=ENVS, max_steps=CHUNKS * chunk)))


def prompts(do_sample: bool = True) -> TensorDict:
    batch = TensorDict(task_id=torch.tensor(TASK_ID), trial_id=torch.tensor(TRIAL_ID), uid=torch.tensor(TASK_ID),
                       batch_size=[ENVS])
    batch["do_sample"] = NonTensorData(do_sample)
    return batch


@pytest.mark.parametrize("method", ["pi0", "oft"])
def test_siirl_worker_trains_our_policy(libero_checkpoints, adapter, method, tmp_path):
    checkpoint = libero_checkpoints[method]
    policy = load_policy(checkpoint)
    obs = TensorDict(rgb=torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8), proprio=torch.zeros(1, 8),
                     language=NonTensorStack(TEXTS[0]), batch_size=[1])
    with torch.no_grad():
        chunk = policy(obs, deterministic=True)["action"].shape[1]
    # (task 0, trial 0) succeeds in its first env step, (1, 1) in the last step of chunk 2; the others time out
    ScriptedLIBERO.success_at = {(0, 0): 1, (1, 1): CHUNKS * chunk}
    config = siirl_config(checkpoint, chunk)

    # siiRL's DAG worker builds its rollout, actor and reference workers from the role -> worker mapping that
    # use_policy_worker() changed (dagworker.py:840-910), init_model on each (:943-960), the rollout on the actor's
    # module (:928 -> dag_utils.py:241-366), then runs embodied_srpo_pipeline's nodes in order (builtin_pipelines.py)
    adapter.use_policy_worker()
    classes = sys.modules["siirl.dag_worker.dagworker"].get_worker_classes(config, "fsdp")
    assert classes[fake_siirl.NodeRole.CRITIC] is fake_siirl.CriticWorker  # the other roles keep siiRL's workers
    dag = fake_siirl.EmbodiedDAGWorker(config, fake_siirl.EmbodiedRewardManager(action_token_len=1))
    actor, rollout = dag.agent_group["actor"], dag.agent_group["rollout"]
    assert all(type(w) is adapter.PolicyActorRolloutRefWorker for w in dag.agent_group.values())
    assert (actor.role, rollout.role, dag.agent_group["reference"].role) == ("actor", "rollout", "ref")
    assert config.actor.ppo_mini_batch_size == ENVS  # siiRL's normalisation: prompts x rollout.n
    assert rollout.rollout.model is actor.actor_module and isinstance(actor.actor, adapter.EmbodiedActor)
    env = rollout.rollout.adapter
    assert isinstance(env, ScriptedLIBERO) and (env.env_name, env.num_envs) == ("libero_10", ENVS)

    torch.manual_seed(0)
    batch = dag.generate(prompts())  # two rollout chunks of num_envs // n_samples = 2 episodes
    assert batch["responses"].shape == (ENVS, CHUNKS, 1) and batch["rgb"].shape == (ENVS, CHUNKS, 2, 32, 32, 3)
    assert batch["finish_step"].tolist() == [1, 2, 2, 2] and batch["complete"].tolist() == [True, False, False, True]
    valid = torch.tensor([[1, 0], [1, 1], [1, 1], [1, 1]])
    assert torch.equal(batch["response_mask"], valid)
    assert adapter.decode_text(batch["task_file_name"])[3] == "task1_trial1"
    # the policy saw LIBERO's observations through libero_obs_to_input; the env got the policy's chunks
    resets = [entry[1] for entry in env.log if entry[0] == "reset"]
    steps = [entry for entry in env.log if entry[0] == "step"]
    for rollout_chunk, results in enumerate(resets):
        for slot, result in enumerate(results):
            seen = adapter.libero_obs_to_input(result["obs"], num_cameras=2, image_size=32)
            row = 2 * rollout_chunk + slot
            np.testing.assert_array_equal(batch["rgb"][row, 0].numpy(), seen["rgb"])
            np.testing.assert_array_equal(batch["proprio"][row, 0].numpy(), seen["proprio"])
    for s, (_, active, actions) in enumerate(steps):
        rows = [2 * (s // CHUNKS) + i for i in active]
        torch.testing.assert_close(torch.from_numpy(actions[active]), batch["rollout.action"][rows, s % CHUNKS])

    batch = dag.compute_reward(batch)  # the success on the episode's last chunk
    torch.testing.assert_close(batch["token_level_rewards"], torch.tensor([[1.0, 0], [0, 0], [0, 0], [0, 1.0]]))
    batch = dag.compute_advantage(batch)  # GRPO per task: outcomes (1, 0) and (0, 1) -> ±1/√2 on valid chunks
    a = 0.5 / (0.5 ** 0.5 + 1e-6)
    torch.testing.assert_close(batch["advantages"], torch.tensor([[a, 0], [-a, -a], [-a, -a], [a, a]]))

    batch, metrics = dag.compute_old_log_prob(batch)
    # the rollout scores 2 envs a step, the actor 2 episodes x 2 chunks at once: float32 rounds differently (OFT:
    # a 56-entry chunk, two 32 px images)
    torch.testing.assert_close(batch["old_log_probs"], batch["rollout_log_probs"], atol=1e-5, rtol=1e-5)
    assert math.isfinite(metrics["actor/entropy_loss"]) and "metrics" not in batch.keys()
    batch = dag.compute_ref_log_prob(batch)  # the reference: the same checkpoint, built alike
    torch.testing.assert_close(batch["ref_log_prob"], batch["old_log_probs"], atol=1e-5, rtol=1e-5)
    mask = batch["response_mask"].bool()
    loss, clipfrac, kl, _ = fake_siirl.compute_policy_loss_vanilla(
        batch["old_log_probs"], batch["old_log_probs"], batch["advantages"], mask, config=config.actor)
    torch.testing.assert_close(loss, -batch["advantages"][mask].mean())  # ratio 1: the clipped surrogate is -A
    assert clipfrac == 0 and kl == 0

    old, before = batch["old_log_probs"].clone(), [p.detach().clone() for p in actor.actor_module.parameters()]
    metrics = dag.train_actor(batch)  # one minibatch of 4 = 2 micro-batches x 2 one-chunk trajectory slices
    assert len(metrics["actor/grad_norm"]) == 1 and len(metrics["actor/pg_loss"]) == 2
    assert metrics["actor/lr"] == pytest.approx(1e-4)  # siiRL's constant schedule, read before its step
    # ratio 1 throughout (the step comes after both micro-batches): each micro-batch's loss is -mean(A) over it
    expected = [-batch["advantages"][rows][mask[rows]].mean().item() for rows in (slice(0, 2), slice(2, 4))]
    assert metrics["actor/pg_loss"] == pytest.approx(expected, abs=1e-5)
    assert any(not torch.equal(b, p) for b, p in zip(before, actor.actor_module.parameters()))
    new, _ = actor.actor.compute_log_prob(batch)
    assert ((new - old) * batch["advantages"] * mask).sum() > 0

    # evaluation (do_sample False): the env gets the policy's deterministic chunk (π0's: the ODE solution from the
    # noise the seed draws) on what the policy saw: the first rollout chunk's first step, the first call after seeding
    env.log.clear()
    torch.manual_seed(1)
    batch = dag.generate(prompts(do_sample=False))
    first = next(entry[2] for entry in env.log if entry[0] == "step")
    seen = TensorDict(rgb=batch["rgb"][:2, 0], proprio=batch["proprio"][:2, 0],
                      language=NonTensorStack(*adapter.decode_text(batch["language"][:2])), batch_size=[2])
    actor.actor_module.eval()  # as the rollout runs it
    torch.manual_seed(1)
    with torch.no_grad():
        expected = actor.actor_module(seen, deterministic=True)["action"]
    torch.testing.assert_close(torch.from_numpy(first), expected)

    actor.save_checkpoint(str(tmp_path / "step1"))  # a checkpoint load_policy reads back whole
    saved = load_policy(tmp_path / "step1").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in actor.actor_module.state_dict().items())


def _data_parallel_step(rank: int, directory: str) -> None:
    """One of two gloo ranks: the same linear layer, this rank's gradient (rank + 1 everywhere), one SGD step of
    lr 1 through EmbodiedActor's optimizer step; the parameters saved for the parent."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank,
                                         world_size=2)
    with pytest.MonkeyPatch.context() as mp:
        fake_siirl.install(mp, libero_adapter=ScriptedLIBERO)
        siirl = importlib.import_module("adapters.siirl")
        module = torch.nn.Linear(3, 2)
        for p in module.parameters():
            p.data.fill_(1.0)
            p.grad = torch.full_like(p, rank + 1.0)
        config = fake_siirl.ActorArguments(action_token_len=1, action_chunks_len=1, grad_clip=100.0)
        actor = siirl.EmbodiedActor(config, module, torch.optim.SGD(module.parameters(), lr=1.0))
        actor._optimizer_step()
        torch.save([p.detach() for p in module.parameters()], f"{directory}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ranks_average_gradients(tmp_path):
    """Several ranks each hold the whole policy: the actor averages gradients over the group before its step (as
    DDP), so ranks that saw different data stay equal: 1 - (1 + 2) / 2 = -0.5 on both."""
    torch.multiprocessing.start_processes(_data_parallel_step, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    for rank in range(2):
        for p in torch.load(tmp_path / f"rank{rank}.pt", weights_only=True):
            torch.testing.assert_close(p, torch.full_like(p, -0.5))


def test_libero_obs_to_input(adapter):
    """siiRL's `_obs_to_input` reading (embodied_rollout.py:652-676): images turned 180° (then resized), state =
    end-effector position, axis-angle, gripper joints; a 90° turn about z is (0, 0, π/2)."""
    g = np.random.default_rng(0)
    obs = {"agentview_image": g.integers(0, 256, (8, 8, 3), dtype=np.uint8),
           "robot0_eye_in_hand_image": g.integers(0, 256, (8, 8, 3), dtype=np.uint8),
           "robot0_eef_pos": np.array([0.1, 0.2, 0.3]), "robot0_gripper_qpos": np.array([0.04, -0.04]),
           "robot0_eef_quat": np.array([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])}
    out = adapter.libero_obs_to_input(obs, num_cameras=2, image_size=8)
    np.testing.assert_array_equal(out["rgb"][0], obs["agentview_image"][::-1, ::-1])
    np.testing.assert_array_equal(out["rgb"][1], obs["robot0_eye_in_hand_image"][::-1, ::-1])
    np.testing.assert_allclose(out["proprio"], [0.1, 0.2, 0.3, 0, 0, math.pi / 2, 0.04, -0.04], atol=1e-6)
    assert out["proprio"].dtype == np.float32
    assert adapter.libero_obs_to_input(obs, num_cameras=1, image_size=4)["rgb"].shape == (1, 4, 4, 3)
    identity = dict(obs, robot0_eef_quat=np.array([0.0, 0.0, 0.0, 1.0]))
    np.testing.assert_array_equal(adapter.libero_obs_to_input(identity, 1, 8)["proprio"][3:6], [0, 0, 0])
    with pytest.raises(ValueError, match="cameras"):
        adapter.libero_obs_to_input(obs, num_cameras=3, image_size=8)


def test_siirl_refuses_token_layouts_and_temperature(checkpoints, adapter):
    policy = load_policy(checkpoints["pi0"])
    with pytest.raises(ValueError, match="one position per chunk"):
        adapter.EmbodiedActor(fake_siirl.ActorArguments(action_token_len=7, action_chunks_len=8), policy)
    actor = adapter.EmbodiedActor(fake_siirl.ActorArguments(action_token_len=1, action_chunks_len=1), policy)
    with pytest.raises(ValueError, match="temperature"):
        actor.compute_log_prob(TensorDict(temperature=0.5, batch_size=[]))
