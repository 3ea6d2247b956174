"""π0's and π0.5's ONNX export (pi0/export.py): onnxruntime equals eager PyTorch, the graph equals the policy's own
`predict_chunk` for the same noise, and an exported policy drives the closed-loop evaluation with the eager actions."""

import dataclasses

import pytest
import torch

from common.envs.metaworld import demo_spec, eval_config
from common.tests import export_checks

from pi0 import eval as pi0_eval
from pi0 import export as pi0_export
from pi0.config import PRESETS
from pi0.train import train

pytest.importorskip("onnxruntime")
VARIANTS = ("pi0", "pi05")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke runs of both variants with two cameras, a few steps, no evaluation."""
    root = tmp_path_factory.mktemp("export")
    cfg = dataclasses.replace(PRESETS["smoke"], cameras=("corner", "gripperPOV"), eval_episodes=0)
    return {variant: export_checks.train_smoke(root, dataclasses.replace(cfg, variant=variant,
                                                                         run_dir=str(root / variant)),
                                               train, demo_spec)
            for variant in VARIANTS}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    return {variant: export_checks.export_session(pi0_export.load, runs[variant], tmp_path_factory.mktemp(variant))
            for variant in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_equals_eager_at_any_batch(exported, variant):
    module, _, sess = exported[variant]
    export_checks.assert_onnxruntime_equals_eager(module, sess, lambda b: pi0_export.example_inputs(module.policy, b))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_graph_is_the_policys_predict_chunk(exported, variant):
    module, inputs, _ = exported[variant]
    with torch.no_grad():  # dropping the [-1, 1] image scaling fails it
        torch.testing.assert_close(module(**inputs), module.policy.predict_chunk(
            export_checks.policy_batch(module.policy, inputs), noise=inputs["noise"]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_exported_policy_drives_the_closed_loop_evaluation(runs, exported, variant):
    policy, cfg = pi0_eval.load_policy(runs[variant])

    def eager(obs, feed):  # the PyTorch policy with the noise the graph got
        chunk = policy.predict_chunk(export_checks.obs_batch(policy, obs), torch.as_tensor(feed["noise"]))
        return chunk[0, :cfg.n_action_steps].numpy()

    export_checks.assert_drives_the_closed_loop(pi0_export.exported_policy(exported[variant][2], policy), eager,
                                                eval_config(cfg, episodes_per_task=1, max_steps=24, workers=1))
