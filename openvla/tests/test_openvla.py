import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from common.config import from_dict, merge
from common.data import ChunkDataset
from common.envs.metaworld import collect_demos, demo_spec
from common.text import train_bpe_tokenizer
from common.tests import dataset_checks, demo_cache, processes, resume
from common.train import last_checkpoint, read_config, read_metrics

from openvla import eval as openvla_eval
from openvla import train as openvla_train
from openvla.config import PRESETS, OpenVLAConfig, resolve
from openvla.model import (ActionTokenizer, L1RegressionActionHead, OpenVLA, block_attention_mask, bounds_q99,
                           l1_loss, llama_config, load_official_state_dict, make_prompt, official_key_to_ours,
                           to_official_state_dict, tokenize_prompts)
from openvla.train import build_policy, build_tokenizer, train

OPENVLA_DIR = Path(__file__).parents[1]
ACTION_DIM, STATE_DIM = 4, 39


def tiny(variant: str = "openvla", **overrides) -> OpenVLAConfig:
    return resolve(merge(PRESETS["smoke"], dict(variant=variant, **overrides)))


def random_inputs(cfg: OpenVLAConfig, batch: int = 3, length: int = 9, seed: int = 0):
    """pixel_values, prompt ids [BOS, padding, prompt] with row 1 padded, validity, state."""
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 6, cfg.image_size, cfg.image_size, generator=g)
    ids = torch.randint(3, 200, (batch, length), generator=g)
    ids[:, 0] = 1
    valid = torch.ones(batch, length, dtype=torch.bool)
    if batch > 1:
        valid[1, 1:4] = False
        ids[1, 1:4] = 0
    return pixel_values, ids, valid, torch.randn(batch, STATE_DIM, generator=g)


# ------------------------------------------------------------------------------------------------ action tokens
def test_action_tokenizer_matches_the_official_formulas():
    """np.digitize over linspace(-1, 1, 256), token = vocab - bin, the last 256 ids; decoding to bin centres."""
    tokenizer = ActionTokenizer(text_vocab=32000)
    a = np.concatenate([np.linspace(-1.3, 1.3, 2001), [-1.0, 1.0, 0.0]]).astype(np.float32)
    bins = np.linspace(-1, 1, 256)
    expected = 32000 - np.digitize(np.clip(a, -1, 1), bins)
    tokens = tokenizer.encode(torch.tensor(a))
    assert np.array_equal(tokens.numpy(), expected)
    assert tokens.min() == 32000 - 256 and tokens.max() == 32000 - 1  # -1 → bin 1 (token 31999); 1 → bin 256
    centers = (bins[:-1] + bins[1:]) / 2
    decoded = tokenizer.decode(tokens).numpy()
    assert np.allclose(decoded, centers[np.clip(32000 - expected - 1, 0, 254)])
    inside = np.abs(a) < 1
    assert np.abs(decoded[inside] - a[inside]).max() <= 1 / 255 + 1e-6  # within half a bin (width 2/255)
    assert tokenizer.decode(torch.tensor([5, 40000])).tolist() == pytest.approx([centers[-1], centers[0]])


