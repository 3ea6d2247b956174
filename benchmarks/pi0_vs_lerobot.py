"""Our π0 against LeRobot 0.6.1's π0, same sizes, same inputs, same thread count, in one run; ratios printed.

    python benchmarks/pi0_vs_lerobot.py                         # writes results/pi0_vs_lerobot.{csv,md}
    python benchmarks/pi0_vs_lerobot.py --quick                 # 10 pairs instead of 40
    python benchmarks/pi0_vs_lerobot.py --lerobot-python PATH   # LeRobot's interpreter (default /work/lerobot-venv)

LeRobot 0.6.1 needs Python 3.12 and its own torch, so it cannot share our venv; make it with
    /root/.pyenv/versions/3.12.1/bin/python3.12 -m venv /work/lerobot-venv
    /work/lerobot-venv/bin/pip install "lerobot[pi,smolvla,diffusion]==0.6.1"
Its side runs in a long-lived subprocess (pi0/tools/lerobot_reference.py serve) that times one call per request.
The two sides alternate call by call (ours, LeRobot's, ours, ...), a ratio is taken for each adjacent pair and the
median over pairs reported, so the drifting speed of this shared machine moves both sides of every ratio alike.

Measured: (1) one training step, batch 8: loss (forward), backward, AdamW step, with the same optimizer on both
sides (`OPTIMIZER`: pi0/train.py's fused AdamW; LeRobot's training script builds torch's unfused default, which
pi0/train.py measured at about 3x the fused step's time for tiny, so giving each side its own script's optimizer
would time the optimizer choice, not the model); (2) the loss and backward alone, batch 8, no optimizer; (3) the
latency of one action chunk, batch 1: the prefix pass and 10 Euler steps of the action expert, no grad. Both models
are π0 at our `tiny` preset's sizes (LeRobot's constraints: 8 heads, the VLM and expert share depth and head size),
float32, on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the LeRobot side does: no spinning OpenMP threads
import torch  # noqa: E402

from _results import paired_ratios, save_table, stamp  # noqa: E402
from pi0.config import PRESETS  # noqa: E402
from pi0.model import PI0  # noqa: E402

ROOT = Path(__file__).parents[1]
OPTIMIZER = dict(lr=1e-4, fused=True)  # torch.optim.AdamW's keyword arguments, on both sides


def bench_config(batch: int, lang_len: int = 24) -> dict:
    cfg = PRESETS["tiny"]
    return dict(vlm=vars(cfg.vlm), expert=vars(cfg.expert), vision=vars(cfg.vision), image_size=cfg.image_size,
                num_images=1, chunk_size=cfg.horizon, max_state_dim=cfg.max_state_dim,
                max_action_dim=cfg.max_action_dim, vocab_size=cfg.vocab_size, lang_len=lang_len, batch=batch,
                num_steps=cfg.num_inference_steps, variant="pi0", optimizer=OPTIMIZER)


def inputs(c: dict, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, s = c["batch"], c["image_size"]
    images = [torch.rand(b, 3, s, s, generator=g) * 2 - 1 for _ in range(c["num_images"])]
    masks = [torch.ones(b, dtype=torch.bool) for _ in range(c["num_images"])]
    tokens = torch.randint(0, c["vocab_size"], (b, c["lang_len"]), generator=g)
    token_masks = torch.ones_like(tokens, dtype=torch.bool)
    state = torch.randn(b, c["max_state_dim"], generator=g)
    actions = torch.randn(b, c["chunk_size"], c["max_action_dim"], generator=g)
    noise = torch.randn(actions.shape, generator=g)
    time_ = torch.rand(b, generator=g)
    return images, masks, tokens, token_masks, state, actions, noise, time_


def our_calls(train_cfg: dict, chunk_cfg: dict) -> dict:
    """One training step (as pi0/train.py takes it), its loss and backward alone, and one action chunk of our π0,
    as zero-argument calls."""
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    trained, sampler = PI0(cfg).train(), PI0(cfg).eval()
    batch = inputs(train_cfg)  # images, masks, tokens, token_masks, state, actions, noise, time
    optimizer = torch.optim.AdamW(trained.parameters(), **train_cfg["optimizer"])

    def train_step():
        trained(*batch).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward_backward():
        trained(*batch).mean().backward()
        optimizer.zero_grad(set_to_none=True)  # no accumulation: each call's backward writes fresh gradients
    images, masks, tokens, token_masks, state, _, noise, _ = inputs(chunk_cfg)
    return {"train": train_step, "forward_backward": forward_backward,
            "chunk": lambda: sampler.sample_actions(images, masks, tokens, token_masks, state, noise)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 timed pairs per measure instead of 40")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lerobot-python", default="/work/lerobot-venv/bin/python")
    args = parser.parse_args()
    pairs, warmup = (10, 2) if args.quick else (40, 3)
    torch.set_num_threads(args.threads)
    train_cfg, chunk_cfg = bench_config(batch=8), bench_config(batch=1)
    paths = {}
    for kind, c in (("train", train_cfg), ("chunk", chunk_cfg)):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(c, f)
        paths[kind] = f.name
    server = subprocess.Popen([args.lerobot_python, str(ROOT / "pi0/tools/lerobot_reference.py"), "serve",
                               "--train-config", paths["train"], "--chunk-config", paths["chunk"],
                               "--threads", str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin"})
    info = json.loads(server.stdout.readline())

    def theirs(kind: str) -> float:
        server.stdin.write(kind + "\n")
        server.stdin.flush()
        return float(server.stdout.readline())

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    ours = our_calls(train_cfg, chunk_cfg)
    rows = []
    for name, kind in (("train step, batch 8", "train"), ("loss + backward, batch 8, no optimizer", "forward_backward"),
                       ("action chunk, batch 1, 10 steps", "chunk")):
        for _ in range(warmup):
            ours[kind](), theirs(kind)
        a, b = [], []
        for _ in range(pairs):  # alternate single calls; a ratio per adjacent pair
            a.append(timed(ours[kind]))
            b.append(theirs(kind))
        rows.append((name, paired_ratios(a, b)))
    server.stdin.close()
    server.wait()
    params = sum(p.numel() for p in PI0(PRESETS["tiny"]).parameters())
    header = (f"π0 at the `tiny` preset's sizes ({params / 1e6:.2f}M parameters; LeRobot {info['lerobot']}: "
              f"{info['params'] / 1e6:.2f}M without its unused LM heads), float32, CPU, {args.threads} threads; "
              f"train step with AdamW({', '.join(f'{k}={v}' for k, v in OPTIMIZER.items())}) on both sides; "
              f"ours on torch {torch.__version__}, LeRobot's on torch {info['torch']}; {pairs} alternating pairs of "
              f"single calls after {warmup} warm-up pairs, the ratio taken within each pair. "
              f"{stamp(dict(vars(args), pairs=pairs, warmup=warmup, optimizer=OPTIMIZER, seed=0))}")
    save_table("pi0_vs_lerobot", header, ["measure", "ours (ms, median)", "LeRobot (ms, median)",
                                          "ours / LeRobot, median over pairs", "interquartile range"],
               [(n, f"{r['ours']:.1f}", f"{r['theirs']:.1f}", f"**{r['ratio']:.2f}x**", f"{r['q1']:.2f}-{r['q3']:.2f}")
                for n, r in rows],
               ["measure", "ours_ms", "lerobot_ms", "ratio_median", "ratio_q1", "ratio_q3"],
               [(n, f"{r['ours']:.2f}", f"{r['theirs']:.2f}", f"{r['ratio']:.3f}", f"{r['q1']:.3f}", f"{r['q3']:.3f}")
                for n, r in rows])


if __name__ == "__main__":
    main()
