"""The functional core: ``init_params``, ``forward`` and ``backward`` for rnn, lstm and gru.

This is the one place that validates input and the one place that knows backends exist.
Every public argument is checked here, once, with a message that names the argument,
the shape or dtype it got and the one expected; the backends then receive only the
normalised input described in :mod:`fastrnn.backends`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _config
from . import backends as _registry

CELLS: tuple[str, ...] = ("rnn", "lstm", "gru")
ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "leaky_relu", "identity")
INITS: tuple[str, ...] = ("uniform", "xavier", "orthogonal", "identity")
PARAM_NAMES: tuple[str, ...] = ("W_ih", "W_hh", "b_ih", "b_hh")
GATES: dict[str, int] = {"rnn": 1, "lstm": 4, "gru": 3}
DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))
REDUCTIONS: tuple[str, ...] = ("mean", "sum")


@dataclass(frozen=True, eq=False)
class ForwardResult:
    """What :func:`forward` returns.

    ``hs`` (T, B, H): the hidden state at every step (zero at padded steps);
    ``h_n`` (B, H): the state after each sequence's last real step;
    ``c_n`` (B, H): the lstm cell state likewise (``None`` for rnn and gru).
    The remaining fields are what :func:`backward` needs; treat them as private.
    """

    hs: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray | None
    cell: str = field(repr=False)
    activation: str = field(repr=False)
    negative_slope: float = field(repr=False)
    backend: str = field(repr=False)
    params: dict[str, np.ndarray] = field(repr=False)
    x: np.ndarray = field(repr=False)
    h0: np.ndarray = field(repr=False)
    c0: np.ndarray | None = field(repr=False)
    lengths: np.ndarray | None = field(repr=False)
    saved: Any = field(repr=False)


@dataclass(frozen=True, eq=False)
class Gradients:
    """What :func:`backward` returns: ``dx`` (T, B, D), ``dh0`` (B, H), ``dc0`` (lstm),
    ``params`` (the same keys as the params), and ``step_norms`` (T, B) when asked for:
    ``||dL/dh_t||`` for every step and sequence."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray | None
    params: dict[str, np.ndarray]
    step_norms: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class HeadGradients:
    """What :func:`linear_cross_entropy` returns: the ``loss`` (a float), ``dh`` (dL/dh, the
    shape of ``h``), ``dweight`` (K, H) and ``dbias`` (K,)."""

    loss: float
    dh: np.ndarray
    dweight: np.ndarray
    dbias: np.ndarray


