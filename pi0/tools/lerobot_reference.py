#!/usr/bin/env python
"""LeRobot 0.6.1 side of the π0 / π0.5 parity test and speed benchmark.

Runs ONLY inside the separate LeRobot venv (Python 3.12, torch 2.11, transformers 5.5.4):

    /root/.pyenv/versions/3.12.1/bin/python3.12 -m venv /work/lerobot-venv
    /work/lerobot-venv/bin/pip install "lerobot[pi,smolvla,diffusion]==0.6.1"

It imports nothing from this repository. It builds LeRobot's own core models
(`lerobot.policies.pi0.modeling_pi0.PI0Pytorch`, `lerobot.policies.pi05.modeling_pi05.PI05Pytorch`) at a
tiny size, offline, by patching three names in the LeRobot module (see `_patch_module`):

* `get_gemma_config` returns our VLM / expert sizes ("gemma_2b" -> config["vlm"], "gemma_300m" -> config["expert"]);
* `PaliGemmaForConditionalGenerationWithPiGemma` / `PiGemmaForCausalLM` are wrapped so the HF config that
  `PaliGemmaWithExpertModel.__init__` built is edited *before* the real class is instantiated: vision tower sizes
  (SigLIP hidden_size, layers, heads, intermediate_size, patch_size, image_size, projection_dim = VLM width) and
  the vocabulary (LeRobot hard-codes 257152).  The modules created are exactly LeRobot's / transformers' classes.

  Vocabulary: we shrink it through the config rather than swapping in a plain `nn.Embedding` afterwards, because
  in transformers 5.5.4 `GemmaModel.embed_tokens` is a `GemmaTextScaledWordEmbedding` that multiplies by
  sqrt(width); a plain `nn.Embedding` would silently change LeRobot's math.  The PaliGemma `lm_head` and the
  expert's `lm_head` shrink with it; both are unused by π0's forward / sample_actions (π0 never computes logits)
  and are left out of the fixtures and of the parameter count.

Subcommands:
    fixture --config C.json --out F.safetensors --seed 0
    serve   --train-config T.json --chunk-config C.json --threads 2
            (then `train` / `forward_backward` / `chunk` lines on stdin)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# On a shared 2-core machine, spinning OpenMP workers make every op ~10-30x slower when a neighbour is busy
# (measured: pi0 tiny train step 955 ms with 2 threads vs 30 ms with PASSIVE). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- building
def _patch_module(mod, cfg: dict):
    """Patch one LeRobot modeling module (pi0 or pi05) so that its model builds at the sizes in `cfg`."""
    for part in ("vlm", "expert"):
        c = cfg[part]
        assert c["num_heads"] == 8, "LeRobot's joint attention hard-codes 8 heads (reshape to 1*8*head_dim)"
    for k in ("depth", "num_heads", "num_kv_heads", "head_dim"):
        assert cfg["vlm"][k] == cfg["expert"][k], f"VLM and expert must share {k}"

    def get_gemma_config(variant: str):
        part = {"gemma_2b": "vlm", "gemma_300m": "expert"}[variant]
        c = cfg[part]
        return mod.GemmaConfig(width=c["width"], depth=c["depth"], mlp_dim=c["mlp_dim"], num_heads=c["num_heads"],
                               num_kv_heads=c["num_kv_heads"], head_dim=c["head_dim"])

    real_vlm_cls = getattr(mod, "_real_PaliGemmaForConditionalGenerationWithPiGemma",
                           mod.PaliGemmaForConditionalGenerationWithPiGemma)
    real_expert_cls = getattr(mod, "_real_PiGemmaForCausalLM", mod.PiGemmaForCausalLM)

    def paligemma_cls(config):
        v, vc = config.vision_config, cfg["vision"]
        v.hidden_size = vc["hidden_size"]
        v.num_hidden_layers = vc["num_hidden_layers"]
        v.num_attention_heads = vc["num_attention_heads"]
        v.intermediate_size = vc["intermediate_size"]
        v.patch_size = vc["patch_size"]
        assert v.image_size == cfg["image_size"]  # set by LeRobot from PI0Config.image_resolution
        v.projection_dim = cfg["vlm"]["width"]  # LeRobot sets 2048 (= gemma_2b width)
        config.projection_dim = cfg["vlm"]["width"]
        config.hidden_size = cfg["vlm"]["width"]
        config.text_config.num_image_tokens = (v.image_size // v.patch_size) ** 2
        config.text_config.vocab_size = cfg["vocab_size"]  # LeRobot hard-codes 257152
        config._vocab_size = cfg["vocab_size"]  # noqa: SLF001
        return real_vlm_cls(config=config)

    def expert_cls(config):
        config.vocab_size = cfg["vocab_size"]  # only sizes the (unused) expert lm_head; embed_tokens is set to None
        return real_expert_cls(config=config)

    mod._real_PaliGemmaForConditionalGenerationWithPiGemma = real_vlm_cls
    mod._real_PiGemmaForCausalLM = real_expert_cls
    mod.get_gemma_config = get_gemma_config
    mod.PaliGemmaForConditionalGenerationWithPiGemma = paligemma_cls
    mod.PiGemmaForCausalLM = expert_cls


def build_model(cfg: dict):
    variant = cfg.get("variant", "pi0")
    common = dict(chunk_size=cfg["chunk_size"], n_action_steps=cfg["chunk_size"],
                  max_state_dim=cfg["max_state_dim"], max_action_dim=cfg["max_action_dim"],
                  num_inference_steps=cfg["num_steps"], image_resolution=(cfg["image_size"], cfg["image_size"]),
                  dtype="float32", device="cpu", gradient_checkpointing=False, compile_model=False,
                  freeze_vision_encoder=False, train_expert_only=False)
    if variant == "pi0":
        from lerobot.policies.pi0 import modeling_pi0 as mod
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
        core = "PI0Pytorch"
    elif variant == "pi05":
        from lerobot.policies.pi05 import modeling_pi05 as mod
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
        core = "PI05Pytorch"
    else:
        raise ValueError(variant)
    _patch_module(mod, cfg)
    config = Config(**common)
    model = getattr(mod, core)(config)
    model.to(torch.float32)
    _check_sizes(model, cfg, variant)
    return model


def _is_unused(name: str) -> bool:
    # PaliGemma's lm_head (tied to embed_tokens) and the expert's lm_head: π0 never computes logits.
    return ".lm_head." in name or name.startswith("lm_head.")


def count_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not _is_unused(n))


def expected_params(cfg: dict, variant: str) -> int:
    def gemma_layers(c, adarms: bool):
        w, d, m, h, kv, hd = (c[k] for k in ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim"))
        attn = w * h * hd + 2 * w * kv * hd + h * hd * w
        mlp = 3 * w * m
        norm = (w * 3 * w + 3 * w) if adarms else w
        return d * (attn + mlp + 2 * norm) + norm  # + final norm

    vis, V, S = cfg["vision"], cfg["vocab_size"], cfg["image_size"]
    hv, iv, p = vis["hidden_size"], vis["intermediate_size"], vis["patch_size"]
    n_patch = (S // p) ** 2
    vision = (3 * p * p * hv + hv) + n_patch * hv + 2 * hv  # patch conv, pos emb, post_layernorm
    vision += vis["num_hidden_layers"] * (4 * (hv * hv + hv) + 2 * 2 * hv + (hv * iv + iv) + (iv * hv + hv))
    W, We, A, Sd = cfg["vlm"]["width"], cfg["expert"]["width"], cfg["max_action_dim"], cfg["max_state_dim"]
    projector = hv * W + W
    vlm = V * W + gemma_layers(cfg["vlm"], False)
    heads = (A * We + We) + (We * A + A)  # action_in_proj, action_out_proj
    if variant == "pi0":
        expert = gemma_layers(cfg["expert"], False)
        heads += (Sd * We + We) + (2 * We * We + We) + (We * We + We)  # state_proj, action_time_mlp_in/out
    else:
        expert = gemma_layers(cfg["expert"], True)
        heads += 2 * (We * We + We)  # time_mlp_in/out
    return vision + projector + vlm + expert + heads


def _check_sizes(model, cfg, variant):
    pwe = model.paligemma_with_expert
    lm = pwe.paligemma.model.language_model
    emb = lm.embed_tokens
    assert tuple(emb.weight.shape) == (cfg["vocab_size"], cfg["vlm"]["width"]), emb.weight.shape
    assert type(emb).__name__ == "GemmaTextScaledWordEmbedding", type(emb)
    assert math.isclose(float(emb.embed_scale), cfg["vlm"]["width"] ** 0.5, rel_tol=1e-6)
    assert pwe.gemma_expert.model.embed_tokens is None
    assert len(lm.layers) == cfg["vlm"]["depth"] and len(pwe.gemma_expert.model.layers) == cfg["expert"]["depth"]
    vt = pwe.paligemma.model.vision_tower.vision_model
    assert len(vt.encoder.layers) == cfg["vision"]["num_hidden_layers"]
    assert not getattr(vt, "use_head", False)
    got, want = count_params(model), expected_params(cfg, variant)
    assert got == want, f"parameter count {got} != expected {want}"
    log(f"[lerobot_reference] built {type(model).__name__}: {got} parameters (excluding the unused lm_heads); "
        f"rope={lm.config.rope_parameters} rms_eps={lm.config.rms_norm_eps} "
        f"text_act={lm.config.hidden_act} vision_act={vt.config.hidden_act} ln_eps={vt.config.layer_norm_eps}")


@torch.no_grad()
def randomize(model, seed: int):
    """Overwrite EVERY parameter with seeded random values (no zero-init norm / adaRMS weight survives).

    matrices / conv kernels / embeddings: N(0, 1/fan_in) with fan_in = prod(shape[1:]), so activations stay O(1);
    LayerNorm weights (used as w * x): 1 + N(0, 0.1); everything else 1-D (biases, Gemma RMSNorm weights used as
    (1 + w) * x): N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    layernorm_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.LayerNorm)}
    for _, p in model.named_parameters():
        if p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        elif id(p) in layernorm_weights:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def make_inputs(cfg: dict, seed: int):
    g = torch.Generator().manual_seed(seed)
    B, S, H = cfg["batch"], cfg["image_size"], cfg["chunk_size"]
    images = [torch.rand(B, 3, S, S, generator=g) * 2 - 1 for _ in range(cfg["num_images"])]
    img_masks = [torch.ones(B, dtype=torch.bool) for _ in range(cfg["num_images"])]
    lang_tokens = torch.randint(0, cfg["vocab_size"], (B, cfg["lang_len"]), generator=g, dtype=torch.int64)
    lang_masks = torch.ones(B, cfg["lang_len"], dtype=torch.bool)
    if B > 1:
        lang_tokens[1, -3:] = 0
        lang_masks[1, -3:] = False
    state = torch.randn(B, cfg["max_state_dim"], generator=g)
    actions = torch.randn(B, H, cfg["max_action_dim"], generator=g)
    noise = torch.randn(B, H, cfg["max_action_dim"], generator=g)
    t = torch.tensor([0.3, 0.8] * ((B + 1) // 2), dtype=torch.float32)[:B]
    return dict(images=images, img_masks=img_masks, lang_tokens=lang_tokens, lang_masks=lang_masks,
                state=state, actions=actions, noise=noise, time=t)


def call_forward(model, cfg, x):
    if cfg["variant"] == "pi0":
        return model.forward(x["images"], x["img_masks"], x["lang_tokens"], x["lang_masks"], x["state"],
                             x["actions"], x["noise"], x["time"])
    return model.forward(x["images"], x["img_masks"], x["lang_tokens"], x["lang_masks"],
                         x["actions"], x["noise"], x["time"])


def call_sample(model, cfg, x):
    if cfg["variant"] == "pi0":
        return model.sample_actions(x["images"], x["img_masks"], x["lang_tokens"], x["lang_masks"], x["state"],
                                    noise=x["noise"], num_steps=cfg["num_steps"])
    return model.sample_actions(x["images"], x["img_masks"], x["lang_tokens"], x["lang_masks"],
                                noise=x["noise"], num_steps=cfg["num_steps"])


def versions() -> dict:
    import lerobot
    import transformers
    return {"lerobot": getattr(lerobot, "__version__", "0.6.1"), "transformers": transformers.__version__,
            "torch": torch.__version__}


def load_config(path: str) -> dict:
    with open(path) as f:
        cfg = json.load(f)
    cfg.setdefault("variant", "pi0")
    return cfg


# ---------------------------------------------------------------------------------------------------- fixture
def cmd_fixture(args):
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    randomize(model, args.seed)
    model.eval()
    x = make_inputs(cfg, args.seed + 1)
    with torch.no_grad():
        loss = call_forward(model, cfg, x)
        sampled = call_sample(model, cfg, x)
    log(f"[lerobot_reference] loss {tuple(loss.shape)} mean={loss.mean().item():.6f}; "
        f"actions {tuple(sampled.shape)} std={sampled.std().item():.4f}")

    tensors = {}
    # Key names as PI0Policy / PI05Policy.state_dict() spells them ("model." + core key). state_dict() already
    # leaves out non-persistent buffers (embed_scale, rotary inv_freq, SigLIP position_ids).
    for k, v in model.state_dict().items():
        if _is_unused(k):
            continue
        tensors["model." + k] = v.detach().contiguous().clone()
    tensors["input.images"] = torch.stack(x["images"])  # (N_cam, B, 3, S, S)
    tensors["input.img_masks"] = torch.stack(x["img_masks"])  # (N_cam, B)
    tensors["input.lang_tokens"] = x["lang_tokens"]
    tensors["input.lang_masks"] = x["lang_masks"]
    if cfg["variant"] == "pi0":
        tensors["input.state"] = x["state"]
    tensors["input.actions"] = x["actions"]
    tensors["input.noise"] = x["noise"]
    tensors["input.time"] = x["time"]
    tensors["output.loss"] = loss.contiguous()
    tensors["output.actions"] = sampled.contiguous()

    from safetensors.torch import save_file
    meta = {"config": json.dumps(cfg, sort_keys=True), **versions(),
            "core_model": type(model).__name__, "seed": str(args.seed), "params": str(count_params(model)),
            "init": "ndim>=2: N(0,1/fan_in); LayerNorm weight: 1+N(0,0.1); other 1-D: N(0,0.1)",
            "dropped": "paligemma_with_expert.paligemma.lm_head.weight (tied to embed_tokens), "
                       "paligemma_with_expert.gemma_expert.lm_head.weight: unused by pi0's forward",
            "loss": "forward(...) elementwise MSE (B,H,A), eval mode, no_grad",
            "actions": f"sample_actions(..., noise=input.noise, num_steps={cfg['num_steps']})"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(tensors, args.out, metadata=meta)
    log(f"[lerobot_reference] wrote {args.out}: {len(tensors)} tensors, {os.path.getsize(args.out)} bytes")
    if args.list_keys:
        for k, v in tensors.items():
            print(f"{k}\t{tuple(v.shape)}\t{str(v.dtype).replace('torch.', '')}")


# ---------------------------------------------------------------------------------------------------- serve
def cmd_serve(args):
    """Time one call per request: reads `train`, `forward_backward` or `chunk` lines on stdin, answers each with its
    milliseconds. `train` ends with the step of the AdamW whose keyword arguments the train config's "optimizer" gives.

    The benchmark keeps this process alive and alternates single calls with its own side, so both sides of every
    ratio run within a fraction of a second of each other (this machine is shared; its speed drifts).
    """
    torch.set_num_threads(args.threads)
    calls, params = {}, 0
    for kind, path in (("train", args.train_config), ("chunk", args.chunk_config)):
        cfg = load_config(path)
        torch.manual_seed(0)
        model = build_model(cfg)
        randomize(model, 0)
        x = make_inputs(cfg, 1)
        params = count_params(model)
        if kind == "train":
            # The optimizer the benchmark names, the same on both sides (LeRobot's own training builds
            # torch.optim.AdamW with its defaults, unfused: lerobot.optim.optimizers.AdamWConfig)
            opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not _is_unused(n)],
                                    **cfg["optimizer"])

            def forward_backward(model=model, cfg=cfg, x=x):
                model.train()
                call_forward(model, cfg, x).mean().backward()

            def train_step(opt=opt, forward_backward=forward_backward):
                forward_backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            def forward_backward_only(opt=opt, forward_backward=forward_backward):
                forward_backward()
                opt.zero_grad(set_to_none=True)  # no accumulation: each call's backward writes fresh gradients
            calls["train"], calls["forward_backward"] = train_step, forward_backward_only
        else:
            def chunk(model=model, cfg=cfg, x=x):
                model.eval()
                with torch.no_grad():
                    call_sample(model, cfg, x)
            calls[kind] = chunk
    print(json.dumps({"ready": True, "params": params, "lerobot": versions()["lerobot"], "torch": torch.__version__,
                      "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}), flush=True)
    for line in sys.stdin:
        t0 = time.perf_counter()
        calls[line.strip()]()
        print(f"{(time.perf_counter() - t0) * 1e3:.4f}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("--config", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--list-keys", action="store_true", help="print every saved key, shape and dtype to stdout")
    b = sub.add_parser("serve")
    b.add_argument("--train-config", required=True)
    b.add_argument("--chunk-config", required=True)
    b.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    {"fixture": cmd_fixture, "serve": cmd_serve}[args.cmd](args)


if __name__ == "__main__":
    main()
