"""GR00T N1.5's ONNX export (gr00t/export.py): onnxruntime equals eager PyTorch, the graph equals the policy's own
`predict_chunk` for the same noise, and an exported policy drives the closed-loop evaluation with the eager
actions."""

import dataclasses

import pytest
import torch

from common.envs.metaworld import demo_spec, eval_config
from common.tests import export_checks

from gr00t import eval as gr00t_eval
from gr00t import export as gr00t_export
from gr00t.config import PRESETS
from gr00t.train import train

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke GR00T run with two cameras, a few steps, no evaluation."""
    root = tmp_path_factory.mktemp("export")
    cfg = dataclasses.replace(PRESETS["smoke"], cameras=("corner", "gripperPOV"), run_dir=str(root / "run"),
                              eval_episodes=0)
    return export_checks.train_smoke(root, cfg, train, demo_spec)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_checks.export_session(gr00t_export.load, run, tmp_path_factory.mktemp("onnx"))


def test_onnxruntime_equals_eager_at_any_batch(exported):
    module, inputs, sess = exported  # fails without common.export's written-out attention (left-padding rows)
    width = inputs["input_ids"].shape[1]
    export_checks.assert_onnxruntime_equals_eager(
        module, sess, lambda b: gr00t_export.example_inputs(module.policy, b, width))


def test_the_graph_is_the_policys_predict_chunk(exported):
    module, inputs, _ = exported
    with torch.no_grad():
        torch.testing.assert_close(module(**inputs), module.policy.predict_chunk(
            export_checks.policy_batch(module.policy, inputs), noise=inputs["noise"]), rtol=0, atol=1e-5)


def test_an_exported_policy_drives_the_closed_loop_evaluation(run, exported):
    policy, cfg = gr00t_eval.load_policy(run)

    def eager(obs, feed):  # the PyTorch policy with the noise the graph got
        chunk = policy.predict_chunk(export_checks.obs_batch(policy, obs), torch.as_tensor(feed["noise"]))
        return chunk[0, :cfg.n_action_steps].numpy()

    onnx_policy = gr00t_export.exported_policy(exported[2], policy, width=exported[1]["input_ids"].shape[1])
    export_checks.assert_drives_the_closed_loop(onnx_policy, eager,
                                                eval_config(cfg, episodes_per_task=1, max_steps=24, workers=1))
