"""Our π0 against LeRobot 0.6.1's π0, same sizes, same inputs, same thread count, in one run; ratios printed.

    python benchmarks/pi0_vs_lerobot.py                         # writes results/pi0_vs_lerobot.{csv,md}
    python benchmarks/pi0_vs_lerobot.py --quick                 # fewer repeats
    python benchmarks/pi0_vs_lerobot.py --lerobot-python PATH   # LeRobot's interpreter (default /work/lerobot-venv)

LeRobot 0.6.1 needs Python 3.12 and its own torch, so it cannot share our venv; make it with
    /root/.pyenv/versions/3.12.1/bin/python3.12 -m venv /work/lerobot-venv
    /work/lerobot-venv/bin/pip install "lerobot[pi,smolvla,diffusion]==0.6.1"
Its side runs in a subprocess (pi0/tools/lerobot_reference.py bench); the two sides alternate for `--rounds`
rounds, each reports its median over `repeats` timed calls, and the ratio is taken within each round and its
median reported, so a busy neighbour (this machine is shared) slows both sides of a ratio alike.

Measured: (1) one training step, batch 8: loss (forward), backward, AdamW step; (2) the latency of one action
chunk, batch 1: the prefix pass and 10 Euler steps of the action expert, no grad. Both models are π0 at our `tiny`
preset's sizes (LeRobot's constraints: 8 heads, the VLM and expert share depth and head size), float32, on CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the LeRobot side does: no spinning OpenMP threads
import torch  # noqa: E402

from pi0.config import PRESETS  # noqa: E402
from pi0.model import PI0  # noqa: E402

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "results"


def bench_config(batch: int, lang_len: int = 24) -> dict:
    cfg = PRESETS["tiny"]
    return dict(vlm=vars(cfg.vlm), expert=vars(cfg.expert), vision=vars(cfg.vision), image_size=cfg.image_size,
                num_images=1, chunk_size=cfg.horizon, max_state_dim=cfg.max_state_dim,
                max_action_dim=cfg.max_action_dim, vocab_size=cfg.vocab_size, lang_len=lang_len, batch=batch,
                num_steps=cfg.num_inference_steps, variant="pi0")


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


def median_ms(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ours(kind: str, c: dict, threads: int, repeats: int, warmup: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model = PI0(cfg)
    images, masks, tokens, token_masks, state, actions, noise, time_ = inputs(c)
    if kind == "train":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            loss = model(images, masks, tokens, token_masks, state, actions, noise, time_).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.train()
        return median_ms(step, repeats, warmup)
    model.eval()
    return median_ms(lambda: model.sample_actions(images, masks, tokens, token_masks, state, noise), repeats, warmup)


def lerobot(python: str, c: dict, threads: int, repeats: int, warmup: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(c, f)
    out = subprocess.run([python, str(ROOT / "pi0/tools/lerobot_reference.py"), "bench", "--config", f.name,
                          "--threads", str(threads), "--repeats", str(repeats), "--warmup", str(warmup)],
                         capture_output=True, text=True, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 10")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (ratios are taken per round)")
    parser.add_argument("--lerobot-python", default="/work/lerobot-venv/bin/python")
    args = parser.parse_args()
    repeats, warmup = (3, 1) if args.quick else (10, 2)
    train_cfg, chunk_cfg = bench_config(batch=8), bench_config(batch=1)
    runs = {k: [] for k in ("ours_train", "ours_chunk", "lerobot_train", "lerobot_chunk")}
    for _ in range(args.rounds):  # alternate the two sides; a ratio is taken within each round
        runs["ours_train"].append(ours("train", train_cfg, args.threads, repeats, warmup))
        runs["lerobot_train"].append(lerobot(args.lerobot_python, train_cfg, args.threads, repeats, warmup)
                                     ["train_step_ms"])
        runs["ours_chunk"].append(ours("chunk", chunk_cfg, args.threads, repeats, warmup))
        runs["lerobot_chunk"].append(lerobot(args.lerobot_python, chunk_cfg, args.threads, repeats, warmup)
                                     ["chunk_ms"])
    params = sum(p.numel() for p in PI0(PRESETS["tiny"]).parameters())
    rows = []
    for name, kind in (("train step, batch 8", "train"), ("action chunk, batch 1, 10 steps", "chunk")):
        a, b = runs[f"ours_{kind}"], runs[f"lerobot_{kind}"]
        ratios = [x / y for x, y in zip(a, b)]
        rows.append((name, statistics.median(a), statistics.median(b), statistics.median(ratios), min(ratios),
                     max(ratios)))
    header = (f"π0 at the `tiny` preset's sizes ({params / 1e6:.2f}M parameters without LeRobot's unused LM heads), "
              f"float32, CPU, {args.threads} threads; each side reports the median of {repeats} calls after "
              f"{warmup} warm-up; {args.rounds} alternating rounds, the ratio taken within each round")
    lines = [header, "", "| measure | ours (ms) | LeRobot 0.6.1 (ms) | ours / LeRobot, median over rounds | range |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.1f} | {b:.1f} | **{r:.2f}x** | {lo:.2f}-{hi:.2f} |" for n, a, b, r, lo, hi in rows]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pi0_vs_lerobot.md").write_text(table + "\n")
    with open(RESULTS / "pi0_vs_lerobot.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["measure", "ours_ms", "lerobot_ms", "ratio_median", "ratio_min", "ratio_max"])
        writer.writerows([(n, f"{a:.2f}", f"{b:.2f}", f"{r:.3f}", f"{lo:.3f}", f"{hi:.3f}")
                          for n, a, b, r, lo, hi in rows])


if __name__ == "__main__":
    main()
