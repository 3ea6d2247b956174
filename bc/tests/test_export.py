"""BC's ONNX export (bc/export.py, common/export.py): onnxruntime equals eager PyTorch, the exported graph equals the
policy's own `predict_chunk`, and an exported policy drives the closed-loop evaluation with the eager actions."""

import dataclasses

import pytest
import torch

from common.envs.metaworld import demo_spec, eval_config
from common.tests import export_checks

from bc import eval as bc_eval
from bc import export as bc_export
from bc.config import PRESETS
from bc.model import ClosedLoopPolicy
from bc.train import train

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke BC run with two cameras (their order in the graph's input matters), a few steps, no evaluation."""
    root = tmp_path_factory.mktemp("export")
    cfg = dataclasses.replace(PRESETS["smoke"], cameras=("corner", "gripperPOV"), run_dir=str(root / "run"),
                              eval_episodes=0)
    return export_checks.train_smoke(root, cfg, train, demo_spec)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_checks.export_session(bc_export.load, run, tmp_path_factory.mktemp("onnx"))


def test_onnxruntime_equals_eager_at_any_batch(exported):
    module, _, sess = exported
    export_checks.assert_onnxruntime_equals_eager(module, sess, lambda b: bc_export.example_inputs(module.model, b))


def test_the_graph_is_the_policys_predict_chunk(exported):
    module, inputs, _ = exported
    with torch.no_grad():  # a swap of the two cameras' features fails it
        torch.testing.assert_close(module(**inputs), module.model.predict_chunk(
            export_checks.policy_batch(module.model, inputs)), rtol=0, atol=1e-6)


def test_an_exported_policy_drives_the_closed_loop_evaluation(run, exported):
    model, cfg = bc_eval.load_policy(run)
    eager = ClosedLoopPolicy(model)
    export_checks.assert_drives_the_closed_loop(bc_export.exported_policy(exported[2], model),
                                                lambda obs, feed: eager(obs),
                                                eval_config(cfg, episodes_per_task=1, max_steps=24, workers=1))
