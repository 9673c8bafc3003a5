"""The backends' caches of large output blocks: the C++ backend's
(``src/cpp/fastrnn/output_cache.hpp``) and the numba backend's
(:mod:`fastrnn.backends._block_pool`), set and read together (design notes, section 6)."""

from __future__ import annotations

from . import _validation as V
from . import backends as _registry
from .backends import _block_pool


def set_output_cache(max_bytes: int) -> int:
    """Set the most each backend's cache of large output blocks may hold (bytes; default
    1 GiB each; ``0`` keeps nothing, so every large output takes new memory), freeing the
    oldest blocks beyond it; returns the previous limit. The caches are the C++ backend's
    (``src/cpp/fastrnn/output_cache.hpp``) and the numba backend's
    (:mod:`fastrnn.backends._block_pool`): an output of 64 KiB or more (``hs``, the saved
    activations, ``dx``) lives in a block that goes back to its cache once no array uses it,
    and the next output of that size takes it without the page faults and the zeroing of
    fresh memory. They never raise the memory in use at a training step's peak, but keep it
    from one step to the next."""
    limit = V.check_non_negative_int("max_bytes", max_bytes)
    if "cpp" in _registry.available():
        from .backends import cpp_backend

        cpp_backend.set_output_cache(limit)
    return _block_pool.POOL.set_limit(limit)


def output_cache_info() -> dict[str, dict[str, int]]:
    """For each backend with an output cache ("cpp" when its extension loads, "numba"):
    ``limit`` the bytes it may hold, ``held`` the bytes it holds in ``blocks`` blocks,
    ``hits`` and ``misses`` the outputs of 64 KiB or more that took a kept block or new
    memory (see :func:`set_output_cache`)."""
    info = {}
    if "cpp" in _registry.available():
        from .backends import cpp_backend

        info["cpp"] = cpp_backend.output_cache_info()
    info["numba"] = _block_pool.POOL.info()
    return info
