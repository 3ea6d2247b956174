"""Our tiny π0 built inside a real Ray worker process the way RLinf's workers build models: the worker starts with
`RLINF_EXT_MODULE=adapters.rlinf` in its environment and runs RLinf's own `load_user_extension_module()` (what
`rlinf/scheduler/worker/worker.py` `Worker._load_user_extensions` runs in every worker), then RLinf's `get_model`
and `predict_action_batch`. The log-probs it sends back equal the same computation in the driver. A plain Ray actor,
not RLinf's `Worker` (that one needs RLinf's cluster, placement and a GPU platform). About 10 s: Ray's start-up."""

import os
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="ray is installed by requirements/frameworks.txt (setup.sh)")
pytest.importorskip("rlinf", reason="RLinf is installed by requirements/frameworks.txt (setup.sh)")

from adapters.tests.conftest import observations  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def env_obs() -> dict:
    obs = observations(4)
    return dict(main_images=obs["rgb"][:, 0], wrist_images=None, extra_view_images=None, states=obs["proprio"],
                task_descriptions=list(obs["language"]))


def rollout_log_probs(model_path: str) -> torch.Tensor:
    """What an RLinf rollout worker does with a registered model type, after its extension hook ran."""
    from omegaconf import OmegaConf
    from rlinf.models import get_model
    from rlinf.scheduler.cluster.utils import load_user_extension_module

    torch.set_num_threads(1)
    load_user_extension_module()
    model = get_model(OmegaConf.create(dict(model_type="load_policy", model_path=model_path, precision="fp32",
                                            is_lora=False)))
    torch.manual_seed(0)
    _, result = model.predict_action_batch(env_obs=env_obs(), mode="train")
    return result["prev_logprobs"]


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # else Ray writes an auth token under the home directory
        try:
            ray.init(num_cpus=1, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
                     runtime_env={"env_vars": {"RLINF_EXT_MODULE": "adapters.rlinf", "PYTHONPATH": str(ROOT),
                                               "RAY_AUTH_MODE": "disabled"}},
                     log_to_driver=False)
        except Exception as err:  # no shared memory, no free ports, a sandbox: nothing of ours to test
            pytest.skip(f"ray.init failed: {err!r}")
        yield ray
        ray.shutdown()


def test_rlinf_model_built_in_a_ray_worker_matches_the_driver(checkpoints, ray_session, monkeypatch):
    @ray.remote(num_cpus=1)
    class RolloutWorker:
        def __init__(self):
            self.ext = os.environ.get("RLINF_EXT_MODULE")
            self.pid = os.getpid()

        def log_probs(self, model_path: str):
            return self.ext, self.pid, rollout_log_probs(model_path)

    worker = RolloutWorker.remote()
    # up to 600 s: on a loaded 2-core machine the worker takes minutes to import torch and RLinf
    ext, pid, remote = ray.get(worker.log_probs.remote(str(checkpoints["pi0"])), timeout=600)
    assert ext == "adapters.rlinf" and pid != os.getpid()  # another process, configured as RLinf configures it
    monkeypatch.setenv("RLINF_EXT_MODULE", "adapters.rlinf")
    local = rollout_log_probs(str(checkpoints["pi0"]))
    assert remote.shape == local.shape and remote.dim() == 3  # (B, K, A): the chunk's log-prob in equal shares
    torch.testing.assert_close(remote, local, atol=1e-5, rtol=0)
