import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from transformers.models.gemma.modeling_gemma import rotate_half

from common.config import from_dict, merge
from common.data import ChunkDataset
from common.envs.metaworld import collect_demos, demo_spec
from common.tests import dataset_checks, demo_cache, processes, resume
from common.train import last_checkpoint, read_config, read_metrics

from pi0 import eval as pi0_eval
from pi0 import train as pi0_train
from pi0.config import PRESETS, PI0Config
from pi0.fast_sampling import rotate_half_rows
from pi0.model import (PI0, block_attention_mask, flow_matching_loss, load_official_state_dict,
                       official_key_to_ours, sample_time, to_official_state_dict)
from pi0.train import build_policy, build_tokenizer, training_noise, train

PI0_DIR = Path(__file__).parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def tiny(variant: str = "pi0", **overrides) -> PI0Config:
    return merge(PRESETS["smoke"], dict(variant=variant, **overrides))


def random_inputs(cfg: PI0Config, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1]
    tokens = torch.randint(0, cfg.vocab_size, (batch, 7), generator=g)
    token_masks = torch.ones_like(tokens, dtype=torch.bool)
    token_masks[1, -3:] = False  # a padded prompt
    state = torch.randn(batch, cfg.max_state_dim, generator=g)
    noise = torch.randn(batch, cfg.horizon, cfg.max_action_dim, generator=g)
    return images, [torch.ones(batch, dtype=torch.bool)], tokens, token_masks, state, noise


