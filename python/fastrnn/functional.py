"""The functional core: ``init_params``, ``forward`` and ``backward`` for rnn, lstm and gru.

This is the one place that validates the input of the kernels and the one place that
knows backends exist. Every public argument is checked here, once (with the checks of
:mod:`fastrnn._validation`: TypeError for a wrong type, ValueError for a wrong value, a
message that names the argument, what it got and what was expected); the backends then
receive only the normalised input described in :mod:`fastrnn.backends` (native,
C-contiguous arrays of one canonical dtype).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _config
from . import _validation as V
from . import backends as _registry
from .backends._contract import Checkpoints, FusedHead, Saved
from .datasets import one_hot

CELLS: tuple[str, ...] = V.CELLS
ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "leaky_relu", "identity")
INITS: tuple[str, ...] = ("uniform", "xavier", "orthogonal", "identity")
PARAM_NAMES: tuple[str, ...] = V.PARAM_NAMES
GATES: dict[str, int] = V.GATES
DTYPES: tuple[np.dtype, ...] = V.DTYPES
REDUCTIONS: tuple[str, ...] = ("mean", "sum")


@dataclass(frozen=True, eq=False)
class ForwardResult:
    """What :func:`forward` returns.

    ``hs`` (T, B, H): the hidden state at every step (zero at padded steps);
    ``h_n`` (B, H): the state after each sequence's last real step;
    ``c_n`` (B, H): the lstm cell state likewise (``None`` for rnn and gru).
    The remaining fields are what :func:`backward` needs; treat them as private
    (``saved`` is ``None`` after ``forward(..., training=False)``; ``x`` is the input the
    backend saw: the float input, or ``x * input_mask`` with input dropout; token ids
    (T, B) int64 as they are, or with input dropout their masked one-hot rows (T, B, D);
    ``token_ids`` says the input was token ids, which have no gradient; ``one_hot_ids``:
    the ids of a float ``x`` whose every row is one-hot, which the backend ran as ids).
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
    saved: Saved = field(repr=False)
    training: bool = field(default=True, repr=False)
    input_mask: np.ndarray | None = field(default=None, repr=False)
    recurrent_mask: np.ndarray | None = field(default=None, repr=False)
    checkpoint: int | None = field(default=None, repr=False)
    token_ids: bool = field(default=False, repr=False)
    one_hot_ids: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class HeadSpec:
    """The output head fused into :func:`backward` (``backward(res, head=HeadSpec(...))``):
    the arguments of :func:`linear_cross_entropy` on the layer's outputs ``hs`` (T, B, H).

    ``weight`` (K, H) and ``bias`` (K,) of the linear head (the dtype of the layer);
    ``targets`` (T, B) integer classes in 0..K-1 (any value where ``mask`` is False);
    ``mask`` an optional boolean array of shape (T,), (T, B): which steps count (padded
    steps of ``lengths`` count unless masked, as in :func:`linear_cross_entropy`);
    ``reduction`` "mean" over the counted steps or "sum"."""

    weight: np.ndarray
    bias: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None = None
    reduction: str = "mean"


@dataclass(frozen=True, eq=False)
class FusedHeadGradients:
    """The head's part of :func:`backward` with ``head=``: its ``loss`` (a float),
    ``dweight`` (K, H) and ``dbias`` (K,) (its dL/dh never leaves the backward)."""

    loss: float
    dweight: np.ndarray
    dbias: np.ndarray


@dataclass(frozen=True, eq=False)
class Gradients:
    """What :func:`backward` returns: ``dx`` (T, B, D) (``None`` when the input was token
    ids, or with ``backward(..., input_grad=False)``: not computed), ``dh0`` (B, H),
    ``dc0`` (lstm), ``params`` (the same keys as the params), ``step_norms`` (T, B) when
    asked for: ``||dL/dh_t||`` for every step and sequence, and ``head`` (a
    :class:`FusedHeadGradients`) when :func:`backward` ran a fused head."""

    dx: np.ndarray | None
    dh0: np.ndarray
    dc0: np.ndarray | None
    params: dict[str, np.ndarray]
    step_norms: np.ndarray | None = None
    head: FusedHeadGradients | None = None


@dataclass(frozen=True, eq=False)
class HeadGradients:
    """What :func:`linear_cross_entropy` returns: the ``loss`` (a float), ``dh`` (dL/dh, the
    shape of ``h``), ``dweight`` (K, H) and ``dbias`` (K,)."""

    loss: float
    dh: np.ndarray
    dweight: np.ndarray
    dbias: np.ndarray