# --- validation helpers --------------------------------------------------------------


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _as_float_array(name: str, value: object, dtype: np.dtype | None = None) -> np.ndarray:
    """``value`` as a C-contiguous float32/float64 array; ``dtype`` if it must match one."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be a float32 or float64 array: {exc}") from None
    if arr.dtype not in DTYPES:
        hint = ""
        if arr.dtype.kind in "biuf":
            hint = f"; cast it first, e.g. {name}.astype(np.float32)"
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}{hint}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {arr.dtype} but the parameters are {dtype}; "
            f"use one dtype for all arrays (e.g. {name}.astype(np.{dtype}))"
        )
    if not arr.flags.c_contiguous:  # a strided or broadcast view is copied: can it be?
        _check_memory(arr.nbytes, f"a C-contiguous copy of {name} with shape {arr.shape}")
    return np.ascontiguousarray(arr).reshape(arr.shape)  # a 0-d array stays 0-d


def _check_memory(nbytes: int, what: str) -> None:
    """Refuse with a MemoryError, before allocating, ``nbytes`` for ``what`` that would not
    fit in the memory available now (MemAvailable, else free pages; unchecked if unknown).
    Below 256 MiB nothing is read, so that small calls pay nothing."""
    if nbytes < 2**28:
        return
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return
    if nbytes > avail:
        raise MemoryError(
            f"{what} needs about {nbytes / 2**30:.3g} GiB but only {avail / 2**30:.3g} GiB of "
            "memory is available (refused before allocating); use smaller sizes, float32, or "
            "for long sequences truncated BPTT"
        )


def _check_shape(name: str, arr: np.ndarray, expected: tuple[int, ...], meaning: str) -> None:
    if arr.shape != expected:
        raise ValueError(f"{name} has shape {arr.shape}, expected {expected} {meaning}")


def _check_params(cell: str, params: object) -> tuple[dict[str, np.ndarray], int, int]:
    """Validate a params dict; return it normalised, with (input_size, hidden_size)."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a dict with keys {list(PARAM_NAMES)}, got {type(params).__name__}"
        )
    missing = [k for k in PARAM_NAMES if k not in params]
    extra = [k for k in params if k not in PARAM_NAMES]
    if missing or extra:
        raise ValueError(
            f"params must have exactly the keys {list(PARAM_NAMES)}; "
            f"missing {missing}, unexpected {extra}"
        )
    W_hh = _as_float_array("params['W_hh']", params["W_hh"])
    dtype = W_hh.dtype
    G = GATES[cell]
    if W_hh.ndim != 2 or W_hh.shape[0] != G * W_hh.shape[1] or W_hh.shape[1] == 0:
        raise ValueError(
            f"params['W_hh'] has shape {W_hh.shape}, expected ({G}*H, H) = ({G}H, H) with "
            f"H >= 1 for cell {cell!r} ({G} gate{'s' if G > 1 else ''}); "
            "are these params for another cell?"
        )
    H = W_hh.shape[1]
    W_ih = _as_float_array("params['W_ih']", params["W_ih"], dtype)
    if W_ih.ndim != 2 or W_ih.shape[0] != G * H:
        raise ValueError(
            f"params['W_ih'] has shape {W_ih.shape}, expected ({G * H}, input_size) "
            f"for cell {cell!r} with hidden size {H}"
        )
    out = {"W_ih": W_ih, "W_hh": W_hh}
    for key in ("b_ih", "b_hh"):
        b = _as_float_array(f"params[{key!r}]", params[key], dtype)
        _check_shape(f"params[{key!r}]", b, (G * H,), f"for cell {cell!r} with hidden size {H}")
        out[key] = b
    return out, W_ih.shape[1], H


def _check_lengths(lengths: object, T: int, B: int) -> np.ndarray | None:
    """Validate ``lengths``; ``None`` when absent or when every sequence has length T."""
    if lengths is None:
        return None
    try:
        arr = np.asarray(lengths)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"lengths must be an integer array of shape ({B},): {exc}") from None
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an integer array of shape ({B},), got dtype {arr.dtype}")
    _check_shape("lengths", arr, (B,), "(one length per sequence in the batch)")
    if B and (arr.min() < 1 or arr.max() > T):
        bad = arr[(arr < 1) | (arr > T)]
        raise ValueError(f"lengths must be in 1..T = 1..{T}, got values {bad[:5].tolist()}")
    if B == 0 or arr.min() == T:
        return None
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_slope(negative_slope: object) -> float:
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"negative_slope must be a float, got {type(negative_slope).__name__}")
    slope = float(negative_slope)
    if not math.isfinite(slope) or slope < 0:
        raise ValueError(f"negative_slope must be finite and >= 0, got {negative_slope!r}")
    return slope


def _check_reduction(reduction: object) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


def _check_mask(mask: object, lead: tuple[int, ...], what: str) -> np.ndarray | None:
    """``mask`` as a bool array whose shape is a prefix of ``lead`` (or None)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array, got dtype {m.dtype}")
    if m.shape != lead[: m.ndim] or m.ndim == 0:
        raise ValueError(
            f"mask has shape {m.shape}, expected the leading dimensions of {what}, "
            f"e.g. {lead[:-1] if len(lead) > 1 else lead} or {lead}"
        )
    return m


def _check_targets(
    targets: object, lead: tuple[int, ...], K: int, mask: object, meaning: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer class ``targets`` of shape ``lead`` in 0..K-1 wherever ``mask`` (a prefix
    of ``lead``, see :func:`_check_mask`) is set. Returns the targets with masked entries
    replaced by 0 (any value is allowed there) and the mask broadcast to ``lead`` (or
    None)."""
    try:
        y = np.asarray(targets)
    except Exception as exc:
        raise TypeError(f"targets must be an integer array of shape {lead}: {exc}") from None
    if y.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer class indices, got dtype {y.dtype}")
    _check_shape("targets", y, lead, meaning)
    m = _check_mask(mask, lead, "targets") if lead else None
    live = None
    if m is not None:
        live = np.broadcast_to(m.reshape(m.shape + (1,) * (len(lead) - m.ndim)), lead)
    bad = (y < 0) | (y >= K)
    if live is not None:
        bad &= live
    if np.any(bad):
        raise ValueError(f"targets must be in 0..{K - 1} at unmasked positions, got {y[bad][:5]}")
    return (y if live is None else np.where(live, y, 0)), live


