"""The training loop used by every model: :func:`train`.

What it trains is anything that follows the :class:`Trainable` protocol: a flat dict of
parameter arrays (updated in place) and a method that returns the loss of a batch and
its gradients. The data is a sequence of arrays with the sample axis first, e.g.
``(X, y)`` or ``(X, y, lengths)``; a batch is the same tuple of arrays indexed by the
batch's sample indices (a single array gives single-array batches).

Truncated BPTT
--------------
``train(..., tbptt=k)`` cuts every batch into time chunks of ``k`` steps. The model then
also implements :class:`SupportsTBPTT`:

- ``num_steps(batch) -> int``: the number of time steps T of the batch;
- ``chunk_loss_and_grads(batch, start, stop, state) -> (loss, grads, state)``: the loss
  and gradients of the steps ``start:stop`` only, starting from ``state`` (``None`` for
  the first chunk: the model's usual initial state) and returning the final state.

The loop carries the state from chunk to chunk within a batch (never across batches) and
makes one optimizer step per chunk; the gradient is cut at chunk borders because the
model treats the incoming state as a constant. With ``k >= T`` there is one chunk per
batch, which must equal ``loss_and_grads(batch)`` (full BPTT); the tests check this for
a reference model. The recorded batch loss is the mean of the chunk losses weighted by
the chunk lengths.

Callbacks
---------
``train(..., callbacks=[...])`` takes objects with any of the hooks of :class:`Callback`
(subclass it, or use :class:`LambdaCallback` with plain functions):

- ``on_train_begin(context)``: a :class:`TrainingContext` (the model, the optimizer, the
  history, and ``stop_training``, which a callback sets to end training);
- ``on_batch_end(step, logs)``: after every batch (all its truncated-BPTT chunks);
  ``step`` counts the batches of this call from 1; ``logs`` holds ``loss`` (the batch's),
  ``epoch``, ``batch`` (its number in the epoch, from 1), ``size`` and ``lr``;
- ``on_epoch_end(epoch, logs)``: after every epoch (``epoch`` counts on across calls that
  continue a history); ``logs`` holds ``loss``, ``grad_norm``, ``lr`` and, with
  validation data, ``val_loss``. A callback may add entries (e.g. a validation accuracy);
  the callbacks after it see them, and the :class:`History` records them;
- ``on_train_end(context)``: once, when training ends normally (all epochs run or
  ``stop_training`` set), not when it stops with an error.

They run in the order given. Built in: :class:`EarlyStopping` (stop when a validation
metric stops improving, restoring the best weights), :class:`ModelCheckpoint` (save
the model to a file with :func:`fastrnn.save`) and the learning-rate schedules of
:mod:`fastrnn.optim` (:class:`~fastrnn.optim.StepLR`,
:class:`~fastrnn.optim.CosineAnnealingLR`, :class:`~fastrnn.optim.LinearLR`,
:class:`~fastrnn.optim.SequentialLR`), which step once per epoch.

Failures
--------
A loss or gradient that is NaN or infinite stops training with a
:class:`FloatingPointError` naming the epoch, the step (and, for a gradient, the
parameter), and suggesting gradient clipping or a lower learning rate.

Data-parallel training (MPI)
----------------------------
``train(..., comm=MPI.COMM_WORLD)`` (an mpi4py communicator; see
:mod:`fastrnn.distributed`) trains on every process ("rank") of the communicator
together. Every rank calls ``train`` with the same model, data and settings; the
shuffling follows rank 0's ``seed`` and every rank starts from rank 0's parameters. Each
global batch (the samples one process would take with this ``batch_size``) is split
across the ranks with ``np.array_split`` (uneven splits are fine; a rank may get no
sample). Each rank computes the loss and gradients of its share; one in-place
``Allreduce`` per optimizer step sums them, each weighted by the number of terms its
mean loss averages (``model.loss_weight(batch[, start, stop])`` when the model has it,
else the number of samples), and divides by the total: the single-process mean over the
whole batch. Clipping, the NaN check and the optimizer step then run on the summed
gradient on every rank, so every rank ends with the same parameters, equal to the
single-process run up to the rounding of the summation order. Truncated BPTT cuts the
global batch's steps (the longest over the ranks). The history and the logs are the same
on every rank; validation batches are shared out and their loss summed. Only rank 0
shows the progress bar and runs the callbacks marked ``root_only``
(:class:`ModelCheckpoint`); the other callbacks run on every rank, and training stops
when a callback on any rank sets ``stop_training``. A NaN or infinite loss or gradient
on any rank stops every rank with the same :class:`FloatingPointError`. Any other
exception on one rank leaves the others waiting in the next ``Allreduce``: run the
script with ``mpiexec -n N python -m mpi4py script.py``, which aborts the whole job on
an uncaught exception.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import _validation as V
from . import distributed as D
from . import io as _io
from .optim import (
    Optimizer,
    clip_grad_norm,
    clip_grad_value,
    global_norm,
    make_optimizer,
)


@runtime_checkable
class Trainable(Protocol):
    """What :func:`train` trains (the models of :mod:`fastrnn.models` implement it)."""

    def parameters(self) -> dict[str, np.ndarray]:
        """Flat dict name -> array with unique keys; the arrays are updated in place."""
        ...

    def loss_and_grads(self, batch: Any) -> tuple[float, dict[str, np.ndarray]]:
        """The loss of ``batch`` and its gradients (keys of :meth:`parameters`)."""
        ...


@runtime_checkable
class SupportsTBPTT(Trainable, Protocol):
    """A :class:`Trainable` that can also be trained with truncated BPTT."""

    def num_steps(self, batch: Any) -> int:
        """The number of time steps T of ``batch``."""
        ...

    def chunk_loss_and_grads(
        self, batch: Any, start: int, stop: int, state: Any
    ) -> tuple[float, dict[str, np.ndarray], Any]:
        """Loss and gradients of steps ``start:stop`` from ``state``; and the final state."""
        ...


class History:
    """What :func:`train` records.

    ``history["loss"]`` (= ``history.loss``): the training loss of every epoch (the mean
    of its batch losses weighted by batch size); ``history["val_loss"]`` likewise on the
    validation data, when given; ``history["grad_norm"]``: the mean global gradient norm
    (before clipping) of each epoch; ``history["lr"]``: the learning rate of each epoch
    (what a schedule set at its start); ``history["step_loss"]``: the loss of every
    optimizer step. :meth:`record` adds any other series (so do callbacks that add
    entries to the epoch's logs).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs = 0

    def record(self, name: str, value: float) -> None:
        """Append ``value`` to the series ``name``."""
        self.history.setdefault(name, []).append(float(value))

    def __getitem__(self, name: str) -> list[float]:
        return self.history[name]

    def __contains__(self, name: object) -> bool:
        return name in self.history

    def keys(self) -> list[str]:
        return list(self.history)

    @property
    def loss(self) -> list[float]:
        return self.history.get("loss", [])

    @property
    def val_loss(self) -> list[float]:
        return self.history.get("val_loss", [])

    def __repr__(self) -> str:
        last = ", ".join(
            f"{k}={v[-1]:.4g}" for k, v in self.history.items() if v and k != "step_loss"
        )
        return f"History(epochs={self.epochs}{', ' + last if last else ''})"


# --- data -----------------------------------------------------------------------------


def _as_arrays(name: str, data: object) -> tuple[tuple[np.ndarray, ...], bool, int]:
    """(arrays, single, n_samples) for ``data``: one array or a sequence of arrays."""
    if isinstance(data, np.ndarray):
        arrays: tuple[np.ndarray, ...] = (data,)
        single = True
    elif isinstance(data, Sequence) and not isinstance(data, str) and len(data) > 0:
        arrays, single = tuple(np.asarray(a) for a in data), False
    else:
        raise TypeError(
            f"{name} must be an array or a tuple of arrays with the sample axis first, "
            f"e.g. (X, y) or (X, y, lengths); got {type(data).__name__}"
        )
    for i, a in enumerate(arrays):
        if a.ndim == 0:
            raise ValueError(f"{name}[{i}] is a scalar; every array needs a sample axis first")
    n = arrays[0].shape[0]
    sizes = [a.shape[0] for a in arrays]
    if any(s != n for s in sizes):
        raise ValueError(
            f"the arrays of {name} have different numbers of samples (first axis): {sizes}"
        )
    if n == 0:
        raise ValueError(f"{name} has no samples")
    return arrays, single, n


def _take(arrays: tuple[np.ndarray, ...], single: bool, idx: np.ndarray) -> Any:
    batch = tuple(a[idx] for a in arrays)
    return batch[0] if single else batch


def _check_finite(loss: float, grads: Mapping[str, np.ndarray], where: str) -> float:
    """Raise FloatingPointError for a non-finite loss/gradient; return the global norm."""
    hint = (
        "the gradients are exploding or the learning rate is too high: try gradient "
        "clipping (clip_norm=1.0 or clip_value=...) or a lower learning rate"
    )
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss} at {where}; {hint}")
    norm = global_norm(grads)
    if not math.isfinite(norm):
        bad = [k for k, g in grads.items() if not np.all(np.isfinite(g))]
        raise FloatingPointError(
            f"the gradient of {', '.join(bad[:5])} became NaN or infinite at {where} "
            f"(loss {loss:.6g}); {hint}"
        )
    return norm