@dataclass(frozen=True)
class CheckpointPlan:
    """The schedule :func:`forward` runs for a ``checkpoint`` setting (see
    :func:`checkpoint_plan`): ``every`` = k, a segment every k steps (``None``: full BPTT,
    every step's activations saved), ``held_bytes`` the bytes held for backward beyond
    ``x`` and ``hs`` (the checkpoints plus the reused segment buffer), ``full_bytes`` what
    full BPTT holds, and ``recomputed_steps`` the forward steps backward runs again."""

    every: int | None
    held_bytes: int
    full_bytes: int
    recomputed_steps: int


# --- validation --------------------------------------------------------------------------


def _check_slope(negative_slope: object) -> float:
    return V.check_non_negative_float("negative_slope", negative_slope)


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
    V.check_choice("cell", cell, CELLS)
    V.check_choice("init", init, INITS)
    D = V.check_positive_int("input_size", input_size)
    H = V.check_positive_int("hidden_size", hidden_size)
    dt = V.check_float_dtype("dtype", dtype)
    gain = V.check_float("gain", gain)
    G = GATES[cell]
    V.check_memory(16 * G * H * (D + H + 2), f"init_params({cell!r}, {D}, {H})")
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


# --- checkpointed BPTT: the schedule -----------------------------------------------------


