"""Process-wide settings: which backend runs the kernels, and how many threads they use.

The backend setting follows scipy.fft's ``set_backend`` / sklearn's ``config_context``:
the env var ``FASTRNN_BACKEND`` gives the start value at import, :func:`set_backend`
changes the process-wide value, and :func:`use_backend` overrides it for the current
thread only, restoring the previous value on exit (also after an exception).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from . import _validation as V
from . import backends as _registry

_VALID = (*_registry.BACKENDS, "auto")

_local = threading.local()


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in _VALID:
        raise ValueError(
            f"unknown backend {name!r}; valid names are {', '.join(map(repr, _VALID))}"
        )
    return name


def _resolve(name: str) -> str:
    """Turn a setting into a concrete backend name, checking that it is available."""
    if name == "auto":
        return _registry.available()[0]
    _registry.load(name)  # raises with the reason if unavailable
    return name


def explain_auto() -> tuple[str, str]:
    """What ``"auto"`` resolves to on this machine, and why: the rule and the backends it
    passed over because they do not load here (for ``fastrnn info``)."""
    chosen = _resolve("auto")
    order = " > ".join(_registry.BACKENDS)
    why = (
        f"the first available backend in the fixed order {order} (fastest first, as "
        "measured with `fastrnn bench` when the order was set; not measured on this machine)"
    )
    reasons = _registry.unavailable_reasons()
    passed = _registry.BACKENDS[: _registry.BACKENDS.index(chosen)]
    if passed:
        why += "; passed over: " + "; ".join(f"{n} (unavailable: {reasons[n]})" for n in passed)
    return chosen, why


def _initial_backend() -> str:
    value = os.environ.get("FASTRNN_BACKEND", "auto").strip() or "auto"
    if value not in _VALID:
        raise ValueError(
            f"environment variable FASTRNN_BACKEND={value!r} names no backend; valid names "
            f"are {', '.join(map(repr, _VALID))}"
        )
    return value


_global_backend: str = _initial_backend()


def available_backends() -> list[str]:
    """The backends that load on this machine, fastest first (``"numpy"`` always)."""
    return _registry.available()


def unavailable_backends() -> dict[str, str]:
    """Each known backend that does not load here, with the reason."""
    return _registry.unavailable_reasons()


def resolve_backend(name: str | None = None) -> str:
    """The concrete backend a call with ``backend=name`` runs on: the current setting
    (:func:`get_backend`) for ``None``, else ``name`` checked and ``"auto"`` resolved."""
    if name is None:
        return get_backend()
    return _resolve(_check_name(name))


def get_backend() -> str:
    """The concrete backend the next call will use in this thread (``"auto"`` resolved)."""
    return _resolve(getattr(_local, "backend", None) or _global_backend)


def set_backend(name: str) -> None:
    """Set the process-wide backend: ``"numpy"``, ``"numba"``, ``"cpp"`` or ``"auto"``.

    An unknown name is a :class:`ValueError`; a known backend that is not available here
    is a :class:`RuntimeError` that says why.
    """
    global _global_backend
    _check_name(name)
    _resolve(name)
    _global_backend = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Use backend ``name`` in this thread inside the ``with`` block; yields its resolved name."""
    _check_name(name)
    resolved = _resolve(name)
    previous = getattr(_local, "backend", None)
    _local.backend = name
    try:
        yield resolved
    finally:
        _local.backend = previous


def _default_threads() -> int:
    value = os.environ.get("FASTRNN_NUM_THREADS")
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(
                f"environment variable FASTRNN_NUM_THREADS={value!r} is not a whole number"
            ) from None
        if n < 1:
            raise ValueError(f"environment variable FASTRNN_NUM_THREADS={n} must be >= 1")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_num_threads: int = _default_threads()


def get_num_threads() -> int:
    """How many threads the numba and cpp kernels may use (default: the usable cores)."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Set how many threads the numba and cpp kernels may use (``FASTRNN_NUM_THREADS``)."""
    global _num_threads
    _num_threads = V.check_positive_int("num_threads", n)
