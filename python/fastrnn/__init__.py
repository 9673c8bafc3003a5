"""fastrnn: fast CPU recurrent networks (RNN, LSTM, GRU) with backpropagation through time.

The functional core (:func:`forward`, :func:`backward`, :func:`init_params`, and the
output head :func:`linear_cross_entropy`) runs on one of several backends behind one API:
``"numpy"`` (the reference), ``"numba"`` and ``"cpp"`` (C++/Eigen); choose with
:func:`set_backend`, :func:`use_backend`, the ``backend=`` argument or the
``FASTRNN_BACKEND`` environment variable.
"""

from __future__ import annotations

import importlib

from ._config import (
    available_backends,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    unavailable_backends,
    use_backend,
)
from .functional import (
    ForwardResult,
    Gradients,
    HeadGradients,
    backward,
    forward,
    init_params,
    linear_cross_entropy,
)

__version__ = "0.1.0"


def build_info() -> dict[str, object]:
    """How the compiled extension was built, or why it is missing."""
    try:
        from . import _core
    except ImportError as exc:
        return {"available": False, "error": str(exc)}
    return {"available": True, **_core.build_info()}


# Names that live in modules loaded on first use, so that `import fastrnn` stays light
# and never triggers a JIT compile: name -> module.
_LAZY: dict[str, str] = {
    "RNN": "fastrnn.layers",
    "LSTM": "fastrnn.layers",
    "GRU": "fastrnn.layers",
    "Linear": "fastrnn.layers",
    "SGD": "fastrnn.optim",
    "Momentum": "fastrnn.optim",
    "Adam": "fastrnn.optim",
    "clip_grad_norm": "fastrnn.optim",
    "clip_grad_value": "fastrnn.optim",
    "load": "fastrnn.io",
    "save": "fastrnn.io",
    "warmup": "fastrnn._warmup",
    "SequenceClassifier": "fastrnn.models",
    "SequenceRegressor": "fastrnn.models",
    "SequenceTagger": "fastrnn.models",
    "CharLanguageModel": "fastrnn.models",
    "SequenceGenerator": "fastrnn.models",
    "Seq2Seq": "fastrnn.models",
    "gradcheck": "fastrnn.diagnostics",
}
_SUBMODULES = {"layers", "losses", "optim", "training", "io", "models", "datasets", "diagnostics"}


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        return importlib.import_module(f"fastrnn.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


__all__ = [
    "ForwardResult",
    "Gradients",
    "HeadGradients",
    "__version__",
    "available_backends",
    "backward",
    "build_info",
    "forward",
    "get_backend",
    "get_num_threads",
    "init_params",
    "linear_cross_entropy",
    "set_backend",
    "set_num_threads",
    "unavailable_backends",
    "use_backend",
]