class _ProgressBar(Protocol):
    """What :func:`train` uses of a tqdm bar (tqdm ships no type information)."""

    def update(self, n: int = 1) -> object: ...
    def set_postfix(self, *, refresh: bool = True, **kwargs: object) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, enabled: bool | None, desc: str) -> _ProgressBar | None:
    """A tqdm bar, or None when disabled (progress=False, or not a terminal by default)."""
    delay = 0.0
    if enabled is None:  # automatic: on a terminal, and only for runs longer than a second
        enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        delay = 1.0
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar: _ProgressBar = tqdm(
        total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True, delay=delay
    )
    return bar


# --- callbacks ------------------------------------------------------------------------------

HOOKS: tuple[str, ...] = ("on_train_begin", "on_batch_end", "on_epoch_end", "on_train_end")
"""The hooks :func:`train` calls on each callback that has them."""


@dataclass
class TrainingContext:
    """What the callbacks of one :func:`train` call share: the ``model``, the
    ``optimizer`` the loop steps, the ``history`` it records into, the number of
    ``epochs`` asked for, and ``stop_training``: set it to True to end training after
    the current batch (the epoch is then closed with the batches done)."""

    model: Any
    optimizer: Optimizer
    history: History
    epochs: int
    stop_training: bool = False


class Callback:
    """Base class of callbacks (see the module docstring): every hook does nothing, and
    :meth:`on_train_begin` keeps the :class:`TrainingContext` as ``self.context``.

    ``root_only``: in data-parallel training (``train(..., comm=...)``) run this callback
    on rank 0 only (for callbacks that write files or print); by default callbacks run on
    every rank, which see the same logs."""

    context: TrainingContext | None = None
    root_only: bool = False

    def on_train_begin(self, context: TrainingContext) -> None:
        self.context = context

    def on_batch_end(self, step: int, logs: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self, context: TrainingContext) -> None:
        pass


