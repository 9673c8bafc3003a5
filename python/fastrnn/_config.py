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


# What "auto" picks: per instruction-set level of the cpp kernels (fastrnn._core.kernel_isa(),
# capped by FASTRNN_CPP_ISA), the backends fastest first, as measured with `fastrnn bench`
# (numba compiled for the same level, NUMBA_CPU_NAME/NUMBA_CPU_FEATURES; the table and the
# commands are in docs/design.md, section 8). A level missing here, or no cpp kernels at
# all, uses the registry's order (fastrnn.backends.BACKENDS).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "avx512": ("cpp", "numba", "numpy"),
    "avx2": ("cpp", "numba", "numpy"),
}
AUTO_MEASURED = "docs/design.md, section 8"


def _cpp_level() -> str | None:
    """The cpp kernels' instruction-set level, or ``None`` if the extension does not load
    (also for a bad ``FASTRNN_CPP_ISA``, which makes the cpp backend unavailable)."""
    try:
        from . import _core
    except ImportError:
        return None
    try:
        return str(_core.kernel_isa())
    except ValueError:
        return None


def auto_order(level: str | None) -> tuple[str, ...]:
    """The backends in the order ``"auto"`` tries them at the cpp kernel level ``level``
    (:data:`AUTO_ORDER`; the registry's order for ``None`` or a level not measured)."""
    return AUTO_ORDER.get(level, _registry.BACKENDS) if level else _registry.BACKENDS


def _auto(available: list[str], level: str | None) -> str:
    """The first backend of :func:`auto_order` that is in ``available``."""
    return next(b for b in auto_order(level) if b in available)


def _resolve(name: str) -> str:
    """Turn a setting into a concrete backend name, checking that it is available."""
    if name == "auto":
        return _auto(_registry.available(), _cpp_level())
    _registry.load(name)  # raises with the reason if unavailable
    return name


def explain_auto() -> tuple[str, str]:
    """What ``"auto"`` resolves to on this machine, and why: the rule (the measured order
    at this cpp kernel level) and the backends it passed over because they do not load
    here (for ``fastrnn info``)."""
    level = _cpp_level()
    order = auto_order(level)
    chosen = _auto(_registry.available(), level)
    if level in AUTO_ORDER:
        why = (
            f"the first available backend in the order {' > '.join(order)}, fastest first "
            f"as measured at the cpp kernels' level {level} ({AUTO_MEASURED})"
        )
    else:
        at = f"level {level}" if level else "no cpp kernels"
        why = (
            f"the first available backend in the fixed order {' > '.join(order)} ({at}: "
            "no measured order)"
        )
    reasons = _registry.unavailable_reasons()
    passed = order[: order.index(chosen)]
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