# ------------------------------------------------------------------------------------------------------ the model
def test_blockwise_causal_mask():
    """π0's three blocks: [image, prompt] → [state] → [actions]; padding is neither seen nor sees."""
    pad = torch.tensor([[1, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)  # 2 image, 2 prompt (1 padded), state, 2 actions
    start = torch.tensor([[0, 0, 0, 0, 1, 1, 0]])
    expected = torch.tensor([[1, 1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0, 0],
                             [0, 0, 0, 0, 0, 0, 0],
                             [1, 1, 1, 0, 1, 0, 0],
                             [1, 1, 1, 0, 1, 1, 1],
                             [1, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(block_attention_mask(pad, start)[0], expected)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_cached_sampling_equals_uncached(variant):
    """Reusing the prefix keys/values across the 10 Euler steps, and the op-lean step (`ActionExpertSteps`, with its
    folded norm weights and RoPE), change nothing. Every parameter is random: at initialisation the norm weights
    and π0.5's adaRMS layers are zero, which would leave the folds untested."""
    torch.manual_seed(0)
    cfg = tiny(variant)
    model = PI0(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    inputs = random_inputs(cfg)
    cached, uncached = model.sample_actions(*inputs), model.sample_actions_uncached(*inputs)
    assert cached.shape == (3, cfg.horizon, cfg.max_action_dim)
    assert torch.allclose(cached, uncached, atol=1e-5), (cached - uncached).abs().max()


def test_rotate_half_rows_folds_rope_into_the_projection():
    """A q/k projection with `rotate_half_rows` outputs exactly rotate_half of the original's output, per head."""
    g = torch.Generator().manual_seed(0)
    weight, x = torch.randn(3 * 8, 5, generator=g), torch.randn(4, 5, generator=g)
    expected = rotate_half(F.linear(x, weight).view(4, 3, 8)).flatten(1)
    assert torch.equal(F.linear(x, rotate_half_rows(weight, 8)), expected)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_prefix_does_not_see_the_suffix(variant, monkeypatch):
    """The blockwise mask, read off every layer's keys and values: the prefix [image, prompt] is unchanged when the
    noisy actions, the time or π0's state change (so it can be cached once per chunk), and π0's state token is
    unchanged when the actions or time change; a real prompt token changes the prefix, a padded one changes nothing."""
    import pi0.model as pi0_model
    torch.manual_seed(0)
    cfg = tiny(variant)
    model = PI0(cfg).eval()
    images, image_masks, tokens, token_masks, state, noise = random_inputs(cfg)
    _, prefix_pad, _ = model.embed_prefix(images, image_masks, tokens, token_masks)
    n_prefix = prefix_pad.shape[1]
    kv = []
    original = pi0_model.joint_layer

    def recording(*args, **kwargs):
        out, (k, v) = original(*args, **kwargs)
        kv.append(torch.cat([k, v], dim=-1))
        return out, (k, v)

    monkeypatch.setattr(pi0_model, "joint_layer", recording)

    def keys_values(tokens=tokens, state=state, x_t=noise, time=torch.full((3,), 0.5)):
        kv.clear()
        v = model.velocity(images, image_masks, tokens, token_masks, state, x_t, time)
        # (layers, B, kv heads, tokens, 2 · head_dim); a padded token attends to nothing and is never attended to,
        # so its (unread) values are zeroed here
        pad = torch.cat([prefix_pad, prefix_pad.new_ones(prefix_pad.shape[0], len(kv[0][0, 0]) - n_prefix)], 1)
        return torch.stack(kv) * pad[None, :, None, :, None], v

    base, v = keys_values()
    prefix = slice(0, n_prefix)
    moved_actions, v2 = keys_values(x_t=noise + 1.0, time=torch.full((3,), 0.9))
    assert not torch.allclose(v, v2)  # the suffix did change
    assert torch.equal(base[..., prefix, :], moved_actions[..., prefix, :])
    if variant == "pi0":  # the state token (right after the prefix) sees the prefix and itself, not the actions
        assert torch.equal(base[..., n_prefix, :], moved_actions[..., n_prefix, :])
    moved_state, v3 = keys_values(state=state + 1.0)
    assert torch.equal(base[..., prefix, :], moved_state[..., prefix, :])
    if variant == "pi0":  # π0 reads the state token; π0.5's state lives in the prompt text instead
        assert not torch.equal(base[..., n_prefix, :], moved_state[..., n_prefix, :]) and not torch.allclose(v, v3)
    tokens2 = tokens.clone()
    tokens2[1, -1] += 1  # a padded prompt token
    assert torch.equal(v, keys_values(tokens=tokens2)[1])
    tokens2[1, 0] += 1  # a real one
    changed, v4 = keys_values(tokens=tokens2)
    assert not torch.allclose(base[:, 1, :, prefix], changed[:, 1, :, prefix]) and not torch.allclose(v[1], v4[1])
    assert torch.equal(base[:, 0], changed[:, 0])  # and only in its own sample


def test_time_distribution():
    """τ = Beta(1.5, 1)·0.999 + 0.001: mean 0.6·0.999 + 0.001, CDF ((τ − 0.001)/0.999)^1.5, never below 0.001."""
    tau = sample_time(200_000, PRESETS["tiny"], torch.Generator().manual_seed(0))
    assert tau.min() >= 0.001 and tau.max() <= 1.0
    assert abs(tau.mean().item() - (0.6 * 0.999 + 0.001)) < 3e-3
    assert abs((tau < 0.5).float().mean().item() - ((0.5 - 0.001) / 0.999) ** 1.5) < 3e-3


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny("pi0")
    model = PI0(cfg)
    images, image_masks, tokens, token_masks, state, _ = random_inputs(cfg, batch=8)
    actions = torch.randn(8, cfg.horizon, cfg.max_action_dim).cumsum(1) * 0.3  # smooth-ish chunks
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    noise, time = torch.randn(actions.shape, generator=g), torch.rand(8, generator=g)  # fixed noise and time
    losses = []
    for _ in range(60):
        loss = model(images, image_masks, tokens, token_masks, state, actions, noise, time).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], [round(x, 3) for x in losses[::10]]


def test_paper_preset_parameter_count():
    """π0 at the paper's sizes, on the meta device: SigLIP So400m (412.4M) + PaliGemma's projector (2.4M) and Gemma
    2B (2.51B with the tied embedding) + the 300M action expert (311.5M) + the action/state/time projections (3.2M)
    = 3,238,046,480. The paper rounds to "3.3B"; LeRobot's π0
    builds 4.03B, which is the same 3.238B plus an untied copy of the LM head (527M), an unused expert LM head
    (263M) and the VLM's unused final norm."""
    with torch.device("meta"):
        model = PI0(PRESETS["paper"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.vision_tower) == 412_442_352
    assert count(model.embed_tokens) + count(model.vlm_layers) == 2_508_529_664  # Gemma 2B without its final norm
    assert count(model.expert_layers) == 311_463_936
    projections = [model.action_in_proj, model.action_out_proj, model.state_proj, model.action_time_mlp_in,
                   model.action_time_mlp_out]
    assert count(model.multi_modal_projector) == 2_361_344 and sum(map(count, projections)) == 3_248_160
    assert count(model) == 3_238_046_480  # the parts above + the expert's final norm (1,024), exactly


# ------------------------------------------------------------------------------------------- official checkpoints
@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_official_layout_round_trip(variant):
    """Our weights → openpi/LeRobot names → a fresh model: bit-identical; other module layouts load too."""
    torch.manual_seed(0)
    cfg = tiny(variant)
    a, b, c = PI0(cfg), PI0(cfg), PI0(cfg)
    official = to_official_state_dict(a)
    assert all(k.startswith(("paligemma_with_expert.", "state_proj", "action_", "time_mlp")) for k in official)
    load_official_state_dict(b, {"model." + k: v for k, v in official.items()})  # LeRobot's "model." prefix
    old = {k.replace("paligemma.model.language_model.", "paligemma.language_model.model.")
            .replace("paligemma.model.vision_tower.vision_model.", "paligemma.vision_tower.")
            .replace("paligemma.model.multi_modal_projector", "paligemma.multi_modal_projector"): v
           for k, v in official.items()}
    load_official_state_dict(c, old)
    for m in (b, c):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), m.state_dict().values()))
    with pytest.raises(KeyError, match="unknown key"):
        official_key_to_ours("paligemma_with_expert.something_else.weight", variant)
    del official[next(iter(official))]
    with pytest.raises(KeyError, match="missing"):
        load_official_state_dict(b, official)


def _fixture_config(meta: dict, variant: str) -> PI0Config:
    c = json.loads(meta["config"])
    v, e, vis = c["vlm"], c["expert"], c["vision"]
    return merge(PRESETS["paper"], dict(
        variant=variant, vlm=v, expert=e, vision=vis, image_size=c["image_size"], vocab_size=c["vocab_size"],
        max_state_dim=c["max_state_dim"], max_action_dim=c["max_action_dim"], horizon=c["chunk_size"]))


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_parity_with_lerobot(variant):
    """LeRobot 0.6.1's π0/π0.5 and ours, with the same random weights (loaded through the official-layout name
    mapping): the per-element training loss at a fixed noise and time, and the sampled chunk at a fixed noise,
    agree to 1e-5. The fixture is written by pi0/tools/lerobot_reference.py inside a LeRobot venv (see
    fixtures/README.md), so this test needs no LeRobot install."""
    path = FIXTURES / f"lerobot_{variant}_tiny.safetensors"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    cfg = _fixture_config(meta, variant)
    model = PI0(cfg).eval()
    load_official_state_dict(model, {k: v for k, v in tensors.items() if not k.startswith(("input.", "output."))})
    x = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    images, image_masks = list(x["images"]), list(x["img_masks"])  # stacked over cameras in the fixture
    state = x.get("state")
    loss = model(images, image_masks, x["lang_tokens"], x["lang_masks"], state, x["actions"], x["noise"], x["time"])
    assert torch.allclose(loss, tensors["output.loss"], atol=1e-5, rtol=0), (loss - tensors["output.loss"]).abs().max()
    sampled = model.sample_actions(images, image_masks, x["lang_tokens"], x["lang_masks"], state, x["noise"], 10)
    assert torch.allclose(sampled, tensors["output.actions"], atol=1e-5, rtol=0), \
        (sampled - tensors["output.actions"]).abs().max()


# ------------------------------------------------------------------------------------------ training end to end
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One small demo set for the whole module, in a private cache."""
    with demo_cache.private_cache(tmp_path_factory.mktemp("cache"), demo_spec(PRESETS["smoke"])) as path:
        yield path


def smoke(tmp_path, **overrides) -> PI0Config:
    return dataclasses.replace(PRESETS["smoke"], run_dir=str(tmp_path / "run"), **overrides)


def test_loss_counts_only_real_steps_and_dimensions():
    """Past an episode's end the chunk is padded (`action_is_pad`), and actions are zero-padded to max_action_dim:
    neither enters the loss, which is a per-sample mean (so DDP shards average to the global batch's loss)."""
    g = torch.Generator().manual_seed(0)
    sq_err = torch.rand(2, 4, 6, generator=g)
    is_pad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    loss = flow_matching_loss(sq_err, is_pad, action_dim=3)
    assert torch.allclose(loss, (sq_err[0, :2, :3].mean() + sq_err[1, :, :3].mean()) / 2)
    corrupted = sq_err.clone()
    corrupted[0, 2:] += 100
    corrupted[..., 3:] += 100
    assert torch.equal(flow_matching_loss(corrupted, is_pad, 3), loss)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_policy_loss_on_demo_chunks(cache, tmp_path, variant):
    """The policy's loss on a demo batch is the model's squared error, normalised and masked as above."""
    cfg = smoke(tmp_path, variant=variant, max_text_tokens=120)
    demos = collect_demos(demo_spec(cfg))
    policy = build_policy(cfg, demos.stats, build_tokenizer(cfg, demos), 4, 4)
    data = ChunkDataset(demos, cfg.horizon, ["observation.images.corner", cfg.state_key])
    batch = torch.utils.data.default_collate([data[0], data[demos.episodes[0]["length"] - 1]])
    assert batch["action_is_pad"][1].sum() == cfg.horizon - 1  # the last frame: 1 real step, H-1 padded
    noise, time, _ = training_noise(cfg, 0, 0, 1)
    noise, time = noise[:2], time[:2]
    actions = policy.normalizer.normalize("action", batch["action"])
    sq_err = policy.model(*policy.inputs(batch), actions, noise, time)  # action_dim = max_action_dim here
    assert torch.allclose(policy(batch, noise, time), flow_matching_loss(sq_err, batch["action_is_pad"], 4))


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_a_longer_prompt_widens_the_batch(cache, tmp_path, variant):
    """A prompt past max_text_tokens (an unseen paraphrase) is not cut: the chunk equals that of a policy whose
    max_text_tokens fits it, with the same weights and noise."""
    cfg = smoke(tmp_path, variant=variant, max_text_tokens=64)
    demos = collect_demos(demo_spec(cfg))
    tokenizer_json = build_tokenizer(cfg, demos)
    wide = build_policy(cfg, demos.stats, tokenizer_json, 4, 4).eval()
    narrow = build_policy(dataclasses.replace(cfg, max_text_tokens=8), demos.stats, tokenizer_json, 4, 4).eval()
    narrow.load_state_dict(wide.state_dict())
    data = ChunkDataset(demos, cfg.horizon, ["observation.images.corner", cfg.state_key])
    batch = torch.utils.data.default_collate([data[0], data[5]])
    batch["instruction"] = ["position the end effector at the marked spot", "reach"]
    tokens = narrow.inputs(batch)[2]
    assert tokens.shape[1] > 8 and tokens.shape[1] < 64
    noise = torch.randn(2, cfg.horizon, cfg.max_action_dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(narrow.predict_chunk(batch, noise), wide.predict_chunk(batch, noise), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_train_evaluate_and_reload(cache, tmp_path, variant):
    cfg = smoke(tmp_path, variant=variant)
    results = train(cfg)
    run = Path(cfg.run_dir)
    assert set(results) == set(cfg.tasks) and all(r["episodes"] == 1 for r in results.values())
    assert (run / "eval.md").exists() and len(read_metrics(run)) == cfg.steps // cfg.log_every
    checkpoint = last_checkpoint(run)
    assert checkpoint.name == f"{cfg.steps:08d}"
    saved = from_dict(PI0Config, read_config(checkpoint)["config"])
    assert saved.max_text_tokens > 0 and dataclasses.replace(saved, max_text_tokens=0) == cfg
    again = pi0_eval.main(pi0_eval.EvalArgs(checkpoint=checkpoint, workers=1, video_dir=str(tmp_path / "videos")))
    assert again == json.loads((run / "eval.json").read_text())  # same weights, same placements, same result
    assert len(list((tmp_path / "videos").iterdir())) == len(cfg.tasks)


def test_resume_is_exact(cache, tmp_path, monkeypatch):
    """A run killed right after its step-3 checkpoint and resumed ends with the same losses and bit-identical
    weights as an uninterrupted 6-step run."""
    resume.assert_resume_is_exact(pi0_train, smoke(tmp_path / "a", eval_episodes=0, log_every=1),
                                  smoke(tmp_path / "b", eval_episodes=0, log_every=1), monkeypatch)


def test_torchrun_two_processes_match_one(cache, tmp_path):
    """DDP and FSDP over 2 gloo processes take the same steps as one process with the same global batch (noise, τ
    and image shifts are drawn for the global batch and sliced per rank); FSDP's gathered checkpoint equals DDP's."""
    args = ["--preset", "smoke", "--steps", "3", "--log_every", "1", "--eval_episodes", "0", "--threads", "1"]
    processes.run([sys.executable, "train.py", *args, "--run_dir", str(tmp_path / "one")], PI0_DIR,
                  tmp_path / "one.log")
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        processes.run([*processes.torchrun(2), "train.py", *args, *extra, "--run_dir", str(tmp_path / name)],
                      PI0_DIR, tmp_path / f"{name}.log")
    one, ddp, fsdp = ([m["loss"] for m in read_metrics(tmp_path / d)] for d in ("one", "ddp", "fsdp"))
    assert len(one) == 3 and torch.allclose(torch.tensor(one), torch.tensor(ddp), atol=1e-5)
    assert torch.allclose(torch.tensor(one), torch.tensor(fsdp), atol=1e-5), (one, fsdp)
    a, b = (load_file(last_checkpoint(tmp_path / d) / "model.safetensors") for d in ("ddp", "fsdp"))
    # SigLIP's key biases have an exactly-zero gradient (softmax ignores a shift shared by every key): Adam turns
    # their rounding noise into lr-sized steps, so they alone are not compared
    same = [torch.allclose(a[k], b[k], atol=1e-6) for k in a if not k.endswith("self_attn.k_proj.bias")]
    assert a.keys() == b.keys() and len(same) > 50 and all(same)


def test_trains_from_a_lerobot_dataset(cache, tmp_path):
    """`--dataset`: common/tests/dataset_checks.py."""
    from pi0 import eval as pi0_eval, model as pi0_model
    dataset_checks.check_trains_from_a_lerobot_dataset(PRESETS["smoke"], train, pi0_eval.load_policy,
                                                       pi0_model.ClosedLoopPolicy, tmp_path)