def _backend_name(backend: str | None) -> str:
    if backend is None:
        return _config.get_backend()
    _config._check_name(backend)
    return _config._resolve(backend)


# --- init ------------------------------------------------------------------------------


def init_params(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    init: str = "uniform",
    seed: int | np.random.Generator | None = None,
    dtype: Any = np.float32,
    gain: float = 1.0,
) -> dict[str, np.ndarray]:
    """Fresh parameters ``{"W_ih", "W_hh", "b_ih", "b_hh"}`` in PyTorch's shapes.

    ``init``:
      - ``"uniform"``: PyTorch's default, every entry from U(-1/sqrt(H), 1/sqrt(H));
      - ``"xavier"``: Glorot-uniform weights for each gate block, zero biases;
      - ``"orthogonal"``: Glorot-uniform input weights, an orthogonal matrix for each
        recurrent gate block, zero biases (lstm: forget-gate bias 1);
      - ``"identity"``: the IRNN of Le et al. (2015), recurrent weights ``I`` per gate
        block, input weights from N(0, 0.001^2), zero biases.

    ``gain`` scales the recurrent weights ``W_hh`` (e.g. ``gain=1.5`` with relu shows
    exploding gradients); ``seed`` makes the draw reproducible.
    """
    _check_choice("cell", cell, CELLS)
    _check_choice("init", init, INITS)
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    dt = np.dtype(dtype)
    if dt not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain):
        raise ValueError(f"gain must be a finite float, got {gain!r}")
    G, D, H = GATES[cell], int(input_size), int(hidden_size)
    _check_memory(16 * G * H * (D + H + 2), f"init_params({cell!r}, {D}, {H})")
    rng = np.random.default_rng(seed)
    if init == "uniform":
        k = 1.0 / math.sqrt(H)
        W_ih = rng.uniform(-k, k, (G * H, D))
        W_hh = rng.uniform(-k, k, (G * H, H))
        b_ih = rng.uniform(-k, k, G * H)
        b_hh = rng.uniform(-k, k, G * H)
    else:
        b_ih, b_hh = np.zeros(G * H), np.zeros(G * H)
        if init == "identity":
            W_ih = rng.normal(0.0, 1e-3, (G * H, D))
            W_hh = np.concatenate([np.eye(H)] * G)
        else:
            lim = math.sqrt(6.0 / (D + H))
            W_ih = rng.uniform(-lim, lim, (G * H, D))
            if init == "xavier":
                lim_h = math.sqrt(6.0 / (2 * H))
                W_hh = rng.uniform(-lim_h, lim_h, (G * H, H))
            else:
                blocks = []
                for _ in range(G):
                    q, r = np.linalg.qr(rng.normal(size=(H, H)))
                    blocks.append(q * np.sign(np.diag(r)))
                W_hh = np.concatenate(blocks)
                if cell == "lstm":
                    b_ih[H : 2 * H] = 1.0
    W_hh = W_hh * gain
    return {
        "W_ih": np.ascontiguousarray(W_ih, dtype=dt),
        "W_hh": np.ascontiguousarray(W_hh, dtype=dt),
        "b_ih": np.ascontiguousarray(b_ih, dtype=dt),
        "b_hh": np.ascontiguousarray(b_hh, dtype=dt),
    }


# --- forward and backward ---------------------------------------------------------------


