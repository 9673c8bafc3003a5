"""The backend registry: which implementations of the kernel contract exist and load.

Only the functional core (:mod:`fastrnn.functional`) and the config module use this
registry; layers and models never import a backend.

Every backend is a module that provides two functions with the signature of
:mod:`fastrnn.backends.numpy_backend` (the reference, which documents the contract):

``forward(cell, params, x, h0, c0, *, activation, negative_slope, lengths, num_threads,
training=True)``
    returns ``(hs, h_n, c_n, saved)``; with ``training=False`` (inference) ``saved`` is
    ``None`` and nothing is kept for backward

``backward(cell, params, x, h0, c0, hs, saved, dhs, dh_n, dc_n, *, activation,
negative_slope, lengths, num_threads, step_norms)``
    returns ``(dx, dh0, dc0, dparams, norms)``

The functional core hands the backends validated input only: C-contiguous arrays of one
dtype (float32 or float64), ``T >= 1`` and ``B >= 1``, ``h0`` always given (zeros if the
caller gave none), ``c0`` given for lstm and ``None`` otherwise, ``lengths`` either
``None`` (every sequence has length T) or a C-contiguous int64 array of shape (B,) with
values in 1..T, and ``dhs``/``dh_n``/``dc_n`` always arrays (zeros where the caller gave
none; ``dc_n`` is ``None`` unless the cell is lstm).
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

# Fastest first: "auto" picks the first available one.
BACKENDS: tuple[str, ...] = ("cpp", "numba", "numpy")

_MODULES = {
    "numpy": "fastrnn.backends.numpy_backend",
    "numba": "fastrnn.backends.numba_backend",
    "cpp": "fastrnn.backends.cpp_backend",
}

_HOW_TO_FIX = {
    "numpy": "reinstall fastrnn",
    "numba": "install numba (`pip install numba`)",
    "cpp": (
        "the compiled extension fastrnn._core is missing or broken; reinstall fastrnn from "
        "source with a C++ compiler available (`pip install --force-reinstall fastrnn`)"
    ),
}

_lock = threading.Lock()
_loaded: dict[str, ModuleType] = {}
_unavailable: dict[str, str] = {}


def _try_load(name: str) -> ModuleType | None:
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _unavailable:
            return None
        try:
            module = importlib.import_module(_MODULES[name])
        except ImportError as exc:  # the backend's own dependency is missing
            _unavailable[name] = f"{type(exc).__name__}: {exc}"
            return None
        reason = getattr(module, "UNAVAILABLE_REASON", None)
        if reason:
            _unavailable[name] = reason
            return None
        _loaded[name] = module
        return module


def available() -> list[str]:
    """Names of the backends that load on this machine, fastest first."""
    return [name for name in BACKENDS if _try_load(name) is not None]


def unavailable_reasons() -> dict[str, str]:
    """For each backend that does not load, why not."""
    for name in BACKENDS:
        _try_load(name)
    return dict(_unavailable)


def load(name: str) -> ModuleType:
    """The module of backend ``name``; a clear error if it is unknown or unavailable."""
    if name not in _MODULES:
        raise ValueError(
            f"unknown backend {name!r}; valid names are {', '.join(map(repr, BACKENDS))} and 'auto'"
        )
    module = _try_load(name)
    if module is None:
        raise RuntimeError(
            f"backend {name!r} is not available on this machine ({_unavailable[name]}); "
            f"to fix it, {_HOW_TO_FIX[name]}. Available backends: {available()}"
        )
    return module
