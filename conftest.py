"""Settings for every test in the repo (pytest loads this before any test module imports a simulator)."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo; must be set before mujoco is first imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """A busy neighbour on a 2-core machine makes multi-threaded CPU ops ~10x slower: tests use one thread."""
    torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus):
    """Close the cached Meta-World renderers while EGL is still up: dm-control (dreamer's tests) terminates the
    shared EGL display in its own exit hook, which runs before Meta-World's, and the late close then fails noisily."""
    import sys
    metaworld = sys.modules.get("common.envs.metaworld")
    if metaworld is not None:
        metaworld._close_envs()