class LambdaCallback(Callback):
    """A callback from plain functions, e.g.
    ``LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))``."""

    def __init__(
        self,
        *,
        on_train_begin: Callable[[TrainingContext], Any] | None = None,
        on_batch_end: Callable[[int, dict[str, float]], Any] | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], Any] | None = None,
        on_train_end: Callable[[TrainingContext], Any] | None = None,
    ) -> None:
        given = dict(
            on_train_begin=on_train_begin,
            on_batch_end=on_batch_end,
            on_epoch_end=on_epoch_end,
            on_train_end=on_train_end,
        )
        for name, fn in given.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function, got {type(fn).__name__}")
        self._fns: dict[str, Callable[..., Any]] = {k: v for k, v in given.items() if v is not None}

    def _run(self, hook: str, *args: Any) -> None:
        fn = self._fns.get(hook)
        if fn is not None:
            fn(*args)

    def on_train_begin(self, context: TrainingContext) -> None:
        super().on_train_begin(context)
        self._run("on_train_begin", context)

    def on_batch_end(self, step: int, logs: dict[str, float]) -> None:
        self._run("on_batch_end", step, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self._run("on_epoch_end", epoch, logs)

    def on_train_end(self, context: TrainingContext) -> None:
        self._run("on_train_end", context)


class _Monitor:
    """The best value so far of one metric of the epoch logs, lower or higher is better."""

    def __init__(self, owner: str, monitor: object, mode: object, min_delta: object) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a str, got {type(monitor).__name__}")
        mode = V.check_choice("mode", mode, ("auto", "min", "max"))
        if mode == "auto":  # as Keras: accuracies grow, everything else (losses) shrinks
            mode = "max" if "acc" in monitor else "min"
        self.owner, self.monitor, self.mode = owner, monitor, mode
        self.min_delta = V.check_non_negative_float("min_delta", min_delta)
        self.best = math.inf if mode == "min" else -math.inf

    def improved(self, logs: Mapping[str, float]) -> bool:
        """Whether ``logs[monitor]`` beats the best by more than ``min_delta`` (then it
        becomes the best); NaN never does."""
        if self.monitor not in logs:
            hint = " (train records val_loss only with validation_data)" * (
                self.monitor.startswith("val_")
            )
            raise ValueError(
                f"{self.owner} monitors {self.monitor!r}, which the epoch logs do not hold"
                f"{hint}; they hold {sorted(logs)}"
            )
        value = float(logs[self.monitor])
        if self.mode == "min":
            better = value < self.best - self.min_delta
        else:
            better = value > self.best + self.min_delta
        if better:
            self.best = value
        return better


class EarlyStopping(Callback):
    """Stop training when ``monitor`` (default ``"val_loss"``: pass ``validation_data``)
    has not improved by more than ``min_delta`` for ``patience`` epochs in a row.

    ``mode``: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for a name containing
    ``"acc"``, else ``"min"``). ``restore_best_weights`` (default True): when training
    ends (stopped or not), the model's parameters are set back, in place, to their values
    at the end of the best epoch. After training, ``best``, ``best_epoch`` and
    ``stopped_epoch`` (None if it ran to the end) tell what happened.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        patience: int = 0,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = True,
    ) -> None:
        self._monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.monitor = monitor
        self.patience = V.check_non_negative_int("patience", patience)
        self.restore_best_weights = V.check_bool("restore_best_weights", restore_best_weights)
        self._reset()

    def _reset(self) -> None:
        self._monitor.best = math.inf if self._monitor.mode == "min" else -math.inf
        self.wait = 0
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, np.ndarray] | None = None

    @property
    def best(self) -> float:
        return self._monitor.best

    def on_train_begin(self, context: TrainingContext) -> None:
        super().on_train_begin(context)
        self._reset()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        assert self.context is not None
        if self._monitor.improved(logs):
            self.wait = 0
            self.best_epoch = epoch
            if self.restore_best_weights:
                params = self.context.model.parameters()
                self.best_weights = {k: v.copy() for k, v in params.items()}
            return
        self.wait += 1
        if self.wait >= self.patience and not self.context.stop_training:
            self.stopped_epoch = epoch
            self.context.stop_training = True

    def on_train_end(self, context: TrainingContext) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            for key, value in context.model.parameters().items():
                np.copyto(value, self.best_weights[key])


class ModelCheckpoint(Callback):
    """Save the model with :func:`fastrnn.save` at the end of epochs.

    ``path`` may hold format fields filled from the epoch and its logs, e.g.
    ``"ckpt-{epoch:03d}.npz"`` or ``"best-{val_loss:.3f}.npz"``; without them each save
    replaces the last (atomically). ``save_best_only``: save only when ``monitor``
    improves (``mode`` and ``min_delta`` as for :class:`EarlyStopping`). A model that
    cannot be saved itself (no ``_save_state``) is saved as its ``parameters()`` dict,
    which :func:`fastrnn.load` returns as a dict. ``saved`` lists the paths written.
    In data-parallel training only rank 0 saves (``root_only``).
    """

    root_only = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        monitor: str = "val_loss",
        save_best_only: bool = False,
        mode: str = "auto",
        min_delta: float = 0.0,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        self.path = os.fspath(path)
        self.save_best_only = V.check_bool("save_best_only", save_best_only)
        self._monitor = _Monitor("ModelCheckpoint", monitor, mode, min_delta)
        self.saved: list[str] = []

    def on_train_begin(self, context: TrainingContext) -> None:
        super().on_train_begin(context)
        folder = os.path.dirname(self.path) or "."
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"ModelCheckpoint path {self.path!r}: the folder {folder!r} does not exist"
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        assert self.context is not None
        if self.save_best_only and not self._monitor.improved(logs):
            return
        try:
            path = self.path.format(epoch=epoch, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"ModelCheckpoint path {self.path!r} cannot be filled from the epoch and "
                f"its logs {sorted(logs)}: {type(exc).__name__}: {exc}"
            ) from None
        model = self.context.model
        _io.save(model if hasattr(model, "_save_state") else model.parameters(), path)
        self.saved.append(path)


def _check_callbacks(callbacks: object) -> list[Any]:
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of callbacks, got {type(callbacks).__name__}")
    for i, cb in enumerate(callbacks):
        if not any(callable(getattr(cb, hook, None)) for hook in HOOKS):
            raise TypeError(
                f"callbacks[{i}] is {V.describe(cb)} with none of the hooks {', '.join(HOOKS)}; "
                "wrap a function in fastrnn.training.LambdaCallback(on_epoch_end=...)"
            )
    return list(callbacks)


def _call(callbacks: list[Any], hook: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if callable(fn):
            fn(*args)


def evaluate(model: Trainable, data: Any, *, batch_size: int = 64, comm: Any = None) -> float:
    """The mean loss of ``model`` over ``data`` in batches (weighted by batch size).

    Uses ``model.loss(batch)`` if the model has it (no gradients needed), otherwise the
    loss of ``model.loss_and_grads(batch)``. ``comm`` (an mpi4py communicator): every
    rank evaluates every ``size``-th batch and every rank returns the same total.
    """
    arrays, single, n = _as_arrays("validation_data", data)
    batch_size = V.check_positive_int("batch_size", batch_size)
    comm = D.check_comm(comm)
    loss_fn = getattr(model, "loss", None)
    total = 0.0
    starts = range(0, n, batch_size)[D.rank(comm) :: D.size(comm)]
    for start in starts:
        idx = np.arange(start, min(start + batch_size, n))
        batch = _take(arrays, single, idx)
        value = loss_fn(batch) if callable(loss_fn) else model.loss_and_grads(batch)[0]
        total += float(value) * len(idx)
    return D.allreduce_sum(comm, total) / n


def _loss_weight(model: Any, batch: Any, n: int, chunk: tuple[int, int] | None) -> float:
    """How many terms the mean loss of ``batch`` (of ``n`` samples; or of the steps of
    ``chunk``) averages: ``model.loss_weight`` when the model has it, else ``n``."""
    fn = getattr(model, "loss_weight", None)
    if not callable(fn):
        return float(n)
    return float(fn(batch) if chunk is None else fn(batch, *chunk))


class _Steps:
    """The loss and gradients of one optimizer step: of the whole batch on one process,
    or of this rank's share summed over the ranks of ``comm`` (see the module docstring)."""

    def __init__(self, model: Any, comm: Any, params: Mapping[str, np.ndarray]) -> None:
        self.model, self.comm = model, comm
        self.buffer = None if comm is None else D.GradientBuffer(params, comm, n_stats=2)

    def batch(
        self, arrays: tuple[np.ndarray, ...], single: bool, idx: np.ndarray
    ) -> tuple[Any, int]:
        """(this process's batch or None if it has no sample, its number of samples)."""
        mine = D.split(idx, self.comm)
        return (_take(arrays, single, mine) if len(mine) else None), len(mine)

    def num_steps(self, batch: Any) -> int:
        """T of the global batch: the longest over the ranks."""
        T = 0 if batch is None else int(self.model.num_steps(batch))
        return D.allreduce_max(self.comm, T)

    def __call__(
        self, batch: Any, n: int, chunk: tuple[int, int] | None, state: Any
    ) -> tuple[float, Mapping[str, np.ndarray], Any]:
        """(loss, gradients, final state) of ``chunk`` (None: the whole batch)."""
        loss, grads = 0.0, {}
        if batch is not None:
            if chunk is None:
                loss, grads = self.model.loss_and_grads(batch)
            else:
                loss, grads, state = self.model.chunk_loss_and_grads(batch, *chunk, state)
            loss = float(loss)
        if self.buffer is None:
            return loss, grads, state
        buf = self.buffer
        if batch is None:  # no sample here: add nothing, but take part in the Allreduce
            buf.zero()
        else:
            weight = _loss_weight(self.model, batch, n, chunk)
            buf.load(grads, weight)
            buf.stats[:] = (loss * weight, weight)
        buf.allreduce()
        total_loss, total_weight = (float(v) for v in buf.stats)
        if total_weight > 0:
            buf.divide(total_weight)
            total_loss /= total_weight
        elif math.isfinite(total_loss):  # nothing to average anywhere: as the losses do
            total_loss = 0.0
        return total_loss, buf.grads, state


def train(
    model: Trainable,
    data: Any,
    *,
    epochs: int,
    batch_size: int,
    optimizer: str | Optimizer = "adam",
    lr: float | None = None,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    shuffle: bool = True,
    seed: int | np.random.Generator | None = None,
    validation_data: Any = None,
    progress: bool | None = None,
    tbptt: int | None = None,
    drop_last: bool = False,
    history: History | None = None,
    callbacks: Sequence[Any] | None = None,
    comm: Any = None,
) -> History:
    """Train ``model`` on ``data`` with mini-batches; return the :class:`History`.

    ``data``: an array or a tuple of arrays with the sample axis first (e.g. ``(X, y)``,
    ``(X, y, lengths)``), indexed by each batch's sample indices.
    ``optimizer``: ``"adam"`` (default lr 1e-3), ``"sgd"``, ``"momentum"`` (default lr
    0.01) or an :class:`~fastrnn.optim.Optimizer` built on ``model.parameters()`` (then
    ``lr`` must be None). ``clip_norm``/``clip_value``: clip the gradients by global norm
    / by value before every step. ``shuffle``/``seed``: reshuffle the samples every epoch
    with a generator seeded once. ``validation_data``: evaluated after every epoch
    (``history["val_loss"]``). ``progress``: a tqdm bar on stderr; ``None`` (default)
    shows it when stderr is a terminal and the run lasts over a second, ``True`` always,
    ``False`` never. ``tbptt``: truncated BPTT
    with chunks of this many steps (see the module docstring). ``drop_last``: skip the
    last, smaller batch. ``history``: continue this History instead of a new one.
    ``callbacks``: a list of callbacks (see the module docstring), e.g.
    ``[EarlyStopping(patience=3), ModelCheckpoint("best.npz", save_best_only=True),
    CosineAnnealingLR(T_max=epochs)]``. ``comm``: an mpi4py communicator (e.g.
    ``MPI.COMM_WORLD``) to train data-parallel on all its processes (see the module
    docstring); None (default): this process alone.
    """
    if not isinstance(model, Trainable):
        raise TypeError(
            f"model must have parameters() and loss_and_grads(batch), got {type(model).__name__}"
        )
    arrays, single, n = _as_arrays("data", data)
    epochs = V.check_non_negative_int("epochs", epochs)
    batch_size = V.check_positive_int("batch_size", batch_size)
    if tbptt is not None:
        tbptt = V.check_positive_int("tbptt", tbptt)
        if not isinstance(model, SupportsTBPTT):
            raise TypeError(
                f"tbptt needs a model with num_steps(batch) and chunk_loss_and_grads(batch, "
                f"start, stop, state); {type(model).__name__} has not"
            )
    if clip_norm is not None:
        clip_norm = V.check_positive_float("clip_norm", clip_norm)
    if clip_value is not None:
        clip_value = V.check_positive_float("clip_value", clip_value)
    params = model.parameters()
    if isinstance(optimizer, Optimizer):
        if lr is not None:
            raise ValueError("lr applies to an optimizer given by name; this one has its own lr")
        foreign = [k for k in optimizer.params if optimizer.params[k] is not params.get(k)]
        if foreign:
            raise ValueError(
                f"the optimizer does not update the model's parameter arrays {foreign[:5]}; "
                "build it on model.parameters()"
            )
    opt = make_optimizer(optimizer, params, lr)
    callbacks = _check_callbacks(callbacks)
    if validation_data is not None:
        _as_arrays("validation_data", validation_data)
    comm = D.check_comm(comm)
    rng = np.random.default_rng(seed)
    if comm is not None:
        # rank 0's generator and parameters everywhere; the same data and settings checked
        received = comm.bcast(rng if D.is_root(comm) else None, root=0)
        rng = rng if D.is_root(comm) else received
        D.check_same(
            comm,
            "train",
            data=[(a.shape, a.dtype.str) for a in arrays],
            parameters=[(k, v.shape, v.dtype.str) for k, v in sorted(params.items())],
            settings=(epochs, batch_size, tbptt, clip_norm, clip_value, shuffle, drop_last),
            optimizer=(type(opt).__name__, opt.lr),
        )
        D.broadcast_parameters(params, comm)
        if not D.is_root(comm):
            progress = False
            callbacks = [cb for cb in callbacks if not getattr(cb, "root_only", False)]
    compute = _Steps(model, comm, params)
    ranks = "" if comm is None else f", summed over {D.size(comm)} ranks"
    n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    if n_batches == 0:
        raise ValueError(f"drop_last with batch_size={batch_size} > {n} samples leaves no batch")
    hist = history if history is not None else History()
    context = TrainingContext(model, opt, hist, epochs)
    _call(callbacks, "on_train_begin", context)
    bar = _progress_bar(epochs * n_batches, progress, "train")
    step = batches = 0
    try:
        for epoch in range(hist.epochs + 1, hist.epochs + epochs + 1):
            order = rng.permutation(n) if shuffle else np.arange(n)
            epoch_loss = epoch_norm = 0.0
            seen = updates = 0
            epoch_lr = opt.lr
            for b in range(n_batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                batch, n_here = compute.batch(arrays, single, idx)
                T = 1
                if tbptt is None:
                    chunks: list[tuple[int, int] | None] = [None]
                else:
                    T = compute.num_steps(batch)
                    chunks = [(s, min(s + tbptt, T)) for s in range(0, T, tbptt)]
                state = None
                batch_loss = 0.0
                for chunk in chunks:
                    step += 1
                    where = f"epoch {epoch}, step {step} (batch {b + 1}/{n_batches}{ranks})"
                    loss, grads, state = compute(batch, n_here, chunk, state)
                    weight = 1.0 if chunk is None else (chunk[1] - chunk[0]) / T
                    norm = _check_finite(loss, grads, where)
                    if clip_norm is not None:
                        clip_grad_norm(grads, clip_norm, norm=norm)  # the norm just computed
                    if clip_value is not None:
                        clip_grad_value(grads, clip_value)
                    opt.step(grads)
                    hist.record("step_loss", loss)
                    batch_loss += weight * loss
                    epoch_norm += norm
                    updates += 1
                epoch_loss += batch_loss * len(idx)
                seen += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{batch_loss:.4g}", refresh=False)
                if callbacks:
                    batches += 1
                    logs = {
                        "loss": batch_loss,
                        "epoch": epoch,
                        "batch": b + 1,
                        "size": len(idx),
                        "lr": opt.lr,
                    }
                    _call(callbacks, "on_batch_end", batches, logs)
                    if comm is not None:
                        context.stop_training = D.allreduce_any(comm, context.stop_training)
                    if context.stop_training:
                        break
            logs = {"loss": epoch_loss / seen, "grad_norm": epoch_norm / max(updates, 1)}
            if validation_data is not None:
                logs["val_loss"] = evaluate(
                    model, validation_data, batch_size=batch_size, comm=comm
                )
            logs["lr"] = epoch_lr
            for name, value in logs.items():
                hist.record(name, value)
            hist.epochs = epoch
            _call(callbacks, "on_epoch_end", epoch, logs)
            for name, value in logs.items():  # what callbacks added
                if len(hist.history.get(name, ())) < len(hist.history["loss"]):
                    hist.record(name, value)
            if comm is not None:
                context.stop_training = D.allreduce_any(comm, context.stop_training)
            if context.stop_training:
                break
        _call(callbacks, "on_train_end", context)
    finally:
        if bar is not None:
            bar.close()
    return hist


__all__ = [
    "HOOKS",
    "Callback",
    "EarlyStopping",
    "History",
    "LambdaCallback",
    "ModelCheckpoint",
    "SupportsTBPTT",
    "Trainable",
    "TrainingContext",
    "evaluate",
    "train",
]
