"""Checks every method's ONNX export must pass (common/export.py), shared by the folders' tests/test_export.py."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from common import export
from common.envs.metaworld import evaluate, to_features


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
