"""OpenVLA-OFT's ONNX export (openvla/export.py): onnxruntime equals eager PyTorch, the graph equals the policy's
own `predict_chunk`, and an exported policy drives the closed-loop evaluation with the eager actions."""

import dataclasses

import pytest
import torch

from common.envs.metaworld import demo_spec, eval_config
from common.tests import export_checks

from openvla import eval as openvla_eval
from openvla import export as openvla_export
from openvla.config import PRESETS
from openvla.model import ClosedLoopPolicy
from openvla.train import train

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke OFT run with two cameras, a few steps, no evaluation."""
    root = tmp_path_factory.mktemp("export")
    cfg = dataclasses.replace(PRESETS["smoke"], variant="oft", cameras=("corner", "gripperPOV"),
                              run_dir=str(root / "run"), eval_episodes=0)
    return export_checks.train_smoke(root, cfg, train, demo_spec)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_checks.export_session(openvla_export.load, run, tmp_path_factory.mktemp("onnx"))


def test_onnxruntime_equals_eager_at_any_batch(exported):
    module, inputs, sess = exported
    width = inputs["input_ids"].shape[1]
    export_checks.assert_onnxruntime_equals_eager(
        module, sess, lambda b: openvla_export.example_inputs(module.policy, b, width))


def test_the_graph_is_the_policys_predict_chunk(exported):
    module, inputs, _ = exported
    with torch.no_grad():  # an uncentred crop fails it
        torch.testing.assert_close(module(**inputs), module.policy.predict_chunk(
            export_checks.policy_batch(module.policy, inputs)), rtol=0, atol=1e-5)


def test_an_exported_policy_drives_the_closed_loop_evaluation(run, exported):
    policy, cfg = openvla_eval.load_policy(run)
    eager = ClosedLoopPolicy(policy)
    onnx_policy = openvla_export.exported_policy(exported[2], policy, width=exported[1]["input_ids"].shape[1])
    export_checks.assert_drives_the_closed_loop(onnx_policy, lambda obs, feed: eager(obs),
                                                eval_config(cfg, episodes_per_task=1, max_steps=24, workers=1))
