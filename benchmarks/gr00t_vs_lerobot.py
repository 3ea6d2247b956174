"""Action-chunk latency of our GR00T N1.5 action head against LeRobot 0.6.1's, same sizes, same inputs, same thread
count, in one run; ratios printed.

    python benchmarks/gr00t_vs_lerobot.py                         # writes results/gr00t_vs_lerobot.{csv,md}
    python benchmarks/gr00t_vs_lerobot.py --quick                 # 20 pairs instead of 200
    python benchmarks/gr00t_vs_lerobot.py --lerobot-python PATH   # LeRobot's interpreter (default /work/lerobot-venv)

LeRobot needs Python 3.12 and its own torch (the venv of gr00t/tools/lerobot_reference.py's docstring). Its side runs
in a long-lived subprocess (`lerobot_reference.py serve`) that builds LeRobot's `GR00TN17ActionHead` (N1.7, its
alternating VL-DiT off: the N1.5 DiT) at our `tiny` preset's action-head sizes, writes its random weights and fixed
inputs, and times one `get_action` per request. We load those weights by name, check that our chunk equals LeRobot's
for the same noise, then alternate single calls (ours, LeRobot's, ours, ...), take a ratio per adjacent pair and
report the median over pairs, so the drifting speed of this shared machine moves both sides of every ratio alike.

One chunk, batch 1, float32, CPU, no grad: `vlln` + the VL self-attention over the VL tokens (64 image + 18 text, the
tiny policy's prompt), the state token, and 4 Euler steps of the DiT over [state, actions]. LeRobot's head has no
future tokens, so the like-for-like line runs ours without them; a second line runs ours with the tiny preset's 8
N1.5 future tokens (more work on our side) against the same LeRobot calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the LeRobot side does: no spinning OpenMP threads
import diffusers  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from _results import paired_ratios, save_table  # noqa: E402
from gr00t.config import PRESETS, Gr00tConfig  # noqa: E402
from gr00t.model import FlowMatchingActionHead  # noqa: E402

ROOT = Path(__file__).parents[1]
VL_TOKENS = 64 + 18  # the tiny policy's prompt: 64 image patches (64 px, patch 8) + 18 instruction tokens


def lerobot_config(cfg: Gr00tConfig) -> dict:
    """Our action-head sizes in LeRobot's GR00TN17Config names (alternating VL-DiT off: the N1.5 DiT)."""
    dit, vl = cfg.dit, cfg.vl_self_attention
    return dict(backbone_embedding_dim=cfg.llm.hidden_size, hidden_size=cfg.hidden_size,
                input_embedding_dim=dit.num_heads * dit.head_dim, action_horizon=cfg.horizon,
                max_state_dim=cfg.max_state_dim, max_action_dim=cfg.max_action_dim,
                max_num_embodiments=cfg.num_embodiments, state_history_length=1, max_seq_len=cfg.max_seq_len,
                add_pos_embed=True, use_vlln=True, use_alternate_vl_dit=False,
                num_inference_timesteps=cfg.num_inference_steps, num_timestep_buckets=cfg.num_timestep_buckets,
                noise_beta_alpha=cfg.noise_beta_alpha, noise_beta_beta=cfg.noise_beta_beta, noise_s=cfg.noise_s,
                state_dropout_prob=0.0, attn_dropout=0.0,
                diffusion_model_cfg=dict(positional_embeddings=None, num_layers=dit.num_layers,
                                         num_attention_heads=dit.num_heads, attention_head_dim=dit.head_dim,
                                         norm_type="ada_norm", dropout=dit.dropout, final_dropout=True,
                                         output_dim=cfg.hidden_size, interleave_self_attention=True),
                vl_self_attention_cfg=dict(positional_embeddings=None, num_layers=vl.num_layers,
                                           num_attention_heads=vl.num_heads, attention_head_dim=vl.head_dim,
                                           dropout=vl.dropout, final_dropout=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 timed pairs per line instead of 200")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lerobot-python", default="/work/lerobot-venv/bin/python")
    args = parser.parse_args()
    pairs, warmup = (20, 5) if args.quick else (200, 20)
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(PRESETS["tiny"], num_future_tokens=0)
    work = Path(tempfile.mkdtemp())
    (work / "config.json").write_text(json.dumps(lerobot_config(cfg)))
    server = subprocess.Popen([args.lerobot_python, str(ROOT / "gr00t/tools/lerobot_reference.py"), "serve",
                               "--config", str(work / "config.json"), "--vl-tokens", str(VL_TOKENS),
                               "--out", str(work / "lerobot.safetensors"), "--threads", str(args.threads)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin", "OMP_WAIT_POLICY": "PASSIVE"})
    info = json.loads(server.stdout.readline())
    saved = load_file(work / "lerobot.safetensors")
    weights = {k.removeprefix("weights."): v for k, v in saved.items() if k.startswith("weights.")}

    torch.manual_seed(0)
    same = FlowMatchingActionHead(cfg).eval()
    same.load_state_dict(weights)
    future = FlowMatchingActionHead(dataclasses.replace(cfg, num_future_tokens=PRESETS["tiny"].num_future_tokens))
    future.load_state_dict(weights, strict=False)  # LeRobot has no future tokens: ours keep their random init
    future.eval()
    vl, state, noise = saved["inputs.vl"], saved["inputs.state"], saved["inputs.noise"]
    embodiment = torch.zeros(1, dtype=torch.long)
    difference = (same.sample_actions(vl, state, noise, embodiment) - saved["outputs.chunk"]).abs().max().item()
    if difference > 1e-4:
        raise SystemExit(f"our chunk differs from LeRobot's by {difference:.2e}: not the same computation")
    print(f"same weights, same noise: max |ours - LeRobot| over the chunk = {difference:.2e} (limit 1e-4)", flush=True)

    def theirs() -> float:
        server.stdin.write("chunk\n")
        server.stdin.flush()
        return float(server.stdout.readline())

    def timed(head: FlowMatchingActionHead) -> float:
        start = time.perf_counter()
        head.sample_actions(vl, state, torch.randn(noise.shape), embodiment)
        return (time.perf_counter() - start) * 1e3

    rows = []
    for name, head in (("action chunk, same work (no future tokens on either side)", same),
                       (f"action chunk, ours with N1.5's {PRESETS['tiny'].num_future_tokens} future tokens", future)):
        for _ in range(warmup):
            timed(head), theirs()
        a, b = [], []
        for _ in range(pairs):  # alternate single calls; a ratio per adjacent pair
            a.append(timed(head))
            b.append(theirs())
        rows.append((name, paired_ratios(a, b)))
    server.stdin.close()
    server.wait()
    params = sum(p.numel() for p in same.parameters())
    header = (f"GR00T action head at the `tiny` preset's sizes ({params / 1e6:.2f}M parameters, 32 embodiment slots; "
              f"DiT {cfg.dit.num_layers} × {cfg.dit.num_heads} heads × {cfg.dit.head_dim}; {VL_TOKENS} VL tokens), "
              f"batch 1, 4 Euler steps, float32, CPU, {args.threads} thread(s); LeRobot {info['lerobot']} "
              f"`GR00TN17ActionHead` with its alternating VL-DiT off. Differs: ours on torch {torch.__version__} and "
              f"diffusers {diffusers.__version__}, LeRobot's on torch {info['torch']} and diffusers "
              f"{info['diffusers']}. Same weights (LeRobot's, loaded by name; chunks equal to {difference:.1e}). "
              f"{pairs} alternating pairs of single calls after {warmup} warm-up pairs, the ratio taken within each "
              f"pair (ours / LeRobot in time: < 1 is faster).")
    save_table("gr00t_vs_lerobot", header, ["measure", "ours (ms, median)", "LeRobot (ms, median)",
                                            "ours / LeRobot, median over pairs", "interquartile range"],
               [(n, f"{r['ours']:.2f}", f"{r['theirs']:.2f}", f"**{r['ratio']:.2f}x**",
                 f"{r['q1']:.2f}-{r['q3']:.2f}") for n, r in rows],
               ["measure", "ours_ms", "lerobot_ms", "ratio_median", "ratio_q1", "ratio_q3"],
               [(n, r["ours"], r["theirs"], r["ratio"], r["q1"], r["q3"]) for n, r in rows])


if __name__ == "__main__":
    main()