def forward(
    cell: str,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
    *,
    activation: str = "tanh",
    negative_slope: float = 0.01,
    lengths: np.ndarray | None = None,
    backend: str | None = None,
) -> ForwardResult:
    """Run one recurrent layer over a time-major batch ``x`` of shape (T, B, D).

    ``cell``: ``"rnn"``, ``"lstm"`` or ``"gru"``; ``activation`` (rnn only): ``"tanh"``,
    ``"relu"``, ``"leaky_relu"`` (with ``negative_slope``) or ``"identity"``.
    ``h0``/``c0`` (B, H): initial states (zeros if omitted; ``c0`` only for lstm).
    ``lengths`` (B,): the real length of each sequence, 1..T; later steps are padding.
    ``backend`` overrides the configured backend for this call.
    """
    _check_choice("cell", cell, CELLS)
    _check_choice("activation", activation, ACTIVATIONS)
    if cell != "rnn" and activation != "tanh":
        raise ValueError(
            f"activation applies to cell 'rnn' only; {cell} has fixed gate activations"
        )
    slope = _check_slope(negative_slope)
    p, D, H = _check_params(cell, params)
    dtype = p["W_hh"].dtype
    x = _as_float_array("x", x, dtype)
    if x.ndim != 3 or x.shape[2] != D:
        raise ValueError(
            f"x has shape {x.shape}, expected (T, B, {D}): time-major (steps, batch, "
            f"input_size={D} from params['W_ih'])"
        )
    T, B, _ = x.shape
    G = GATES[cell]  # hs, the input projection / saved gates, x's copy, the states:
    _check_memory(
        dtype.itemsize * (T * B * ((G + 1) * H + D) + 4 * B * H),
        f"forward of {cell!r} with T={T}, B={B}, input_size={D}, hidden_size={H} in {dtype}",
    )
    if h0 is None:
        h0 = np.zeros((B, H), dtype=dtype)
    else:
        h0 = _as_float_array("h0", h0, dtype)
        _check_shape("h0", h0, (B, H), "(batch, hidden_size)")
    if cell == "lstm":
        if c0 is None:
            c0 = np.zeros((B, H), dtype=dtype)
        else:
            c0 = _as_float_array("c0", c0, dtype)
            _check_shape("c0", c0, (B, H), "(batch, hidden_size)")
    elif c0 is not None:
        raise ValueError(f"c0 is the lstm cell state; cell {cell!r} takes no c0")
    lens = _check_lengths(lengths, T, B)
    name = _backend_name(backend)
    if T == 0 or B == 0:  # nothing to run: a defined, empty result
        hs = np.zeros((T, B, H), dtype=dtype)
        h_n, c_n, saved = h0.copy(), None if c0 is None else c0.copy(), None
    else:
        module = _registry.load(name)
        hs, h_n, c_n, saved = module.forward(
            cell,
            p,
            x,
            h0,
            c0,
            activation=activation,
            negative_slope=slope,
            lengths=lens,
            num_threads=_config.get_num_threads(),
        )
    return ForwardResult(
        hs=hs,
        h_n=h_n,
        c_n=c_n,
        cell=cell,
        activation=activation,
        negative_slope=slope,
        backend=name,
        params=p,
        x=x,
        h0=h0,
        c0=c0,
        lengths=lens,
        saved=saved,
    )


