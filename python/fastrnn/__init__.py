"""fastrnn: fast CPU recurrent networks (RNN, LSTM, GRU) with backpropagation through time.

The functional core (:func:`forward`, :func:`backward`, :func:`init_params`) runs on one
of several backends behind one API: ``"numpy"`` (the reference), ``"numba"`` and
``"cpp"`` (C++/Eigen); choose with :func:`set_backend`, :func:`use_backend`, the
``backend=`` argument or the ``FASTRNN_BACKEND`` environment variable.
"""

from __future__ import annotations

from ._config import (
    available_backends,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    unavailable_backends,
    use_backend,
)
from .functional import ForwardResult, Gradients, backward, forward, init_params

__version__ = "0.1.0"


def build_info() -> dict[str, object]:
    """How the compiled extension was built, or why it is missing."""
    try:
        from . import _core
    except ImportError as exc:
        return {"available": False, "error": str(exc)}
    return {"available": True, **_core.build_info()}


__all__ = [
    "ForwardResult",
    "Gradients",
    "__version__",
    "available_backends",
    "backward",
    "build_info",
    "forward",
    "get_backend",
    "get_num_threads",
    "init_params",
    "set_backend",
    "set_num_threads",
    "unavailable_backends",
    "use_backend",
]
