"""What every model shares: hyper-parameters, the scikit-learn estimator contract, parts,
training through :func:`fastrnn.training.train`, input checks and saving.

A model holds its hyper-parameters (the constructor's arguments, unchanged, as
scikit-learn requires) and, once fitted, its parts (layers and heads in ``_parts``) and
the fitted meta-data (``_meta``: sizes and classes). Nothing else: every forward and
backward passes what it needs as values, so a fitted model can be pickled, cloned and
used from several threads for prediction.

The parts stay in evaluation mode (``layer.eval()``: forwards that save nothing for
backward) except inside the training step itself (:meth:`BaseModel.loss_and_grads` and
:meth:`_PerStep.chunk_loss_and_grads`), so ``predict``, ``predict_proba``, ``score``,
``generate`` and the validation loss never pay for backward.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from .. import _validation as V
from .. import distributed as D
from .. import functional as F
from .. import io as _io
from .. import layers, optim, training
from ..datasets import PAD

_LAYERS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}

# The numpydoc entries the models' methods share: a line ``{name}`` alone in a docstring
# decorated with @shared_docs becomes the entry, at that line's indentation.
DOC_FRAGMENTS: dict[str, str] = {
    "X": "X : array of shape (n_samples, T, n_features)\n    The input sequences, samples first.",
    "X_source": (
        "X : array of shape (n_samples, T_in, n_features), or of int (n_samples, T_in)\n"
        "    The input sequences, samples first: features, or source token ids."
    ),
    "lengths": (
        "lengths : array of int of shape (n_samples,), optional\n"
        "    Each sequence's real length 1..T (None: all T)."
    ),
    "validation_data": (
        "validation_data : (X_val, y_val) or (X_val, y_val, lengths_val), optional\n"
        '    Evaluated after every epoch; its loss is ``history_["val_loss"]``.'
    ),
    "callbacks": (
        "callbacks : list of fastrnn.training.Callback, optional\n"
        "    Passed to :func:`fastrnn.training.train` (e.g. ``EarlyStopping``)."
    ),
    "y_lengths": (
        "y_lengths : array of int of shape (n_samples,), optional\n"
        "    Each target's real length >= 1 (None: up to the first -1)."
    ),
    "diverged": (
        "FloatingPointError\n    The loss became NaN or inf during training (exploding gradients)."
    ),
    "inference_raises": (
        "NotFittedError\n    Before ``fit``.\n"
        "ValueError\n    A wrong shape (other n_features than in ``fit``), NaN or inf in ``X``."
    ),
}

_F = TypeVar("_F", bound=Callable[..., Any])


def shared_docs(fn: _F) -> _F:
    """Fill the lines ``{name}`` of ``fn``'s docstring from :data:`DOC_FRAGMENTS`."""
    if fn.__doc__:
        fn.__doc__ = re.sub(
            r"^( *)\{(\w+)\}$",
            lambda m: textwrap.indent(DOC_FRAGMENTS[m[2]], m[1]),
            fn.__doc__,
            flags=re.MULTILINE,
        )
    return fn


OPTIMIZERS: tuple[str, ...] = tuple(optim.OPTIMIZERS)
"""The optimizer names a model accepts: those of :data:`fastrnn.optim.OPTIMIZERS`."""


class NotFittedError(ValueError, AttributeError):
    """A model was used before :meth:`fit` (as scikit-learn's ``NotFittedError``)."""


# --- helpers shared by the model families ----------------------------------------------------


def _keep(value: Any, canonical: Any) -> Any:
    """``value`` itself when it already is the canonical value (so that ``get_params``
    returns the very object the constructor got, as ``sklearn.base.clone`` checks),
    else ``canonical``."""
    return value if type(value) is type(canonical) and value == canonical else canonical


def _optional_positive_float(name: str, value: object) -> float | None:
    return None if value is None else V.check_positive_float(name, value)


def optional_positive_int(name: str, value: object) -> int | None:
    """None, or ``value`` as an int >= 1 (e.g. ``embedding_dim``)."""
    return None if value is None else V.check_positive_int(name, value)


