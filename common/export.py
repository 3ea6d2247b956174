"""Export a policy's action-chunk predictor to ONNX and run it with onnxruntime: the graph a robot's inference
machine runs without PyTorch (or hands to TensorRT).

A method folder's `export.py` (bc/, pi0/, openvla/ for OFT, gr00t/) is the thin part: a `ChunkPredictor` module
that takes tensors only (camera images uint8 (B, cameras, S, S, 3), the raw state, the prompt's token ids and masks,
and for flow policies the initial noise, so the output is a deterministic function of the inputs) and returns the
chunk in environment units, the normalisations inside the graph; `example_inputs(policy, batch)`; `load(checkpoint)`;
and `exported_policy(session, policy)`. The prompt is tokenised outside the graph, with the checkpoint's own
tokenizer, since ONNX has no BPE.

    python export.py --checkpoint runs/bc     # -> runs/bc/checkpoints/<last>/policy.onnx; parity and latency printed

Here: `export_onnx` (torch.export through PyTorch's dynamo ONNX exporter, the batch dimension dynamic), `session`
(an onnxruntime CPU session), `parity` (the largest |onnxruntime - eager| on inputs), `ExportedPolicy` (the closed-loop
interface of `common.envs.metaworld.evaluate` on top of a session) and `main`, the CLI every folder's export.py calls.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from common.envs.metaworld import to_features
from common.train import resolve_checkpoint

EXAMPLE_INSTRUCTION = "open the drawer"  # the prompt of the example inputs the graphs are traced with


def export_onnx(module: nn.Module, inputs: dict[str, torch.Tensor], path: str | Path) -> Path:
    """`module(**inputs)` -> one tensor, exported to `path` by torch.onnx's dynamo exporter (torch.export, then
    onnxscript) with a dynamic batch dimension; the graph's inputs are named as `inputs`' keys, its output `chunk`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    # torch.export first, by hand: torch.onnx.export would fall back to a fixed batch where the dynamic one fails
    # (and an example batch of 1 would be fixed too: give 2 or more)
    program = torch.export.export(module.eval(), (), inputs, dynamic_shapes={k: {0: batch} for k in inputs})
    program = program.run_decompositions({torch.ops.aten.repeat_interleave.self_int: _repeat_interleave,
                                          torch.ops.aten.scaled_dot_product_attention.default: _attention})
    torch.onnx.export(program, dynamo=True, input_names=list(inputs), output_names=["chunk"],
                      verbose=False).save(str(path))
    return path


def _repeat_interleave(x: torch.Tensor, repeats: int, dim: int | None = None, output_size: int | None = None):
    """`torch.repeat_interleave` by an integer, as unsqueeze + expand + flatten: the ONNX exporter (torch 2.14,
    onnxscript 0.7.2) writes a wrong Expand for it when `repeats` is the dynamic batch (π0's Euler times are repeated
    per sample), which onnxruntime rejects."""
    if dim is None:
        x, dim = x.flatten(), 0
    dim = dim % x.dim()
    shape = (*x.shape[:dim + 1], repeats, *x.shape[dim + 1:])
    return x.unsqueeze(dim + 1).expand(shape).flatten(dim, dim + 1)


def _attention(q, k, v, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False, scale=None,
               enable_gqa: bool = False):
    """`F.scaled_dot_product_attention` (inference) written out, so that a query whose keys are all masked gets 0, as
    PyTorch's CPU kernels give it; the ONNX exporter's own lowering gives such a row other values. Transformers' LLMs
    compute rows for left padding that way, and GR00T's action head reads the backbone's padded positions too."""
    if enable_gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = torch.softmax(scores, dim=-1)
    return torch.where(torch.isnan(weights), 0.0, weights) @ v  # all keys masked: softmax gives NaN, PyTorch 0


def session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session of `path`, `threads` intra-op threads (as torch.set_num_threads on the eager side)."""
    import onnxruntime as ort  # an optional dependency (requirements/export.txt)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, inputs: dict[str, torch.Tensor | np.ndarray]) -> np.ndarray:
    """The session's chunk for `inputs` (tensors or arrays, named as at export)."""
    feed = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in inputs.items()}
    return sess.run(["chunk"], feed)[0]


@torch.no_grad()
def parity(module: nn.Module, sess, inputs: dict[str, torch.Tensor]) -> float:
    """The largest |onnxruntime - eager PyTorch| over the chunk of `inputs`."""
    return float(np.abs(run(sess, inputs) - module.eval()(**inputs).cpu().numpy()).max())


class ExportedPolicy:
    """The closed-loop interface of `common.envs.metaworld.evaluate` (observation dict -> the next `n_action_steps`
    actions) on an onnxruntime session: the observation's cameras (`image_keys`, in the graph's order) and state as
    the graph's inputs; `tokens(instruction, state (1, D))` -> the prompt's inputs by name (input_ids,
    attention_mask, ...), the method's own tokenisation; `noise()` a flow policy's initial noise (None: the graph
    takes none)."""

    def __init__(self, sess, cfg: Any, image_keys: list[str], tokens: Callable[[str, np.ndarray], dict],
                 noise: Callable[[], np.ndarray] | None = None):
        self.sess, self.cfg, self.image_keys, self.tokens, self.noise = sess, cfg, image_keys, tokens, noise

    def inputs(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        features = to_features(obs)
        feed = {"images": np.stack([np.asarray(features[key]) for key in self.image_keys])[None],
                "state": np.asarray(features[self.cfg.state_key], np.float32)[None]}
        feed.update({k: np.asarray(v) for k, v in self.tokens(obs["instruction"], feed["state"]).items()})
        if self.noise is not None:
            feed["noise"] = self.noise()
        return feed

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        return run(self.sess, self.inputs(obs))[0, : self.cfg.n_action_steps]


def latencies(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Milliseconds of each call in each of `repeats` rounds, the calls alternating within each round (so a change
    of machine load falls on both sides), after 3 warm-up rounds."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(3 + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_ >= 3:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def main(load: Callable[[str], tuple[nn.Module, dict[str, torch.Tensor]]], description: str) -> None:
    """The CLI of a folder's export.py: `load(checkpoint)` -> (ChunkPredictor, example inputs); exports, checks
    parity with eager PyTorch and prints both latencies per chunk at batch 1 (one thread each, alternating)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint, run directory or `last` pointer")
    parser.add_argument("--out", type=Path, default=None,
                        help="the .onnx file (default: policy.onnx in the checkpoint)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per side")
    args = parser.parse_args()
    torch.set_num_threads(1)
    module, inputs = load(args.checkpoint)
    out = args.out or resolve_checkpoint(Path(args.checkpoint)) / "policy.onnx"
    export_onnx(module, inputs, out)
    sess = session(out)
    print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB); max |onnxruntime - eager| = "
          f"{parity(module, sess, inputs):.2e}")
    one = {k: v[:1] for k, v in inputs.items()}
    with torch.no_grad():
        times = latencies({"eager": lambda: module(**one), "onnxruntime": lambda: run(sess, one)}, args.repeats)
    ms = {name: float(np.median(t)) for name, t in times.items()}
    print(f"latency per chunk (batch 1, 1 thread each, fp32, CPU, median of {args.repeats} alternating rounds): eager "
          f"{ms['eager']:.2f} ms, onnxruntime {ms['onnxruntime']:.2f} ms; onnxruntime / eager = "
          f"{ms['onnxruntime'] / ms['eager']:.2f}")
