import os

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True)
def _one_thread():
    """A busy neighbour on a 2-core machine makes multi-threaded CPU ops ~10x slower: tests use one thread."""
    torch.set_num_threads(1)
