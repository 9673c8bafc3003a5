"""Losses computed from raw outputs (logits), each returning ``(loss, grad)``.

``grad`` is dL/d(first argument), an array of its shape and dtype. All losses take

- ``mask`` (optional): a boolean array whose shape is the leading dimensions of the
  first argument (e.g. (T, B) for logits (T, B, K)); ``False`` entries (padded steps)
  contribute nothing to the loss and get a zero gradient. Build one from sequence lengths
  with :func:`mask_from_lengths`;
- ``reduction``: ``"mean"`` averages over the unmasked elements (for :func:`mse` and
  :func:`bce_with_logits` every scalar entry counts, as in PyTorch; for
  :func:`softmax_cross_entropy` every target), ``"sum"`` sums them. With nothing
  unmasked the loss is 0 and the gradient zero.

Every loss is numerically stable for any finite logit: the softmax uses log-sum-exp and
the binary cross-entropy the form ``max(z, 0) - z y + log(1 + exp(-|z|))``.
"""

from __future__ import annotations

import numpy as np

from . import _validation as V
from .functional import REDUCTIONS, linear_cross_entropy

__all__ = [
    "REDUCTIONS",
    "bce_with_logits",
    "linear_cross_entropy",
    "mask_from_lengths",
    "mse",
    "softmax_cross_entropy",
]


def _inputs(name: str, value: object, reduction: object) -> tuple[np.ndarray, str]:
    """The first argument of a loss as a float32/float64 array, and the reduction."""
    arr = V.as_float_array(name, value, contiguous=False)
    return arr, V.check_choice("reduction", reduction, REDUCTIONS)


def _numeric_targets(targets: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Numeric ``targets`` of ``shape`` (the shape of ``what``), as an array."""
    y = np.asarray(targets)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"targets must be numbers, got dtype {y.dtype}")
    V.check_shape("targets", y, shape, f"({what}'s shape)")
    return y


def _weights(mask: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Per-element weights 1/0 of ``shape`` from a leading-dims mask."""
    if mask is None:
        return np.ones(shape, dtype=dtype)
    w = mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)).astype(dtype)
    return np.broadcast_to(w, shape)


def _reduce(
    elementwise: np.ndarray, dgrad: np.ndarray, w: np.ndarray, reduction: str
) -> tuple[float, np.ndarray]:
    """Apply weights and the reduction to an elementwise loss and its elementwise grad."""
    total = float(np.sum(elementwise * w, dtype=np.float64))
    grad = dgrad * w
    if reduction == "mean":
        count = float(np.sum(w))
        if count == 0:
            return 0.0, np.zeros_like(dgrad)
        total /= count
        grad = grad / np.asarray(count, dtype=dgrad.dtype)
    return total, grad.astype(dgrad.dtype, copy=False)


def mask_from_lengths(lengths: np.ndarray, T: int, *, batch_first: bool = False) -> np.ndarray:
    """The boolean mask of real steps: (T, B) with ``mask[t, b] = t < lengths[b]``,
    or (B, T) with ``batch_first``."""
    lens = V.as_int_array("lengths", lengths)
    if lens.ndim != 1:
        raise ValueError(f"lengths must be a 1-d integer array (B,), got shape {lens.shape}")
    T = V.check_non_negative_int("T", T)
    if lens.size and (lens.min() < 0 or lens.max() > T):
        raise ValueError(f"lengths must be in 0..T = 0..{T}, got {lens.tolist()[:5]}")
    mask = np.arange(T)[:, None] < lens[None, :]
    return mask.T.copy() if batch_first else mask


def softmax_cross_entropy(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    reduction: str = "mean",
) -> tuple[float, np.ndarray]:
    """Softmax + cross-entropy from ``logits`` (..., K) and integer class ``targets`` (...).

    Returns the loss and dL/d(logits) = (softmax - onehot) (times the mask, divided by the
    number of unmasked targets for ``"mean"``). Targets at masked positions are ignored
    (any value, e.g. -1 padding, is allowed there).
    """
    z, reduction = _inputs("logits", logits, reduction)
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ValueError(f"logits has shape {z.shape}, expected (..., K) with K >= 1 classes")
    K = z.shape[-1]
    y, live = V.check_targets(
        targets, z.shape[:-1], K, mask, "(logits without its last, class axis)"
    )
    y_safe = y[..., None]
    # log-sum-exp, with one exp: e = exp(z - max), softmax = e / sum(e),
    # log softmax[y] = (z - max)[y] - log(sum(e))
    grad = z - z.max(axis=-1, keepdims=True)
    picked = np.take_along_axis(grad, y_safe, axis=-1)[..., 0]
    np.exp(grad, out=grad)
    sums = grad.sum(axis=-1, keepdims=True)
    picked -= np.log(sums[..., 0])
    grad /= sums  # softmax; dL/dz = softmax - onehot(y), times the weights
    np.put_along_axis(grad, y_safe, np.take_along_axis(grad, y_safe, -1) - 1, -1)
    if live is None:
        total = -float(np.sum(picked, dtype=np.float64))
        count = float(picked.size)
    else:
        w = live.astype(z.dtype)
        total = -float(np.sum(picked * w, dtype=np.float64))
        count = float(np.sum(w))
        grad *= w[..., None]
    if reduction == "mean":
        if count == 0:
            return 0.0, np.zeros_like(z)
        total /= count
        grad /= np.asarray(count, dtype=z.dtype)
    return total, grad.astype(z.dtype, copy=False)


def bce_with_logits(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    reduction: str = "mean",
) -> tuple[float, np.ndarray]:
    """Sigmoid + binary cross-entropy from ``logits`` and ``targets`` in [0, 1] (same shape).

    ``loss = max(z, 0) - z y + log(1 + exp(-|z|))``, stable for any logit;
    dL/dz = sigmoid(z) - y (times the mask; divided by the unmasked count for ``"mean"``).
    """
    z, reduction = _inputs("logits", logits, reduction)
    y = _numeric_targets(targets, z.shape, "the logits").astype(z.dtype)
    m = V.check_mask(mask, z.shape, "logits")
    elementwise = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    e = np.exp(-np.abs(z))
    sig = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
    return _reduce(elementwise, sig - y, _weights(m, z.shape, z.dtype), reduction)


def mse(
    pred: np.ndarray,
    targets: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    reduction: str = "mean",
) -> tuple[float, np.ndarray]:
    """Mean squared error ``(pred - targets)^2``; dL/d(pred) = 2 (pred - targets)."""
    p, reduction = _inputs("pred", pred, reduction)
    y = _numeric_targets(targets, p.shape, "pred")
    m = V.check_mask(mask, p.shape, "pred")
    diff = p - y.astype(p.dtype)
    return _reduce(diff * diff, 2 * diff, _weights(m, p.shape, p.dtype), reduction)


__all__ = ["bce_with_logits", "mask_from_lengths", "mse", "softmax_cross_entropy"]
