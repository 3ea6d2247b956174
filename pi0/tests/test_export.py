"""π0's and π0.5's ONNX export (pi0/export.py): onnxruntime equals eager PyTorch, the graph equals the policy's own
`predict_chunk` for the same noise, and an exported policy drives the closed-loop evaluation with the eager actions."""

import dataclasses

import pytest
import torch

from common import export
from common.envs.metaworld import eval_config, to_features
from common.tests import demo_cache, export_checks

from pi0 import eval as pi0_eval
from pi0 import export as pi0_export
from pi0.config import PRESETS
from pi0.train import demo_spec, train

pytest.importorskip("onnxruntime")
VARIANTS = ("pi0", "pi05")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke runs of both variants with two cameras, a few steps, no evaluation."""
    root = tmp_path_factory.mktemp("export")
    cfg = dataclasses.replace(PRESETS["smoke"], cameras=("corner", "gripperPOV"), eval_episodes=0)
    with demo_cache.private_cache(root / "cache", demo_spec(cfg)):
        for variant in VARIANTS:
            train(dataclasses.replace(cfg, variant=variant, run_dir=str(root / variant)))
    return root


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    out = {}
    for variant in VARIANTS:
        module, inputs = pi0_export.load(str(runs / variant))
        path = export.export_onnx(module, inputs, tmp_path_factory.mktemp(variant) / "policy.onnx")
        out[variant] = module, inputs, export.session(path)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_equals_eager_at_any_batch(exported, variant):
    module, _, sess = exported[variant]
    export_checks.assert_onnxruntime_equals_eager(module, sess, lambda b: pi0_export.example_inputs(module.policy, b))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_graph_is_the_policys_predict_chunk(exported, variant):
    module, inputs, _ = exported[variant]
    policy = module.policy
    batch = {key: inputs["images"][:, i] for i, key in enumerate(policy.image_keys)}
    batch[policy.cfg.state_key], batch["instruction"] = inputs["state"], ["open the drawer"] * len(inputs["state"])
    with torch.no_grad():
        torch.testing.assert_close(module(**inputs), policy.predict_chunk(batch, noise=inputs["noise"]),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_exported_policy_drives_the_closed_loop_evaluation(runs, exported, variant):
    policy, cfg = pi0_eval.load_policy(runs / variant)

    def eager(obs, feed):  # the PyTorch policy with the noise the graph got
        features = to_features(obs)
        batch = {k: torch.as_tensor(features[k])[None] for k in (*policy.image_keys, cfg.state_key)}
        batch["instruction"] = [obs["instruction"]]
        return policy.predict_chunk(batch, torch.as_tensor(feed["noise"]))[0, :cfg.n_action_steps].numpy()

    export_checks.assert_drives_the_closed_loop(pi0_export.exported_policy(exported[variant][2], policy), eager,
                                                eval_config(cfg, episodes_per_task=1, max_steps=24, workers=1))
