import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from common.config import from_dict
from common.data import ChunkDataset
from common.envs.metaworld import collect_demos, demo_spec
from common.lerobot import export_lerobot
from common.tests import dataset_checks, demo_cache, processes, resume
from common.train import last_checkpoint, read_config, read_metrics

from gr00t import eval as gr00t_eval
from gr00t import train as gr00t_train
from gr00t.config import PRESETS, Gr00tConfig, Qwen3Size, TransformerSize
from gr00t.modality import ModalitySpec
from gr00t.model import (GR00T, CategorySpecificLinear, ClosedLoopPolicy, FlowMatchingActionHead,
                         load_official_state_dict, official_key_to_ours, sample_time, time_buckets,
                         to_official_state_dict)
from gr00t.train import build_policy, build_tokenizer, init_from_checkpoint, train, training_noise

torch.set_num_threads(1)
GR00T_DIR = Path(__file__).parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_action_head.safetensors"


def head_config(**overrides) -> Gr00tConfig:
    """A small action head: VL width 16, DiT 4 blocks of 2 × 8, hidden 12, 3 embodiment slots."""
    base = dict(llm=Qwen3Size(hidden_size=16), vl_self_attention=TransformerSize(1, 2, 8, 0.0),
                dit=TransformerSize(4, 2, 8, 0.0), hidden_size=12, num_future_tokens=3, max_seq_len=8,
                max_state_dim=5, max_action_dim=4, num_embodiments=3, horizon=6)
    return dataclasses.replace(PRESETS["smoke"], **{**base, **overrides})


