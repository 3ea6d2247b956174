import dataclasses
import json
import sys

import mujoco
import numpy as np
import pytest
import torch

from common.data import ChunkDataset
from common.envs.humanoid import IMAGE_KEY, N_JOINTS, HumanoidEnv, collect_demos
from common.text import tokenize
from common.tests import demo_cache, resume
from common.train import read_metrics, seed_everything

from humanoid_vla import eval as vla_eval
from humanoid_vla import train as vla_train
from humanoid_vla.config import PRESETS
from humanoid_vla.model import COM_KEY, DELTA_KEY, STATE_KEY, ClosedLoopPolicy, body_part_slices
from humanoid_vla.train import (build_model, com_offsets, delta_action_stats, demo_spec, floor_std,
                                instruction_tokenizer, learning_rate_factor, phase_ends, run_stats, training_data)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The smoke preset's two demos, collected once into a private cache."""
    with demo_cache.private_cache(tmp_path_factory.mktemp("cache")) as path:
        collect_demos(demo_spec(PRESETS["smoke"]), workers=1, progress=False)
        yield path


def smoke(tmp_path, name="run", **overrides):
    return dataclasses.replace(PRESETS["smoke"], run_dir=str(tmp_path / name), **overrides)


def _model_and_batch(cfg):
    demos = collect_demos(demo_spec(cfg), progress=False)
    model = build_model(cfg, run_stats(demos, cfg), instruction_tokenizer(cfg))
    data = training_data(demos, cfg)
    batch = torch.utils.data.default_collate([data[i] for i in range(0, len(data), len(data) // 16)])
    return model, batch


def test_body_part_tokens_cover_the_state_once():
    parts = body_part_slices()
    indices = sorted(i for idx in parts.values() for i in idx)
    assert indices == list(range(2 * N_JOINTS + 6))
    assert len(parts["legs"]) == 24 and len(parts["waist"]) == 6 and len(parts["arms"]) == 28


@pytest.mark.parametrize("head, delta, stability", [("flow", False, 0.0), ("mlp", False, 0.0), ("flow", True, 0.0),
                                                     ("flow", False, 1.0)])
def test_loss_decreases_on_a_fixed_batch(cache, tmp_path, head, delta, stability):
    seed_everything(0)
    model, batch = _model_and_batch(smoke(tmp_path, head=head, shift_augment=0, delta_actions=delta,
                                          stability_weight=stability))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), [round(x, 3) for x in losses[::5]]


def test_predicted_chunks_are_joint_targets_and_depend_on_the_instruction(cache, tmp_path):
    seed_everything(0)
    model, batch = _model_and_batch(smoke(tmp_path))
    obs = dict(images={"front": batch[IMAGE_KEY][0].numpy()}, state=batch[STATE_KEY][0].numpy(), instruction="squat")
    policy = ClosedLoopPolicy(model)
    torch.manual_seed(1)
    a = policy(obs)
    torch.manual_seed(1)
    b = policy(dict(obs, instruction="reach the red ball"))
    assert a.shape == (model.cfg.n_action_steps, N_JOINTS) and np.isfinite(a).all()
    assert not np.allclose(a, b)  # the instruction reaches the actions (same noise, other words)


def test_delta_actions_are_relative_to_the_observed_joint_positions(cache, tmp_path):
    cfg = smoke(tmp_path, delta_actions=True)
    model, batch = _model_and_batch(cfg)
    q = batch[STATE_KEY][:, None, :N_JOINTS]
    torch.testing.assert_close(model.head_target(batch), batch["action"] - q)
    # the head's target, normalised and mapped back, is the absolute joint targets again
    normalised = model.normalizer.normalize(DELTA_KEY, model.head_target(batch))
    torch.testing.assert_close(model.joint_targets(normalised, batch), batch["action"], atol=1e-5, rtol=0)
    # the statistics are those of every unpadded chunk step of every frame
    demos = collect_demos(demo_spec(cfg), progress=False)
    data = ChunkDataset(demos, cfg.horizon, [STATE_KEY])
    items = [data[i] for i in range(len(data))]
    deltas = torch.cat([(it["action"] - it[STATE_KEY][:N_JOINTS])[~it["action_is_pad"]] for it in items]).double()
    stats = delta_action_stats(demos, cfg.horizon)
    np.testing.assert_allclose(stats["mean"], deltas.mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(stats["std"], deltas.std(0, unbiased=False).numpy(), atol=1e-6)


def test_com_offsets_from_proprioception_equal_the_simulators():
    """The offset computed from the 64-D state alone equals the simulator's (whole-robot centre of mass minus the
    feet's middle, rotated into the pelvis' heading) on states where the pelvis leans and turns."""
    env = HumanoidEnv(render_images=False)
    m, d = env.model, env.data
    env.reset("turn_torso_left", seed=0, episode=0)
    rng = np.random.default_rng(0)
    states, truth = [], []
    for _ in range(25):
        env.step(d.qpos[env.joint_qpos] + rng.normal(0.0, 0.2, N_JOINTS), render=False)
        mujoco.mj_forward(m, d)
        pelvis = d.xmat[m.body("pelvis").id].reshape(3, 3)
        yaw = np.arctan2(pelvis[1, 0], pelvis[0, 0])
        world = d.subtree_com[m.body("pelvis").id, :2] - d.site_xpos[[m.site("left_foot").id,
                                                                      m.site("right_foot").id], :2].mean(0)
        truth.append([[np.cos(yaw), np.sin(yaw)], [-np.sin(yaw), np.cos(yaw)]] @ world)
        states.append(env.proprio())
    states = np.array(states)
    assert np.abs(states[:, 2 * N_JOINTS: 2 * N_JOINTS + 2]).max() > 0.02  # the pelvis did lean
    np.testing.assert_allclose(com_offsets(states), truth, atol=2e-5)


def test_stability_targets_are_the_next_states_offsets_and_the_expert_keeps_its_balance(cache, tmp_path):
    cfg = smoke(tmp_path, stability_weight=0.5)
    demos = collect_demos(demo_spec(cfg), progress=False)
    offsets = com_offsets(demos.arrays[STATE_KEY])
    # the IK expert holds the centre of mass 2 cm ahead of the feet's middle (its ComTask target), to about a cm
    assert np.abs(offsets.mean(0) - [0.02, 0.0]).max() < 0.01 and np.abs(offsets).max() < 0.05
    data = training_data(demos, cfg)
    end = demos.episodes[0]["length"]
    for t in (0, end - 3, end - 1):
        item = data[t]
        steps = t + 1 + np.arange(cfg.horizon)
        assert item["com_is_pad"].tolist() == (steps >= end).tolist()
        np.testing.assert_allclose(item[COM_KEY][steps < end], offsets[steps[steps < end]], atol=1e-6)
    assert COM_KEY in run_stats(demos, cfg) and COM_KEY not in run_stats(demos, smoke(tmp_path))
    with pytest.raises(ValueError, match="stability_weight"):
        smoke(tmp_path, stability_weight=-1.0)


@pytest.mark.parametrize("stage, tokens, channels", [(4, 1, 512), (3, 4, 256)])
def test_image_stage_sets_the_image_tokens(cache, tmp_path, stage, tokens, channels):
    """Smoke images are 32 px: layer4's stride 32 gives one token, layer3's stride 16 a 2x2 grid (and no layer4)."""
    seed_everything(0)
    model, batch = _model_and_batch(smoke(tmp_path, image_stage=stage))
    assert model.image_pos.shape[0] == tokens and model.image_proj.in_features == channels
    assert any(n.startswith("image_encoder.layer4.") for n, _ in model.named_parameters()) == (stage == 4)
    model.eval()
    context, _ = model.encode(batch)
    blank, _ = model.encode(dict(batch, **{IMAGE_KEY: torch.zeros_like(batch[IMAGE_KEY])}))
    assert context.shape[1] == tokens + model.cfg.max_text_tokens + len(body_part_slices())
    assert not torch.allclose(context, blank)  # the image reaches the context


@pytest.mark.parametrize("stage", [4, 3])
def test_film_starts_as_the_plain_encoder_and_learns_to_let_the_words_change_the_image_features(cache, tmp_path, stage):
    """RT-1's FiLM: zero-initialised, so the first forward pass is the plain model's; its γ, β get gradients, and once
    they are not zero the same image gives other features under another instruction."""
    seed_everything(0)
    model, batch = _model_and_batch(smoke(tmp_path, image_stage=stage, film=True, shift_augment=0))
    assert len(model.film) == 2 * stage  # one (γ, β) per residual block
    plain, _ = _model_and_batch(smoke(tmp_path, image_stage=stage, film=False, shift_augment=0))
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("film.") for k in unexpected)
    model.eval(), plain.eval()
    torch.testing.assert_close(model.encode(batch)[0], plain.encode(batch)[0])

    model.train()
    model.loss(batch).backward()
    assert all(layer.weight.grad.abs().sum() > 0 for layer in model.film)  # the loss reaches every FiLM layer
    with torch.no_grad():
        for layer in model.film:
            layer.weight.normal_(std=0.1)
    model.eval()
    image = batch[IMAGE_KEY].permute(0, 3, 1, 2).float()[:2] / 255.0
    features = {}
    for words in ("squat", "reach the red ball"):
        tokens = tokenize(model.tokenizer, [words, words], model.cfg.max_text_tokens)
        features[words] = model.image_features(image, model.token_embedding(tokens["input_ids"]),
                                               tokens["attention_mask"])
    assert not torch.allclose(features["squat"], features["reach the red ball"])


def test_noise_temperature_zero_is_deterministic(cache, tmp_path):
    seed_everything(0)
    model, batch = _model_and_batch(smoke(tmp_path))
    model.eval()
    cold = [model.predict_chunk(batch) for _ in range(2)]
    torch.testing.assert_close(cold[0], cold[1], rtol=0, atol=0)  # every chunk starts from ε = 0
    model.cfg = dataclasses.replace(model.cfg, noise_temperature=1.0)
    assert not torch.allclose(model.predict_chunk(batch), model.predict_chunk(batch))  # π0's sampling


class _NumberedChunks(torch.nn.Module):
    """A stand-in model whose k-th chunk holds 100·k + h at step h of every joint: each target says where it came from."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.calls = cfg, 0
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))

    def predict_chunk(self, batch):
        chunk = 100.0 * self.calls + torch.arange(self.cfg.horizon, dtype=torch.float32)
        self.calls += 1
        return chunk[None, :, None].expand(1, -1, N_JOINTS)


def test_temporal_ensembling_averages_every_overlapping_chunk():
    obs = dict(images={"front": np.zeros((3, 8, 8), np.uint8)}, state=np.zeros(2 * N_JOINTS + 6, np.float32),
               instruction="squat")
    cfg = dataclasses.replace(PRESETS["smoke"], horizon=4, n_action_steps=2)
    assert ClosedLoopPolicy(_NumberedChunks(cfg))(obs).shape == (2, N_JOINTS)  # off: a chunk's first 2, open loop
    m = 0.5
    policy = ClosedLoopPolicy(_NumberedChunks(dataclasses.replace(cfg, temporal_ensemble=m)))
    executed = [policy(obs) for _ in range(6)]
    assert all(a.shape == (1, N_JOINTS) for a in executed)
    # step 2 sees chunks 0, 1, 2 (oldest first): their targets for step 2 are 2, 101, 200
    w = np.exp(-m * np.arange(3))
    assert executed[2][0, 0] == pytest.approx(w @ [2, 101, 200] / w.sum())
    # step 5: chunk 1 (predicted at step 1) has run out after its 4 steps; chunks 2..5 remain
    w = np.exp(-m * np.arange(4))
    assert executed[5][0, 0] == pytest.approx(w @ [203, 302, 401, 500] / w.sum())
    policy.reset()  # a new episode starts from its own first chunk alone
    assert policy(obs)[0, 0] == pytest.approx(600.0)
    with pytest.raises(ValueError, match="temporal_ensemble"):
        dataclasses.replace(cfg, temporal_ensemble=-1.0)


def test_std_floor_keeps_still_joints_finite():
    stats = {"action": dict(mean=[0.0, 1.0], std=[0.0, 0.5], q01=[0, 0], q99=[0, 0])}
    assert floor_std(stats)["action"]["std"] == [0.01, 0.5]


def test_learning_rate_restarts_each_dagger_round():
    cfg = dataclasses.replace(PRESETS["smoke"], steps=10, dagger_rounds=2, dagger_steps=4)
    assert learning_rate_factor(cfg, 0) == 1.0 and learning_rate_factor(cfg, 10) == 1.0
    assert learning_rate_factor(cfg, 5) == pytest.approx(0.5)
    assert learning_rate_factor(cfg, 14) == 1.0 and learning_rate_factor(cfg, 18) == 0.0


def test_train_runs_bc_then_dagger_and_evaluates(cache, tmp_path):
    cfg = smoke(tmp_path, video_dir=str(tmp_path / "gifs"))
    results = vla_train.train(cfg)
    assert set(results) == set(cfg.tasks) and all(r["episodes"] == 1 for r in results.values())
    round_1 = json.loads((tmp_path / "run" / "dagger" / "round_1" / "meta.json").read_text())
    assert len(round_1["episodes"]) == len(cfg.tasks) * cfg.dagger_episodes_per_task
    assert round_1["info"]["source"].startswith("learner rollouts")
    losses = [m for m in read_metrics(cfg.run_dir) if "loss" in m]
    assert [m["step"] for m in losses] == list(range(2, cfg.steps + cfg.dagger_steps + 1, 2))
    assert sorted(p.name.split("_ep")[0] for p in (tmp_path / "gifs").glob("*.gif")) == sorted(cfg.tasks)
    # eval.py rebuilds the policy from the run directory alone and scores it the same way
    again = vla_eval.main(vla_eval.Args(checkpoint=cfg.run_dir, workers=1, out_dir=str(tmp_path / "again")))
    assert {t: r["successes"] for t, r in again.items()} == {t: r["successes"] for t, r in results.items()}
    stamp = json.loads((tmp_path / "again" / "eval_run.json").read_text())  # what ran, beside what it scored
    assert stamp["commit"] and stamp["checkpoint"].endswith(str(cfg.steps + cfg.dagger_steps))
    assert stamp["config"]["eval_workers"] == 1 and stamp["config"]["tasks"] == list(cfg.tasks)


@pytest.mark.parametrize("die_at", [3, 6], ids=["inside BC", "at the DAgger boundary"])
def test_resume_is_exact(cache, tmp_path, monkeypatch, die_at):
    """A run killed right after a checkpoint and resumed ends with the losses, DAgger data and weights of an
    uninterrupted run; killed at BC's end, the resumed run collects the DAgger round itself."""
    straight = smoke(tmp_path, "straight", log_every=1, save_every=die_at, eval_episodes=0)
    interrupted = dataclasses.replace(straight, run_dir=str(tmp_path / "interrupted"))

    def no_dagger_data_yet():
        assert not (tmp_path / "interrupted" / "dagger").exists()

    resume.assert_resume_is_exact(vla_train, straight, interrupted, monkeypatch, steps=phase_ends(straight)[-1],
                                  when_interrupted=no_dagger_data_yet)
    for name in ("action.bin", "observation.state.bin"):
        da = (tmp_path / "straight" / "dagger" / "round_1" / name).read_bytes()
        assert da == (tmp_path / "interrupted" / "dagger" / "round_1" / name).read_bytes()


def test_table_runs_the_expert_row_and_reports_mean_and_std(tmp_path, monkeypatch):
    from humanoid_vla import table
    table.run("expert", 0, ["--tasks", "squat", "--eval_episodes", "2", "--eval_workers", "1"], out=tmp_path)
    expert = json.loads((tmp_path / "expert-s0.json").read_text())
    assert expert["evals"]["standard"]["squat"] == dict(successes=2, falls=0, episodes=2)
    assert expert["config"]["tasks"] == ["squat"] and expert["commit"]
    for seed, successes in ((0, 1), (1, 2)):  # two hand-made VLA runs: 50% and 100% -> 75% ± 35%
        evals = {probe: {"squat": dict(successes=successes if probe == "standard" else 0, falls=1, episodes=2)}
                 for probe in table.PROBES}
        (tmp_path / f"vla-s{seed}.json").write_text(json.dumps(dict(seed=seed, commit="abc", evals=evals,
                                                                    flags=["--steps", "6000"])))
    lines = table.report(["expert", "vla"], tmp_path).splitlines()
    assert expert["flags"] == ["--tasks", "squat", "--eval_episodes", "2", "--eval_workers", "1"]
    assert "`--steps 6000`" in lines[0]  # an ablation folder's table names what its runs changed
    assert "| IK expert (privileged) | 0 | **100%** | 0.00 | — | — | 100% |" in lines
    assert "| VLA, BC + DAgger (default) | 0,1 | **75% ± 35%** | 0.50 | 0% ± 0% | 0% ± 0% | 75% ± 35% |" in lines
    monkeypatch.setattr(sys, "argv", ["table.py", "--rows", "vla", "--report", "--out", str(tmp_path)])
    table.main()  # a subset of rows rewrites the table with every row that has result files
    assert "| IK expert (privileged) | 0 | **100%** | 0.00 | — | — | 100% |" in (tmp_path / "table.md").read_text()
