"""OpenVLA-OFT's parallel chunk against OpenVLA's autoregressive decoding, same model size, in one run; ratios printed.

    python benchmarks/openvla_oft_latency.py            # tiny preset sizes; writes results/openvla_oft_latency.*
    python benchmarks/openvla_oft_latency.py --quick    # 10 pairs instead of 40
    python benchmarks/openvla_oft_latency.py --width 512 --depth 8   # a larger Llama (same vision backbone)

Both sides are our `openvla/model.py` at the same sizes (vision backbone, projector, Llama), random weights, batch 1,
float32 on CPU, no grad:
- OpenVLA: `predict_action_tokens` — the prefix [BOS, patches, prompt] once, then one cached decoder step per
  action dimension (A greedy tokens = one action).
- OFT: `predict_chunk` — one pass over [BOS, patches, proprio, prompt, K·A empty slots, stop] and the L1 head
  (K actions).
The two alternate call by call and a ratio is taken for each adjacent pair (the median over pairs is reported), so
the drifting speed of a shared machine moves both sides of every ratio alike. "Per action" divides OFT's call by
K; OpenVLA's call yields one action.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from _results import paired_ratios, save_table  # noqa: E402
from openvla.config import PRESETS, resolve  # noqa: E402
from openvla.model import OpenVLA  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 timed pairs instead of 40")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=None, help="Llama width (default: the tiny preset's)")
    parser.add_argument("--depth", type=int, default=None, help="Llama layers (default: the tiny preset's)")
    parser.add_argument("--action-dim", type=int, default=4, help="A (Meta-World: 4; LIBERO: 7)")
    parser.add_argument("--prompt-tokens", type=int, default=36, help="BOS + prompt length")
    parser.add_argument("--out", default="openvla_oft_latency", help="results/<out>.{csv,md}")
    args = parser.parse_args()
    pairs, warmup = (10, 2) if args.quick else (40, 3)
    torch.set_num_threads(args.threads)

    llm = PRESETS["tiny"].llm
    llm = replace(llm, width=args.width or llm.width, depth=args.depth or llm.depth,
                  mlp_dim=4 * (args.width or llm.width) if args.width else llm.mlp_dim)
    torch.manual_seed(0)
    ar_cfg = resolve(replace(PRESETS["tiny"], llm=llm))
    oft_cfg = resolve(replace(PRESETS["tiny"], llm=llm, variant="oft"))
    state_dim = 39
    ar, oft = OpenVLA(ar_cfg, args.action_dim).eval(), OpenVLA(oft_cfg, args.action_dim, state_dim).eval()
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 6, ar_cfg.image_size, ar_cfg.image_size, generator=g)
    ids = torch.randint(3, 1000, (1, args.prompt_tokens), generator=g)
    ids[:, 0] = 1
    valid = torch.ones_like(ids, dtype=torch.bool)
    state = torch.randn(1, state_dim, generator=g)
    calls = {"openvla": lambda: ar.predict_action_tokens(pixel_values, ids, valid),
             "oft": lambda: oft.predict_chunk(pixel_values, ids, valid, state)}

    def timed(fn) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        return (time.perf_counter() - start) * 1e3

    for _ in range(warmup):
        calls["oft"](), calls["openvla"]()
    a, b = [], []
    for _ in range(pairs):
        a.append(timed(calls["oft"]))
        b.append(timed(calls["openvla"]))
    k = oft_cfg.horizon
    call, action = paired_ratios(a, b), paired_ratios([x / k for x in a], b)
    rows = [("one call (OFT: a chunk of K; OpenVLA: one action)", call), ("per action", action)]
    params = sum(p.numel() for p in ar.parameters())
    header = (f"OpenVLA-OFT vs OpenVLA, our code, the same sizes ({params / 1e6:.2f}M parameters; Llama width "
              f"{llm.width}, {llm.depth} layers), A = {args.action_dim}, K = {k}, prompt {args.prompt_tokens} "
              f"tokens, batch 1, float32, CPU, {args.threads} threads, torch {torch.__version__}; {pairs} "
              f"alternating pairs after {warmup} warm-up pairs, the ratio taken within each pair")
    save_table(args.out, header, ["measure", "OFT (ms, median)", "OpenVLA (ms, median)",
                                  "OFT / OpenVLA, median over pairs", "interquartile range"],
               [(n, f"{r['ours']:.2f}", f"{r['theirs']:.2f}", f"**{r['ratio']:.3f}x**", f"{r['q1']:.3f}-{r['q3']:.3f}")
                for n, r in rows],
               ["measure", "oft_ms", "openvla_ms", "ratio_median", "ratio_q1", "ratio_q3"],
               [(n, f"{r['ours']:.3f}", f"{r['theirs']:.3f}", f"{r['ratio']:.4f}", f"{r['q1']:.4f}", f"{r['q3']:.4f}")
                for n, r in rows])


if __name__ == "__main__":
    main()