def head_inputs(cfg: Gr00tConfig, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vl = torch.randn(batch, 5, cfg.llm.hidden_size, generator=g)
    state = torch.randn(batch, 1, cfg.max_state_dim, generator=g)
    actions = torch.rand(batch, cfg.horizon, cfg.max_action_dim, generator=g) * 2 - 1
    noise = torch.randn(batch, cfg.horizon, cfg.max_action_dim, generator=g)
    mask = torch.zeros_like(actions, dtype=torch.bool)
    mask[..., :3] = True
    return vl, state, actions, mask, noise, torch.tensor([0.1, 0.5, 0.9])[:batch], torch.tensor([0, 2, 1])[:batch]


# ----------------------------------------------------------------------------------------------------- the model
def test_paper_preset_parameter_count():
    """N1.5-3B built on the meta device: 2,413,522,880 parameters, derived from the released config.json —
    SigLIP So400m/14 with its pooling head (427,680,704), the connector (2,361,344), Qwen3-1.7B cut to 12 layers
    with its tied embeddings counted once (914,674,688) = 1,344,716,736; the action head 1,068,806,144."""
    with torch.device("meta"):
        model = GR00T(PRESETS["paper"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.backbone.vision_model) == 427_680_704
    assert count(model.backbone.mlp1) == 2_361_344
    assert count(model.backbone.language_model) == 914_674_688
    assert count(model.action_head.model) == 550_386_688  # the DiT
    assert count(model.action_head) == 1_068_806_144
    assert count(model) == 2_413_522_880
    blocks = model.action_head.model.transformer_blocks
    assert len(blocks) == 16 and blocks[0].attn1.to_k.in_features == 2048 and blocks[1].attn1.to_k.in_features == 1536


def test_action_head_matches_lerobot():
    """LeRobot 0.6.1's own GR00T action head (N1.7 with the alternating VL-DiT off, so the N1.5 DiT; it has no future
    tokens) at a tiny config with random weights, fixed noise and t (fixture by tools/lerobot_reference.py): the same
    weights loaded by name give the same VL tokens, velocity, loss and 4-step chunk."""
    with safe_open(FIXTURE, "pt") as f:
        meta = json.loads(f.metadata()["json"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    c = meta["config"]
    dit, vl = c["diffusion_model_cfg"], c["vl_self_attention_cfg"]
    cfg = head_config(llm=Qwen3Size(hidden_size=c["backbone_embedding_dim"]),
                      vl_self_attention=TransformerSize(vl["num_layers"], vl["num_attention_heads"],
                                                        vl["attention_head_dim"], 0.0),
                      dit=TransformerSize(dit["num_layers"], dit["num_attention_heads"], dit["attention_head_dim"], 0.0),
                      hidden_size=c["hidden_size"], num_future_tokens=0, max_seq_len=c["max_seq_len"],
                      max_state_dim=c["max_state_dim"], max_action_dim=c["max_action_dim"],
                      num_embodiments=c["max_num_embodiments"], horizon=c["action_horizon"])
    head = FlowMatchingActionHead(cfg).eval()
    head.load_state_dict({k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")})
    x = {k.removeprefix("inputs."): v for k, v in tensors.items() if k.startswith("inputs.")}
    out = {k.removeprefix("outputs."): v for k, v in tensors.items() if k.startswith("outputs.")}
    assert torch.equal(time_buckets(x["t"], 1000), x["t_discretized"])  # 0.1237 → 123: truncation, not rounding
    with torch.no_grad():
        vl_tokens = head.process_backbone_output(x["backbone_features"])
        torch.testing.assert_close(vl_tokens, out["vl_embeds"], atol=1e-5, rtol=0)
        state_tokens = head.state_encoder(x["state"], x["embodiment_id"])
        torch.testing.assert_close(state_tokens, out["state_features"], atol=1e-5, rtol=0)
        t = x["t"][:, None, None]
        x_t = (1 - t) * x["noise"] + t * x["action"]
        velocity = head.velocity(vl_tokens, state_tokens, x_t, x["t_discretized"], x["embodiment_id"])
        torch.testing.assert_close(velocity, out["pred_velocity"], atol=1e-5, rtol=0)
        loss = head(x["backbone_features"], x["state"], x["action"], x["action_mask"].bool(), x["noise"], x["t"],
                    x["embodiment_id"])
        torch.testing.assert_close(loss, out["loss"][0], atol=1e-5, rtol=1e-6)  # LeRobot adds 1e-6 to the count
        chunk = head.sample_actions(x["backbone_features"], x["state"], x["inference_noise"], x["embodiment_id"])
        torch.testing.assert_close(chunk, out["inference_actions"], atol=1e-5, rtol=0)


def test_dit_alternates_cross_and_self_attention(monkeypatch):
    """Even DiT blocks attend to the VL tokens (keys/values from them), odd blocks attend to the action-side tokens
    only; changing the VL tokens changes the output only through the even blocks."""
    cfg = head_config()
    head = FlowMatchingActionHead(cfg).eval()
    seen = []
    for i, block in enumerate(head.model.transformer_blocks):
        block.attn1.register_forward_hook(
            lambda m, args, kwargs, out, i=i: seen.append((i, kwargs.get("encoder_hidden_states") is not None)),
            with_kwargs=True)
    vl, state, actions, mask, noise, t, e = head_inputs(cfg)
    head(vl, state, actions, mask, noise, t, e)
    assert seen == [(0, True), (1, False), (2, True), (3, False)]
    widths = [b.attn1.to_k.in_features for b in head.model.transformer_blocks]
    assert widths == [16, 16, 16, 16] and head.model.transformer_blocks[0].attn1.to_q.in_features == 16
    cfg = head_config(llm=Qwen3Size(hidden_size=24), vl_self_attention=TransformerSize(1, 3, 8, 0.0))
    assert [b.attn1.to_k.in_features for b in FlowMatchingActionHead(cfg).model.transformer_blocks] == [24, 16, 24, 16]


def test_adaln_conditions_on_time():
    """Each DiT block's first norm is LN(x)·(1 + scale(t)) + shift(t): with its linear layer zeroed it is a plain
    LayerNorm, and the DiT's output changes with the time bucket."""
    cfg = head_config()
    head = FlowMatchingActionHead(cfg).eval()
    block = head.model.transformer_blocks[1]
    x, temb = torch.randn(2, 7, 16), torch.randn(2, 16)
    scale, shift = block.norm1.linear(torch.nn.functional.silu(temb)).chunk(2, dim=1)
    expected = torch.nn.functional.layer_norm(x, (16,)) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(block.norm1(x, temb), expected)
    torch.nn.init.zeros_(block.norm1.linear.weight), torch.nn.init.zeros_(block.norm1.linear.bias)
    torch.testing.assert_close(block.norm1(x, temb), torch.nn.functional.layer_norm(x, (16,)))
    tokens, vl = torch.randn(2, 10, 16), torch.randn(2, 5, 16)
    a = head.model(tokens, vl, torch.tensor([0, 0]))
    b = head.model(tokens, vl, torch.tensor([0, 500]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_embodiment_slots_use_their_own_weights():
    """A sample of embodiment e reads and trains only slot e of every embodiment-specific layer."""
    cfg = head_config()
    head = FlowMatchingActionHead(cfg).eval()
    vl, state, actions, mask, noise, t, _ = head_inputs(cfg)
    e = torch.tensor([2, 2, 2])
    head(vl, state, actions, mask, noise, t, e).backward()
    layers = [m for m in head.modules() if isinstance(m, CategorySpecificLinear)]
    assert len(layers) == 7  # state encoder 2, action encoder 3, action decoder 2
    for layer in layers:
        assert layer.W.grad[2].abs().sum() > 0 and layer.W.grad[:2].abs().sum() == 0
        assert layer.b.grad[:2].abs().sum() == 0
    before = head(vl, state, actions, mask, noise, t, torch.tensor([0, 0, 0]))
    with torch.no_grad():
        for layer in layers:
            layer.W[1:] += 1.0
    assert torch.equal(head(vl, state, actions, mask, noise, t, torch.tensor([0, 0, 0])), before)
    assert not torch.equal(head(vl, state, actions, mask, noise, t, torch.tensor([1, 1, 1])), before)


def test_padded_action_dimensions_never_enter_the_loss():
    """The loss is Σ mask·(v − (a − ε))² / Σ mask over the whole batch (the release's reduction): the decoder's
    outputs for the padded action dimensions do not change it."""
    cfg = head_config()
    head = FlowMatchingActionHead(cfg).eval()
    vl, state, actions, mask, noise, t, e = head_inputs(cfg)
    loss = head(vl, state, actions, mask, noise, t, e)
    tt = t[:, None, None]
    with torch.no_grad():
        v = head.velocity(head.process_backbone_output(vl), head.state_encoder(state, e),
                          (1 - tt) * noise + tt * actions, time_buckets(t, 1000), e)
    torch.testing.assert_close(loss, ((v - (actions - noise)).pow(2) * mask).sum() / mask.sum())
    with torch.no_grad():
        head.action_decoder.layer2.W[:, :, 3:] += 5.0  # only the padded output column moves
        head.action_decoder.layer2.b[:, 3:] -= 2.0
    assert torch.equal(head(vl, state, actions, mask, noise, t, e), loss)


def test_time_law():
    """t = (0.999 − u)/0.999, u ~ Beta(1.5, 1): E[t] = (0.999 − 0.6)/0.999, t ∈ (−0.001, 1], most mass near 0
    (noise); buckets truncate ⌊1000·t⌋. The u behind each t is recovered exactly (same generator, Beta = X/(X+Y)
    of two Gamma draws), so N1.6's law t = (1 − u)·0.999, whose mean is nearly the same, fails here."""
    t = sample_time(200_000, PRESETS["tiny"], torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x = torch._standard_gamma(torch.full((200_000,), 1.5), generator=g)
    y = torch._standard_gamma(torch.full((200_000,), 1.0), generator=g)
    u = x / (x + y)
    torch.testing.assert_close(t, (0.999 - u) / 0.999, atol=1e-7, rtol=0)
    assert abs(u.mean().item() - 0.6) < 3e-3  # Beta(1.5, 1)
    assert abs(t.mean().item() - (0.999 - 0.6) / 0.999) < 3e-3
    assert t.min() > -0.001001 and t.max() <= 1.0
    assert (t < 0.5).float().mean() > 0.6  # P(u > 0.4995) = 1 − 0.4995^1.5 ≈ 0.647
    assert time_buckets(torch.tensor([0.1237, 0.4999, 0.9999, 0.0]), 1000).tolist() == [123, 499, 999, 0]


def test_four_euler_steps_from_noise():
    """sample_actions = 4 explicit Euler steps x ← x + v(x, k)/4 at buckets 0, 250, 500, 750, VL and state tokens
    computed once; the chunk has the padded action width."""
    cfg = head_config()
    head = FlowMatchingActionHead(cfg).eval()
    vl, state, _, _, noise, _, e = head_inputs(cfg)
    chunk = head.sample_actions(vl, state, noise, e)
    assert chunk.shape == (3, cfg.horizon, cfg.max_action_dim)
    with torch.no_grad():
        vl_tokens, state_tokens, x = head.process_backbone_output(vl), head.state_encoder(state, e), noise
        for k in (0, 250, 500, 750):
            x = x + 0.25 * head.velocity(vl_tokens, state_tokens, x, torch.full((3,), k), e)
    torch.testing.assert_close(chunk, x)


@pytest.mark.parametrize("future_tokens", [0, 3])
def test_fast_sampling_equals_the_plain_path(future_tokens):
    """`sample_actions` (fast_sampling.EulerSteps: shared terms computed once, attention on the raw projections)
    gives the chunk of `sample_actions_plain` (every step through `velocity`), every parameter random, two
    embodiments in one batch."""
    cfg = head_config(num_future_tokens=future_tokens)
    head = FlowMatchingActionHead(cfg).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    vl, state, _, _, noise, _, e = head_inputs(cfg)
    torch.testing.assert_close(head.sample_actions(vl, state, noise, e),
                               head.sample_actions_plain(vl, state, noise, e), atol=1e-5, rtol=0)
    three = head.sample_actions(vl, state, noise, e, num_steps=3)
    torch.testing.assert_close(three, head.sample_actions_plain(vl, state, noise, e, num_steps=3), atol=1e-5, rtol=0)


def test_future_tokens_sit_between_state_and_actions():
    """The DiT reads [state, num_future_tokens learned tokens, H action tokens]; the future tokens matter, and the
    action tokens alone get the position embedding."""
    cfg = head_config()
    head = FlowMatchingActionHead(cfg).eval()
    seen = {}
    head.model.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    vl, state, actions, mask, noise, t, e = head_inputs(cfg)
    loss = head(vl, state, actions, mask, noise, t, e)
    x = seen["x"]
    assert x.shape[1] == 1 + cfg.num_future_tokens + cfg.horizon
    torch.testing.assert_close(x[:, 0:1], head.state_encoder(state, e))
    torch.testing.assert_close(x[:, 1:4], head.future_tokens.weight[None].expand(3, -1, -1))
    with torch.no_grad():
        head.future_tokens.weight.add_(torch.randn(head.future_tokens.weight.shape))  # (a constant: LayerNorm undoes it)
    assert not torch.allclose(head(vl, state, actions, mask, noise, t, e), loss)


# -------------------------------------------------------------------------------------------- backbone and layout
def test_backbone_places_image_features_and_pads_left(tmp_path):
    """The prompt is [image placeholders, instruction], left-padded as Eagle's; the placeholders take the
    connector's outputs of every camera in order; a frozen VLM gets no gradient and stays in eval mode."""
    cfg = dataclasses.replace(PRESETS["smoke"], cameras=("corner", "gripperPOV"), max_text_tokens=12)
    policy = build_policy(cfg, fake_stats(), build_tokenizer(cfg, None), 4, 4)
    batch = fake_batch(cfg, ["reach the goal", "close the drawer now please"])
    images, ids, mask, is_image, state, embodiment = policy.inputs(batch)
    n = policy.image_tokens * 2
    for row in range(2):
        valid = int(mask[row].sum())
        assert mask[row, :-valid].sum() == 0 and mask[row, -valid:].all()  # padding first
        assert is_image[row, -valid:-valid + n].all() and is_image[row].sum() == n  # images right after it
    assert mask[0].sum() < mask[1].sum() and (embodiment == cfg.embodiment_id).all()
    long = "position the end effector precisely at the marked spot, slowly and carefully, then stop there"
    assert len(policy.tokenizer(long)["input_ids"]) > cfg.max_text_tokens
    _, ids_long, mask_long, _, _, _ = policy.inputs(fake_batch(cfg, [long, "reach"]))
    assert mask_long[0].sum() == n + len(policy.tokenizer(long)["input_ids"])  # widened, not truncated
    backbone = policy.model.backbone
    seen = {}
    backbone.language_model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    backbone(images, ids, mask, is_image)
    vit = torch.cat([backbone.mlp1(backbone.vision_model(pixel_values=img).last_hidden_state) for img in images], 1)
    torch.testing.assert_close(seen["inputs_embeds"][is_image].view(2, n, -1), vit)
    frozen = dataclasses.replace(cfg, tune_llm=False, tune_visual=False)
    model = GR00T(frozen).train()
    assert not model.backbone.language_model.training and not model.backbone.vision_model.training
    assert model.action_head.training
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_official_layout_round_trip(tmp_path):
    """A model written under the release's names (and LeRobot's `_groot_model.` prefix, with the LM head standing in
    for the tied embeddings) loads back exactly; an unknown key or a wrong shape is an error that names it."""
    cfg = dataclasses.replace(PRESETS["smoke"], vision=dataclasses.replace(PRESETS["smoke"].vision, vision_use_head=True))
    model = GR00T(cfg)
    official = to_official_state_dict(model)
    assert "backbone.eagle_model.vision_model.vision_model.head.probe" in official
    assert "backbone.eagle_model.language_model.model.layers.0.self_attn.q_norm.weight" in official
    assert "action_head.model.transformer_blocks.0.norm1.linear.weight" in official
    save_file(official, tmp_path / "model.safetensors")
    again = GR00T(cfg)
    load_official_state_dict(again, load_file(tmp_path / "model.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    lerobot = {f"_groot_model.{k}": v.bfloat16() for k, v in official.items()}
    lerobot["_groot_model.backbone.eagle_model.language_model.lm_head.weight"] = lerobot.pop(
        "_groot_model.backbone.eagle_model.language_model.model.embed_tokens.weight")
    load_official_state_dict(again, lerobot)
    assert torch.equal(again.backbone.language_model.embed_tokens.weight,
                       model.backbone.language_model.embed_tokens.weight.bfloat16().float())
    with pytest.raises(KeyError, match="unknown key"):
        official_key_to_ours("backbone.something_else.weight")
    bad = dict(official)
    bad["action_head.future_tokens.weight"] = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="future_tokens"):
        load_official_state_dict(again, bad)


# ------------------------------------------------------------------------------------------------ policy, training
def fake_stats() -> dict:
    stat = lambda d: dict(mean=[0.0] * d, std=[1.0] * d, min=[-1.0] * d, max=[1.0] * d, q01=[-1.0] * d,  # noqa: E731
                          q99=[1.0] * d)
    return {"observation.state": stat(4), "action": stat(4)}


def fake_batch(cfg: Gr00tConfig, instructions: list[str]) -> dict:
    g = torch.Generator().manual_seed(0)
    b = len(instructions)
    batch = {f"observation.images.{c}": torch.randint(0, 256, (b, 32, 32, 3), generator=g, dtype=torch.uint8)
             for c in cfg.cameras}
    batch.update({"observation.state": torch.rand(b, 4, generator=g) * 2 - 1, "instruction": instructions,
                  "action": torch.rand(b, cfg.horizon, 4, generator=g) * 2 - 1})
    return batch


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One small demo set for the whole module, in a private cache."""
    with demo_cache.private_cache(tmp_path_factory.mktemp("cache"), demo_spec(PRESETS["smoke"])) as path:
        yield path


def smoke(tmp_path, **overrides) -> Gr00tConfig:
    return dataclasses.replace(PRESETS["smoke"], run_dir=str(tmp_path / "run"), **overrides)


def test_loss_decreases_on_a_fixed_batch(cache, tmp_path):
    cfg = smoke(tmp_path, max_text_tokens=16)
    demos = collect_demos(demo_spec(cfg))
    torch.manual_seed(0)  # the initial weights, whatever tests ran before
    policy = build_policy(cfg, demos.stats, build_tokenizer(cfg, demos), 4, 4)
    data = ChunkDataset(demos, cfg.horizon, ["observation.images.corner", cfg.state_key])
    batch = torch.utils.data.default_collate([data[i] for i in range(0, 64, 8)])
    noise, t, crop, _ = training_noise(dataclasses.replace(cfg, batch_size=8), 0, 0, 1)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        loss = policy(batch, noise, t, crop)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::10]  # measured: 0.43


def test_train_evaluate_and_reload(cache, tmp_path):
    cfg = smoke(tmp_path)
    results = train(cfg)
    run = Path(cfg.run_dir)
    assert set(results) == set(cfg.tasks) and all(r["episodes"] == 1 for r in results.values())
    assert (run / "eval.md").exists() and len(read_metrics(run)) == cfg.steps // cfg.log_every
    checkpoint = last_checkpoint(run)
    saved = from_dict(Gr00tConfig, read_config(checkpoint)["config"])
    assert saved.max_text_tokens > 0 and dataclasses.replace(saved, max_text_tokens=0) == cfg
    again = gr00t_eval.main(gr00t_eval.EvalArgs(checkpoint=run, workers=1))
    assert again == json.loads((run / "eval.json").read_text())  # same weights, same placements, same result


def test_new_embodiment_keeps_shared_weights(cache, tmp_path):
    """Fine-tuning from a checkpoint onto another embodiment slot (here the wrist camera instead of the corner one)
    starts with every shared weight of the source run and a freshly initialised slot in each embodiment-specific
    layer; the source slot is carried over untouched."""
    source = smoke(tmp_path, eval_episodes=0)
    train(source)
    target = dataclasses.replace(source, run_dir=str(tmp_path / "wrist"), cameras=("gripperPOV",), embodiment_id=30,
                                 max_text_tokens=0)
    demos = collect_demos(demo_spec(target))
    policy = build_policy(dataclasses.replace(target, max_text_tokens=16), demos.stats, build_tokenizer(target, demos),
                          4, 4)
    fresh = init_from_checkpoint(policy, source.run_dir)
    assert len(fresh) == 7
    trained = load_file(last_checkpoint(source.run_dir) / "model.safetensors")
    mine = policy.state_dict()
    slots = [i for i in range(source.num_embodiments) if i != 30]
    for name, value in trained.items():
        if not name.startswith("model."):
            continue  # normalisation statistics belong to the data
        if name.endswith(".W"):  # embodiment-specific: every other slot kept, slot 30 drawn afresh
            assert torch.equal(mine[name][slots], value[slots]) and not torch.equal(mine[name][30], value[30])
        else:
            assert torch.equal(mine[name], value), name
    train(dataclasses.replace(target, init_from=source.run_dir, steps=2, save_every=2, log_every=1))
    assert read_config(last_checkpoint(target.run_dir))["config"]["embodiment_id"] == 30


def test_resume_is_exact(cache, tmp_path, monkeypatch):
    """A run killed right after its step-3 checkpoint and resumed ends with the same losses and bit-identical
    weights as an uninterrupted 6-step run."""
    resume.assert_resume_is_exact(gr00t_train, smoke(tmp_path / "a", eval_episodes=0, log_every=1),
                                  smoke(tmp_path / "b", eval_episodes=0, log_every=1), monkeypatch)


def test_torchrun_two_processes_match_one(cache, tmp_path):
    """DDP and FSDP over 2 gloo processes take the same steps as one process with the same global batch (noise, t
    and crops are drawn for the global batch and sliced per rank); FSDP's gathered checkpoint equals DDP's."""
    args = ["--preset", "smoke", "--steps", "3", "--log_every", "1", "--eval_episodes", "0", "--threads", "1"]
    processes.run([sys.executable, "train.py", *args, "--run_dir", str(tmp_path / "one")], GR00T_DIR,
                  tmp_path / "one.log")
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        processes.run([*processes.torchrun(2), "train.py", *args, *extra, "--run_dir", str(tmp_path / name)],
                      GR00T_DIR, tmp_path / f"{name}.log")
    one, ddp, fsdp = ([m["loss"] for m in read_metrics(tmp_path / d)] for d in ("one", "ddp", "fsdp"))
    assert len(one) == 3 and torch.allclose(torch.tensor(one), torch.tensor(ddp), atol=1e-5), (one, ddp)
    assert torch.allclose(torch.tensor(one), torch.tensor(fsdp), atol=1e-5), (one, fsdp)
    a, b = (load_file(last_checkpoint(tmp_path / d) / "model.safetensors") for d in ("ddp", "fsdp"))
    # attention key biases have an exactly-zero gradient (softmax ignores a shift shared by every key): Adam turns
    # their rounding noise into lr-sized steps, so they alone are not compared
    same = [torch.allclose(a[k], b[k], atol=1e-6) for k in a if not k.endswith(("k_proj.bias", "to_k.bias"))]
    assert a.keys() == b.keys() and len(same) > 50 and all(same)


def test_trains_from_a_lerobot_dataset(cache, tmp_path):
    """`--dataset`: common/tests/dataset_checks.py."""
    from gr00t import eval as gr00t_eval, model as gr00t_model
    dataset_checks.check_trains_from_a_lerobot_dataset(PRESETS["smoke"], train, gr00t_eval.load_policy,
                                                       gr00t_model.ClosedLoopPolicy, tmp_path)


# ------------------------------------------------------------------------------------------ a modality spec
SPEC = {  # Isaac-GR00T's meta/modality.json schema: a new embodiment that reads the hand position but not the gripper
    "state": {"eef_position": {"start": 0, "end": 3}},
    "action": {"eef_delta": {"start": 0, "end": 3}, "gripper": {"start": 3, "end": 4, "absolute": True}},
    "video": {"front": {"original_key": "observation.images.corner"}},
    "annotation": {"human.task_description": {}}}


def test_modality_spec_reads_slices_and_names_what_is_wrong():
    spec = ModalitySpec.from_dict(SPEC)
    assert [(f.name, f.start, f.end, f.original_key) for f in spec.state] == [("eef_position", 0, 3,
                                                                               "observation.state")]
    assert [f.original_key for f in spec.action] == ["action", "action"] and spec.cameras == ("corner",)
    features = {"observation.images.corner": {"shape": [32, 32, 3]}, "observation.state": {"shape": [4]},
                "action": {"shape": [4]}}
    spec.check(features)
    state = np.arange(4, dtype=np.float32)
    seen = spec.observation({"observation.images.corner": np.zeros((32, 32, 3)), "observation.state": state})
    assert seen["observation.state"].tolist() == [0, 1, 2]
    actions = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)  # the model's (eef_delta, gripper) per step
    assert spec.robot_action(actions, 4).tolist() == actions.tolist()
    swapped = ModalitySpec.from_dict({**SPEC, "action": {"gripper": {"start": 3, "end": 4},
                                                         "eef_delta": {"start": 0, "end": 3}}})
    assert swapped.robot_action(actions, 4).tolist() == [[2, 3, 4, 1], [6, 7, 8, 5]]  # fields in the spec's order
    with pytest.raises(ValueError, match=r"state.eef_position: \[0, 5\) is outside 'observation.state' \(4 wide\)"):
        ModalitySpec.from_dict({**SPEC, "state": {"eef_position": {"start": 0, "end": 5}}}).check(features)
    with pytest.raises(KeyError, match="video.front: the data has no 'observation.images.top'"):
        ModalitySpec.from_dict({**SPEC, "video": {"front": {"original_key": "observation.images.top"}}}).check(
            features)
    with pytest.raises(ValueError, match="start 3 >= end 3"):
        ModalitySpec.from_dict({**SPEC, "action": {"gripper": {"start": 3, "end": 3}}})
    with pytest.raises(ValueError, match="non-empty 'video'"):
        ModalitySpec.from_dict({k: v for k, v in SPEC.items() if k != "video"})


def test_new_embodiment_from_the_datasets_modality_spec(cache, tmp_path):
    """Fine-tuning onto a new embodiment described by a GR00T-flavoured LeRobot dataset: its meta/modality.json is
    read, the model sees that embodiment's 3-D state, the checkpoint carries the spec, and the evaluation maps the
    Meta-World robot through it (its full 4-D state in, 4-D actions out)."""
    source = smoke(tmp_path, eval_episodes=0)
    train(source)
    demos = collect_demos(demo_spec(source))
    export_lerobot(demos, tmp_path / "lerobot", video=False)
    (tmp_path / "lerobot" / "meta" / "modality.json").write_text(json.dumps(SPEC))
    target = smoke(tmp_path / "new", dataset=str(tmp_path / "lerobot"), embodiment_id=30, init_from=source.run_dir,
                   steps=2, save_every=2, log_every=1, eval_episodes=1)
    results = train(target)
    assert set(results) == set(target.tasks)  # the Meta-World evaluation ran through the spec
    written = read_config(last_checkpoint(target.run_dir))
    assert written["modality"] == SPEC and written["state_dim"] == 3 and written["action_dim"] == 4
    assert written["stats"]["observation.state"]["mean"] == demos.stats["observation.state"]["mean"][:3]
    policy, cfg = gr00t_eval.load_policy(target.run_dir)
    assert policy.modality == ModalitySpec.from_dict(SPEC) and cfg.cameras == ("corner",)
    first = {key: np.array(frames[0]) for key, frames in demos.episode(0).items()}
    obs = {"images": {"corner": first["observation.images.corner"]}, "state": first["observation.state"],
           "env_state": first["observation.environment_state"], "instruction": demos.episodes[0]["instruction"]}
    assert ClosedLoopPolicy(policy)(obs).shape == (cfg.n_action_steps, 4)


def test_color_jitter_is_torchvisions_and_leaves_the_other_draws_alone(monkeypatch):
    """`color_jitter` with given draws equals torchvision's ColorJitter(0.3, 0.4, 0.5, 0.08) with the same order and
    factors; the training draws with the jitter on keep ε, t and the crops of the run without it."""
    import torchvision.transforms as T

    from gr00t.model import JITTER, color_jitter
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=g)
    draws = torch.cat([torch.rand(3, 4, generator=g), torch.stack([torch.randperm(4, generator=g) for _ in range(3)])],
                      dim=1).float()
    ours = color_jitter(images, draws)
    for image, d, mine in zip(images, draws, ours):
        u = d[:4].tolist()
        params = (d[4:].long(), *(1 + j * (2 * x - 1) for j, x in zip(JITTER[:3], u[:3])), JITTER[3] * (2 * u[3] - 1))
        monkeypatch.setattr(T.ColorJitter, "get_params", staticmethod(lambda *args: params))
        torch.testing.assert_close(mine, T.ColorJitter(*JITTER)(image), atol=1e-5, rtol=0)  # v1 vs v2 kernels
    assert not torch.allclose(ours, images)
    cfg = dataclasses.replace(PRESETS["smoke"], cameras=("corner", "gripperPOV"))
    plain, jittered = training_noise(cfg, 5, 0, 1), training_noise(dataclasses.replace(cfg, color_jitter=True), 5, 0, 1)
    assert plain[3] is None and jittered[3].shape == (cfg.batch_size, 2, 8)
    assert all(torch.equal(a, b) for a, b in zip(plain[:3], jittered[:3]))
    assert sorted(jittered[3][0, 0, 4:].tolist()) == [0, 1, 2, 3]


def test_trains_with_color_jitter(cache, tmp_path):
    cfg = smoke(tmp_path, color_jitter=True, steps=2, save_every=2, log_every=1, eval_episodes=0)
    train(cfg)
    assert all(math.isfinite(m["loss"]) for m in read_metrics(cfg.run_dir))