def test_bounds_q99_normalisation():
    """[q01, q99] → [-1, 1], clipped outside; a constant dimension (q01 = q99) becomes 0; unnormalise inverts."""
    from common.data import Normalizer
    stats = {"action": {"mean": [0, 0, 0], "std": [1, 1, 1], "q01": [-2.0, 0.0, 5.0], "q99": [2.0, 1.0, 5.0]}}
    norm = Normalizer(stats, {"action": "quantile"})
    x = torch.tensor([[0.0, 0.25, 5.0], [3.0, -1.0, 5.0]])
    out = bounds_q99(norm, "action", x)
    assert torch.allclose(out, torch.tensor([[0.0, -0.5, 0.0], [1.0, -1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(norm.unnormalize("action", out)[0, :2], x[0, :2], atol=1e-6)


# ------------------------------------------------------------------------------------------------------ the model
def test_llama_decoder_matches_transformers():
    """Our Llama layers + norm + LM head equal transformers' LlamaForCausalLM with the same weights (causal, GQA)."""
    torch.manual_seed(0)
    cfg = tiny()
    model = OpenVLA(cfg, ACTION_DIM).eval()
    reference = LlamaForCausalLM(llama_config(cfg.llm, cfg.vocab_size)).eval()
    official = to_official_state_dict(model)
    llm = {k.removeprefix("language_model."): v for k, v in official.items() if k.startswith("language_model.")}
    assert set(llm) == set(reference.state_dict())  # the official LLM layout is exactly HF's
    reference.load_state_dict(llm)
    x = torch.randn(2, 11, cfg.llm.width)
    valid = torch.ones(2, 11, dtype=torch.bool)
    with torch.no_grad():
        ours = model.lm_head(model.decoder(x, valid, causal=True))
        theirs = reference(inputs_embeds=x).logits
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("variant", ["openvla", "oft"])
def test_padding_inside_the_prompt_changes_nothing(variant):
    """[BOS, pad, pad, prompt] gives what [BOS, prompt] gives: padding is masked and does not advance positions."""
    torch.manual_seed(0)
    cfg = tiny(variant)
    model = OpenVLA(cfg, ACTION_DIM, STATE_DIM).eval()
    pixel_values, ids, valid, state = random_inputs(cfg, batch=1)
    padded_ids = torch.cat([ids[:, :1], torch.zeros(1, 2, dtype=torch.long), ids[:, 1:]], dim=1)
    padded_valid = torch.cat([valid[:, :1], torch.zeros(1, 2, dtype=torch.bool), valid[:, 1:]], dim=1)
    with torch.no_grad():
        if variant == "openvla":
            tokens = torch.tensor([[cfg.text_vocab - 5, cfg.text_vocab - 100, cfg.text_vocab - 1, cfg.text_vocab - 50]])
            a, b = model(pixel_values, ids, valid, tokens), model(pixel_values, padded_ids, padded_valid, tokens)
        else:
            a = model.predict_chunk(pixel_values, ids, valid, state)
            b = model.predict_chunk(pixel_values, padded_ids, padded_valid, state)
    assert (a - b).abs().max() < 1e-5


def test_a_longer_prompt_widens_the_batch_instead_of_failing():
    """A prompt past max_text_tokens (an unseen paraphrase) is kept whole: the batch widens, left-padded after BOS."""
    tokenizer = train_bpe_tokenizer(["In: What action should the robot take to reach?\nOut:"], vocab_size=300)
    prompts = [make_prompt("reach"), make_prompt("position the end effector at the marked spot")]
    ids, valid = tokenize_prompts(tokenizer, prompts, length=8)
    lengths = [len(t) for t in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    assert ids.shape[1] == 1 + max(lengths) > 8 and valid.sum(1).tolist() == [1 + n for n in lengths]
    assert (ids[:, 0] == tokenizer.bos_token_id).all() and valid[:, -1].all()
    assert tokenizer.decode(ids[1, 1:]) == prompts[1]


def test_cached_greedy_decoding_equals_teacher_forcing():
    """The key/value-cached greedy decoder picks, at every step, the argmax of a full uncached pass."""
    torch.manual_seed(0)
    cfg = tiny()
    model = OpenVLA(cfg, ACTION_DIM).eval()
    pixel_values, ids, valid, _ = random_inputs(cfg)
    tokens = model.predict_action_tokens(pixel_values, ids, valid)
    assert tokens.shape == (3, ACTION_DIM)
    with torch.no_grad():
        logits = model(pixel_values, ids, valid, tokens)  # position i's logits predict token i
    assert torch.equal(logits.argmax(-1), tokens)


def test_loss_covers_only_action_tokens():
    """The OpenVLA loss is HF-style next-token cross-entropy over the whole sequence with every label but the
    action tokens' set to -100 (the image patches, BOS and the prompt are never targets)."""
    torch.manual_seed(0)
    cfg = tiny()
    model = OpenVLA(cfg, ACTION_DIM).eval()
    pixel_values, ids, valid, _ = random_inputs(cfg)
    tokens = torch.randint(cfg.text_vocab - 256, cfg.text_vocab, (3, ACTION_DIM))
    logits = model(pixel_values, ids, valid, tokens)
    ours = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    x, v = model.prefix(pixel_values, ids, valid)
    x = torch.cat([x, model.embed_tokens(tokens)], dim=1)
    v = torch.cat([v, torch.ones_like(tokens, dtype=torch.bool)], dim=1)
    full = model.lm_head(model.decoder(x, v, causal=True))  # (B, L, vocab) at every position
    labels = torch.full(x.shape[:2], -100)
    labels[:, -ACTION_DIM:] = tokens
    reference = F.cross_entropy(full[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_attention_masks():
    """Causal: every token its own block; OFT: one block, bidirectional; padding is neither seen nor sees."""
    valid = torch.tensor([[True, False, True, True]])
    allowed = lambda m: (m[0, 0] == 0)  # noqa: E731
    causal = allowed(block_attention_mask(valid, torch.ones(1, 4, dtype=torch.long)))
    assert torch.equal(causal, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool))
    full = allowed(block_attention_mask(valid, torch.zeros(1, 4, dtype=torch.long)))
    assert torch.equal(full, torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 0, 1, 1], [1, 0, 1, 1]], dtype=torch.bool))


def test_oft_attends_bidirectionally_and_heads_each_action_from_its_slots():
    """OFT: a later token (the stop token) changes earlier hidden states; action k of the chunk is computed from
    the hidden states of its own A slots only."""
    torch.manual_seed(0)
    cfg = tiny("oft")
    model = OpenVLA(cfg, ACTION_DIM, STATE_DIM).eval()
    x = torch.randn(1, 8, cfg.llm.width)
    valid = torch.ones(1, 8, dtype=torch.bool)
    y = x.clone()
    y[:, -1] += 1
    with torch.no_grad():
        assert (model.decoder(x, valid, False)[:, 0] - model.decoder(y, valid, False)[:, 0]).abs().max() > 1e-4
        assert torch.equal(model.decoder(x, valid, True)[:, 0], model.decoder(y, valid, True)[:, 0])
    head = L1RegressionActionHead(cfg.llm.width, ACTION_DIM)
    hidden = torch.randn(2, cfg.horizon * ACTION_DIM, cfg.llm.width)
    moved = hidden.clone()
    moved[:, 2 * ACTION_DIM:3 * ACTION_DIM] += 1  # the slots of action 2
    with torch.no_grad():
        changed = (head(hidden) - head(moved)).abs().amax((0, 2)) > 0
    assert changed.tolist() == [k == 2 for k in range(cfg.horizon)]


def test_film_modulates_the_vision_features():
    """OFT+: with zero FiLM weights the features equal the plain backbone's; with random ones they change and
    depend on the language embedding."""
    torch.manual_seed(0)
    cfg = tiny("oft", use_film=True)
    model = OpenVLA(cfg, ACTION_DIM, STATE_DIM).eval()
    pixel_values = torch.randn(2, 6, cfg.image_size, cfg.image_size)
    language = torch.randn(2, cfg.llm.width)
    with torch.no_grad():
        plain = model.image_tokens(pixel_values)
        filmed = model.image_tokens(pixel_values, language)
        for film in (model.film_dino, model.film_siglip):
            for linear in [*film.scale, *film.shift]:
                torch.nn.init.zeros_(linear.weight), torch.nn.init.zeros_(linear.bias)
        identity = model.image_tokens(pixel_values, language)
    assert (plain - identity).abs().max() < 1e-5 and (plain - filmed).abs().max() > 1e-3


@pytest.mark.parametrize("variant", ["openvla", "oft"])
def test_loss_decreases_on_a_fixed_batch(variant, tmp_path):
    torch.manual_seed(0)
    cfg = tiny(variant)
    model = OpenVLA(cfg, ACTION_DIM, STATE_DIM)
    pixel_values, ids, valid, state = random_inputs(cfg, batch=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    target = torch.rand(8, cfg.horizon, ACTION_DIM) * 2 - 1
    tokens = ActionTokenizer(cfg.text_vocab).encode(target[:, 0])
    losses = []
    for _ in range(60):
        if variant == "openvla":
            loss = F.cross_entropy(model(pixel_values, ids, valid, tokens).flatten(0, 1), tokens.flatten())
        else:
            loss = l1_loss((model.predict_chunk(pixel_values, ids, valid, state) - target).abs(),
                           torch.zeros(8, cfg.horizon, dtype=torch.bool))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], [round(x, 3) for x in losses[::10]]


def test_l1_loss_counts_only_real_steps():
    error = torch.rand(2, 4, 3)
    is_pad = torch.tensor([[False, False, True, True], [False] * 4])
    expected = (error[0, :2].mean() + error[1].mean()) / 2
    assert torch.allclose(l1_loss(error, is_pad), expected)


def test_paper_preset_parameter_count():
    """OpenVLA-7B on the meta device: DINOv2 ViT-L/14 reg4 (303.2M) + SigLIP So400m/14 with its (unused but
    checkpointed) attention-pool head (427.7M) + the fused GELU projector (71.4M) + Llama-2 7B with the vocabulary
    padded to 32,064 (6,739.0M) = 7.541B; OpenVLA reports 7.5B (HF model card: 7.54B)."""
    with torch.device("meta"):
        model = OpenVLA(resolve(PRESETS["paper"]), action_dim=7)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.vision_backbone.featurizer) == 303_230_976
    assert count(model.vision_backbone.fused_featurizer) == 427_680_704
    assert count(model.projector) == 2176 * 8704 + 8704 + 8704 * 4096 + 4096 + 4096 * 4096 + 4096
    llama = count(model.embed_tokens) + count(model.layers) + count(model.norm) + count(model.lm_head)
    assert llama == 6_738_939_904  # Llama-2 7B's 6,738,415,616 + 2 × 64 × 4096 for the padded vocabulary rows
    total = count(model)
    assert total == 7_541_237_184 and abs(total - 7.5e9) / 7.5e9 < 0.01


# ------------------------------------------------------------------------------------------- official checkpoints
def test_official_layout_round_trip(tmp_path):
    """Our weights → the `openvla-7b` safetensors names → a fresh model: bit-identical outputs; OFT's separately
    saved action head and proprio projector load from their DDP-prefixed files; bad keys are named."""
    torch.manual_seed(0)
    cfg = tiny()
    a, b = OpenVLA(cfg, ACTION_DIM).eval(), OpenVLA(cfg, ACTION_DIM).eval()
    official = to_official_state_dict(a)
    for key in ("vision_backbone.featurizer.blocks.0.ls1.scale_factor", "vision_backbone.fused_featurizer.attn_pool.q.weight",
                "projector.fc1.weight", "projector.fc3.bias", "language_model.model.embed_tokens.weight",
                "language_model.model.layers.1.mlp.gate_proj.weight", "language_model.lm_head.weight"):
        assert key in official, key
    save_file(official, tmp_path / "model-00001-of-00001.safetensors")
    load_official_state_dict(b, load_file(tmp_path / "model-00001-of-00001.safetensors"))
    pixel_values, ids, valid, _ = random_inputs(cfg)
    assert torch.equal(a.predict_action_tokens(pixel_values, ids, valid),
                       b.predict_action_tokens(pixel_values, ids, valid))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    oft_cfg = tiny("oft")
    c, d = OpenVLA(oft_cfg, ACTION_DIM, STATE_DIM), OpenVLA(oft_cfg, ACTION_DIM, STATE_DIM)
    head = {"module.model." + k: v for k, v in c.action_head.state_dict().items()}
    proprio = {"module." + k: v for k, v in c.proprio_projector.state_dict().items()}
    load_official_state_dict(d, to_official_state_dict(c) | {"language_model.lm_head.weight": official[
        "language_model.lm_head.weight"]}, action_head=head, proprio_projector=proprio)
    assert all(torch.equal(x, y) for x, y in zip(c.state_dict().values(), d.state_dict().values()))

    with pytest.raises(KeyError, match="unknown key"):
        official_key_to_ours("language_model.something_else.weight")
    del official["projector.fc2.bias"]
    with pytest.raises(KeyError, match="missing"):
        load_official_state_dict(b, official)


# ------------------------------------------------------------------------------------------ training end to end
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One small demo set for the whole module, in a private cache."""
    with demo_cache.private_cache(tmp_path_factory.mktemp("cache"), demo_spec(PRESETS["smoke"])) as path:
        yield path


def smoke(tmp_path, **overrides) -> OpenVLAConfig:
    return dataclasses.replace(PRESETS["smoke"], run_dir=str(tmp_path / "run"), **overrides)


def test_policy_tokenises_demo_actions(cache, tmp_path):
    """On demo data: the action tokens are the last 256 ids after the trained tokenizer's own, and decoding the
    tokens of the normalised demo actions gives them back within half a bin."""
    cfg = resolve(smoke(tmp_path))
    demos = collect_demos(demo_spec(cfg))
    tokenizer_json = build_tokenizer(cfg, demos)
    policy = build_policy(dataclasses.replace(cfg, max_text_tokens=40), demos.stats, tokenizer_json,
                          demos.features[cfg.state_key]["shape"][0], ACTION_DIM)
    assert len(policy.tokenizer) <= cfg.text_vocab - cfg.action_bins
    data = ChunkDataset(demos, cfg.horizon, ["observation.images.corner", cfg.state_key])
    batch = torch.utils.data.default_collate([data[i] for i in range(0, len(data), 17)])
    target = bounds_q99(policy.normalizer, "action", batch["action"])[:, 0]
    tokens = policy.action_tokenizer.encode(target)
    assert tokens.min() >= cfg.text_vocab - cfg.action_bins and tokens.max() < cfg.text_vocab
    assert (policy.action_tokenizer.decode(tokens) - target).abs().max() <= 1 / 255 + 1e-6
    loss, metrics = policy(batch)
    assert loss.ndim == 0 and set(metrics) == {"accuracy", "l1"}
    assert policy.predict_chunk(batch).shape == (len(tokens), 1, ACTION_DIM)


@pytest.mark.parametrize("variant", ["openvla", "oft"])
def test_train_evaluate_and_reload(cache, tmp_path, variant):
    cfg = smoke(tmp_path, variant=variant)
    results = train(cfg)
    run = Path(cfg.run_dir)
    assert set(results) == set(cfg.tasks) and all(r["episodes"] == 1 for r in results.values())
    assert (run / "eval.md").exists() and len(read_metrics(run)) == cfg.steps // cfg.log_every
    checkpoint = last_checkpoint(run)
    saved = from_dict(OpenVLAConfig, read_config(checkpoint)["config"])
    assert saved.max_text_tokens > 0 and saved.horizon == (1 if variant == "openvla" else 8)
    again = openvla_eval.main(openvla_eval.EvalArgs(checkpoint=checkpoint, workers=1,
                                                    video_dir=str(tmp_path / "videos")))
    assert again == json.loads((run / "eval.json").read_text())  # same weights, same placements, same result
    assert len(list((tmp_path / "videos").iterdir())) == len(cfg.tasks)


def test_resume_is_exact(cache, tmp_path, monkeypatch):
    """A run killed right after its step-3 checkpoint and resumed ends with the same losses and bit-identical
    weights as an uninterrupted 6-step run."""
    resume.assert_resume_is_exact(openvla_train, smoke(tmp_path / "a", eval_episodes=0, log_every=1),
                                  smoke(tmp_path / "b", eval_episodes=0, log_every=1), monkeypatch)


def test_torchrun_two_processes_match_one(cache, tmp_path):
    """OFT under DDP and FSDP over 2 gloo processes takes the same steps as one process with the same global batch
    (crops are drawn for the global batch and sliced per rank; the loss is a per-sample mean)."""
    args = ["--preset", "smoke", "--variant", "oft", "--steps", "3", "--log_every", "1", "--eval_episodes", "0",
            "--threads", "1"]
    processes.run([sys.executable, "train.py", *args, "--run_dir", str(tmp_path / "one")], OPENVLA_DIR,
                  tmp_path / "one.log")
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        processes.run([*processes.torchrun(2), "train.py", *args, *extra, "--run_dir", str(tmp_path / name)],
                      OPENVLA_DIR, tmp_path / f"{name}.log")
    one, ddp, fsdp = ([m["loss"] for m in read_metrics(tmp_path / d)] for d in ("one", "ddp", "fsdp"))
    assert len(one) == 3 and torch.allclose(torch.tensor(one), torch.tensor(ddp), atol=1e-5)
    assert torch.allclose(torch.tensor(one), torch.tensor(fsdp), atol=1e-5), (one, fsdp)


def test_trains_from_a_lerobot_dataset(cache, tmp_path):
    """`--dataset`: common/tests/dataset_checks.py."""
    from openvla import eval as openvla_eval, model as openvla_model
    dataset_checks.check_trains_from_a_lerobot_dataset(PRESETS["smoke"], train, openvla_eval.load_policy,
                                                       openvla_model.ClosedLoopPolicy, tmp_path)
