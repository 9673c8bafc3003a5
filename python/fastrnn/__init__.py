"""fastrnn: fast CPU recurrent networks (RNN, LSTM, GRU) with backpropagation through time.

The functional core (:func:`forward`, :func:`backward`, :func:`init_params`, and the
output head :func:`linear_cross_entropy`) runs on one of several backends behind one API:
``"numpy"`` (the reference), ``"numba"`` and ``"cpp"`` (C++/Eigen); choose with
:func:`set_backend`, :func:`use_backend`, the ``backend=`` argument or the
``FASTRNN_BACKEND`` environment variable.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
    CheckpointPlan,
    ForwardResult,
    FusedHeadGradients,
    Gradients,
    HeadGradients,
    HeadSpec,
    backward,
    checkpoint_plan,
    forward,
    init_params,
    linear_cross_entropy,
)

# The one place the version is written: pyproject.toml reads it from here (scikit-build-core's
# regex metadata provider), and `fastrnn --version` and the benchmarks report it.
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
    "Embedding": "fastrnn.layers",
    "SGD": "fastrnn.optim",
    "Momentum": "fastrnn.optim",
    "Adam": "fastrnn.optim",
    "AdamW": "fastrnn.optim",
    "StepLR": "fastrnn.optim",
    "CosineAnnealingLR": "fastrnn.optim",
    "LinearLR": "fastrnn.optim",
    "SequentialLR": "fastrnn.optim",
    "EarlyStopping": "fastrnn.training",
    "ModelCheckpoint": "fastrnn.training",
    "LambdaCallback": "fastrnn.training",
    "Callback": "fastrnn.training",
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
    "output_cache_info": "fastrnn.output_cache",
    "set_output_cache": "fastrnn.output_cache",
}
_SUBMODULES = {
    "layers",
    "losses",
    "optim",
    "training",
    "io",
    "models",
    "datasets",
    "diagnostics",
    "distributed",
    "onnx",
}

if TYPE_CHECKING:  # what __getattr__ loads on first use, for type checkers and IDEs
    # ("X as X": an explicit re-export, PEP 484)
    from . import datasets as datasets
    from . import diagnostics as diagnostics
    from . import distributed as distributed
    from . import io as io
    from . import layers as layers
    from . import losses as losses
    from . import models as models
    from . import onnx as onnx
    from . import optim as optim
    from . import training as training
    from ._warmup import warmup as warmup
    from .diagnostics import gradcheck as gradcheck
    from .io import load as load
    from .io import save as save
    from .layers import GRU as GRU
    from .layers import LSTM as LSTM
    from .layers import RNN as RNN
    from .layers import Embedding as Embedding
    from .layers import Linear as Linear
    from .models import CharLanguageModel as CharLanguageModel
    from .models import Seq2Seq as Seq2Seq
    from .models import SequenceClassifier as SequenceClassifier
    from .models import SequenceGenerator as SequenceGenerator
    from .models import SequenceRegressor as SequenceRegressor
    from .models import SequenceTagger as SequenceTagger
    from .optim import SGD as SGD
    from .optim import Adam as Adam
    from .optim import AdamW as AdamW
    from .optim import CosineAnnealingLR as CosineAnnealingLR
    from .optim import LinearLR as LinearLR
    from .optim import Momentum as Momentum
    from .optim import SequentialLR as SequentialLR
    from .optim import StepLR as StepLR
    from .optim import clip_grad_norm as clip_grad_norm
    from .optim import clip_grad_value as clip_grad_value
    from .output_cache import output_cache_info as output_cache_info
    from .output_cache import set_output_cache as set_output_cache
    from .training import Callback as Callback
    from .training import EarlyStopping as EarlyStopping
    from .training import LambdaCallback as LambdaCallback
    from .training import ModelCheckpoint as ModelCheckpoint


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
    "CheckpointPlan",
    "ForwardResult",
    "FusedHeadGradients",
    "Gradients",
    "HeadGradients",
    "HeadSpec",
    "__version__",
    "available_backends",
    "backward",
    "build_info",
    "checkpoint_plan",
    "forward",
    "get_backend",
    "get_num_threads",
    "init_params",
    "linear_cross_entropy",
    "output_cache_info",
    "set_backend",
    "set_num_threads",
    "set_output_cache",
    "unavailable_backends",
    "use_backend",
]
