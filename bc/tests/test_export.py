"""BC's ONNX export (bc/export.py, common/export.py): onnxruntime equals eager PyTorch, the exported graph equals the
policy's own `predict_chunk`, and an exported policy drives the closed-loop evaluation with the eager actions."""

import dataclasses

import numpy as np
import pytest
import torch

from common import export
from common.envs.metaworld import evaluate, to_features
from common.tests import demo_cache

from bc import eval as bc_eval
from bc import export as bc_export
from bc.config import PRESETS
from bc.model import ClosedLoopPolicy
from bc.train import demo_spec, eval_config, train

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke BC run with two cameras (their order in the graph's input matters), a few steps, no evaluation."""
    root = tmp_path_factory.mktemp("export")
    cfg = dataclasses.replace(PRESETS["smoke"], cameras=("corner", "gripperPOV"), run_dir=str(root / "run"),
                              eval_episodes=0)
    with demo_cache.private_cache(root / "cache", demo_spec(cfg)):
        train(cfg)
    return root / "run"


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    module, inputs = bc_export.load(str(run))
    path = export.export_onnx(module, inputs, tmp_path_factory.mktemp("onnx") / "policy.onnx")
    return module, inputs, export.session(path)


def test_onnxruntime_equals_eager_at_any_batch(exported):
    module, inputs, sess = exported
    assert export.parity(module, sess, inputs) <= 1e-4
    for batch in (1, 3):  # the batch dimension is dynamic
        assert export.parity(module, sess, bc_export.example_inputs(module.model, batch=batch)) <= 1e-4


def test_the_graph_is_the_policys_predict_chunk(exported):
    module, inputs, _ = exported
    model = module.model
    batch = {key: inputs["images"][:, i] for i, key in enumerate(model.image_keys)}
    batch[model.cfg.state_key], batch["instruction"] = inputs["state"], ["open the drawer"] * len(inputs["state"])
    with torch.no_grad():
        torch.testing.assert_close(module(**inputs), model.predict_chunk(batch), rtol=0, atol=1e-6)


def test_an_exported_policy_drives_the_closed_loop_evaluation(run, exported):
    model, cfg = bc_eval.load_policy(run)
    onnx_policy, eager = bc_export.exported_policy(exported[2], model), ClosedLoopPolicy(model)
    calls = []

    def both(obs):  # the exported policy acts; the eager one, on the same observation, must agree
        action = onnx_policy(obs)
        np.testing.assert_allclose(action, eager(obs), atol=1e-4, rtol=0)
        calls.append(to_features(obs)[cfg.state_key])
        return action

    results = evaluate(both, eval_config(cfg, episodes_per_task=1, max_steps=24, workers=1), progress=False)
    assert set(results) == set(cfg.tasks) and len(calls) == 2 * 24 // cfg.n_action_steps
    assert not np.allclose(calls[0], calls[-1])  # the robot moved: the observations went through the loop
