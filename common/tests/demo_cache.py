"""A test module's private demo cache: the Meta-World demos of a smoke preset, collected once into a temporary
`EMBODIED_CACHE`, which is restored afterwards (so tests never read or write the user's cache)."""

import os
from contextlib import contextmanager
from pathlib import Path

from common.envs.metaworld import DemoSpec, collect_demos


@contextmanager
def private_cache(path: Path, spec: DemoSpec):
    old = os.environ.get("EMBODIED_CACHE")
    os.environ["EMBODIED_CACHE"] = str(path)
    try:
        collect_demos(spec, workers=2, progress=False)
        yield path
    finally:
        if old is None:
            os.environ.pop("EMBODIED_CACHE")
        else:
            os.environ["EMBODIED_CACHE"] = old
