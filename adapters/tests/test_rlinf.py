"""Our tiny π0 and OpenVLA-OFT inside the real RLinf 0.3.0: registered through RLINF_EXT_MODULE, built by RLinf's
`get_model`, a rollout batch from `predict_action_batch`, log-probabilities recomputed by the actor's forward equal
to the rollout's, RLinf's own GAE / GRPO advantages and PPO / GRPO losses on them, and one optimizer step that moves
the taken chunks' log-probabilities along their advantages."""

import inspect
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("rlinf", reason="RLinf is installed by requirements/frameworks.txt (setup.sh)")

from omegaconf import OmegaConf  # noqa: E402  (comes with RLinf's requirements)
from rlinf.algorithms.registry import calculate_adv_and_returns, policy_loss  # noqa: E402
from rlinf.models import get_model  # noqa: E402
from rlinf.scheduler.cluster.utils import load_user_extension_module  # noqa: E402
from rlinf.utils.metric_utils import compute_loss_mask  # noqa: E402

from adapters import rlinf as adapter  # noqa: E402
from adapters.tests.conftest import observations  # noqa: E402

STEPS, ENVS, GROUP = 2, 4, 2  # chunk steps per episode, envs (two GRPO groups of two)


@pytest.fixture(scope="module", autouse=True)
def registered(monkeypatch_module):
    """RLinf's own extension hook: what each Ray worker runs at start-up."""
    monkeypatch_module.setenv("RLINF_EXT_MODULE", "adapters.rlinf")
    load_user_extension_module()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def rlinf_model(path):
    cfg = OmegaConf.create(dict(model_type=adapter.MODEL_TYPE, model_path=str(path), precision="fp32",
                                is_lora=False))
    model = get_model(cfg)  # RLinf's builder lookup (rlinf/models/__init__.py)
    assert isinstance(model, adapter.RLinfPolicy)
    return model


def env_obs(step: int) -> dict:
    """RLinf's env_obs for ENVS envs (rlinf/envs/metaworld/metaworld_env.py `_wrap_obs`)."""
    obs = observations(ENVS, seed=step)
    return dict(main_images=obs["rgb"][:, 0], wrist_images=None, extra_view_images=None, states=obs["proprio"],
                task_descriptions=list(obs["language"]))


def rollout_batch(model, success: torch.Tensor) -> dict:
    """STEPS chunk steps of ENVS envs as RLinf's actor receives them: per step [n_chunk_steps, B, ...], plus a
    bootstrap value row; each episode ends on the last action of the last chunk with a 0/1 success reward."""
    torch.manual_seed(0)
    steps = [model.predict_action_batch(env_obs=env_obs(t), mode="train") for t in range(STEPS + 1)]
    actions = steps[0][0]
    k = actions.shape[1]
    batch = {key: torch.stack([s[1][key] for s in steps[:STEPS]]) for key in ("prev_logprobs",)}
    batch["prev_values"] = torch.stack([s[1]["prev_values"] for s in steps])  # [STEPS + 1, B, 1]
    batch["forward_inputs"] = {key: torch.stack([s[1]["forward_inputs"][key] for s in steps[:STEPS]])
                               for key in steps[0][1]["forward_inputs"]}
    batch["rewards"] = torch.zeros(STEPS, ENVS, k)
    batch["rewards"][-1, :, -1] = success
    batch["dones"] = torch.zeros(STEPS + 1, ENVS, k, dtype=torch.bool)
    batch["dones"][-1, :, -1] = True
    loss_mask, loss_mask_sum = compute_loss_mask(batch["dones"])  # as fsdp_actor_worker does for chunk_level
    batch["loss_mask"], batch["loss_mask_sum"] = loss_mask.any(-1, keepdim=True), loss_mask_sum[..., -1:]
    return batch


def process_nested_dict_for_train(batch: dict, order: torch.Tensor) -> dict:
    """[n_chunk_steps, B, ...] -> [n_chunk_steps * B, ...] in `order`, the bootstrap rows dropped: a copy of
    rlinf/workers/actor/fsdp_actor_worker.py `process_nested_dict_for_train`, whose module does not import beside
    transformers 5 (it imports `AutoModelForVision2Seq`, removed in transformers 5)."""
    out = {}
    for key, value in batch.items():
        if key in ("dones", "terminations", "truncations", "prev_values"):
            value = value[:-1]
        out[key] = (process_nested_dict_for_train(value, order) if isinstance(value, dict)
                    else value.reshape(-1, *value.shape[2:])[order])
    return out


ALGORITHMS = {  # RLinf's embodied PPO and GRPO settings (examples/embodiment/config: maniskill_ppo_*, *_grpo_*)
    "ppo": dict(adv_type="gae", loss_type="actor_critic", gamma=0.99, gae_lambda=0.95),
    "grpo": dict(adv_type="grpo", loss_type="actor", gamma=1.0, gae_lambda=1.0),
}