def head_backward(
    rnn: Any,
    head: Any,
    out: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None,
    input_grad: bool = True,
) -> tuple[float, np.ndarray | None, Any]:
    """The per-step softmax head's loss and the backward of the stack ``rnn`` under it:
    ``(loss, dx, dstate0)``. A unidirectional stack runs the head inside its top layer's
    backward (``rnn.backward_head``: the head's dL/dh per block of steps, never for all
    steps at once, which keeps checkpointed BPTT's memory bounded; measured no slower than
    the two calls with cpp, 1 thread: 0.92-1.0x at S2 and char-LM shapes); a bidirectional
    one, whose output concatenates two directions with separate backward passes, runs the
    fused head over all steps (``head.softmax_cross_entropy``) and then ``backward``.
    ``input_grad=False``: the stack's input is fixed data, no dx (``None``)."""
    if not rnn.bidirectional:
        loss, dx, dstate0 = rnn.backward_head(head, target, mask=mask, input_grad=input_grad)
        return float(loss), dx, dstate0
    loss, dh = head.softmax_cross_entropy(out, target, mask=mask)  # fused head + loss
    dx, dstate0 = rnn.backward(dh, input_grad=input_grad)
    return float(loss), dx, dstate0


def full_lengths(lengths: object, n: int, T: int) -> np.ndarray:
    """``lengths`` validated as the functional core does, as int64 (n,); T if None."""
    lens = V.check_lengths(lengths, T, n)
    return np.full(n, T, dtype=np.int64) if lens is None else lens


