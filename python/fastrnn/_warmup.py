"""``fastrnn.warmup()``: pay the one-time start-up cost of the backends before timing or
serving anything.

``import fastrnn`` never compiles: the Numba kernels are compiled on first use, or here.
A backend module may define ``warmup()`` to compile or load ahead of use everything it
needs (the numba backend compiles every kernel for float32 and float64, serial and
batch-parallel, or loads them from Numba's on-disk cache); for the others, loading the
module is all there is to do.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from . import _config
from . import backends as _registry


def warmup(backends: str | Iterable[str] | None = None) -> dict[str, float]:
    """Load and compile the given backends (default: every available one) ahead of use.

    ``backends``: a backend name or a list of them (``"auto"`` means the fastest
    available). Returns the seconds each backend took, by name: a few seconds per kernel
    the first time, a fraction of a second once Numba's on-disk cache holds them.
    An unknown name is a :class:`ValueError`, an unavailable backend a
    :class:`RuntimeError` that says why.
    """
    if backends is None:
        names = _registry.available()
    elif isinstance(backends, str):
        names = [backends]
    else:
        try:
            names = list(backends)
        except TypeError:
            raise TypeError(
                "backends must be a backend name, a list of names or None, "
                f"got {type(backends).__name__}"
            ) from None
    resolved = [_config.resolve_backend(name) for name in names]
    seconds: dict[str, float] = {}
    for name in resolved:
        start = time.perf_counter()
        hook = getattr(_registry.load(name), "warmup", None)
        if hook is not None:
            hook()
        seconds[name] = time.perf_counter() - start
    return seconds
