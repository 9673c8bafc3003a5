"""Optimizers that update NumPy parameter arrays in place, and gradient clipping.

Every optimizer is built on the dict of arrays it updates (``model.parameters()``, a
layer's ``params``) and takes the matching gradients in :meth:`Optimizer.step`::

    opt = fastrnn.Adam(model.parameters(), lr=1e-3)
    loss, grads = model.loss_and_grads(batch)
    fastrnn.clip_grad_norm(grads, 1.0)
    opt.step(grads)

Parameters without a gradient in ``grads`` are left unchanged; a gradient for a name
that is not a parameter is an error. The update rules follow PyTorch (no weight decay,
no dampening):

- :class:`SGD`: ``w <- w - lr * g`` (the course's gradient descent);
- :class:`Momentum`: ``v <- momentum * v + g``, ``w <- w - lr * v``;
- :class:`Adam`: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
  ``w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.

``state_dict()`` returns plain floats and arrays (the moments under ``"m/<name>"`` and
``"v/<name>"``, momentum buffers under ``"velocity/<name>"``), so the state saves with
:func:`fastrnn.save` and restores with ``load_state_dict`` or
``fastrnn.load(path, params=...)``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from . import _validation as V
from . import io as _io


def _check_grads(
    grads: object, params: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays, got {type(grads).__name__}")
    if params is not None:
        extra = [k for k in grads if k not in params]
        if extra:
            raise ValueError(
                f"grads has keys that are not parameters of this optimizer: {extra}; "
                f"parameters are {list(params)}"
            )
        for key, g in grads.items():
            shape = getattr(g, "shape", None)
            if shape != params[key].shape:
                raise ValueError(
                    f"grads[{key!r}] has shape {shape}, expected {params[key].shape} "
                    "(the parameter's shape)"
                )
    return dict(grads)


_Opt = TypeVar("_Opt", bound="Optimizer")


class Optimizer:
    """Base class: holds ``params`` (name -> array, updated in place) and hyperparameters."""

    _hyper: tuple[str, ...] = ("lr",)
    _buffers: tuple[str, ...] = ()

    def __init__(self, params: Mapping[str, np.ndarray], lr: float) -> None:
        want = "params must be a non-empty dict name -> np.ndarray (e.g. model.parameters())"
        if not isinstance(params, Mapping):
            raise TypeError(f"{want}, got {type(params).__name__}")
        if not params:
            raise ValueError(f"{want}, got an empty {type(params).__name__}")
        for key, value in params.items():
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                raise TypeError(
                    f"params[{key!r}] must be a float np.ndarray (updated in place), "
                    f"got {type(value).__name__}"
                    + (f" of dtype {value.dtype}" if isinstance(value, np.ndarray) else "")
                )
            if not value.flags.writeable:
                raise ValueError(f"params[{key!r}] is read-only; the optimizer updates in place")
        self.params: dict[str, np.ndarray] = dict(params)
        self.lr = V.check_non_negative_float("lr", lr)
        # the lr that learning-rate schedules start from (PyTorch's initial_lr), set when
        # the first schedule attaches
        self.initial_lr: float | None = None
        self.step_count = 0
        self.state: dict[str, dict[str, np.ndarray]] = {
            buf: {k: np.zeros_like(v) for k, v in self.params.items()} for buf in self._buffers
        }
        # scratch for the updates' intermediate arrays, per dtype (see _scratch)
        self._work: dict[np.dtype, tuple[np.ndarray, np.ndarray]] = {}

    def __repr__(self) -> str:
        hyper = ", ".join(f"{h}={getattr(self, h)!r}" for h in self._hyper)
        return f"{type(self).__name__}({hyper}, {len(self.params)} arrays)"

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """Update the parameters in place from ``grads`` (name -> array of the same shape)."""
        grads = _check_grads(grads, self.params)
        self.step_count += 1
        for key, g in grads.items():
            self._update(key, self.params[key], np.asarray(g, dtype=self.params[key].dtype))

    def _update(self, key: str, w: np.ndarray, g: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def _scratch(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two scratch arrays of ``w``'s shape and dtype, reused from step to step: the
        updates write their intermediate results there instead of allocating (for a large
        array a fresh allocation is fresh pages, a page fault per 4 KB)."""
        bufs = self._work.get(w.dtype)
        if bufs is None:
            size = max(p.size for p in self.params.values() if p.dtype == w.dtype)
            bufs = self._work[w.dtype] = (np.empty(size, w.dtype), np.empty(size, w.dtype))
        a, b = (buf[: w.size].reshape(w.shape) for buf in bufs)
        return a, b

    # --- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters (floats), ``"step"`` and the buffers (copies, ``"<buf>/<name>"``)."""
        out: dict[str, Any] = {h: getattr(self, h) for h in self._hyper}
        out["step"] = self.step_count
        for buf, arrays in self.state.items():
            for key, value in arrays.items():
                out[f"{buf}/{key}"] = value.copy()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same parameter names/shapes)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        expected = {*self._hyper, "step"} | {
            f"{buf}/{k}" for buf in self._buffers for k in self.params
        }
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        if missing or extra:
            raise ValueError(
                f"optimizer state does not fit this {type(self).__name__}: missing "
                f"{missing}, unexpected {extra}"
            )
        buffers: dict[str, dict[str, np.ndarray]] = {}
        for buf in self._buffers:
            buffers[buf] = {}
            for key, ref in self.params.items():
                arr = np.asarray(state[f"{buf}/{key}"])
                if arr.shape != ref.shape:
                    raise ValueError(
                        f"optimizer state {buf}/{key} has shape {arr.shape}, expected "
                        f"{ref.shape} (the parameter's shape)"
                    )
                buffers[buf][key] = arr.astype(ref.dtype, copy=True)
        hyper = {}
        for h in self._hyper:
            value = state[h]
            hyper[h] = tuple(float(v) for v in value) if h == "betas" else float(value)
        step = int(np.asarray(state["step"]))
        if step < 0:
            raise ValueError(f"optimizer state step must be >= 0, got {step}")
        for h, value in hyper.items():
            setattr(self, h, value)
        self.step_count = step
        self.state = buffers

    @property
    def kind(self) -> str:
        """The kind this optimizer saves under (registered with :func:`fastrnn.io.register`)."""
        return _io.kind_of(self)

    def _save_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        config = {h: getattr(self, h) for h in self._hyper}
        config["step"] = self.step_count
        arrays = {k: v for k, v in self.state_dict().items() if isinstance(v, np.ndarray)}
        return config, arrays

    @classmethod
    def _from_state(
        cls: type[_Opt],
        config: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        *,
        params: Mapping[str, np.ndarray] | None = None,
    ) -> _Opt:
        if params is None:
            raise TypeError(
                f"this file holds a {cls.__name__} optimizer state; pass the arrays it "
                "updates: fastrnn.load(path, params=model.parameters())"
            )
        hyper = {h: config[h] for h in cls._hyper}
        opt = cls(params, **hyper)
        opt.load_state_dict({**config, **arrays})
        return opt

    def save(self, path: Any) -> None:
        """Save the optimizer state (not the parameters) to ``.npz``; see :mod:`fastrnn.io`."""
        _io.save(self, path)