def backward(
    res: ForwardResult,
    dhs: np.ndarray | None = None,
    dh_n: np.ndarray | None = None,
    dc_n: np.ndarray | None = None,
    *,
    return_step_norms: bool = False,
) -> Gradients:
    """Backpropagation through time for the call that produced ``res``.

    ``dhs`` (T, B, H): dL/dhs, the loss gradient at every step (ignored at padded steps);
    ``dh_n``/``dc_n`` (B, H): the gradient arriving at the final state. Omitted ones are
    zero. Runs on the backend that made ``res``. With ``return_step_norms``, also returns
    ``||dL/dh_t||`` per step and sequence (the course's gradient-vs-lag picture).
    """
    if not isinstance(res, ForwardResult):
        raise TypeError(
            f"res must be the ForwardResult of fastrnn.forward, got {type(res).__name__}"
        )
    T, B, H = res.hs.shape
    dtype = res.hs.dtype
    D, G = res.x.shape[2], GATES[res.cell]  # the gate gradients (twice for gru), dhs, dx:
    _check_memory(
        dtype.itemsize * T * B * (2 * G * H + H + D),
        f"backward of {res.cell!r} with T={T}, B={B}, input_size={D}, hidden_size={H} in {dtype}",
    )

    def grad(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
        if value is None:
            return np.zeros(shape, dtype=dtype)
        arr = _as_float_array(name, value, dtype)
        _check_shape(name, arr, shape, "(the shape of the forward output it is the gradient of)")
        return arr

    dhs_a = grad("dhs", dhs, (T, B, H))
    dh_n_a = grad("dh_n", dh_n, (B, H))
    if res.cell == "lstm":
        dc_n_a = grad("dc_n", dc_n, (B, H))
    elif dc_n is not None:
        raise ValueError(f"dc_n is the gradient of the lstm cell state; cell {res.cell!r} has none")
    else:
        dc_n_a = None
    if T == 0 or B == 0:
        return Gradients(
            dx=np.zeros(res.x.shape, dtype=dtype),
            dh0=dh_n_a.copy(),
            dc0=None if dc_n_a is None else dc_n_a.copy(),
            params={k: np.zeros_like(v) for k, v in res.params.items()},
            step_norms=np.zeros((T, B), dtype=dtype) if return_step_norms else None,
        )
    module = _registry.load(res.backend)
    dx, dh0, dc0, dparams, norms = module.backward(
        res.cell,
        res.params,
        res.x,
        res.h0,
        res.c0,
        res.hs,
        res.saved,
        dhs_a,
        dh_n_a,
        dc_n_a,
        activation=res.activation,
        negative_slope=res.negative_slope,
        lengths=res.lengths,
        num_threads=_config.get_num_threads(),
        step_norms=bool(return_step_norms),
    )
    return Gradients(dx=dx, dh0=dh0, dc0=dc0, params=dparams, step_norms=norms)


def linear_cross_entropy(
    h: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    targets: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    reduction: str = "mean",
    backend: str | None = None,
) -> HeadGradients:
    """A linear softmax head and its cross-entropy, forward and backward in one call.

    The logits ``z = h @ weight.T + bias`` (the course's ``o_t = V h_t + c``) of ``h``
    (..., H), with ``weight`` (K, H) and ``bias`` (K,), against integer class ``targets``
    of shape ``h.shape[:-1]``; ``mask`` and ``reduction`` as in
    :func:`fastrnn.losses.softmax_cross_entropy`. The value and the gradients are those of
    :class:`fastrnn.Linear` followed by that loss, but the fast backends never hold all the
    logits: they run the head, the softmax and the three gradient products block by
    block of rows, in cache, and split the rows over threads.
    """
    weight = _as_float_array("weight", weight)
    dtype = weight.dtype
    if weight.ndim != 2 or 0 in weight.shape:
        raise ValueError(
            f"weight has shape {weight.shape}, expected (classes, hidden_size), both >= 1"
        )
    K, H = weight.shape
    bias = _as_float_array("bias", bias, dtype)
    _check_shape("bias", bias, (K,), f"(classes,) with {K} classes from weight")
    h = _as_float_array("h", h, dtype)
    if h.ndim < 1 or h.shape[-1] != H:
        raise ValueError(
            f"h has shape {h.shape}, expected (..., {H}) (last axis hidden_size={H} from weight)"
        )
    lead = h.shape[:-1]
    reduction = _check_reduction(reduction)
    y, live = _check_targets(targets, lead, K, mask, "(h without its last, hidden axis)")
    N = math.prod(lead)
    _check_memory(
        dtype.itemsize * N * (2 * K + H) + 8 * N,
        f"linear_cross_entropy of {N} rows, {H} features and {K} classes in {dtype}",
    )
    y = np.ascontiguousarray(y.reshape(N), dtype=np.int64)
    row_weights = None
    count = float(N)
    if live is not None:
        count = float(np.count_nonzero(live))
        row_weights = np.ascontiguousarray(live.reshape(N), dtype=dtype)
    name = _backend_name(backend)
    if count == 0:  # nothing to learn from: zero loss and gradients
        return HeadGradients(0.0, np.zeros_like(h), np.zeros_like(weight), np.zeros_like(bias))
    scale = 1.0 / count if reduction == "mean" else 1.0
    loss, dh, dweight, dbias = _registry.load(name).linear_cross_entropy(
        h.reshape(N, H),
        weight,
        bias,
        y,
        row_weights,
        scale=scale,
        num_threads=_config.get_num_threads(),
    )
    return HeadGradients(loss=loss, dh=dh.reshape(h.shape), dweight=dweight, dbias=dbias)
