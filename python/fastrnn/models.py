"""Ready models for the course's architectures, in the style of scikit-learn estimators.

Every model takes its hyper-parameters in the constructor, learns with ``fit`` (which
returns the model), predicts with ``predict`` (and ``predict_proba`` where it means
something) and takes samples-first input: ``X`` of shape (n_samples, T, D), with optional
``lengths`` (n_samples,) for sequences shorter than T (later steps are padding).

- :class:`SequenceClassifier` (many-to-one): a label per sequence, sigmoid for two
  classes, softmax for more; with T=1 it is the one-to-one network;
- :class:`SequenceRegressor` (many-to-one): a real number or vector per sequence (MSE);
- :class:`SequenceTagger` (many-to-many, synchronised): a label per step;
- :class:`CharLanguageModel` (many-to-many): the next character, ``generate(prompt, n)``;
- :class:`SequenceGenerator` (one-to-many): a token sequence from one input vector;
- :class:`Seq2Seq` (encoder-decoder): token sequences from input sequences of another,
  variable length (translation), teacher forcing in training, greedy decoding.

Shared hyper-parameters: ``hidden_size``; ``cell`` (``"rnn"``, ``"lstm"``, ``"gru"``);
``num_layers``; ``bidirectional`` (encoders that see the whole sequence only);
``activation`` and ``negative_slope`` (rnn only: tanh, relu, leaky_relu, identity);
``init`` and ``gain`` (see :func:`fastrnn.init_params`; ``init="identity"`` with relu is
the IRNN); training: ``epochs``, ``batch_size``, ``optimizer`` (``"sgd"``,
``"momentum"``, ``"adam"``), ``lr``, ``clip_norm``, ``clip_value``; ``seed`` (the same
seed gives the same model and predictions); ``dtype``; ``progress`` (a tqdm bar; ``None``
shows it on a terminal for long runs).

Models train through :func:`fastrnn.training.train` (they implement its ``Trainable``
protocol: :meth:`parameters` and :meth:`loss_and_grads`) and save through
:mod:`fastrnn.io`: ``model.save(path)`` / ``fastrnn.load(path)`` give identical
predictions.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import functional as F
from . import io as _io
from . import layers, losses, training
from .datasets import PAD, CharCorpus, char_corpus, one_hot

__all__ = [
    "CharLanguageModel",
    "NotFittedError",
    "Seq2Seq",
    "SequenceClassifier",
    "SequenceGenerator",
    "SequenceRegressor",
    "SequenceTagger",
]

_LAYERS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
OPTIMIZERS = ("sgd", "momentum", "adam")


class NotFittedError(ValueError, AttributeError):
    """A model was used before :meth:`fit` (as scikit-learn's ``NotFittedError``)."""


# --- argument checks ------------------------------------------------------------------------


def _pos_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _pos_float(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a positive float, got {type(value).__name__}")
    if not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    return float(value)


def _int_array(name: str, value: object, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    return arr.astype(np.int64, copy=False)


def _lengths(lengths: object, n: int, T: int) -> np.ndarray:
    """``lengths`` validated by the functional core, as int64 (n,), filled with T if None."""
    lens = F._check_lengths(lengths, T, n)
    return np.full(n, T, dtype=np.int64) if lens is None else lens


def _state_h(state: layers.State) -> np.ndarray:
    return state[0] if isinstance(state, tuple) else state


# --- the shared base --------------------------------------------------------------------------


class _Model:
    """Hyper-parameters, parts, parameters, training and saving shared by every model."""

    _causal = False  # decoders and language models must read left to right

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
        epochs: int = 100,
        batch_size: int = 32,
        optimizer: str = "adam",
        lr: float = 0.01,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        seed: int | None = None,
        dtype: Any = "float32",
        progress: bool | None = None,
    ) -> None:
        self.hidden_size = _pos_int("hidden_size", hidden_size)
        self.cell = F._check_choice("cell", cell, F.CELLS)
        self.num_layers = _pos_int("num_layers", num_layers)
        self.bidirectional = bool(bidirectional)
        if self.bidirectional and self._causal:
            raise ValueError(
                f"bidirectional=True is not supported by {type(self).__name__}: it generates "
                "tokens left to right (its decoder cannot read the future)"
            )
        self.activation = F._check_choice("activation", activation, F.ACTIVATIONS)
        if cell != "rnn" and activation != "tanh":
            raise ValueError(f"activation applies to cell 'rnn' only, got cell {cell!r}")
        self.negative_slope = F._check_slope(negative_slope)
        self.init = F._check_choice("init", init, F.INITS)
        self.gain = float(_pos_float("gain", gain))
        self.epochs = _pos_int("epochs", epochs)
        self.batch_size = _pos_int("batch_size", batch_size)
        self.optimizer = F._check_choice("optimizer", optimizer, OPTIMIZERS)
        self.lr = _pos_float("lr", lr)
        self.clip_norm = _pos_float("clip_norm", clip_norm, allow_none=True)
        self.clip_value = _pos_float("clip_value", clip_value, allow_none=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = None if seed is None else int(seed)
        dt = np.dtype(dtype)
        if dt not in F.DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        self.dtype = dt.name
        self.progress = progress
        self._parts: dict[str, Any] = {}

    # --- scikit-learn conventions ----------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """The constructor's hyper-parameters (as scikit-learn's ``get_params``)."""
        return {name: getattr(self, name) for name in self._signature()}

    def set_params(self, **params: Any) -> _Model:
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
            params = inspect.signature(klass.__init__).parameters.values()
            more = False
            for p in params:
                if p.kind is p.VAR_KEYWORD:
                    more = True
                elif p.name != "self" and p.kind is not p.VAR_POSITIONAL:
                    out.setdefault(p.name, p)
            if not more:
                break
        return out

    def __repr__(self) -> str:
        defaults = {name: p.default for name, p in self._signature().items()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    @property
    def _dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def _check_fitted(self) -> None:
        if not self._parts:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit() before using it"
            )

    # --- parts ----------------------------------------------------------------------------

    def _rnn(self, input_size: int, rng: np.random.Generator, *, bidirectional: bool = False):
        cls = getattr(layers, _LAYERS[self.cell])
        kwargs: dict[str, Any] = {
            "bidirectional": bidirectional,
            "batch_first": True,
            "init": self.init,
            "gain": self.gain,
            "seed": rng,
            "dtype": self._dtype,
        }
        if self.cell == "rnn":
            kwargs.update(activation=self.activation, negative_slope=self.negative_slope)
        return cls(input_size, self.hidden_size, self.num_layers, **kwargs)

    def _linear(self, n_in: int, n_out: int, rng: np.random.Generator) -> layers.Linear:
        return layers.Linear(n_in, n_out, seed=rng, dtype=self._dtype)

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        """Create the parts from the fitted meta-data (sizes, classes)."""
        raise NotImplementedError

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        """Store ``meta``, build fresh parts from the seed; return the rng for training."""
        rng = np.random.default_rng(self.seed)
        self._meta = dict(meta)
        self._parts = {}
        self._build(self._meta, rng)
        return rng

    # --- the Trainable protocol -----------------------------------------------------------

    def parameters(self) -> dict[str, np.ndarray]:
        """All parameter arrays as ``"part.name"`` (updated in place by the optimizer)."""
        return {f"{p}.{k}": v for p, part in self._parts.items() for k, v in part.params.items()}

    def _grads(self) -> dict[str, np.ndarray]:
        return {f"{p}.{k}": v for p, part in self._parts.items() for k, v in part.grads.items()}

    def loss_and_grads(self, batch: Sequence[np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """The loss on ``batch`` (the arrays ``fit`` trains on, indexed by sample) and the
        gradient of every parameter."""
        loss = self._loss_backward(batch)
        return loss, self._grads()

    def loss(self, batch: Sequence[np.ndarray]) -> float:
        """The loss on ``batch`` without gradients (what :func:`fastrnn.training.evaluate`
        uses for validation data)."""
        return self._loss_backward(batch, backward=False)

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        """The loss on ``batch``; with ``backward``, also fill every part's grads."""
        raise NotImplementedError

    def _train(
        self, data: tuple[np.ndarray, ...], rng: np.random.Generator, validation_data=None
    ) -> None:
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
            tbptt=getattr(self, "tbptt", None),
        )

    # --- input checks ---------------------------------------------------------------------

    def _check_X(self, X: object, name: str = "X") -> np.ndarray:
        """``X`` as a (n, T, D) array of the model's dtype; D must match a fitted model."""
        arr = np.asarray(X)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a numeric array (n_samples, T, D), got {arr.dtype}")
        if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(
                f"{name} has shape {arr.shape}, expected (n_samples, T, n_features) with "
                "n_samples >= 1 and T >= 1 (samples first)"
            )
        D = getattr(self, "_meta", {}).get("input_size") if self._parts else None
        if D is not None and arr.shape[2] != D:
            raise ValueError(
                f"{name} has shape {arr.shape}, expected (n_samples, T, {D}): the model was "
                f"fitted on {D} features"
            )
        return np.ascontiguousarray(arr, dtype=self._dtype)

    # --- saving ---------------------------------------------------------------------------

    def _save_state(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()
        config = {"params": self.get_params(), "meta": self._meta}
        return type(self).__name__, config, dict(self.parameters())

    @classmethod
    def _from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]):
        model = cls(**config["params"])
        model._setup(dict(config["meta"]))
        for name, part in model._parts.items():
            part.load_state_dict(_io.subdict(arrays, f"{name}."))
        unknown = set(arrays) - set(model.parameters())
        if unknown:
            raise ValueError(f"unexpected arrays {sorted(unknown)}")
        return model

    def save(self, path: Any) -> None:
        """Save the fitted model to a ``.npz`` file (load it with :func:`fastrnn.load`)."""
        _io.save(self, path)


# --- many-to-one ------------------------------------------------------------------------------


class _ManyToOne(_Model):
    """An RNN stack read to each sequence's last real step, then a linear head."""

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        self._parts["rnn"] = self._rnn(meta["input_size"], rng, bidirectional=self.bidirectional)
        dirs = 2 if self.bidirectional else 1
        self._parts["head"] = self._linear(dirs * self.hidden_size, meta["n_outputs"], rng)

    def _outputs(self, X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Head outputs (n, n_outputs) from the top layer's final state (both directions)."""
        X = X[:, : int(lengths.max())]
        _, state = self._parts["rnn"].forward(X, lengths=lengths)
        h = _state_h(state)
        dirs = 2 if self.bidirectional else 1
        self._h_shape = h.shape
        feat = np.concatenate(list(h[-dirs:]), axis=-1)
        return self._parts["head"].forward(feat)

    def _outputs_backward(self, dout: np.ndarray) -> None:
        dfeat = self._parts["head"].backward(dout)
        dirs = 2 if self.bidirectional else 1
        H = self.hidden_size
        dh = np.zeros(self._h_shape, dtype=dfeat.dtype)
        for d in range(dirs):
            dh[dh.shape[0] - dirs + d] = dfeat[:, d * H : (d + 1) * H]
        self._parts["rnn"].backward(None, (dh, None) if self.cell == "lstm" else dh)

    def _check_Xy(self, X, y, lengths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = self._check_X(X)
        y = np.asarray(y)
        if y.ndim < 1 or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"y has shape {y.shape}, expected ({X.shape[0]}, ...): one target per sample of X"
            )
        return X, y, _lengths(lengths, X.shape[0], X.shape[1])

    def _predict_outputs(self, X, lengths) -> np.ndarray:
        self._check_fitted()
        X = self._check_X(X)
        return self._outputs(X, _lengths(lengths, X.shape[0], X.shape[1]))


@_io.register("SequenceClassifier")
class SequenceClassifier(_ManyToOne):
    """Many-to-one classification: a label per sequence.

    Two classes use one output with a sigmoid and binary cross-entropy; more use softmax
    and cross-entropy. ``classes_`` holds the sorted labels seen in ``fit``. With T=1 it is
    the one-to-one network of the course (a plain feed-forward classifier).
    """

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        *,
        validation_data: tuple | None = None,
    ) -> SequenceClassifier:
        """Learn from ``X`` (n, T, D), labels ``y`` (n,) and optional ``lengths`` (n,).

        ``validation_data``: ``(X_val, y_val)`` or ``(X_val, y_val, lengths_val)``, whose
        loss is recorded in ``history_``.
        """
        X, y, lens = self._check_Xy(X, y, lengths)
        if y.ndim != 1:
            raise ValueError(f"y has shape {y.shape}, expected ({X.shape[0]},): one label each")
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"y must hold at least 2 classes, got {classes.tolist()}")
        n_out = 1 if len(classes) == 2 else len(classes)
        rng = self._setup(
            {"input_size": X.shape[2], "n_outputs": n_out, "classes": classes.tolist()}
        )
        self.classes_ = classes
        val = None
        if validation_data is not None:
            Xv, yv, lv = self._check_Xy(*_unpack_validation(validation_data))
            val = (Xv, self._encode(yv), lv)
        self._train((X, self._encode(y), lens), rng, val)
        return self

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        rng = super()._setup(meta)
        self.classes_ = np.asarray(meta["classes"])
        return rng

    def _encode(self, y: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        if not np.array_equal(self.classes_[idx], y):
            unknown = sorted(set(np.asarray(y).tolist()) - set(self.classes_.tolist()))
            raise ValueError(f"y holds labels not seen in fit: {unknown[:5]}")
        return idx.astype(np.int64)

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        X, y, lens = batch
        out = self._outputs(X, lens)
        if out.shape[1] == 1:
            loss, dz = losses.bce_with_logits(out[:, 0], y.astype(out.dtype))
            dz = dz[:, None]
        else:
            loss, dz = losses.softmax_cross_entropy(out, y)
        if backward:
            self._outputs_backward(dz)
        return loss

    def predict_proba(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        z = self._predict_outputs(X, lengths)
        if z.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """The most probable label of each sequence (n,)."""
        self._check_fitted()
        return self.classes_[self.predict_proba(X, lengths).argmax(axis=1)]

    def score(self, X: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
        """Accuracy on ``(X, y)``."""
        return float(np.mean(self.predict(X, lengths) == np.asarray(y)))


@_io.register("SequenceRegressor")
class SequenceRegressor(_ManyToOne):
    """Many-to-one regression: a real number (``y`` of shape (n,)) or vector ((n, k)) per
    sequence, trained with mean squared error."""

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        *,
        validation_data: tuple | None = None,
    ) -> SequenceRegressor:
        """Learn from ``X`` (n, T, D), targets ``y`` (n,) or (n, k), optional ``lengths``."""
        X, y, lens = self._check_Xy(X, y, lengths)
        if y.ndim > 2 or y.dtype.kind not in "biuf":
            raise ValueError(
                f"y has shape {y.shape} and dtype {y.dtype}, expected numbers (n,) or (n, k)"
            )
        y2 = y.reshape(len(y), -1).astype(self._dtype)
        rng = self._setup(
            {"input_size": X.shape[2], "n_outputs": y2.shape[1], "vector": y.ndim == 2}
        )
        val = None
        if validation_data is not None:
            Xv, yv, lv = self._check_Xy(*_unpack_validation(validation_data))
            val = (Xv, yv.reshape(len(yv), -1).astype(self._dtype), lv)
        self._train((X, y2, lens), rng, val)
        return self

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        X, y, lens = batch
        out = self._outputs(X, lens)
        loss, dout = losses.mse(out, y)
        if backward:
            self._outputs_backward(dout)
        return loss

    def predict(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Predictions (n,) or (n, k), the shape of the ``y`` given to ``fit``."""
        out = self._predict_outputs(X, lengths)
        return out if self._meta["vector"] else out[:, 0]

    def score(self, X: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
        """The coefficient of determination R^2 on ``(X, y)``."""
        y = np.asarray(y, dtype=np.float64)
        p = self.predict(X, lengths).astype(np.float64).reshape(y.shape)
        ss_res = np.sum((y - p) ** 2)
        ss_tot = np.sum((y - y.mean(axis=0)) ** 2)
        return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else 0.0


def _unpack_validation(data: object) -> tuple:
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise TypeError("validation_data must be (X, y) or (X, y, lengths)")
    return tuple(data) if len(data) == 3 else (*data, None)


# --- many-to-many, synchronised -------------------------------------------------------------


class _PerStep(_Model):
    """An RNN stack with a softmax head at every step: tagging and language modelling.

    With ``tbptt=k`` training runs truncated BPTT (the ``SupportsTBPTT`` protocol of
    :mod:`fastrnn.training`): each batch is cut into chunks of k steps, the state is
    carried from chunk to chunk and the gradient stops at chunk borders.
    """

    tbptt: int | None = None

    def _check_tbptt(self, tbptt: object) -> int | None:
        if tbptt is None:
            return None
        if self.bidirectional:
            raise ValueError("tbptt needs a unidirectional model (bidirectional=False)")
        return _pos_int("tbptt", tbptt)

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        self._parts["rnn"] = self._rnn(meta["input_size"], rng, bidirectional=self.bidirectional)
        dirs = 2 if self.bidirectional else 1
        self._parts["head"] = self._linear(dirs * self.hidden_size, meta["n_classes"], rng)

    def _chunk(
        self, batch: Sequence[np.ndarray], start: int, stop: int, state: Any, backward: bool
    ) -> tuple[float, Any]:
        """Loss of steps ``start:stop`` from ``state`` (gradient cut there); final state."""
        X, y, lens = batch
        chunk_lens = np.clip(lens - start, 0, stop - start)
        # sequences that already ended run one padded step; their loss is masked out
        out, final = self._parts["rnn"].forward(
            X[:, start:stop], state, lengths=np.maximum(chunk_lens, 1)
        )
        head, target = self._parts["head"], y[:, start:stop]
        mask = losses.mask_from_lengths(chunk_lens, stop - start, batch_first=True)
        if not backward:
            return losses.softmax_cross_entropy(head.forward(out), target, mask=mask)[0], final
        loss, dh = head.softmax_cross_entropy(out, target, mask=mask)  # fused head + loss
        self._parts["rnn"].backward(dh)
        return loss, final

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        return self._chunk(batch, 0, self.num_steps(batch), None, backward)[0]

    def num_steps(self, batch: Sequence[np.ndarray]) -> int:
        """The number of steps of ``batch`` (its longest sequence)."""
        return int(batch[2].max())

    def chunk_loss_and_grads(
        self, batch: Sequence[np.ndarray], start: int, stop: int, state: Any
    ) -> tuple[float, dict[str, np.ndarray], Any]:
        """Truncated BPTT: loss and gradients of steps ``start:stop`` from ``state``."""
        loss, final = self._chunk(batch, start, stop, state, True)
        return loss, self._grads(), final

    def _step_logits(self, X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        out, _ = self._parts["rnn"].forward(X, lengths=lengths)
        return self._parts["head"].forward(out)


def _softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = z.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@_io.register("SequenceTagger")
class SequenceTagger(_PerStep):
    """Many-to-many, synchronised: a label per step (e.g. next-token prediction, tagging).

    ``y`` (n, T) holds non-negative integer labels; steps beyond a sequence's length (and
    entries equal to :data:`fastrnn.datasets.PAD`) are ignored. ``classes_`` are the labels
    seen in ``fit``; ``predict`` fills padded steps with ``PAD`` (-1). ``tbptt``: train with
    truncated BPTT in chunks of this many steps (default: full BPTT).
    """

    def __init__(self, hidden_size: int = 32, *, tbptt: int | None = None, **kwargs: Any):
        super().__init__(hidden_size, **kwargs)
        self.tbptt = self._check_tbptt(tbptt)

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        *,
        validation_data: tuple | None = None,
    ) -> SequenceTagger:
        """Learn from ``X`` (n, T, D), labels ``y`` (n, T) and optional ``lengths`` (n,)."""
        X = self._check_X(X)
        y, lens = self._check_y(X, y, lengths)
        classes = np.unique(y[losses.mask_from_lengths(lens, X.shape[1], batch_first=True)])
        if classes[0] < 0:
            raise ValueError(f"y holds negative labels inside the sequences: {classes[:3]}")
        rng = self._setup(
            {"input_size": X.shape[2], "n_classes": len(classes), "classes": classes.tolist()}
        )
        val = None
        if validation_data is not None:
            Xv, yv, lv = _unpack_validation(validation_data)
            Xv = self._check_X(Xv, "validation X")
            yv, lv = self._check_y(Xv, yv, lv)
            val = (Xv, self._encode(yv, lv), lv)
        self._train((X, self._encode(y, lens), lens), rng, val)
        return self

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        rng = super()._setup(meta)
        self.classes_ = np.asarray(meta["classes"], dtype=np.int64)
        return rng

    def _check_y(self, X, y, lengths) -> tuple[np.ndarray, np.ndarray]:
        n, T = X.shape[:2]
        y = _int_array("y", y)
        if y.shape != (n, T):
            raise ValueError(f"y has shape {y.shape}, expected ({n}, {T}): a label per step of X")
        return y, _lengths(lengths, n, T)

    def _encode(self, y: np.ndarray, lens: np.ndarray) -> np.ndarray:
        mask = losses.mask_from_lengths(lens, y.shape[1], batch_first=True)
        idx = np.clip(np.searchsorted(self.classes_, y), 0, len(self.classes_) - 1)
        if np.any(mask & (self.classes_[idx] != y)):
            raise ValueError("y holds labels not seen in fit")
        return np.where(mask, idx, PAD)

    def predict_proba(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Per-step class probabilities (n, T, n_classes); zero rows at padded steps."""
        self._check_fitted()
        X = self._check_X(X)
        lens = _lengths(lengths, X.shape[0], X.shape[1])
        p = _softmax(self._step_logits(X, lens)).astype(self._dtype)
        p[~losses.mask_from_lengths(lens, X.shape[1], batch_first=True)] = 0
        return p

    def predict(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """The most probable label at every step (n, T); ``PAD`` at padded steps."""
        p = self.predict_proba(X, lengths)
        out = self.classes_[p.argmax(axis=-1)]
        out[p.sum(axis=-1) == 0] = PAD
        return out

    def score(self, X: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
        """Per-step accuracy over the real (unpadded) steps."""
        X = self._check_X(X)
        y, lens = self._check_y(X, y, lengths)
        mask = losses.mask_from_lengths(lens, X.shape[1], batch_first=True)
        return float(np.mean(self.predict(X, lens)[mask] == y[mask]))


@_io.register("CharLanguageModel")
class CharLanguageModel(_PerStep):
    """A character-level language model: predicts the next character at every step.

    ``fit(text)`` learns from a string (or a :class:`~fastrnn.datasets.CharCorpus`), cut
    into windows of ``seq_len`` characters (the state starts at zero in every window);
    ``tbptt=k`` additionally cuts the gradient every k steps inside a window while carrying
    the state across. ``generate(prompt, n)`` continues a prompt by sampling with a
    ``temperature`` or greedily. ``vocab_`` holds the characters.
    """

    _causal = True

    def __init__(
        self,
        hidden_size: int = 64,
        *,
        seq_len: int = 32,
        tbptt: int | None = None,
        cell: str = "lstm",
        num_layers: int = 1,
        activation: str = "tanh",
        negative_slope: float = 0.01,
        init: str = "uniform",
        gain: float = 1.0,
        epochs: int = 40,
        batch_size: int = 16,
        optimizer: str = "adam",
        lr: float = 0.01,
        clip_norm: float | None = 5.0,
        clip_value: float | None = None,
        seed: int | None = None,
        dtype: Any = "float32",
        progress: bool | None = None,
    ) -> None:
        super().__init__(
            hidden_size,
            cell=cell,
            num_layers=num_layers,
            activation=activation,
            negative_slope=negative_slope,
            init=init,
            gain=gain,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            lr=lr,
            clip_norm=clip_norm,
            clip_value=clip_value,
            seed=seed,
            dtype=dtype,
            progress=progress,
        )
        self.seq_len = _pos_int("seq_len", seq_len)
        self.tbptt = self._check_tbptt(tbptt)

    def fit(self, text: str | CharCorpus, y: None = None) -> CharLanguageModel:
        """Learn the text ``text`` (a str or a CharCorpus); windows of ``seq_len``
        characters start every ``seq_len // 2`` characters."""
        corpus = text if isinstance(text, CharCorpus) else char_corpus(text=text)
        data = corpus.windows(self.seq_len, step=max(1, self.seq_len // 2), dtype=self._dtype)
        V = corpus.vocab_size
        rng = self._setup({"input_size": V, "n_classes": V, "vocab": list(corpus.vocab)})
        lens = np.full(len(data.X), self.seq_len, dtype=np.int64)
        self._train((data.X, data.y, lens), rng)
        return self

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        rng = super()._setup(meta)
        self.vocab_ = tuple(meta["vocab"])
        self._corpus = CharCorpus(text="", vocab=self.vocab_)
        return rng

    def cross_entropy(self, text: str) -> float:
        """The mean cross-entropy per character (nats) of predicting ``text[1:]`` from
        ``text[:-1]`` in one pass; compare with the uniform baseline ln(len(vocab_))."""
        self._check_fitted()
        ids = self._corpus.encode(text)
        if len(ids) < 2:
            raise ValueError(f"text must have at least 2 characters, got {len(ids)}")
        x = one_hot(ids[None, :-1], len(self.vocab_), dtype=self._dtype)
        logits = self._step_logits(x, np.array([len(ids) - 1]))
        loss, _ = losses.softmax_cross_entropy(logits, ids[None, 1:])
        return loss

    def generate(
        self,
        prompt: str,
        n: int = 100,
        *,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> str:
        """``prompt`` followed by ``n`` generated characters.

        Each next character is drawn from softmax(logits / ``temperature``) (lower is more
        conservative), or taken as the most probable one with ``greedy=True``. ``seed``
        makes the sampling reproducible.
        """
        self._check_fitted()
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt must be a non-empty str, got {prompt!r}")
        n = int(n) if isinstance(n, (int, np.integer)) and not isinstance(n, bool) else -1
        if n < 0:
            raise ValueError("n must be an int >= 0")
        temperature = float(_pos_float("temperature", temperature))
        rng = np.random.default_rng(seed)
        V = len(self.vocab_)
        ids = self._corpus.encode(prompt)
        out, state = self._parts["rnn"].forward(one_hot(ids[None, :], V, dtype=self._dtype))
        logits = self._parts["head"].forward(out[:, -1])[0]
        generated = []
        for _ in range(n):
            if greedy:
                nxt = int(np.argmax(logits))
            else:
                nxt = int(rng.choice(V, p=_softmax(logits, temperature)))
            generated.append(nxt)
            x = one_hot(np.array([[nxt]]), V, dtype=self._dtype)
            out, state = self._parts["rnn"].forward(x, state)
            logits = self._parts["head"].forward(out[:, -1])[0]
        return prompt + self._corpus.decode(np.array(generated, dtype=np.int64))


# --- decoders: one-to-many and encoder-decoder ------------------------------------------------


class _Decoder(_Model):
    """A token decoder started from a state: teacher forcing in training, greedy decoding.

    Token ids 0..K-1 are the classes; id K is <start> as an input and <stop> as a target.
    Subclasses give the initial state (:meth:`_initial_state`) and its backward.
    """

    _causal = True

    def __init__(self, hidden_size: int = 32, *, max_length: int | None = None, **kwargs: Any):
        super().__init__(hidden_size, **kwargs)
        self.max_length = None if max_length is None else _pos_int("max_length", max_length)

    def _build_decoder(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        K = meta["n_classes"]
        self._parts["decoder"] = self._rnn(K + 1, rng)
        self._parts["head"] = self._linear(self.hidden_size, K + 1, rng)

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        rng = super()._setup(meta)
        self.classes_ = np.asarray(meta["classes"], dtype=np.int64)
        return rng

    def _check_targets(self, y, y_lengths, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = _int_array("y", y)
        if y.ndim != 2 or y.shape[0] != n or y.shape[1] < 1:
            raise ValueError(
                f"y has shape {y.shape}, expected ({n}, T_out): a token sequence per sample"
            )
        if y_lengths is None:
            real = y >= 0
            y_lengths = real.sum(axis=1)
            if not np.array_equal(
                real, losses.mask_from_lengths(y_lengths, y.shape[1], batch_first=True)
            ):
                raise ValueError("y has PAD (-1) entries inside sequences; pass y_lengths")
        lens = _lengths(y_lengths, n, y.shape[1]) if np.min(y_lengths) >= 1 else None
        if lens is None:
            raise ValueError("y_lengths must be >= 1: every target needs at least one token")
        return y, lens

    def _classes_meta(self, y: np.ndarray, lens: np.ndarray) -> dict[str, Any]:
        classes = np.unique(y[losses.mask_from_lengths(lens, y.shape[1], batch_first=True)])
        if classes[0] < 0:
            raise ValueError(f"y holds negative tokens inside the sequences: {classes[:3]}")
        return {"n_classes": len(classes), "classes": classes.tolist(), "max_len": int(lens.max())}

    def _encode(self, y: np.ndarray, lens: np.ndarray) -> np.ndarray:
        mask = losses.mask_from_lengths(lens, y.shape[1], batch_first=True)
        idx = np.clip(np.searchsorted(self.classes_, y), 0, len(self.classes_) - 1)
        if np.any(mask & (self.classes_[idx] != y)):
            raise ValueError("y holds tokens not seen in fit")
        return np.where(mask, idx, PAD)

    def _teacher_forcing(
        self, state0: layers.State, y: np.ndarray, lens: np.ndarray, backward: bool = True
    ) -> tuple[float, layers.State | None]:
        """Loss of predicting y then <stop> given the true previous tokens; returns the
        loss and (with ``backward``) the gradient w.r.t. ``state0``."""
        K = self._meta["n_classes"]
        B = y.shape[0]
        T = int(lens.max()) + 1
        t = np.arange(T)[None, :]
        prev = np.full((B, T), K, dtype=np.int64)
        prev[:, 1:] = np.where(t[:, 1:] <= lens[:, None], y[:, : T - 1], 0)
        yy = np.zeros((B, T), dtype=np.int64)
        yy[:, : T - 1] = np.maximum(y[:, : T - 1], 0)
        target = np.where(t < lens[:, None], yy, np.where(t == lens[:, None], K, 0))
        dec, head = self._parts["decoder"], self._parts["head"]
        out, _ = dec.forward(one_hot(prev, K + 1, dtype=self._dtype), state0, lengths=lens + 1)
        mask = losses.mask_from_lengths(lens + 1, T, batch_first=True)
        if not backward:
            return losses.softmax_cross_entropy(head.forward(out), target, mask=mask)[0], None
        loss, dh = head.softmax_cross_entropy(out, target, mask=mask)  # fused head + loss
        _, dstate0 = dec.backward(dh)
        return loss, dstate0

    def _greedy(self, state: layers.State, B: int, max_length: int | None) -> list[np.ndarray]:
        K = self._meta["n_classes"]
        limit = self.max_length or 2 * self._meta["max_len"] if max_length is None else max_length
        dec, head = self._parts["decoder"], self._parts["head"]
        tok = np.full(B, K, dtype=np.int64)
        tokens = np.zeros((B, limit), dtype=np.int64)
        length = np.full(B, limit, dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        for t in range(limit):
            out, state = dec.forward(one_hot(tok[:, None], K + 1, dtype=self._dtype), state)
            tok = head.forward(out[:, 0]).argmax(axis=-1)
            tokens[:, t] = tok
            stop = (tok == K) & ~done
            length[stop] = t
            done |= stop
            if done.all():
                break
        return [self.classes_[tokens[b, : length[b]]] for b in range(B)]


@_io.register("SequenceGenerator")
class SequenceGenerator(_Decoder):
    """One-to-many: a token sequence from one input vector (image features, a style code).

    ``fit(X, y)``: ``X`` (n, D) one vector per sample, ``y`` (n, T_out) integer tokens
    (padded with -1, or with ``y_lengths``). The vector sets the decoder's initial state
    ``h0 = tanh(W x + b)`` (every layer; the LSTM cell state starts at 0); the decoder
    is trained with teacher forcing (it reads the true previous token) and stops with a
    learned <stop> token. ``predict(X)`` decodes greedily: a list of token arrays.
    """

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        self._parts["init"] = self._linear(
            meta["input_size"], self.num_layers * self.hidden_size, rng
        )
        self._build_decoder(meta, rng)

    def _check_codes(self, X: object) -> np.ndarray:
        arr = np.asarray(X)
        if arr.dtype.kind not in "biuf" or arr.ndim != 2 or arr.shape[0] < 1:
            raise ValueError(
                f"X has shape {arr.shape} and dtype {arr.dtype}, expected numbers "
                "(n_samples, n_features): one vector per sample"
            )
        D = self._meta["input_size"] if self._parts else None
        if D is not None and arr.shape[1] != D:
            raise ValueError(f"X has shape {arr.shape}, expected (n_samples, {D})")
        return np.ascontiguousarray(arr, dtype=self._dtype)

    def fit(
        self, X: np.ndarray, y: np.ndarray, y_lengths: np.ndarray | None = None
    ) -> SequenceGenerator:
        """Learn to emit ``y`` (n, T_out) tokens from the vectors ``X`` (n, D)."""
        X = self._check_codes(X)
        y, lens = self._check_targets(y, y_lengths, X.shape[0])
        rng = self._setup({"input_size": X.shape[1], **self._classes_meta(y, lens)})
        self._train((X, self._encode(y, lens), lens), rng)
        return self

    def _initial_state(self, X: np.ndarray) -> layers.State:
        pre = self._parts["init"].forward(X)
        B, L, H = X.shape[0], self.num_layers, self.hidden_size
        self._h0 = np.tanh(pre)
        h0 = np.ascontiguousarray(self._h0.reshape(B, L, H).transpose(1, 0, 2))
        return (h0, np.zeros_like(h0)) if self.cell == "lstm" else h0

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        X, y, lens = batch
        loss, dstate = self._teacher_forcing(self._initial_state(X), y, lens, backward)
        if dstate is None:
            return loss
        dh0 = _state_h(dstate)
        B = X.shape[0]
        dpre = dh0.transpose(1, 0, 2).reshape(B, -1) * (1.0 - self._h0**2)
        self._parts["init"].backward(dpre.astype(self._dtype, copy=False))
        return loss

    def predict(self, X: np.ndarray, *, max_length: int | None = None) -> list[np.ndarray]:
        """Greedy decoding: the token sequence (without <stop>) for each vector of ``X``;
        at most ``max_length`` tokens (default: the constructor's, or twice the longest
        training target)."""
        self._check_fitted()
        X = self._check_codes(X)
        return self._greedy(self._initial_state(X), X.shape[0], max_length)


@_io.register("Seq2Seq")
class Seq2Seq(_Decoder):
    """Encoder-decoder for input and output sequences of different, variable lengths.

    The encoder (an RNN stack over ``X`` with ``lengths``) hands its final state to the
    decoder (the same cell and size), which is trained with teacher forcing and decodes
    greedily until it emits <stop>. ``fit(X, y, lengths, y_lengths)``: ``X`` (n, T_in, D),
    ``y`` (n, T_out) integer tokens padded with -1 (or real lengths in ``y_lengths``).
    ``predict`` returns a list of token arrays.
    """

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        self._parts["encoder"] = self._rnn(meta["input_size"], rng)
        self._build_decoder(meta, rng)

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        y_lengths: np.ndarray | None = None,
    ) -> Seq2Seq:
        """Learn to translate ``X`` (n, T_in, D) with ``lengths`` into tokens ``y``."""
        X = self._check_X(X)
        lens = _lengths(lengths, X.shape[0], X.shape[1])
        y, ylens = self._check_targets(y, y_lengths, X.shape[0])
        rng = self._setup({"input_size": X.shape[2], **self._classes_meta(y, ylens)})
        self._train((X, lens, self._encode(y, ylens), ylens), rng)
        return self

    def _encode_inputs(self, X: np.ndarray, lens: np.ndarray) -> layers.State:
        _, state = self._parts["encoder"].forward(X[:, : int(lens.max())], lengths=lens)
        return state

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        X, lens, y, ylens = batch
        loss, dstate = self._teacher_forcing(self._encode_inputs(X, lens), y, ylens, backward)
        if dstate is not None:
            self._parts["encoder"].backward(None, dstate)
        return loss

    def predict(
        self, X: np.ndarray, lengths: np.ndarray | None = None, *, max_length: int | None = None
    ) -> list[np.ndarray]:
        """Greedy decoding: the output tokens (without <stop>) for each input sequence."""
        self._check_fitted()
        X = self._check_X(X)
        lens = _lengths(lengths, X.shape[0], X.shape[1])
        return self._greedy(self._encode_inputs(X, lens), X.shape[0], max_length)

    def score(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        y_lengths: np.ndarray | None = None,
    ) -> float:
        """Exact-match accuracy: the share of sequences decoded exactly right."""
        X = self._check_X(X)
        y, ylens = self._check_targets(y, y_lengths, X.shape[0])
        pred = self.predict(X, lengths)
        return float(np.mean([np.array_equal(p, y[i, : ylens[i]]) for i, p in enumerate(pred)]))
