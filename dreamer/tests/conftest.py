"""JAX's persistent compilation cache for this test folder: the training-loop tests build the same update several
times (an uninterrupted, an interrupted and a resumed run); with the cache only the first one compiles."""
import os
import tempfile

import jax

_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-cache-"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
