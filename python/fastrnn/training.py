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

Failures
--------
A loss or gradient that is NaN or infinite stops training with a
:class:`FloatingPointError` naming the epoch, the step (and, for a gradient, the
parameter), and suggesting gradient clipping or a lower learning rate.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import _validation as V
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
    (before clipping) of each epoch; ``history["step_loss"]``: the loss of every optimizer
    step. :meth:`record` adds any other series.
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
        arrays, single = (data,), True
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


def _progress_bar(total: int, enabled: bool | None, desc: str):
    """A tqdm bar, or None when disabled (progress=False, or not a terminal by default)."""
    delay = 0.0
    if enabled is None:  # automatic: on a terminal, and only for runs longer than a second
        enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        delay = 1.0
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True, delay=delay)


def evaluate(model: Trainable, data: Any, *, batch_size: int = 64) -> float:
    """The mean loss of ``model`` over ``data`` in batches (weighted by batch size).

    Uses ``model.loss(batch)`` if the model has it (no gradients needed), otherwise the
    loss of ``model.loss_and_grads(batch)``.
    """
    arrays, single, n = _as_arrays("validation_data", data)
    batch_size = V.check_positive_int("batch_size", batch_size)
    loss_fn = getattr(model, "loss", None)
    total = 0.0
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        batch = _take(arrays, single, idx)
        value = loss_fn(batch) if callable(loss_fn) else model.loss_and_grads(batch)[0]
        total += float(value) * len(idx)
    return total / n


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
    if validation_data is not None:
        _as_arrays("validation_data", validation_data)
    rng = np.random.default_rng(seed)
    n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    if n_batches == 0:
        raise ValueError(f"drop_last with batch_size={batch_size} > {n} samples leaves no batch")
    hist = history if history is not None else History()
    bar = _progress_bar(epochs * n_batches, progress, "train")
    step = 0
    try:
        for epoch in range(hist.epochs + 1, hist.epochs + epochs + 1):
            order = rng.permutation(n) if shuffle else np.arange(n)
            epoch_loss = epoch_norm = 0.0
            seen = updates = 0
            for b in range(n_batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                batch = _take(arrays, single, idx)
                if tbptt is None:
                    chunks = [None]
                else:
                    T = int(model.num_steps(batch))
                    chunks = [(s, min(s + tbptt, T)) for s in range(0, T, tbptt)]
                state = None
                batch_loss = 0.0
                for chunk in chunks:
                    step += 1
                    where = f"epoch {epoch}, step {step} (batch {b + 1}/{n_batches})"
                    if chunk is None:
                        loss, grads = model.loss_and_grads(batch)
                        weight = 1.0
                    else:
                        loss, grads, state = model.chunk_loss_and_grads(batch, *chunk, state)
                        weight = (chunk[1] - chunk[0]) / chunks[-1][1]
                    loss = float(loss)
                    norm = _check_finite(loss, grads, where)
                    if clip_norm is not None:
                        clip_grad_norm(grads, clip_norm)
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
            hist.record("loss", epoch_loss / seen)
            hist.record("grad_norm", epoch_norm / max(updates, 1))
            if validation_data is not None:
                hist.record("val_loss", evaluate(model, validation_data, batch_size=batch_size))
            hist.epochs = epoch
    finally:
        if bar is not None:
            bar.close()
    return hist


__all__ = ["History", "SupportsTBPTT", "Trainable", "evaluate", "train"]