def state_h(state: layers.State) -> np.ndarray:
    return state[0] if isinstance(state, tuple) else state


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / temperature) over the last axis, computed in float64."""
    z = z.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    p: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return p


def encode_labels(
    classes: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None, what: str = "labels"
) -> np.ndarray:
    """The index of every label of ``y`` in the sorted ``classes`` (int64); where ``mask``
    is False the entry is :data:`fastrnn.datasets.PAD`. A ValueError lists labels that
    are not in ``classes``."""
    idx = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
    unknown = classes[idx] != y
    if mask is not None:
        unknown &= mask
    if np.any(unknown):
        seen = sorted(set(np.asarray(y)[unknown].tolist()))
        raise ValueError(f"y holds {what} not seen in fit: {seen[:5]}")
    idx = idx.astype(np.int64)
    return idx if mask is None else np.where(mask, idx, PAD)


def unpack_validation(data: object) -> tuple[Any, ...]:
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        size = f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""
        raise TypeError(
            f"validation_data must be (X, y) or (X, y, lengths), got {V.describe(data)}{size}"
        )
    return tuple(data) if len(data) == 3 else (*data, None)


# --- data-parallel fit: comm= -----------------------------------------------------------------

_COMM_DOC = """

        Notes
        -----
        ``comm`` (keyword, every model's ``fit``): an mpi4py communicator (e.g.
        ``MPI.COMM_WORLD``) to train data-parallel on all its processes, each called with
        the same data and hyper-parameters (see :mod:`fastrnn.distributed`); the fitted
        parameters are the same on every rank, and ``save`` writes on rank 0 only."""


def _with_comm(fit: Any) -> Any:
    """``fit`` with the keyword ``comm`` added, which :meth:`BaseModel._train` passes on to
    :func:`fastrnn.training.train`: one place gives every model family ``fit(..., comm=)``."""
    if getattr(fit, "_with_comm", False):
        return fit

    @functools.wraps(fit)
    def wrapper(self: Any, *args: Any, comm: Any = None, **kwargs: Any) -> Any:
        if comm is None:  # keep an outer comm (D.data_parallel, a subclass's super().fit)
            return fit(self, *args, **kwargs)
        with D.data_parallel(comm):
            return fit(self, *args, **kwargs)

    sig = inspect.signature(fit)
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("comm", inspect.Parameter.KEYWORD_ONLY, default=None))
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__doc__ = (fit.__doc__ or "").rstrip() + _COMM_DOC
    wrapper._with_comm = True  # type: ignore[attr-defined]
    return wrapper


# --- the shared base --------------------------------------------------------------------------


class BaseModel:
    """Hyper-parameters, parts, parameters, training and saving shared by every model."""

    _causal = False  # decoders and language models must read left to right
    _estimator_type: str | None = None  # scikit-learn < 1.6 reads this attribute
    _fit_rank = 0  # the rank of the last fit's communicator (save writes on rank 0 only)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "fit" in vars(cls):
            cls.fit = _with_comm(vars(cls)["fit"])  # type: ignore[attr-defined]

    def __init__(
        self,
        hidden_size: int = 32,
        *,
        cell: str = "lstm",
        num_layers: int = 1,
        bidirectional: bool = False,
        activation: str = "tanh",
        negative_slope: float = 0.01,
        init: str = "uniform",
        gain: float = 1.0,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        epochs: int = 100,
        batch_size: int = 32,
        optimizer: str = "adam",
        lr: float = 0.01,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        seed: int | None = None,
        dtype: Any = "float32",
        progress: bool | None = None,
        checkpoint: Any = None,
    ) -> None:
        """The hyper-parameters every model shares (stored unchanged: ``get_params``).

        Parameters
        ----------
        hidden_size : int
            The size H of the recurrent state.
        cell : {"rnn", "lstm", "gru"}
            The recurrent cell.
        num_layers : int
            Stacked recurrent layers.
        bidirectional : bool
            Read the sequences in both directions (encoders only; not for models that
            generate left to right).
        activation : {"tanh", "relu", "leaky_relu", "identity"}
            The rnn activation (gated cells: "tanh" only).
        negative_slope : float
            The slope of "leaky_relu" below zero (>= 0).
        init : {"uniform", "xavier", "orthogonal", "identity"}
            The initialisation (see :func:`fastrnn.init_params`; "identity" with relu is
            the IRNN).
        gain : float
            Scales the recurrent weights at initialisation (> 0).
        dropout, recurrent_dropout, input_dropout : float
            Dropout probabilities in [0, 1], in training only (see :mod:`fastrnn.layers`):
            PyTorch's ``dropout`` between stacked layers (needs ``num_layers > 1``), and
            Keras' variational ``recurrent_dropout`` (one mask per sequence on the state
            entering the recurrent product) and ``dropout`` (here ``input_dropout``: one
            mask per sequence on each layer's input). Drawn from the model's ``seed``.
        epochs, batch_size : int
            Training passes over the data, and samples per optimizer step.
        optimizer : {"sgd", "momentum", "adam", "adamw"}
            The optimizer (:data:`fastrnn.optim.OPTIMIZERS`), with learning rate ``lr``;
            "adamw" with its default decoupled weight decay.
        lr : float
            The learning rate.
        clip_norm, clip_value : float or None
            Gradient clipping by global norm, or by value (> 0; None: off).
        seed : int or None
            The same seed gives the same model and predictions.
        dtype : {"float32", "float64"}
            The dtype of the parameters and of the computation.
        progress : bool or None
            A tqdm progress bar (None: shown on a terminal for long runs).
        checkpoint : None, int, "sqrt" or {"max_bytes": N}
            Checkpointed BPTT in training (see :func:`fastrnn.forward`): the recurrent
            layers keep the state every k steps and recompute the rest in backward, with
            bit-identical gradients; None is full BPTT.

        Raises
        ------
        TypeError
            A hyper-parameter of the wrong type (e.g. a float ``hidden_size``).
        ValueError
            A hyper-parameter of the wrong value (e.g. ``hidden_size=0``, an unknown
            cell, ``bidirectional=True`` for a model that generates left to right).

        Notes
        -----
        ``fit`` raises ValueError for NaN or inf in ``X`` or ``y`` (naming the first bad
        position, before any training), ``predict`` and the other inference methods
        likewise for ``X``, and :class:`NotFittedError` before ``fit``.
        """
        # Checked here, so that a wrong value fails where it is written; stored unchanged
        # when already canonical (see _keep), as scikit-learn's clone requires.
        self.hidden_size = V.check_positive_int("hidden_size", hidden_size)
        self.cell = V.check_choice("cell", cell, F.CELLS)
        self.num_layers = V.check_positive_int("num_layers", num_layers)
        self.bidirectional = bool(bidirectional)
        if self.bidirectional and self._causal:
            raise ValueError(
                f"bidirectional=True is not supported by {type(self).__name__}: it generates "
                "tokens left to right (its decoder cannot read the future)"
            )
        self.activation = V.check_choice("activation", activation, F.ACTIVATIONS)
        if cell != "rnn" and activation != "tanh":
            raise ValueError(f"activation applies to cell 'rnn' only, got cell {cell!r}")
        self.negative_slope = V.check_non_negative_float("negative_slope", negative_slope)
        self.init = V.check_choice("init", init, F.INITS)
        self.gain = V.check_positive_float("gain", gain)
        self.dropout = V.check_dropout("dropout", dropout)
        self.recurrent_dropout = V.check_dropout("recurrent_dropout", recurrent_dropout)
        self.input_dropout = V.check_dropout("input_dropout", input_dropout)
        self.epochs = V.check_positive_int("epochs", epochs)
        self.batch_size = V.check_positive_int("batch_size", batch_size)
        self.optimizer = V.check_choice("optimizer", optimizer, OPTIMIZERS)
        self.lr = V.check_positive_float("lr", lr)
        self.clip_norm = _optional_positive_float("clip_norm", clip_norm)
        self.clip_value = _optional_positive_float("clip_value", clip_value)
        self.seed = None if seed is None else V.check_int("seed", seed)
        self.dtype = _keep(dtype, V.check_float_dtype("dtype", dtype).name)
        self.progress = progress
        F.checkpoint_plan(self.cell, 1, 1, self.hidden_size, self.dtype, checkpoint)  # checks
        self.checkpoint = checkpoint
        self._parts: dict[str, Any] = {}

    # --- scikit-learn conventions ----------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's hyper-parameters (scikit-learn's ``get_params``; ``deep`` is
        accepted for the contract: a model holds no nested estimators)."""
        del deep
        return {name: getattr(self, name) for name in self._signature()}

    def set_params(self, **params: Any) -> BaseModel:
        """Change hyper-parameters (checked as in the constructor); takes effect at the next
        ``fit``. Returns the model."""
        unknown = sorted(set(params) - set(self._signature()))
        if unknown:
            raise ValueError(
                f"unknown hyper-parameters {unknown} for {type(self).__name__}; "
                f"valid: {sorted(self._signature())}"
            )
        checked = type(self)(**{**self.get_params(), **params})
        for name in self._signature():
            setattr(self, name, getattr(checked, name))
        return self

    @classmethod
    def _signature(cls) -> dict[str, inspect.Parameter]:
        """The constructor's parameters, following ``**kwargs`` up to the base classes."""
        out: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            more = False
            for p in params:
                if p.kind is p.VAR_KEYWORD:
                    more = True
                elif p.name != "self" and p.kind is not p.VAR_POSITIONAL:
                    out.setdefault(p.name, p)
            if not more:
                break
        return out

    def __sklearn_tags__(self) -> Any:
        """The estimator tags of scikit-learn >= 1.6 (imported here, when scikit-learn
        asks: fastrnn does not depend on scikit-learn). Subclasses adjust them in
        :meth:`_adjust_tags`."""
        from sklearn.utils import ClassifierTags, InputTags, RegressorTags, Tags, TargetTags

        tags = Tags(
            estimator_type=self._estimator_type,
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags() if self._estimator_type == "classifier" else None,
            regressor_tags=RegressorTags() if self._estimator_type == "regressor" else None,
            input_tags=InputTags(two_d_array=False, three_d_array=True),
        )
        self._adjust_tags(tags)
        return tags

    def _adjust_tags(self, tags: Any) -> None:
        """Change the scikit-learn tags of this model family in place (default: none)."""

    def __repr__(self) -> str:
        defaults = {name: p.default for name, p in self._signature().items()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    @property
    def _dtype(self) -> np.dtype:
        dtype: np.dtype = np.dtype(self.dtype)
        return dtype

    def _check_fitted(self) -> None:
        if not self._parts:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit() before using it"
            )

    # --- parts ----------------------------------------------------------------------------

    def _rnn(
        self, input_size: int, rng: np.random.Generator, *, bidirectional: bool = False
    ) -> layers.RNN | layers.LSTM | layers.GRU:
        cls: type[layers.RNN | layers.LSTM | layers.GRU] = getattr(layers, _LAYERS[self.cell])
        kwargs: dict[str, Any] = {
            "bidirectional": bidirectional,
            "batch_first": True,
            "init": self.init,
            "gain": self.gain,
            "seed": rng,
            "dtype": self._dtype,
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "input_dropout": self.input_dropout,
            "checkpoint": self.checkpoint,
        }
        if self.cell == "rnn":
            kwargs.update(activation=self.activation, negative_slope=self.negative_slope)
        return cls(input_size, self.hidden_size, self.num_layers, **kwargs)

    def _linear(self, n_in: int, n_out: int, rng: np.random.Generator) -> layers.Linear:
        return layers.Linear(n_in, n_out, seed=rng, dtype=self._dtype)

    def _embedding(
        self,
        num_embeddings: int,
        embedding_dim: int | None,
        rng: np.random.Generator,
        part: str = "embed",
    ) -> None:
        """Add the part ``part`` (an :class:`~fastrnn.layers.Embedding`) unless
        ``embedding_dim`` is None (one-hot input)."""
        if embedding_dim is not None:
            self._parts[part] = layers.Embedding(
                num_embeddings, embedding_dim, seed=rng, dtype=self._dtype
            )

    def _token_features(self, ids: np.ndarray, depth: int, part: str = "embed") -> np.ndarray:
        """The recurrent input for token ``ids`` (n, T) in 0..depth-1: their vectors through
        the part ``part`` if the model has one, else the ids themselves (int64), which the
        recurrent layer reads as their one-hot rows (of ``depth``, its input size) without
        making them."""
        embed = self._parts.get(part)
        if embed is None:
            return np.asarray(ids, dtype=np.int64)  # (the layer checks them against depth)
        vectors: np.ndarray = embed.forward(ids)
        return vectors

    def _input_grad(self, part: str = "embed") -> bool:
        """Whether the recurrent stack's input has a gradient to compute: only the vectors
        of the part ``part`` (an embedding) do; features and token ids are fixed data."""
        return part in self._parts

    def _embed_backward(self, dx: np.ndarray | None, part: str = "embed") -> None:
        """Backpropagate dL/d(recurrent input) into the part ``part``, if any."""
        embed = self._parts.get(part)
        if embed is not None:
            embed.backward(dx)

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        """Create the parts from the fitted meta-data (sizes, classes)."""
        raise NotImplementedError

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        """Store ``meta``, build fresh parts from the seed (in evaluation mode); return the
        rng for training."""
        rng = np.random.default_rng(self.seed)
        self._meta = dict(meta)
        self._parts = {}
        self._build(self._meta, rng)
        for part in self._parts.values():
            part.eval()
        return rng

    @contextlib.contextmanager
    def _training_mode(self) -> Iterator[None]:
        """The parts in training mode for one training step, then back in evaluation mode."""
        for part in self._parts.values():
            part.train()
        try:
            yield
        finally:
            for part in self._parts.values():
                part.eval()

    # --- the Trainable protocol -----------------------------------------------------------

    def parameters(self) -> dict[str, np.ndarray]:
        """All parameter arrays as ``"part.name"`` (updated in place by the optimizer)."""
        return {f"{p}.{k}": v for p, part in self._parts.items() for k, v in part.params.items()}

    def _grads(self) -> dict[str, np.ndarray]:
        return {f"{p}.{k}": v for p, part in self._parts.items() for k, v in part.grads.items()}

    def loss_and_grads(self, batch: Sequence[np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """The loss on ``batch`` (the arrays ``fit`` trains on, indexed by sample) and the
        gradient of every parameter."""
        with self._training_mode():
            loss = self._loss_backward(batch)
        return loss, self._grads()

    def loss_weight(
        self, batch: Sequence[np.ndarray], start: int = 0, stop: int | None = None
    ) -> float:
        """How many terms the mean loss of ``batch`` (or of its steps ``start:stop``)
        averages: here the number of samples; the models whose loss averages over steps
        count those. Data-parallel training weights each rank's loss and gradients by it."""
        del start, stop
        return float(len(batch[0]))

    def loss(self, batch: Sequence[np.ndarray]) -> float:
        """The loss on ``batch`` without gradients (what :func:`fastrnn.training.evaluate`
        uses for validation data); an inference forward."""
        return self._loss_backward(batch, backward=False)

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        """The loss on ``batch``; with ``backward``, also fill every part's grads."""
        raise NotImplementedError

    def _train(
        self,
        data: tuple[np.ndarray, ...],
        rng: np.random.Generator,
        validation_data: tuple[np.ndarray, ...] | None = None,
        *,
        tbptt: int | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> None:
        comm = D.fit_comm()
        self._fit_rank = D.rank(comm)
        self.history_ = training.train(
            self,
            data,
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            clip_norm=self.clip_norm,
            clip_value=self.clip_value,
            shuffle=True,
            seed=int(rng.integers(2**31)),
            validation_data=validation_data,
            progress=self.progress,
            tbptt=tbptt,
            comm=comm,
            callbacks=callbacks,
        )

    # --- input checks ---------------------------------------------------------------------

    def _check_X(self, X: object, name: str = "X", *, ndim: int = 3) -> np.ndarray:
        """``X`` as a (n, T, D) array (``ndim=2``: (n, D)) of the model's dtype, free of NaN
        and inf (checked before anything is computed); D must match a fitted model."""
        arr = V.as_numeric_array(name, X, self._dtype)
        layout = "(n_samples, T, n_features)" if ndim == 3 else "(n_samples, n_features)"
        if arr.ndim != ndim or min(arr.shape[:-1], default=0) < 1:
            steps = " and T >= 1" if ndim == 3 else ""
            raise ValueError(
                f"{name} has shape {arr.shape}, expected {layout} with n_samples >= 1"
                f"{steps} (samples first)"
            )
        D = self._meta.get("input_size") if self._parts else None
        if D is not None and arr.shape[-1] != D:
            fitted = f"(n_samples, T, {D})" if ndim == 3 else f"(n_samples, {D})"
            raise ValueError(
                f"{name} has shape {arr.shape}, expected {fitted}: the model was "
                f"fitted on {D} features"
            )
        return arr

    # --- saving ---------------------------------------------------------------------------

    def _save_state(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()
        config = {"params": self.get_params(), "meta": self._meta}
        return type(self).__name__, config, dict(self.parameters())

    @classmethod
    def _from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> BaseModel:
        model = cls(**config["params"])
        model._setup(dict(config["meta"]))
        for name, part in model._parts.items():
            part.load_state_dict(_io.subdict(arrays, f"{name}."))
        unknown = set(arrays) - set(model.parameters())
        if unknown:
            raise ValueError(f"unexpected arrays {sorted(unknown)}")
        return model

    def save(self, path: Any) -> None:
        """Save the fitted model to a ``.npz`` file (load it with :func:`fastrnn.load`).

        After ``fit(..., comm=comm)`` only rank 0 writes; on the other ranks (which hold
        the same parameters) ``save`` and :func:`fastrnn.save` do nothing, so one script
        runs unchanged on every rank."""
        _io.save(self, path)
