"""A test module's private demo cache: a temporary `EMBODIED_CACHE`, restored afterwards (so tests never read or
write the user's cache), optionally filled with the Meta-World demos of a smoke preset once."""

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def private_cache(path: Path, spec=None):
    """`EMBODIED_CACHE` = `path` inside the block; with a Meta-World `DemoSpec`, its demos are collected first (the
    driving tests pass none: their runs collect their own)."""
    old = os.environ.get("EMBODIED_CACHE")
    os.environ["EMBODIED_CACHE"] = str(path)
    try:
        if spec is not None:
            from common.envs.metaworld import collect_demos
            collect_demos(spec, workers=2, progress=False)
        yield path
    finally:
        if old is None:
            os.environ.pop("EMBODIED_CACHE")
        else:
            os.environ["EMBODIED_CACHE"] = old
