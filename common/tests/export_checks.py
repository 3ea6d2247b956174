"""Checks every method's ONNX export must pass (common/export.py), shared by the folders' tests/test_export.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from common import export
from common.envs.metaworld import evaluate, to_features
from common.tests import demo_cache


def assert_onnxruntime_equals_eager(module, sess, example_inputs: Callable[[int], dict], atol: float = 1e-4) -> None:
    """At batch 1 and 3 (the exported batch dimension is dynamic; the graph was traced at 2)."""
    for batch in (1, 3):
        assert export.parity(module, sess, example_inputs(batch)) <= atol


def assert_drives_the_closed_loop(exported: export.ExportedPolicy, eager: Callable[[dict, dict], np.ndarray],
                                  eval_cfg: Any, atol: float = 1e-4) -> None:
    """`common.envs.metaworld.evaluate` runs on the exported policy; on every observation it meets, `eager(obs,
    feed)` (the PyTorch policy, given the graph's inputs `feed` for its noise) gives the same actions. Each episode
    runs to `eval_cfg.max_steps` (one per task), and the robot must have moved."""
    states = []

    def both(obs):
        feed = exported.inputs(obs)
        action = export.run(exported.sess, feed)[0, : exported.cfg.n_action_steps]
        np.testing.assert_allclose(action, eager(obs, feed), atol=atol, rtol=0)
        states.append(to_features(obs)[exported.cfg.state_key])
        return action

    results = evaluate(both, eval_cfg, progress=False)
    assert set(results) == set(eval_cfg.tasks) and len(states) > 2 * len(eval_cfg.tasks)
    assert not np.allclose(states[0], states[1])


def train_smoke(root: Path, cfg: Any, train: Callable, demo_spec: Callable) -> Path:
    """A method's smoke run `cfg` (its demos in a private cache under `root`); its run directory."""
    with demo_cache.private_cache(root / "cache", demo_spec(cfg)):
        train(cfg)
    return Path(cfg.run_dir)


def export_session(load: Callable, run: Path, out_dir: Path) -> tuple:
    """(ChunkPredictor, its example inputs, an onnxruntime session of it) from a folder's `export.load`."""
    module, inputs = load(str(run))
    return module, inputs, export.session(export.export_onnx(module, inputs, out_dir / "policy.onnx"))


def policy_batch(policy, inputs: dict) -> dict:
    """The graph's example inputs as the policy's own batch (images per camera, the state, the example prompt's
    instruction), for its `predict_chunk`."""
    batch = {key: inputs["images"][:, i] for i, key in enumerate(policy.image_keys)}
    batch[policy.cfg.state_key] = inputs["state"]
    batch["instruction"] = [export.EXAMPLE_INSTRUCTION] * len(inputs["state"])
    return batch


def obs_batch(policy, obs: dict) -> dict:
    """One environment observation as the policy's own batch of one."""
    features = to_features(obs)
    batch = {k: torch.as_tensor(features[k])[None] for k in (*policy.image_keys, policy.cfg.state_key)}
    batch["instruction"] = [obs["instruction"]]
    return batch