@pytest.mark.parametrize("method", ["pi0", "oft"])
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_rlinf_trains_our_policy_with_its_own_advantage_and_loss(checkpoints, method, algorithm):
    model = rlinf_model(checkpoints[method])
    settings = ALGORITHMS[algorithm]
    success = torch.tensor([1.0, 0.0, 0.0, 1.0])
    batch = rollout_batch(model, success)
    k, a = batch["prev_logprobs"].shape[2:]
    assert batch["forward_inputs"]["action"].shape == (STEPS, ENVS, k * a)

    adv = calculate_adv_and_returns(task_type="embodied", adv_type=settings["adv_type"], rewards=batch["rewards"],
                                    dones=batch["dones"], values=batch["prev_values"], gamma=settings["gamma"],
                                    gae_lambda=settings["gae_lambda"], group_size=GROUP, reward_type="chunk_level",
                                    loss_mask=batch["loss_mask"], loss_mask_sum=batch["loss_mask_sum"])
    if algorithm == "grpo":  # groups (env 0, 1) and (2, 3): successes 1/0 and 0/1 -> +-1/std over 2 = +-0.7071
        expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / torch.tensor([1.0, 0.0]).std()
        torch.testing.assert_close(adv["advantages"][:, :, 0], expected.expand(STEPS, ENVS), atol=1e-4, rtol=0)
    else:  # GAE: the returns are the values plus the unnormalised advantages; check the last chunk (one step)
        values = batch["prev_values"][:, :, 0]
        torch.testing.assert_close(adv["returns"][-1, :, 0], success)  # terminal: r_T, no bootstrap
        delta0 = 0.99 * values[1] - values[0]
        expected0 = delta0 + 0.99 * 0.95 * (success - values[1]) + values[0]
        torch.testing.assert_close(adv["returns"][0, :, 0], expected0)
    batch.update(adv)

    # the actor's side: flatten [n_chunk_steps, B] into one batch, as fsdp_actor_worker.run_training does
    train = process_nested_dict_for_train(batch, torch.arange(STEPS * ENVS))
    model.train()
    out = model(forward_inputs=train["forward_inputs"], compute_logprobs=True, compute_entropy=True,
                compute_values=settings["adv_type"] == "gae", use_cache=False)
    torch.testing.assert_close(out["logprobs"], train["prev_logprobs"], atol=1e-5, rtol=0)
    assert out["logprobs"].shape == (STEPS * ENVS, k, a) and out["entropy"].shape == (STEPS * ENVS, 1)

    loss, metrics = policy_loss(task_type="embodied", loss_type=settings["loss_type"], logprob_type="chunk_level",
                                reward_type="chunk_level", single_action_dim=a, logprobs=out["logprobs"],
                                values=out.get("values"), old_logprobs=train["prev_logprobs"],
                                advantages=train["advantages"], returns=train.get("returns"),
                                prev_values=train["prev_values"], clip_ratio_high=0.28, clip_ratio_low=0.2,
                                value_clip=0.2, huber_delta=10.0, loss_mask=train["loss_mask"],
                                loss_mask_sum=train["loss_mask_sum"], max_episode_steps=STEPS * k,
                                critic_warmup=False)
    assert torch.isfinite(loss) and metrics["actor/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["actor/approx_kl"] == pytest.approx(0.0, abs=1e-6)

    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(trainable, lr=1e-3)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))

    with torch.no_grad():
        after = model(forward_inputs=train["forward_inputs"], compute_logprobs=True, compute_entropy=False,
                      compute_values=False)["logprobs"].sum((1, 2))
    change = after - train["prev_logprobs"].sum((1, 2))
    advantages = train["advantages"].flatten()
    assert (advantages * change).sum() > 0  # the surrogate's first-order effect: up where A > 0, down where A < 0


def test_rlinfs_rollout_worker_evaluates_the_deterministic_chunk(checkpoints):
    """Through RLinf's own `MultiStepRolloutWorker.predict` (its sampling parameters from `rollout.sampling_params`; the
    Ray worker around it left out): evaluation (`temperature_eval` 0) gives the policy's deterministic chunk,
    training samples."""
    from rlinf.workers.rollout.hf.huggingface_worker import MultiStepRolloutWorker
    model = rlinf_model(checkpoints["oft"])
    worker = SimpleNamespace(hf_model=model, expert_model=None, model_cfg=OmegaConf.create(dict(
        model_type=adapter.MODEL_TYPE)), algorithm_cfg=OmegaConf.create({}), cfg=OmegaConf.create(dict(rollout=dict(
            sampling_params=dict(do_sample=True, temperature_train=1.0, temperature_eval=0.0, top_k=0, top_p=1.0,
                                 max_new_tokens=1)))))
    MultiStepRolloutWorker.setup_sample_params(worker)
    obs = env_obs(0)
    expected = model.policy(model.observations(obs), deterministic=True)["action"]
    predict = inspect.unwrap(MultiStepRolloutWorker.predict)  # without Worker.timer, which needs the Ray worker
    actions, result = predict(worker, obs, mode="eval")
    torch.testing.assert_close(actions, expected)
    assert result["prev_values"].shape == (ENVS, 1)
    assert not torch.allclose(predict(worker, obs, mode="train")[0], expected)
