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
