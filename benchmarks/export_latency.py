"""Latency of each method's exported ONNX graph in onnxruntime against the same module in eager PyTorch
(common/export.py, `<method>/export.py`): one action chunk at batch 1, fp32, CPU, one thread on each side.

    python benchmarks/export_latency.py                     # tiny presets, 2-step checkpoints made first (the
                                                            #   weights change no timing) -> results/export_latency.*
    python benchmarks/export_latency.py --checkpoints bc=bc/runs/bc pi0=pi0/runs/pi0   # your own runs

Per method: the graph is exported from the checkpoint, its parity with eager checked (max |difference| over the
example inputs), then `--rounds` rounds each time the eager module and the onnxruntime session once on the same
inputs, alternating (after 3 warm-up rounds). Each row: the medians of both sides and of the per-round ratio
onnxruntime / eager in time (lower is better), with its quartiles. The same graph, inputs, dtype and thread count on
both sides; eager runs under `torch.no_grad()`. π0, π0.5 and GR00T include their whole Euler loop (10, 10 and 4
steps) with the noise as an input.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._results import REPO, paired_ratios, save_table, stamp  # noqa: E402
from common import export  # noqa: E402

# name -> (folder, extra training flags): the methods with an export.py
METHODS = {"bc": ("bc", ()), "pi0": ("pi0", ()), "pi05": ("pi0", ("--variant", "pi05")),
           "openvla-oft": ("openvla", ("--variant", "oft")), "gr00t": ("gr00t", ())}


def tiny_checkpoint(name: str, out: Path) -> Path:
    """A 2-step run of the method's tiny preset (its demos collected first if the cache has none)."""
    folder, flags = METHODS[name]
    run_dir = out / name
    subprocess.run([sys.executable, "train.py", *flags, "--steps", "2", "--eval_episodes", "0", "--threads", "1",
                    "--run_dir", str(run_dir)], cwd=REPO / folder, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def measure(name: str, checkpoint: Path, rounds: int, out: Path) -> dict:
    folder_export = importlib.import_module(f"{METHODS[name][0]}.export")
    module, inputs = folder_export.load(str(checkpoint))
    path = export.export_onnx(module, inputs, out / f"{name}.onnx")
    sess = export.session(path)
    error = export.parity(module, sess, inputs)
    one = {k: v[:1] for k, v in inputs.items()}
    with torch.no_grad():
        times = export.latencies({"eager": lambda: module(**one), "onnxruntime": lambda: export.run(sess, one)},
                                 rounds)
    stats = paired_ratios(times["onnxruntime"], times["eager"])
    params = sum(p.numel() for p in module.parameters())
    return dict(method=name, params=params, onnx_mb=path.stat().st_size / 1e6, max_abs_diff=error,
                eager_ms=stats["theirs"], onnx_ms=stats["ours"], ratio=stats["ratio"], q1=stats["q1"], q3=stats["q3"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="*", default=[], metavar="METHOD=PATH",
                        help=f"checkpoints to time (default: 2-step tiny runs of {', '.join(METHODS)})")
    parser.add_argument("--rounds", type=int, default=50, help="timed rounds per method")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="export_latency_"))
    checkpoints = dict(item.split("=", 1) for item in args.checkpoints)
    unknown = set(checkpoints) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}: choose from {list(METHODS)}")
    tiny = not checkpoints
    if tiny:
        checkpoints = {name: tiny_checkpoint(name, out) for name in METHODS}
    rows = [measure(name, Path(path), args.rounds, out) for name, path in checkpoints.items()]
    config = dict(checkpoints="tiny presets, 2 training steps" if tiny else checkpoints, rounds=args.rounds,
                  batch=1, dtype="float32", device="cpu", threads=1)
    header = (f"Exported ONNX graph in onnxruntime vs the same module in eager PyTorch: one action chunk at batch 1, "
              f"fp32, CPU, 1 thread each, {args.rounds} alternating rounds; ratio onnxruntime / eager in time (lower "
              f"is better), median of the per-round ratios [quartiles]. {stamp(config)}")
    save_table("export_latency", header,
               ["method", "parameters", "ONNX (MB)", "max abs diff", "eager (ms)", "onnxruntime (ms)",
                "onnxruntime / eager"],
               [[r["method"], f"{r['params'] / 1e6:.1f}M", f"{r['onnx_mb']:.1f}", f"{r['max_abs_diff']:.1e}",
                 f"{r['eager_ms']:.2f}", f"{r['onnx_ms']:.2f}", f"**{r['ratio']:.2f}x** [{r['q1']:.2f}, {r['q3']:.2f}]"]
                for r in rows],
               list(rows[0]), [list(r.values()) for r in rows])


if __name__ == "__main__":
    main()