@_io.register("optim.SGD")
class SGD(Optimizer):
    """Plain gradient descent, exactly the course's ``w <- w - lr * dL/dw``."""

    def __init__(self, params: Mapping[str, np.ndarray], lr: float = 0.01) -> None:
        super().__init__(params, lr)

    def _update(self, key: str, w: np.ndarray, g: np.ndarray) -> None:
        step, _ = self._scratch(w)
        w -= np.multiply(g, self.lr, out=step)


@_io.register("optim.Momentum")
class Momentum(Optimizer):
    """Gradient descent with momentum (PyTorch's form): ``v <- mu v + g``, ``w <- w - lr v``."""

    _hyper: tuple[str, ...] = ("lr", "momentum")
    _buffers = ("velocity",)

    def __init__(
        self, params: Mapping[str, np.ndarray], lr: float = 0.01, momentum: float = 0.9
    ) -> None:
        self.momentum = V.check_fraction("momentum", momentum)
        super().__init__(params, lr)

    def _update(self, key: str, w: np.ndarray, g: np.ndarray) -> None:
        v = self.state["velocity"][key]
        v *= self.momentum
        v += g
        step, _ = self._scratch(w)
        w -= np.multiply(v, self.lr, out=step)


@_io.register("optim.Adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, as PyTorch computes it."""

    _hyper: tuple[str, ...] = ("lr", "betas", "eps")
    _buffers = ("m", "v")

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not isinstance(betas, (tuple, list)):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {len(betas)} values")
        self.betas = (
            V.check_fraction("betas[0]", betas[0]),
            V.check_fraction("betas[1]", betas[1]),
        )
        self.eps = V.check_non_negative_float("eps", eps)
        super().__init__(params, lr)

    def _update(self, key: str, w: np.ndarray, g: np.ndarray) -> None:
        b1, b2 = self.betas
        m, v = self.state["m"][key], self.state["v"][key]
        a, b = self._scratch(w)  # in place, each operation as in the comments
        # PyTorch's order of operations (m by lerp; the bias corrections folded into the
        # step size and the denominator), so that both round alike
        m += np.multiply(np.subtract(g, m, out=a), 1 - b1, out=a)  # m += (1 - b1) (g - m)
        v *= b2
        v += np.multiply(np.multiply(g, 1 - b2, out=a), g, out=a)  # v += ((1 - b2) g) g
        t = self.step_count
        step_size = self.lr / (1 - b1**t)
        denom = np.sqrt(v, out=a)
        denom /= (1 - b2**t) ** 0.5
        denom += self.eps  # denom = sqrt(v) / sqrt(1 - b2^t) + eps
        w -= np.divide(np.multiply(m, step_size, out=b), denom, out=b)  # (step_size m) / denom


@_io.register("optim.AdamW")
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as PyTorch's
    ``torch.optim.AdamW``: before the Adam update, ``w <- w * (1 - lr * weight_decay)``.

    The decay uses the current ``lr`` (so a learning-rate schedule scales it too) and, as
    in PyTorch, applies only to the parameters that have a gradient in the step.
    """

    _hyper: tuple[str, ...] = ("lr", "betas", "eps", "weight_decay")

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        self.weight_decay = V.check_non_negative_float("weight_decay", weight_decay)
        super().__init__(params, lr, betas, eps)

    def _update(self, key: str, w: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay:
            w *= 1 - self.lr * self.weight_decay
        super()._update(key, w, g)


# --- learning-rate schedules --------------------------------------------------------------


def _required(owner: str, name: str, value: Any) -> Any:
    if value is None:
        raise TypeError(f"{owner}() missing the required argument {name!r}")
    return value


class LRScheduler:
    """Base class of the learning-rate schedules, with PyTorch's meaning (one parameter
    group): built on an optimizer, a schedule sets ``optimizer.lr`` to its value at epoch
    0 at once, and :meth:`step` (called after each epoch's optimizer steps) moves it to
    the next epoch's value, computed from the base learning rate (the optimizer's ``lr``
    when its first schedule was built, as PyTorch's ``initial_lr``).

    A schedule is also a callback for :func:`fastrnn.training.train` (and a model's
    ``fit(callbacks=...)``): it steps at the end of every epoch, and one built without an
    optimizer (``StepLR(step_size=10)``) attaches to the optimizer the loop uses.
    Subclasses define ``_lr(base_lr, epoch)``.
    """

    def __init__(self, optimizer: Optimizer | None = None) -> None:
        self.optimizer: Optimizer | None = None
        self.base_lr: float | None = None
        self.last_epoch = 0
        if optimizer is not None:
            self.attach(optimizer)

    def _lr(self, base_lr: float, epoch: int) -> float:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        lr = "" if self.optimizer is None else f", lr={self.optimizer.lr!r}"
        return f"{type(self).__name__}(last_epoch={self.last_epoch}{lr})"

    def attach(self, optimizer: Optimizer) -> None:
        """Drive ``optimizer``'s learning rate (its value at epoch 0 is set at once)."""
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a fastrnn Optimizer (e.g. fastrnn.AdamW), got "
                f"{type(optimizer).__name__}"
            )
        if self.optimizer is optimizer:
            return
        if self.optimizer is not None:
            raise ValueError(
                f"this {type(self).__name__} already drives another optimizer "
                f"({self.optimizer!r}); build a new schedule for each optimizer (each fit)"
            )
        if optimizer.initial_lr is None:
            optimizer.initial_lr = optimizer.lr
        self.optimizer = optimizer
        self.base_lr = optimizer.initial_lr
        self.last_epoch = 0
        optimizer.lr = self._lr(self.base_lr, 0)

    def _attached(self) -> Optimizer:
        if self.optimizer is None:
            raise RuntimeError(
                f"this {type(self).__name__} drives no optimizer yet: build it on one "
                f"({type(self).__name__}(optimizer, ...)) or pass it to "
                "train(callbacks=[...]) / fit(callbacks=[...])"
            )
        return self.optimizer

    def step(self) -> float:
        """Advance one epoch; set and return the new learning rate."""
        opt = self._attached()
        self.last_epoch += 1
        opt.lr = self._lr(self.base_lr, self.last_epoch)  # type: ignore[arg-type]
        return opt.lr

    def get_last_lr(self) -> list[float]:
        """The learning rate set last, as a list (one entry: PyTorch's per-group list)."""
        return [self._attached().lr]

    def state_dict(self) -> dict[str, Any]:
        """``base_lr`` and ``last_epoch`` (restore with :meth:`load_state_dict`)."""
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (sets the optimizer's lr to that epoch's)."""
        opt = self._attached()
        self.base_lr = V.check_non_negative_float("base_lr", state["base_lr"])
        self.last_epoch = V.check_non_negative_int("last_epoch", state["last_epoch"])
        opt.lr = self._lr(self.base_lr, self.last_epoch)

    # --- the callback hooks of fastrnn.training.train -----------------------------------

    def on_train_begin(self, context: Any) -> None:
        self.attach(context.optimizer)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        self.step()


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)`` (PyTorch's ``StepLR``)."""

    def __init__(
        self, optimizer: Optimizer | None = None, step_size: int | None = None, gamma: float = 0.1
    ) -> None:
        self.step_size = V.check_positive_int(
            "step_size", _required("StepLR", "step_size", step_size)
        )
        self.gamma = V.check_non_negative_float("gamma", gamma)
        super().__init__(optimizer)

    def _lr(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``
    (PyTorch's ``CosineAnnealingLR``: down to ``eta_min`` at ``T_max``, then up again
    with period ``2 T_max``)."""

    def __init__(
        self, optimizer: Optimizer | None = None, T_max: int | None = None, eta_min: float = 0.0
    ) -> None:
        T_max = _required("CosineAnnealingLR", "T_max", T_max)
        self.T_max = V.check_positive_int("T_max", T_max)
        self.eta_min = V.check_non_negative_float("eta_min", eta_min)
        super().__init__(optimizer)

    def _lr(self, base_lr: float, epoch: int) -> float:
        cos = 1 + math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * cos / 2


class LinearLR(LRScheduler):
    """Linear warm-up (PyTorch's ``LinearLR``): the factor of ``base_lr`` goes linearly
    from ``start_factor`` at epoch 0 to ``end_factor`` at ``total_iters`` and stays."""

    def __init__(
        self,
        optimizer: Optimizer | None = None,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
    ) -> None:
        self.start_factor = V.check_float(
            "start_factor", start_factor, minimum=0.0, maximum=1.0, min_inclusive=False
        )
        self.end_factor = V.check_float("end_factor", end_factor, minimum=0.0, maximum=1.0)
        self.total_iters = V.check_positive_int("total_iters", total_iters)
        super().__init__(optimizer)

    def _lr(self, base_lr: float, epoch: int) -> float:
        done = min(epoch, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * done)


class SequentialLR(LRScheduler):
    """One schedule after another (PyTorch's ``SequentialLR``): ``schedulers[i]`` runs
    from ``milestones[i - 1]`` on, restarted at its own epoch 0; e.g. a warm-up then
    cosine decay::

        SequentialLR(opt, [LinearLR(start_factor=0.1, total_iters=5),
                           CosineAnnealingLR(T_max=45)], milestones=[5])

    The schedules in the list are built without an optimizer or on the same one.
    """

    def __init__(
        self,
        optimizer: Optimizer | None = None,
        schedulers: Sequence[LRScheduler] = (),
        milestones: Sequence[int] = (),
    ) -> None:
        if not isinstance(schedulers, (list, tuple)) or not all(
            isinstance(s, LRScheduler) for s in schedulers
        ):
            raise TypeError(f"schedulers must be a list of LRScheduler, got {schedulers!r}")
        if not isinstance(milestones, (list, tuple)):
            raise TypeError(f"milestones must be a list of ints, got {milestones!r}")
        marks = [V.check_positive_int(f"milestones[{i}]", m) for i, m in enumerate(milestones)]
        if len(schedulers) != len(marks) + 1:
            raise ValueError(
                f"SequentialLR needs one milestone fewer than schedulers, got {len(schedulers)} "
                f"schedulers and {len(marks)} milestones"
            )
        if marks != sorted(set(marks)):
            raise ValueError(f"milestones must increase, got {marks}")
        self.schedulers: list[LRScheduler] = list(schedulers)
        self.milestones = marks
        super().__init__(optimizer)

    def attach(self, optimizer: Optimizer) -> None:
        for i, sub in enumerate(self.schedulers):
            if sub.optimizer is not None and sub.optimizer is not optimizer:
                raise ValueError(
                    f"schedulers[{i}] drives another optimizer than this SequentialLR; build "
                    "the schedules without one (or all on the same)"
                )
        super().attach(optimizer)

    def _lr(self, base_lr: float, epoch: int) -> float:
        i = bisect.bisect_right(self.milestones, epoch)
        start = self.milestones[i - 1] if i else 0
        return self.schedulers[i]._lr(base_lr, epoch - start)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "adam": Adam,
    "adamw": AdamW,
}


def make_optimizer(
    spec: str | Optimizer, params: Mapping[str, np.ndarray], lr: float | None = None
) -> Optimizer:
    """An optimizer from a name (``"sgd"``, ``"momentum"``, ``"adam"``, ``"adamw"``) or an instance
    (returned as is; it must update exactly ``params``)."""
    if isinstance(spec, Optimizer):
        return spec
    if not isinstance(spec, str) or spec.lower() not in OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))} or an Optimizer "
            f"instance, got {spec!r}"
        )
    cls = OPTIMIZERS[spec.lower()]
    return cls(params, **({} if lr is None else {"lr": lr}))


def global_norm(grads: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all gradients together, ``sqrt(sum_k ||g_k||^2)`` (in float64)."""
    grads = _check_grads(grads)
    total = 0.0
    for g in grads.values():
        flat = np.ravel(g)  # the squares summed in float64 (no float32 overflow), no copy
        total += float(np.einsum("i,i->", flat, flat, dtype=np.float64))
    return math.sqrt(total)


def clip_grad_norm(
    grads: Mapping[str, np.ndarray], max_norm: float, *, norm: float | None = None
) -> float:
    """Scale all gradients in place so that their global norm is at most ``max_norm``.

    Returns the global norm *before* clipping (``inf``/``nan`` pass through unchanged, the
    gradients are then left as they are). After clipping the global norm equals
    ``max_norm`` whenever it was larger. ``norm``: the global norm of ``grads`` if already
    known (:func:`global_norm` of these same gradients), so that it is not computed again.
    """
    max_norm = V.check_positive_float("max_norm", max_norm)
    if norm is None:
        norm = global_norm(grads)
    elif not isinstance(norm, (int, float)) or isinstance(norm, bool):
        raise TypeError(f"norm must be a float (the global norm of grads), got {norm!r}")
    else:
        grads = _check_grads(grads)
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / norm
        for g in grads.values():
            g *= scale
    return float(norm)


def clip_grad_value(grads: Mapping[str, np.ndarray], clip_value: float) -> None:
    """Clip every gradient entry in place into ``[-clip_value, clip_value]``."""
    clip_value = V.check_positive_float("clip_value", clip_value)
    grads = _check_grads(grads)
    for g in grads.values():
        np.clip(g, -clip_value, clip_value, out=g)


__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "LRScheduler",
    "LinearLR",
    "Momentum",
    "Optimizer",
    "SequentialLR",
    "StepLR",
    "clip_grad_norm",
    "clip_grad_value",
    "global_norm",
    "make_optimizer",
]
