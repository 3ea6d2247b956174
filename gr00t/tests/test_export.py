"""GR00T N1.5's ONNX export (gr00t/export.py): onnxruntime equals eager PyTorch, the graph equals the policy's own
`predict_chunk` for the same noise, and an exported policy drives the closed-loop evaluation with the eager
actions."""

import dataclasses

import pytest
import torch

from common import export
from common.envs.metaworld import eval_config, to_features
from common.tests import demo_cache, export_checks

from gr00t import eval as gr00t_eval
from gr00t import export as gr00t_export
from gr00t.config import PRESETS
from gr00t.train import demo_spec, train

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke GR00T run with two cameras, a few steps, no evaluation."""
    root = tmp_path_factory.mktemp("export")
    cfg = dataclasses.replace(PRESETS["smoke"], cameras=("corner", "gripperPOV"), run_dir=str(root / "run"),
                              eval_episodes=0)
    with demo_cache.private_cache(root / "cache", demo_spec(cfg)):
        train(cfg)
    return root / "run"


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    module, inputs = gr00t_export.load(str(run))
    path = export.export_onnx(module, inputs, tmp_path_factory.mktemp("onnx") / "policy.onnx")
    return module, inputs, export.session(path)


def test_onnxruntime_equals_eager_at_any_batch(exported):
    module, inputs, sess = exported
    width = inputs["input_ids"].shape[1]
    export_checks.assert_onnxruntime_equals_eager(
        module, sess, lambda b: gr00t_export.example_inputs(module.policy, b, width))


def test_the_graph_is_the_policys_predict_chunk(exported):
    module, inputs, _ = exported
    policy = module.policy
    batch = {key: inputs["images"][:, i] for i, key in enumerate(policy.image_keys)}
    batch[policy.cfg.state_key], batch["instruction"] = inputs["state"], ["open the drawer"] * len(inputs["state"])
    with torch.no_grad():
        torch.testing.assert_close(module(**inputs), policy.predict_chunk(batch, noise=inputs["noise"]),
                                   rtol=0, atol=1e-5)


def test_an_exported_policy_drives_the_closed_loop_evaluation(run, exported):
    policy, cfg = gr00t_eval.load_policy(run)

    def eager(obs, feed):  # the PyTorch policy with the noise the graph got
        features = to_features(obs)
        batch = {k: torch.as_tensor(features[k])[None] for k in (*policy.image_keys, cfg.state_key)}
        batch["instruction"] = [obs["instruction"]]
        return policy.predict_chunk(batch, torch.as_tensor(feed["noise"]))[0, :cfg.n_action_steps].numpy()

    onnx_policy = gr00t_export.exported_policy(exported[2], policy, width=exported[1]["input_ids"].shape[1])
    export_checks.assert_drives_the_closed_loop(onnx_policy, eager,
                                                eval_config(cfg, episodes_per_task=1, max_steps=24, workers=1))
