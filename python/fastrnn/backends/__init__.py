"""The backend registry: which implementations of the kernel contract exist and load.

Only the functional core (:mod:`fastrnn.functional`) and the config module use this
registry; layers and models never import a backend.

Every backend is a module that matches the protocol :class:`Backend` (defined in
:mod:`fastrnn.backends._contract`, which documents the contract: the functions
``forward``, ``backward`` and ``linear_cross_entropy``, their arguments, what the
functional core guarantees about them, and what they return), plus ``UNAVAILABLE_REASON``
(``None``, or why the backend cannot run here). :mod:`fastrnn.backends.numpy_backend` is
the reference implementation. A type checker checks each module against the protocol
(below, under ``TYPE_CHECKING``) and ``tests/test_contract.py`` checks their signatures.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, cast

from ._contract import Backend

if TYPE_CHECKING:  # each backend module matches the protocol (a type checker checks this)
    from . import cpp_backend, numba_backend, numpy_backend

    _numpy: Backend = numpy_backend
    _numba: Backend = numba_backend
    _cpp: Backend = cpp_backend

__all__ = ["BACKENDS", "Backend", "available", "load", "unavailable_reasons"]

# Fastest first: "auto" picks the first available one.
BACKENDS: tuple[str, ...] = ("cpp", "numba", "numpy")

_MODULES: dict[str, str] = {
    "numpy": "fastrnn.backends.numpy_backend",
    "numba": "fastrnn.backends.numba_backend",
    "cpp": "fastrnn.backends.cpp_backend",
}

_HOW_TO_FIX: dict[str, str] = {
    "numpy": "reinstall fastrnn",
    "numba": "install numba (`pip install numba`)",
    "cpp": (
        "the compiled extension fastrnn._core is missing or broken; reinstall fastrnn from "
        "source with a C++ compiler available (`pip install --force-reinstall fastrnn`)"
    ),
}

_lock = threading.Lock()
_loaded: dict[str, Backend] = {}
_unavailable: dict[str, str] = {}


def _try_load(name: str) -> Backend | None:
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
        # the module matches the protocol: checked statically above, and its signatures
        # by tests/test_contract.py
        backend = cast(Backend, module)
        _loaded[name] = backend
        return backend


def available() -> list[str]:
    """Names of the backends that load on this machine, fastest first."""
    return [name for name in BACKENDS if _try_load(name) is not None]


def unavailable_reasons() -> dict[str, str]:
    """For each backend that does not load, why not."""
    for name in BACKENDS:
        _try_load(name)
    return dict(_unavailable)


def load(name: str) -> Backend:
    """The module of backend ``name`` (a :class:`Backend`); a clear error if it is unknown
    or unavailable."""
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