def _held(cell: str, T: int, B: int, H: int, itemsize: int, every: int | None) -> int:
    """Bytes held for backward beyond x and hs: full BPTT's saved activations ((G+1)*H per
    step and sequence for lstm and gru, nothing for rnn), or, checkpointed, lstm's cell
    state every k steps plus the buffer of one segment (its gates, extra values and h_t)."""
    if cell == "rnn":
        return 0
    G = GATES[cell]
    if every is None:
        return itemsize * T * B * (G + 1) * H
    k = min(every, T)
    states = -(-T // k) * B * H if cell == "lstm" else 0
    return itemsize * (states + k * B * (G + 2) * H)


def checkpoint_plan(
    cell: str, T: int, B: int, hidden_size: int, dtype: Any = np.float32, checkpoint: object = None
) -> CheckpointPlan:
    """The schedule and memory of checkpointed BPTT for a ``checkpoint`` setting of
    :func:`forward` (layer of ``cell`` over T steps of B sequences in ``dtype``).

    ``checkpoint``:
      - ``None``: full BPTT (every step's activations held);
      - an int k >= 1: the state every k steps, each segment recomputed once in backward
        (k >= T: one segment);
      - ``"sqrt"``: k = ceil(sqrt(T));
      - ``{"max_bytes": N}``: full BPTT if its activations fit in N bytes, else the largest
        k whose checkpoints and segment buffer fit (a MemoryError if none does).

    Every checkpointed schedule recomputes each step exactly once: ``hs`` is an output and
    held anyway, so a segment's recompute starts from h_{t-1} in ``hs`` (and lstm's stored
    cell state) and never needs a recompute of its own. That is why the dynamic program of
    Gruslys et al. (2016), which trades recomputation against memory when hidden states
    are not all kept, has nothing to gain here: the only choice is k, the balance of the
    checkpoints (T/k) and the segment buffer (k); a larger k means fewer, larger segments
    (less per-segment overhead), so the budget picks the largest k that fits. rnn saves
    nothing either way: checkpointing is a no-op for it (``every`` stays ``None``).
    """
    V.check_choice("cell", cell, CELLS)
    T = V.check_non_negative_int("T", T)
    B = V.check_non_negative_int("B", B)
    H = V.check_positive_int("hidden_size", hidden_size)
    itemsize = V.check_float_dtype("dtype", dtype).itemsize
    every = _resolve_checkpoint(checkpoint, cell, T, B, H, itemsize)
    return CheckpointPlan(
        every=every,
        held_bytes=_held(cell, T, B, H, itemsize, every),
        full_bytes=_held(cell, T, B, H, itemsize, None),
        recomputed_steps=0 if every is None else T,
    )


def _resolve_checkpoint(
    checkpoint: object, cell: str, T: int, B: int, H: int, itemsize: int
) -> int | None:
    """k for a ``checkpoint`` setting (see :func:`checkpoint_plan`), ``None`` for full BPTT;
    TypeError/ValueError naming ``checkpoint`` for a bad one."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, str):
        if checkpoint != "sqrt":
            raise ValueError(
                f"checkpoint must be None, an int >= 1, 'sqrt' or {{'max_bytes': N}}, got "
                f"{checkpoint!r}"
            )
        every: int | None = max(1, math.isqrt(max(T - 1, 0)) + 1) if T > 1 else 1
    elif isinstance(checkpoint, Mapping):
        if set(checkpoint) != {"max_bytes"}:
            raise ValueError(
                "checkpoint as a dict takes exactly one key, 'max_bytes' (the memory budget "
                f"in bytes), got the keys {sorted(map(str, checkpoint))}"
            )
        budget = V.check_non_negative_int("checkpoint['max_bytes']", checkpoint["max_bytes"])
        every = _budget_schedule(cell, T, B, H, itemsize, budget)
    elif isinstance(checkpoint, (bool, np.bool_)) or not isinstance(checkpoint, (int, np.integer)):
        raise TypeError(
            "checkpoint must be None, an int >= 1, 'sqrt' or {'max_bytes': N}, got a "
            f"{type(checkpoint).__name__} ({checkpoint!r})"
        )
    else:
        every = V.check_positive_int("checkpoint", checkpoint)
    return None if cell == "rnn" else every


def _budget_schedule(cell: str, T: int, B: int, H: int, itemsize: int, budget: int) -> int | None:
    """Full BPTT (None) if it fits in ``budget`` bytes, else the largest k that does."""
    if cell == "rnn" or _held(cell, T, B, H, itemsize, None) <= budget:
        return None

    def held(k: int) -> int:  # convex in k
        return _held(cell, T, B, H, itemsize, k)

    # the smallest memory: k = 1 for gru (no states), near sqrt(T / (G + 2)) for lstm
    # (T/k checkpoints of B*H values against k steps of (G+2)*B*H)
    k0 = math.isqrt(T // (GATES[cell] + 2)) if cell == "lstm" else 1
    best: int = min({1, T, *range(max(1, k0 - 2), min(T, k0 + 3) + 1)}, key=held)
    if held(best) > budget:
        raise MemoryError(
            f"checkpoint={{'max_bytes': {budget}}}: no schedule fits; the smallest, k={best}, "
            f"holds {held(best)} bytes for backward of {cell!r} with T={T}, B={B}, "
            f"hidden_size={H} (full BPTT: {_held(cell, T, B, H, itemsize, None)}); raise "
            "max_bytes or use truncated BPTT"
        )
    lo, hi = best, T  # held is increasing on [best, T]: the largest k with held(k) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if held(mid) <= budget else (lo, mid - 1)
    return lo


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
    training: bool = True,
    input_mask: np.ndarray | None = None,
    recurrent_mask: np.ndarray | None = None,
    checkpoint: int | str | Mapping[str, int] | None = None,
) -> ForwardResult:
    """Run one recurrent layer over a time-major batch ``x`` of shape (T, B, D), or over
    token ids ``x`` of shape (T, B).

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
        The recurrent cell.
    params : dict of arrays
        ``W_ih`` (G*H, D), ``W_hh`` (G*H, H), ``b_ih`` and ``b_hh`` (G*H,) in PyTorch's
        layout, with G = 1, 4, 3 gates for rnn, lstm, gru (see :func:`init_params`). Their
        dtype (float32 or float64) is the dtype of the computation.
    x : array (T, B, D), or integer array (T, B)
        The input, time-major: float features, or token ids in 0..D-1 (a NumPy or torch
        integer array of any integer dtype, converted once to int64), which stand for their
        one-hot rows: the result equals that of the one-hot float input (to rounding; the
        reference gives the same bits where NumPy's BLAS sums a product's terms in order),
        but the input projection is a gather of columns of ``W_ih`` instead of a product,
        ``dW_ih`` a scatter-add, and there is no ``dx`` (ids have no gradient). Python
        lists are read as features (converted to the parameters' dtype).
    h0, c0 : array (B, H), optional
        Initial hidden state and (lstm only) cell state; zeros when omitted.
    activation : {"tanh", "relu", "leaky_relu", "identity"}
        The rnn activation (gated cells have fixed gate activations: only "tanh").
    negative_slope : float
        The slope of "leaky_relu" for negative inputs (>= 0).
    lengths : int array (B,), optional
        The real length of each sequence, 1..T; later steps are padding: their outputs
        are 0 and the state is carried through them unchanged.
    backend : {"numpy", "numba", "cpp", "auto"}, optional
        Overrides the configured backend (:func:`fastrnn.set_backend`) for this call.
    training : bool
        ``False`` for inference: the backend saves nothing for :func:`backward` (no
        per-step activations beyond ``hs`` are held) and ``backward`` of the result is
        refused.
    input_mask : array (B, D), optional
        Variational input dropout: the layer reads ``x_t * input_mask`` at every step (one
        mask per sequence, the same at every step); :func:`backward` multiplies ``dx`` by
        it. Applied here, in the functional core, for every backend alike (token ids are
        then made into their one-hot rows, masked, and run as a float input: the one
        mechanism of masks, at the cost of the one-hot product).
    recurrent_mask : array (B, H), optional
        Variational recurrent dropout (Gal and Ghahramani 2016, Keras'
        ``recurrent_dropout``): the state enters the recurrent product as
        ``W_hh (recurrent_mask * h_{t-1})`` at every step, inside the backend's kernels.
        For gru the mask applies to all three gates' product (``W_hn h`` inside
        ``r * (...)`` too) while ``z * h_{t-1}`` reads the unmasked state. Masks are
        plain multipliers (the layers pass 0 or 1/(1-p), inverted dropout); ``None``
        (default) is no dropout, bit for bit the same as before masks existed.
    checkpoint : None, int, "sqrt" or {"max_bytes": N}
        Checkpointed BPTT (training only): instead of every step's activations, keep the
        state every k steps (lstm: its cell state; h_{t-1} is in ``hs``) and let
        :func:`backward` recompute each segment of k steps with the same kernels, newest
        first; the gradients are bit-identical to full BPTT (``None``) on the same backend
        and thread count (where a product goes to a BLAS whose rows' bits depend on the
        row count, as OpenBLAS's kernels for AVX2-only CPUs do: equal to rounding).
        ``"sqrt"`` is k = ceil(sqrt(T)); ``{"max_bytes": N}`` keeps full
        BPTT if it fits in N bytes, else picks the largest k that does
        (:func:`checkpoint_plan`). rnn saves nothing either way (a no-op). With dropout
        masks the recompute applies the same ones (gradients bit-identical to full BPTT
        with those masks).

    Returns
    -------
    ForwardResult
        ``hs`` (T, B, H), the hidden state of every step; ``h_n`` (B, H) and ``c_n`` (B, H,
        lstm only, else None), the state after each sequence's last real step; the rest is
        what :func:`backward` needs.

    Raises
    ------
    TypeError
        An argument of the wrong type: params not a dict, an array not float32/float64
        (``x``: nor an integer array of token ids; a boolean ``x`` is refused), an array
        of the other float dtype than the parameters, lengths not integers.
    ValueError
        A wrong value: an unknown cell, activation or backend, shapes that do not fit
        each other (the message gives the expected shape and where it comes from), token
        ids outside 0..D-1 (naming the first bad position) or not of shape (T, B),
        lengths outside 1..T, a negative or non-finite negative_slope, a mask of the wrong
        shape or with NaN/inf, a bad checkpoint (or one with training=False).
    RuntimeError
        The backend asked for is not available here (the message says why).
    MemoryError
        The call would need more memory than is available (refused before allocating).

    Notes
    -----
    Arrays may be anything NumPy reads as float32/float64 (memory-mapped, read-only,
    unpickled, byte-swapped, ``np.frombuffer``, a PyTorch tensor): used as they are or
    converted once. Python lists are converted to the parameters' dtype; an array of the
    other float dtype is a TypeError (see :mod:`fastrnn._validation`).
    """
    training = V.check_bool("training", training)
    V.check_choice("cell", cell, CELLS)
    V.check_choice("activation", activation, ACTIVATIONS)
    if cell != "rnn" and activation != "tanh":
        raise ValueError(
            f"activation applies to cell 'rnn' only; {cell} has fixed gate activations"
        )
    slope = _check_slope(negative_slope)
    p, D, H = V.check_params(cell, params)
    dtype = p["W_hh"].dtype
    ids = V.as_token_ids("x", x, D, "(T, B)", f"input_size={D} from params['W_ih']")
    if ids is not None:
        x = ids
    else:
        x = V.as_float_array("x", x, dtype)
        if x.ndim != 3 or x.shape[2] != D:
            raise ValueError(
                f"x has shape {x.shape}, expected (T, B, {D}): time-major (steps, batch, "
                f"input_size={D} from params['W_ih']), or integer token ids (T, B)"
            )
    T, B = x.shape[:2]
    every = _resolve_checkpoint(checkpoint, cell, T, B, H, dtype.itemsize)
    if every is not None and not training:
        raise ValueError(
            f"checkpoint={checkpoint!r} applies to a training forward; training=False keeps "
            "nothing for backward anyway"
        )
    # hs, x's copy (token ids: none, unless input_mask makes their one-hot rows), the
    # states, and what is held for backward (full: the projection / saved gates and extra
    # values; checkpointed: the checkpoints and a segment):
    x_values = D if ids is None or input_mask is not None else 0
    V.check_memory(
        dtype.itemsize * (T * B * (H + x_values) + 4 * B * H)
        + _held(cell, T, B, H, dtype.itemsize, every),
        f"forward of {cell!r} with T={T}, B={B}, input_size={D}, hidden_size={H} in {dtype}"
        + ("" if every is None else f" checkpointed every {every} steps"),
    )
    if h0 is None:
        h0 = np.zeros((B, H), dtype=dtype)
    else:
        h0 = V.as_float_array("h0", h0, dtype)
        V.check_shape("h0", h0, (B, H), "(batch, hidden_size)")
    if cell == "lstm":
        if c0 is None:
            c0 = np.zeros((B, H), dtype=dtype)
        else:
            c0 = V.as_float_array("c0", c0, dtype)
            V.check_shape("c0", c0, (B, H), "(batch, hidden_size)")
    elif c0 is not None:
        raise ValueError(f"c0 is the lstm cell state; cell {cell!r} takes no c0")
    lens = V.check_lengths(lengths, T, B)
    in_mask = V.check_dropout_mask("input_mask", input_mask, dtype, (B, D), "(batch, input_size)")
    rec_mask = V.check_dropout_mask(
        "recurrent_mask", recurrent_mask, dtype, (B, H), "(batch, hidden_size)"
    )
    name = _config.resolve_backend(backend)
    if ids is not None and in_mask is not None:
        x = one_hot(ids, D, dtype=dtype)  # the float path on the masked one-hot rows
    if in_mask is not None:  # the same mask at every step: exact, and one mechanism for all
        x = x * in_mask
    rows_ids = _one_hot_ids(x) if ids is None and in_mask is None else None
    if T == 0 or B == 0:  # nothing to run: a defined, empty result
        hs = np.zeros((T, B, H), dtype=dtype)
        h_n, c_n, saved = h0.copy(), None if c0 is None else c0.copy(), None
    else:
        module = _registry.load(name)
        hs, h_n, c_n, saved = module.forward(
            cell,
            p,
            x if rows_ids is None else rows_ids,
            h0,
            c0,
            activation=activation,
            negative_slope=slope,
            lengths=lens,
            num_threads=_config.get_num_threads(),
            training=training,
            recurrent_mask=rec_mask,
            **({} if every is None else {"checkpoint": every}),
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
        training=training,
        input_mask=in_mask,
        recurrent_mask=rec_mask,
        checkpoint=every if isinstance(saved, Checkpoints) else None,
        token_ids=ids is not None,
        one_hot_ids=rows_ids,
    )


def _one_hot_ids(x: np.ndarray) -> np.ndarray | None:
    """The token ids (T, B) of a float ``x`` (T, B, D) whose every row is one-hot (one 1,
    zeros elsewhere), else None. The backends run such an input as its ids: the projection
    then gathers W_ih's columns, with the bits of the one-hot product where the BLAS sums
    its terms in order (the zero terms add nothing; only an inf or NaN weight, which the
    product would spread as NaN, differs), else equal to rounding.
    The first row decides cheaply for every other input."""
    T, B, D = x.shape
    if D < 2 or x.size == 0:
        return None
    first = x[0, 0]
    if np.count_nonzero(first) != 1 or first.max() != 1:
        return None
    # one nonzero bit pattern per row on average (-0.0 counts: conservative; 4x faster
    # than floats) ...
    bits = x.view(np.int32 if x.dtype == np.float32 else np.int64)
    if np.count_nonzero(bits) != T * B:
        return None
    # ... and a 1 in every row, where x @ (0, 1, ..., D-1) puts it if the row is one-hot
    # (exact below 2^24): then each row has exactly one nonzero, that 1. A product, 4x
    # faster than an argmax; a row that is not one-hot gives some other number, and fails.
    where = x.reshape(T * B, D) @ np.arange(D, dtype=x.dtype)
    ids: np.ndarray = np.clip(np.rint(np.nan_to_num(where)), 0, D - 1).astype(np.int64)
    if not np.all(np.take_along_axis(x.reshape(T * B, D), ids[:, None], axis=1) == 1):
        return None
    return ids.reshape(T, B)


def _backward_input(res: ForwardResult) -> np.ndarray:
    """What a backward without dx reads as x: the ids of a one-hot float input (found by
    the forward, or now for a result built by hand, as fastrnn.torch's backward does)."""
    if res.token_ids:
        return res.x
    found = res.one_hot_ids if res.one_hot_ids is not None else _one_hot_ids(res.x)
    return res.x if found is None else found


def backward(
    res: ForwardResult,
    dhs: np.ndarray | None = None,
    dh_n: np.ndarray | None = None,
    dc_n: np.ndarray | None = None,
    *,
    return_step_norms: bool = False,
    head: HeadSpec | None = None,
    input_grad: bool = True,
) -> Gradients:
    """Backpropagation through time for the call that produced ``res``.

    Runs on the backend that made ``res``.

    Parameters
    ----------
    res : ForwardResult
        The result of :func:`forward` (with ``training=True``, the default).
    dhs : array (T, B, H), optional
        dL/dhs, the loss gradient at every step (ignored at padded steps); zero if omitted.
    dh_n, dc_n : array (B, H), optional
        The gradient arriving at the final state (``dc_n``: lstm only); zero if omitted.
    return_step_norms : bool
        Also return ``||dL/dh_t||`` per step and sequence (the gradient-vs-lag picture).
    head : HeadSpec, optional
        A linear softmax head with its cross-entropy on ``hs``, fused into the backward:
        the same loss and gradients as ``linear_cross_entropy(res.hs, ...)`` followed by
        ``backward(res, dhs=its dh)``, but the head's dL/dh_t is computed block by block
        of steps inside the backward (the blocks of its weight gradients, aligned at
        t = 0), so no dh of all T steps is ever made; with ``checkpoint`` that keeps the
        memory of a training step bounded. Its results are bit-identical with and
        without ``checkpoint`` (same backend and thread count). ``dhs`` may be given too:
        it adds to the head's gradient.
    input_grad : bool
        ``False``: no ``dx`` (``Gradients.dx`` is ``None``), and the backend does not
        compute it (one GEMM of the three per step fewer): for a first layer whose input
        is fixed data, whose gradient nobody reads. Token ids never have a ``dx``.

    Returns
    -------
    Gradients
        ``dx`` (T, B, D) (``None`` for token ids or ``input_grad=False``), ``dh0`` (B, H),
        ``dc0`` (B, H, lstm only, else None),
        ``params`` (dL/d of each parameter, the keys of the params), ``step_norms``
        ((T, B) or None) and ``head`` (the head's loss, dweight and dbias, or None).

    Raises
    ------
    TypeError
        ``res`` is not a ForwardResult, or a gradient is not a float array of the
        parameters' dtype.
    ValueError
        ``res`` comes from ``forward(..., training=False)``; a gradient of the wrong
        shape; ``dc_n`` for a cell without a cell state; a head whose arrays do not fit
        ``hs`` (as :func:`linear_cross_entropy` checks them).
    MemoryError
        The call would need more memory than is available (refused before allocating).
    """
    if not isinstance(res, ForwardResult):
        raise TypeError(
            f"res must be the ForwardResult of fastrnn.forward, got {type(res).__name__}"
        )
    if not res.training:
        raise ValueError(
            "res comes from fastrnn.forward(..., training=False), which saves nothing for "
            "backward; run the forward with training=True (the default) to backpropagate"
        )
    input_grad = V.check_bool("input_grad", input_grad) and not res.token_ids
    T, B, H = res.hs.shape
    dtype = res.hs.dtype
    D, G = res.params["W_ih"].shape[1], GATES[res.cell]
    fused = None if head is None else _fused_head(head, res.hs)
    # dhs, dx, and the gate gradients (twice for gru) or, checkpointed, a segment's
    held = (
        2 * G * H * T * B * dtype.itemsize
        if res.checkpoint is None
        else _held(res.cell, T, B, H, dtype.itemsize, res.checkpoint)
    )
    dhs_bytes = 0 if head is not None and dhs is None else dtype.itemsize * T * B * H
    V.check_memory(
        dtype.itemsize * T * B * D * input_grad + dhs_bytes + held,
        f"backward of {res.cell!r} with T={T}, B={B}, input_size={D}, hidden_size={H} in {dtype}",
    )

    def grad(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
        if value is None:
            return np.zeros(shape, dtype=dtype)
        arr = V.as_float_array(name, value, dtype)
        V.check_shape(name, arr, shape, "(the shape of the forward output it is the gradient of)")
        return arr

    dhs_a = None if head is not None and dhs is None else grad("dhs", dhs, (T, B, H))
    dh_n_a = grad("dh_n", dh_n, (B, H))
    if res.cell == "lstm":
        dc_n_a = grad("dc_n", dc_n, (B, H))
    elif dc_n is not None:
        raise ValueError(f"dc_n is the gradient of the lstm cell state; cell {res.cell!r} has none")
    else:
        dc_n_a = None
    head_zero = None
    if head is not None and fused is None:  # no counted step: zero loss and gradients
        weight = V.as_float_array("head.weight", head.weight, dtype)
        head_zero = FusedHeadGradients(0.0, np.zeros_like(weight), np.zeros(weight.shape[0], dtype))
        if dhs_a is None:
            dhs_a = np.zeros((T, B, H), dtype=dtype)
    if T == 0 or B == 0:
        return Gradients(
            dx=np.zeros((T, B, D), dtype=dtype) if input_grad else None,
            dh0=dh_n_a.copy(),
            dc0=None if dc_n_a is None else dc_n_a.copy(),
            params={k: np.zeros_like(v) for k, v in res.params.items()},
            step_norms=np.zeros((T, B), dtype=dtype) if return_step_norms else None,
            head=head_zero,
        )
    module = _registry.load(res.backend)
    dx, dh0, dc0, dparams, norms, head_sums = module.backward(
        res.cell,
        res.params,
        res.x if input_grad else _backward_input(res),
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
        recurrent_mask=res.recurrent_mask,
        head=fused,
        input_grad=input_grad,
    )
    if dx is not None and res.input_mask is not None:
        dx = dx * res.input_mask  # d(x * m)/dx = m
    head_out = head_zero
    if head_sums is not None:
        head_out = FusedHeadGradients(*head_sums)
    return Gradients(dx=dx, dh0=dh0, dc0=dc0, params=dparams, step_norms=norms, head=head_out)


def _head_rows(
    h_shape: tuple[int, ...],
    dtype: np.dtype | None,
    weight: object,
    bias: object,
    targets: object,
    mask: object,
    reduction: object,
    prefix: str = "",
    order: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, float]:
    """The checks of a head on rows of shape ``h_shape`` (..., H): ``(weight, bias, targets
    (N,) int64, row_weights (N,) or None, count)`` with count the counted rows, the rows
    taken in the order of the leading axes ``order`` (default: as they are); argument
    names in messages carry ``prefix`` (``"head."`` for a :class:`HeadSpec`)."""
    weight = V.as_float_array(prefix + "weight", weight, dtype)
    if weight.ndim != 2 or 0 in weight.shape:
        raise ValueError(
            f"{prefix}weight has shape {weight.shape}, expected (classes, hidden_size), both >= 1"
        )
    K = weight.shape[0]
    bias = V.as_float_array(prefix + "bias", bias, weight.dtype)
    V.check_shape(prefix + "bias", bias, (K,), f"(classes,) with {K} classes from weight")
    V.check_choice(prefix + "reduction", reduction, REDUCTIONS)
    lead = h_shape[:-1]
    what = "(h without its last, hidden axis)" if not prefix else "(steps, batch) of hs"
    y, live = V.check_targets(targets, lead, K, mask, what)
    if order is not None:
        y = y.transpose(order)
        live = None if live is None else live.transpose(order)
    N = math.prod(lead)
    y = np.ascontiguousarray(y.reshape(N), dtype=np.int64)
    if live is None:
        return weight, bias, y, None, float(N)
    row_weights = np.ascontiguousarray(live.reshape(N), dtype=weight.dtype)
    return weight, bias, y, row_weights, float(np.count_nonzero(live))


def _fused_head(head: object, hs: np.ndarray) -> FusedHead | None:
    """The backend's :class:`FusedHead` for a :class:`HeadSpec` on ``hs`` (T, B, H), or
    ``None`` when no step counts (then the head adds nothing)."""
    if not isinstance(head, HeadSpec):
        raise TypeError(f"head must be a fastrnn.functional.HeadSpec, got {type(head).__name__}")
    H = hs.shape[2]
    weight, bias, y, row_weights, count = _head_rows(
        hs.shape,
        hs.dtype,
        head.weight,
        head.bias,
        head.targets,
        head.mask,
        head.reduction,
        "head.",
    )
    if weight.shape[1] != H:
        raise ValueError(
            f"head.weight has shape {weight.shape}, expected ({weight.shape[0]}, {H}): "
            f"classes by the layer's hidden_size={H}"
        )
    if count == 0:
        return None
    scale = 1.0 / count if head.reduction == "mean" else 1.0
    return FusedHead(weight, bias, y, row_weights, scale)


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

    The logits ``z = h @ weight.T + bias`` (the course's ``o_t = V h_t + c``) against
    integer class ``targets``. The value and the gradients are those of
    :class:`fastrnn.Linear` followed by :func:`fastrnn.losses.softmax_cross_entropy`, but
    the fast backends never hold all the logits: they run the head, the softmax and the
    three gradient products block by block of rows, in cache, and split the rows over
    threads.

    Parameters
    ----------
    h : array (..., H)
        The hidden states (any leading shape).
    weight : array (K, H)
        The head's weights; its dtype is the dtype of the computation.
    bias : array (K,)
        The head's bias.
    targets : int array of shape ``h.shape[:-1]``
        Class indices in 0..K-1 (any value where ``mask`` is False).
    mask : bool array, optional
        Which positions count; its shape is a prefix of ``h.shape[:-1]``.
    reduction : {"mean", "sum"}
        The mean over the counted positions, or their sum.
    backend : {"numpy", "numba", "cpp", "auto"}, optional
        Overrides the configured backend for this call.

    Returns
    -------
    HeadGradients
        ``loss`` (a float), ``dh`` (the shape of ``h``), ``dweight`` (K, H), ``dbias`` (K,).

    Raises
    ------
    TypeError
        An array that is not float32/float64 (or of the other float dtype than
        ``weight``); targets that are not integers; a mask that is not boolean.
    ValueError
        Shapes that do not fit; targets outside 0..K-1 at counted positions; an unknown
        reduction or backend.
    MemoryError
        The call would need more memory than is available (refused before allocating).
    """
    weight = V.as_float_array("weight", weight)
    dtype = weight.dtype
    if weight.ndim != 2 or 0 in weight.shape:
        raise ValueError(
            f"weight has shape {weight.shape}, expected (classes, hidden_size), both >= 1"
        )
    K, H = weight.shape
    h = V.as_float_array("h", h, dtype, contiguous=False)  # made contiguous below
    if h.ndim < 1 or h.shape[-1] != H:
        raise ValueError(
            f"h has shape {h.shape}, expected (..., {H}) (last axis hidden_size={H} from weight)"
        )
    N = math.prod(h.shape[:-1])
    # the rows in h's memory order (a batch-first layer's output is a transposed view): the
    # sum over rows does not depend on their order, and so h is not copied and dh comes
    # back in h's layout, which the layer's backward then takes without a copy either
    order = _memory_order(h)
    weight, bias, y, row_weights, count = _head_rows(
        h.shape, dtype, weight, bias, targets, mask, reduction, order=order
    )
    V.check_memory(
        dtype.itemsize * N * (2 * K + H) + 8 * N,
        f"linear_cross_entropy of {N} rows, {H} features and {K} classes in {dtype}",
    )
    h = np.ascontiguousarray(h.transpose(*order, h.ndim - 1))
    name = _config.resolve_backend(backend)
    undo = [*np.argsort(order).tolist(), h.ndim - 1]
    if count == 0:  # nothing to learn from: zero loss and gradients
        dh0 = np.zeros_like(h).transpose(undo)
        return HeadGradients(0.0, dh0, np.zeros_like(weight), np.zeros_like(bias))
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
    dh = dh.reshape(h.shape).transpose(undo)
    return HeadGradients(loss=loss, dh=dh, dweight=dweight, dbias=dbias)


def _memory_order(h: np.ndarray) -> list[int]:
    """The leading axes of ``h`` (all but the last) in the order that makes
    ``h.transpose(*order, last)`` C-contiguous (no copy), if one does, else in their own
    order."""
    lead = list(range(h.ndim - 1))
    by_stride = sorted(lead, key=lambda a: -h.strides[a])
    if by_stride != lead and h.transpose(*by_stride, h.ndim - 1).flags.c_contiguous:
        return by_stride
    return lead
