"""The NumPy reference backend: the readable spec of the kernel contract, and the baseline.

The contract is :class:`fastrnn.backends._contract.Backend` (the types of its arguments and
results are there too); where its prose leaves a detail open, this module's result is the
specification.

Everything here is written the way a careful NumPy programmer would write it, because
every benchmark compares against it: the input projection of all T steps is one GEMM
before the time loop, each step is one GEMM for all gates with the element-wise gate
math done in place on preallocated buffers, and the weight gradients are one GEMM each
after the loop. Only the ``dh`` recurrence of the backward pass is sequential.

Notation (PyTorch's names, the course's names in brackets): ``W_ih`` [U], ``W_hh`` [W],
``b_ih + b_hh`` [b]. Arrays are time-major: ``x`` (T, B, D), states (B, H), ``hs``
(T, B, H). Gate order: lstm i, f, g, o; gru r, z, n.

Padded steps (``t >= lengths[b]``) follow PyTorch's packed sequences: ``hs[t, b] = 0``,
the state is carried unchanged, and ``dhs[t, b]`` is ignored. Because the real steps of
a sequence are a prefix, ``hs[t-1, b]`` (or ``h0`` at ``t = 0``) is the true previous
state at every real step, which is what the backward pass relies on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from ._contract import (
    BackwardOutput,
    Checkpoints,
    FloatArray,
    ForwardOutput,
    FusedHead,
    HeadOutput,
    HeadSums,
    IndexArray,
    InputArray,
    Params,
    Saved,
)

_V = TypeVar("_V")

UNAVAILABLE_REASON: str | None = None

# The input projection of an inference forward is computed for this many bytes of steps
# at a time (at least one step).
INFERENCE_BLOCK_BYTES = 2**18


def given(value: _V | None, name: str) -> _V:
    """``value``, which the contract gives (``c0``/``dc_n`` for lstm, ``saved`` from a
    training forward): a clear error instead of a failure deep in a kernel if it is None."""
    if value is None:
        raise TypeError(
            f"{name}: got None, expected the array(s) the backend contract gives here "
            "(see fastrnn.backends._contract)"
        )
    return value


# --- element-wise helpers (in place, no temporaries) ---------------------------------


def _sigmoid_(v: FloatArray) -> FloatArray:
    """v <- sigmoid(v) in place, as 0.5 * (1 + tanh(v / 2)): no overflow for any v."""
    v *= 0.5
    np.tanh(v, out=v)
    v *= 0.5
    v += 0.5
    return v


def _activate_(v: FloatArray, activation: str, slope: float, buf: FloatArray) -> None:
    """v <- act(v) in place for the vanilla RNN's activation (``buf``: scratch like v)."""
    if activation == "tanh":
        np.tanh(v, out=v)
    elif activation == "relu":
        np.maximum(v, 0, out=v)
    elif activation == "leaky_relu":  # max(v, slope v) for slope <= 1, min(...) above
        np.multiply(v, slope, out=buf)
        (np.maximum if slope <= 1 else np.minimum)(v, buf, out=v)
    # identity: nothing to do


def _activation_grad(hs: FloatArray, activation: str, slope: float) -> FloatArray | None:
    """act'(a_t) for all steps at once, written in terms of the output h_t = act(a_t).

    Computed once before the backward loop; ``None`` means the derivative is 1.
    """
    if activation == "tanh":
        return 1 - hs * hs
    if activation == "relu":
        return (hs > 0).astype(hs.dtype)
    if activation == "leaky_relu":  # slope >= 0, so h > 0 exactly where a > 0
        return np.where(hs > 0, 1, slope).astype(hs.dtype)
    return None


def _active_masks(lengths: IndexArray | None, T: int) -> NDArray[np.bool_] | None:
    """active[t, b] is True where step t is a real step of sequence b."""
    if lengths is None:
        return None
    return np.arange(T)[:, None] < lengths[None, :]


def contiguous_T(W: FloatArray) -> FloatArray:
    """W^T as its own C-contiguous array, made once before the time loop.

    Measured with OpenBLAS (float32, one thread): ``h @ W.T`` through a transposed view
    took 14.4 us at B=16, H=64, 4 gates, against 5.7 us for ``h @ Wt`` with a contiguous
    ``Wt``; the per-step products are small, and OpenBLAS handles a transposed right-hand
    operand poorly there.
    """
    return np.ascontiguousarray(W.T)


def _input_projection(x: InputArray, W_ih: FloatArray, bias: FloatArray) -> FloatArray:
    """U x_t + b for all T steps in one GEMM: (T, B, D) -> (T, B, G*H). Token ids x (T, B)
    stand for their one-hot rows: U x_t is then column x_t of U, gathered."""
    T, B = x.shape[:2]
    if x.dtype.kind in "iu":
        a: FloatArray = W_ih.T[x.reshape(T * B)]
    else:
        a = x.reshape(T * B, -1) @ W_ih.T
    a += bias
    return a.reshape(T, B, -1)


def _prev_state_product(dA: FloatArray, prev: FloatArray, h0: FloatArray | None) -> FloatArray:
    """sum_t dA_t^T h_{t-1} over a block of steps: ``prev`` holds the h_{t-1} of its steps,
    or, with ``h0`` (the block starts at t = 0), of all steps but the first, whose h_{-1} is
    ``h0``. Two GEMMs at most, no copy."""
    n, B, GH = dA.shape
    H = prev.shape[2]
    if h0 is None:
        out: FloatArray = dA.reshape(n * B, GH).T @ prev.reshape(n * B, H)
        return out
    out = dA[0].T @ h0
    if n > 1:
        out += dA[1:].reshape((n - 1) * B, GH).T @ prev.reshape((n - 1) * B, H)
    return out


def _masked(h: FloatArray, mask: FloatArray | None, out: FloatArray | None = None) -> FloatArray:
    """What enters the recurrent product W_hh h: ``h``, or ``mask * h`` with variational
    recurrent dropout (``mask`` (B, H), the same at every step; into ``out`` if given)."""
    if mask is None:
        return h
    return np.multiply(h, mask, out=out)


# --- forward -------------------------------------------------------------------------


def forward(
    cell: str,
    params: Params,
    x: InputArray,
    h0: FloatArray,
    c0: FloatArray | None,
    *,
    activation: str,
    negative_slope: float,
    lengths: IndexArray | None,
    num_threads: int,
    training: bool = True,
    recurrent_mask: FloatArray | None = None,
    checkpoint: int | None = None,
) -> ForwardOutput:
    """Run the recurrence; return ``(hs, h_n, c_n, saved)``.

    ``recurrent_mask`` (B, H): variational recurrent dropout, the state enters the recurrent
    product as ``W_hh (m * h_{t-1})`` at every step (gru: all three gates; its interpolation
    ``z * h_{t-1}`` and everything else read the unmasked state).

    ``saved`` holds only what :func:`backward` needs beyond x, h0, c0 and hs:
    nothing for rnn (act' is a function of h), the gate activations and cell states for
    lstm ((4+1)*H values per step and sequence), the gates and ``W_hn h + b_hn`` for gru
    ((3+1)*H values). With ``training=False`` (inference) ``saved`` is ``None``: the steps
    run in blocks of about :data:`INFERENCE_BLOCK_BYTES` of gate pre-activations, and the
    per-step values only backward needs (lstm's cell states, gru's ``W_hn h + b_hn``) live
    in one (B, H) buffer, so nothing but ``hs`` grows with T. With ``checkpoint=k``
    (lstm, gru) ``saved`` is a :class:`Checkpoints`: the steps run in segments of k, each
    projected and stepped exactly as the training forward does, keeping only lstm's cell
    state before each segment (the recurrent mask applies there as everywhere).
    """
    del num_threads  # NumPy's BLAS decides its own threading
    T, B = x.shape[:2]
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    mask = recurrent_mask
    if checkpoint is not None and training and cell != "rnn":
        return _checkpointed_forward(cell, params, x, h0, c0, lengths, checkpoint, mask)
    # Inference keeps nothing, so it runs in blocks of steps whose input projection stays
    # in cache, carrying the state from block to block: the peak memory is hs and a block.
    per_step = B * G * h0.shape[1] * h0.dtype.itemsize
    block = T if training else max(1, INFERENCE_BLOCK_BYTES // per_step)
    if block >= T:
        return _forward(
            cell, params, x, h0, c0, activation, negative_slope, lengths, training, mask
        )
    hs = np.empty((T, B, h0.shape[1]), dtype=h0.dtype)
    h, c = h0, c0
    # W_hh^T made once, not per block: a view whose .T is already C-contiguous, so each
    # block's contiguous_T takes it as is (at S4, float64, blocks of one step, copying the
    # 8 MB W_hh^T per block made this forward 3.5x slower than the training one)
    params = {**params, "W_hh": contiguous_T(params["W_hh"]).T}
    for start in range(0, T, block):
        stop = min(start + block, T)
        lens = None if lengths is None else np.clip(lengths - start, 0, stop - start)
        hs[start:stop], h, c, _ = _forward(
            cell, params, x[start:stop], h, c, activation, negative_slope, lens, False, mask
        )
    return hs, h, c, None


def _forward(
    cell: str,
    params: Params,
    x: InputArray,
    h0: FloatArray,
    c0: FloatArray | None,
    activation: str,
    negative_slope: float,
    lengths: IndexArray | None,
    training: bool,
    mask: FloatArray | None,
) -> ForwardOutput:
    if cell == "rnn":
        return _rnn_forward(params, x, h0, activation, negative_slope, lengths, mask)
    if cell == "lstm":
        return _lstm_forward(params, x, h0, given(c0, "c0"), lengths, training, mask)
    return _gru_forward(params, x, h0, lengths, training, mask)


def _rnn_forward(
    params: Params,
    x: InputArray,
    h0: FloatArray,
    activation: str,
    slope: float,
    lengths: IndexArray | None,
    mask: FloatArray | None,
) -> ForwardOutput:
    T = x.shape[0]
    W_hh_T = contiguous_T(params["W_hh"])
    # a_t = U x_t + b for every step, written straight into hs and completed in the loop
    hs = _input_projection(x, params["W_ih"], params["b_ih"] + params["b_hh"])
    active = _active_masks(lengths, T)
    h = h0.copy() if active is not None else h0  # the running state h_{t-1}
    rec = np.empty_like(h0)  # W h_{t-1}
    hm = np.empty_like(h0)  # m * h_{t-1} with recurrent dropout
    for t in range(T):
        out = hs[t]
        np.matmul(_masked(h, mask, hm), W_hh_T, out=rec)  # W h_{t-1}
        out += rec  # a_t = U x_t + W h_{t-1} + b
        _activate_(out, activation, slope, rec)  # h_t = act(a_t)
        if active is None:
            h = out
        else:  # padded sequences keep their state and output zeros
            np.copyto(h, out, where=active[t][:, None])
            out[~active[t]] = 0
    return hs, h.copy(), None, None


def _lstm_forward(
    params: Params,
    x: InputArray,
    h0: FloatArray,
    c0: FloatArray,
    lengths: IndexArray | None,
    training: bool,
    mask: FloatArray | None,
) -> ForwardOutput:
    T, B = x.shape[:2]
    H = h0.shape[1]
    # pre-activations of all four gates for every step; turned into activations in place
    gates = _input_projection(x, params["W_ih"], params["b_ih"] + params["b_hh"])
    hs = np.empty((T, B, H), dtype=h0.dtype)
    # the cell state of every step for backward, or one step's (rewritten in place)
    cs = np.empty((T if training else 1, B, H), dtype=h0.dtype)
    active = _active_masks(lengths, T)
    h, c = (h0.copy(), c0.copy()) if active is not None else (h0, c0)
    h, c = _lstm_steps(contiguous_T(params["W_hh"]), gates, hs, cs, h, c, active, mask)
    return hs, h.copy(), c.copy(), (gates, cs) if training else None


def _lstm_steps(
    W_hh_T: FloatArray,
    gates: FloatArray,
    hs: FloatArray,
    cs: FloatArray,
    h: FloatArray,
    c: FloatArray,
    active: NDArray[np.bool_] | None,
    mask: FloatArray | None,
) -> tuple[FloatArray, FloatArray]:
    """The lstm time loop over the steps of ``gates`` (U x_t + b, turned into the gate
    activations in place): h_t into ``hs``, c_t into ``cs`` (one row per step, or ``cs[0]``
    rewritten), from the running ``h``, ``c`` (copies when ``active``: they are updated in
    place), with the recurrent dropout ``mask`` if given; returns the running state after
    the last step."""
    B, H = h.shape
    rec = np.empty((B, 4 * H), dtype=gates.dtype)
    ig = np.empty((B, H), dtype=gates.dtype)
    hm = np.empty((B, H), dtype=gates.dtype)  # m * h_{t-1} with recurrent dropout
    for t in range(gates.shape[0]):
        g_t = gates[t]
        c_t = cs[t if cs.shape[0] > 1 else 0]
        np.matmul(_masked(h, mask, hm), W_hh_T, out=rec)
        g_t += rec  # all gates' pre-activations: one packed product per step
        _sigmoid_(g_t[:, : 2 * H])  # i, f
        np.tanh(g_t[:, 2 * H : 3 * H], out=g_t[:, 2 * H : 3 * H])  # g
        _sigmoid_(g_t[:, 3 * H :])  # o
        i, f, g, o = g_t[:, :H], g_t[:, H : 2 * H], g_t[:, 2 * H : 3 * H], g_t[:, 3 * H :]
        np.multiply(f, c, out=c_t)  # c_t = f * c_{t-1} + i * g (c may be c_t itself)
        np.multiply(i, g, out=ig)
        c_t += ig
        np.tanh(c_t, out=hs[t])  # h_t = o * tanh(c_t)
        hs[t] *= o
        if active is None:
            h, c = hs[t], c_t
        else:
            m = active[t][:, None]
            np.copyto(h, hs[t], where=m)
            np.copyto(c, c_t, where=m)
            hs[t][~active[t]] = 0
    return h, c


def _gru_forward(
    params: Params,
    x: InputArray,
    h0: FloatArray,
    lengths: IndexArray | None,
    training: bool,
    mask: FloatArray | None,
) -> ForwardOutput:
    T, B = x.shape[:2]
    H = h0.shape[1]
    # W_i{r,z,n} x_t + b_i{r,z,n} for every step; r, z, n activations overwrite it
    gates = _input_projection(x, params["W_ih"], params["b_ih"])
    # W_hn h_{t-1} + b_hn of every step, saved for backward (inference reads it from rec)
    hn = np.empty((T, B, H), dtype=h0.dtype) if training else None
    hs = np.empty((T, B, H), dtype=h0.dtype)
    active = _active_masks(lengths, T)
    h = h0.copy() if active is not None else h0
    h = _gru_steps(contiguous_T(params["W_hh"]), params["b_hh"], gates, hs, hn, h, active, mask)
    return hs, h.copy(), None, (gates, hn) if hn is not None else None


def _gru_steps(
    W_hh_T: FloatArray,
    b_hh: FloatArray,
    gates: FloatArray,
    hs: FloatArray,
    hn: FloatArray | None,
    h: FloatArray,
    active: NDArray[np.bool_] | None,
    mask: FloatArray | None,
) -> FloatArray:
    """The gru time loop over the steps of ``gates`` (W_i. x_t + b_i., turned into r, z, n
    in place): h_t into ``hs``, ``W_hn h + b_hn`` into ``hn`` if given, from the running
    ``h`` (a copy when ``active``), with the recurrent dropout ``mask`` if given; returns
    the running state after the last step."""
    B, H = h.shape
    rec = np.empty((B, 3 * H), dtype=gates.dtype)
    hm = np.empty((B, H), dtype=gates.dtype)  # m * h_{t-1}; the interpolation reads h
    for t in range(gates.shape[0]):
        g_t = gates[t]
        np.matmul(_masked(h, mask, hm), W_hh_T, out=rec)  # W_h{r,z,n} h_{t-1}: one product
        rec += b_hh
        rz = g_t[:, : 2 * H]
        rz += rec[:, : 2 * H]
        _sigmoid_(rz)  # r, z
        r, z, n = g_t[:, :H], g_t[:, H : 2 * H], g_t[:, 2 * H :]
        hn_t = rec[:, 2 * H :]
        if hn is not None:  # training
            hn[t] = hn_t
        np.multiply(r, hn_t, out=hs[t])  # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        n += hs[t]
        np.tanh(n, out=n)
        np.subtract(h, n, out=hs[t])  # h_t = (1 - z) * n + z * h_{t-1} = n + z (h - n)
        hs[t] *= z
        hs[t] += n
        if active is None:
            h = hs[t]
        else:
            np.copyto(h, hs[t], where=active[t][:, None])
            hs[t][~active[t]] = 0
    return h


# --- checkpointed BPTT -----------------------------------------------------------------
#
# The forward runs segment by segment of k steps, each projected and stepped by the
# training forward's own code (_lstm_steps, _gru_steps), keeping only lstm's running cell
# state before each segment; hs holds every h_{t-1}. The backward recomputes each segment's
# gates (and cell states, W_hn h + b_hn) into one buffer of k steps, newest segment first,
# with the same code from the same running state, and runs the backward steps over it. The
# weight gradients are reduced in blocks of steps aligned at t = 0 whatever k is
# (_GradBlocks), so the result has the bits of full BPTT.


def _segment_input(cell: str, params: Params, x: InputArray, s0: int, s1: int) -> FloatArray:
    """The training forward's pre-activations of steps s0:s1 (one GEMM, as it does)."""
    bias = params["b_ih"] if cell == "gru" else params["b_ih"] + params["b_hh"]
    return _input_projection(x[s0:s1], params["W_ih"], bias)


def _running_h(hs: FloatArray, h0: FloatArray, lengths: IndexArray | None, s0: int) -> FloatArray:
    """The forward's running state before step s0 (a copy): h_{s0-1}, or for a sequence
    that ended before, its last state."""
    h: FloatArray
    if s0 == 0:
        h = h0.copy()
    elif lengths is None:
        h = hs[s0 - 1].copy()
    else:
        h = hs[np.minimum(s0, lengths) - 1, np.arange(hs.shape[1])]
    return h


def _checkpointed_forward(
    cell: str,
    params: Params,
    x: InputArray,
    h0: FloatArray,
    c0: FloatArray | None,
    lengths: IndexArray | None,
    every: int,
    mask: FloatArray | None,
) -> ForwardOutput:
    T, B = x.shape[:2]
    H = h0.shape[1]
    hs = np.empty((T, B, H), dtype=h0.dtype)
    active = _active_masks(lengths, T)
    W_hh_T = contiguous_T(params["W_hh"])
    h = h0.copy() if active is not None else h0
    c = None if c0 is None else (c0.copy() if active is not None else c0)
    states = np.empty((-(-T // every), B, H), dtype=h0.dtype) if cell == "lstm" else None
    cs = np.empty((1, B, H), dtype=h0.dtype)
    for j, s0 in enumerate(range(0, T, every)):
        s1 = min(s0 + every, T)
        gates = _segment_input(cell, params, x, s0, s1)
        act = None if active is None else active[s0:s1]
        if states is not None:
            states[j] = given(c, "c0")
            h, c = _lstm_steps(W_hh_T, gates, hs[s0:s1], cs, h, states[j].copy(), act, mask)
        else:
            h = _gru_steps(W_hh_T, params["b_hh"], gates, hs[s0:s1], None, h, act, mask)
    return hs, h.copy(), None if c is None else c.copy(), Checkpoints(every, states)


def _segments(
    cell: str,
    params: Params,
    x: InputArray,
    h0: FloatArray,
    c0: FloatArray | None,
    hs: FloatArray,
    saved: Saved,
    lengths: IndexArray | None,
    mask: FloatArray | None,
) -> Iterator[tuple[int, int, FloatArray, FloatArray, FloatArray | None]]:
    """The saved values, newest segment first: ``(s0, s1, gates, extra, before)`` with the
    gate activations and extra values (lstm c_t, gru W_hn h + b_hn) of steps s0:s1 and, for
    lstm, the cell state before s0. Full BPTT: one segment, the saved arrays. The recompute
    applies the forward's recurrent dropout ``mask``."""
    if not isinstance(saved, Checkpoints):
        gates, extra = given(saved, "saved")
        yield 0, x.shape[0], gates, extra, c0
        return
    T, B = x.shape[:2]
    H = h0.shape[1]
    active = _active_masks(lengths, T)
    W_hh_T = contiguous_T(params["W_hh"])
    extra = np.empty((min(saved.every, T), B, H), dtype=h0.dtype)
    scratch = np.empty_like(extra)  # the recomputed h_t (hs is not written again)
    for j in range(-(-T // saved.every) - 1, -1, -1):
        s0 = j * saved.every
        s1 = min(s0 + saved.every, T)
        gates = _segment_input(cell, params, x, s0, s1)
        h = _running_h(hs, h0, lengths, s0)
        act = None if active is None else active[s0:s1]
        n = s1 - s0
        if saved.states is not None:  # lstm
            c = saved.states[j]
            _lstm_steps(W_hh_T, gates, scratch[:n], extra[:n], h, c.copy(), act, mask)
            yield s0, s1, gates, extra[:n], c
        else:
            _gru_steps(W_hh_T, params["b_hh"], gates, scratch[:n], extra[:n], h, act, mask)
            yield s0, s1, gates, extra[:n], None


# --- backward (BPTT) -----------------------------------------------------------------

# The backward's weight gradients and dx are computed block by block of steps, blocks of
# about this many bytes of pre-activation gradients aligned at t = 0 (at least one step).
GRAD_BLOCK_BYTES = 2**22


class _GradBlocks:
    """dx, the weight and the bias gradients, block by block of steps while the dh
    recurrence runs backwards in time: the loop writes step t's pre-activation gradients
    into ``rows(t)`` and calls ``step_done(t)``; when t is the first step of its block,
    the block's GEMMs run (dx = dA W_ih, dW_ih += dA^T X, dW_hh += dA^T (m * H_prev) with
    m the recurrent dropout mask (1 if None), the bias sums). The blocks depend on B, G*H
    and the dtype only, so every schedule of the steps (full or checkpointed BPTT) adds the
    same products in the same order.

    ``dh_out(t)`` is dL/dh_t from step t's output: ``dhs[t]``, or with a fused ``head`` its
    gradient for the block that holds t (plus ``dhs[t]`` if given), computed for the whole
    block (one vectorised :func:`linear_cross_entropy` on its T_block*B rows) when the loop
    enters it, into a buffer of one block; the head's loss, dweight and dbias are summed
    block by block in the same order whatever the schedule."""

    def __init__(
        self,
        x: InputArray,
        hs: FloatArray,
        h0: FloatArray,
        W_ih: FloatArray,
        two_sided: bool,
        mask: FloatArray | None,
        dhs: FloatArray | None = None,
        head: FusedHead | None = None,
        input_grad: bool = True,
    ) -> None:
        T, B = x.shape[:2]
        GH, D = W_ih.shape
        self.x, self.hs, self.h0, self.W_ih, self.mask = x, hs, h0, W_ih, mask
        self.dhs, self.head = dhs, head
        self.steps = max(1, GRAD_BLOCK_BYTES // (B * GH * h0.dtype.itemsize))
        n = min(self.steps, T)
        if head is not None:
            self.head_dh = np.empty((n, B, hs.shape[2]), dtype=h0.dtype)
            self.head_loss = 0.0
            self.head_dweight = np.zeros_like(head.weight)
            self.head_dbias = np.zeros_like(head.bias)
        self.dA_in = np.empty((n, B, GH), dtype=h0.dtype)
        self.dA_rec = np.empty_like(self.dA_in) if two_sided else self.dA_in
        # token ids (an integer x) have no gradient; dx only when asked for
        self.ids = x.dtype.kind in "iu"
        self.dx = np.empty((T, B, D), dtype=h0.dtype) if input_grad and not self.ids else None
        self.dW_ih = np.zeros((GH, D), dtype=h0.dtype)
        self.dW_hh = np.zeros((GH, hs.shape[2]), dtype=h0.dtype)
        self.db_ih = np.zeros(GH, dtype=h0.dtype)
        self.db_hh = np.zeros(GH, dtype=h0.dtype) if two_sided else self.db_ih

    def dh_out(self, t: int) -> FloatArray:
        """dL/dh_t from step t's output (B, H); called once per step, newest first."""
        head = self.head
        if head is None:
            dhs: FloatArray = given(self.dhs, "dhs")[t]
            return dhs
        T, B, H = self.hs.shape
        if t + 1 == T or (t + 1) % self.steps == 0:  # entering the block t0:t+1
            t0 = t - t % self.steps
            r0, r1 = t0 * B, (t + 1) * B
            rw = None if head.row_weights is None else head.row_weights[r0:r1]
            loss, dh, dweight, dbias = linear_cross_entropy(
                self.hs[t0 : t + 1].reshape(r1 - r0, H),
                head.weight,
                head.bias,
                head.targets[r0:r1],
                rw,
                scale=head.scale,
                num_threads=1,
            )
            self.head_dh[: t + 1 - t0] = dh.reshape(t + 1 - t0, B, H)
            if self.dhs is not None:
                self.head_dh[: t + 1 - t0] += self.dhs[t0 : t + 1]
            self.head_loss += loss
            self.head_dweight += dweight
            self.head_dbias += dbias
        rows: FloatArray = self.head_dh[t % self.steps]
        return rows

    def head_sums(self) -> HeadSums | None:
        if self.head is None:
            return None
        return self.head_loss, self.head_dweight, self.head_dbias

    def rows(self, t: int) -> tuple[FloatArray, FloatArray]:
        """Where step t's gradients go: dA (input side) and dA_rec (recurrent side)."""
        return self.dA_in[t % self.steps], self.dA_rec[t % self.steps]

    def step_done(self, t: int) -> None:
        if t % self.steps:
            return
        T, B = self.x.shape[:2]
        n = min(self.steps, T - t)
        GH, D = self.W_ih.shape
        flat = self.dA_in[:n].reshape(n * B, GH)
        if self.dx is not None:
            self.dx[t : t + n] = (flat @ self.W_ih).reshape(n, B, D)
        if self.ids:  # dW_ih += dA^T X with X the one-hot rows, as a sparse (D, rows) X^T
            import scipy.sparse  # here: the reference runs on NumPy alone otherwise

            rows = n * B
            ones = np.ones(rows, dtype=flat.dtype)
            xt = scipy.sparse.csr_array(
                (ones, (self.x[t : t + n].reshape(rows), np.arange(rows))), shape=(D, rows)
            )
            self.dW_ih.T[...] += xt @ flat
        else:
            self.dW_ih += flat.T @ self.x[t : t + n].reshape(n * B, D)
        prev = _masked(self.hs[t - 1 : t + n - 1] if t > 0 else self.hs[: n - 1], self.mask)
        h0 = _masked(self.h0, self.mask) if t == 0 else None
        self.dW_hh += _prev_state_product(self.dA_rec[:n], prev, h0)
        self.db_ih += flat.sum(axis=0)
        if self.db_hh is not self.db_ih:
            self.db_hh += self.dA_rec[:n].reshape(n * B, GH).sum(axis=0)

    def params(self) -> dict[str, FloatArray]:
        # rnn and lstm: both biases enter the same pre-activation, so share the sum
        db_hh = self.db_hh.copy() if self.db_hh is self.db_ih else self.db_hh
        return {"W_ih": self.dW_ih, "W_hh": self.dW_hh, "b_ih": self.db_ih, "b_hh": db_hh}


def backward(
    cell: str,
    params: Params,
    x: InputArray,
    h0: FloatArray,
    c0: FloatArray | None,
    hs: FloatArray,
    saved: Saved,
    dhs: FloatArray | None,
    dh_n: FloatArray,
    dc_n: FloatArray | None,
    *,
    activation: str,
    negative_slope: float,
    lengths: IndexArray | None,
    num_threads: int,
    step_norms: bool,
    recurrent_mask: FloatArray | None = None,
    head: FusedHead | None = None,
    input_grad: bool = True,
) -> BackwardOutput:
    """Backpropagation through time; return ``(dx, dh0, dc0, dparams, norms, head)``.

    ``dx`` is ``None`` with ``input_grad=False`` or token ids ``x`` (not computed).
    ``recurrent_mask``: the forward's; the gradient through the recurrent product is then
    ``dh_{t-1} = m * (W_hh^T dA_t)`` and ``dW_hh = sum_t dA_t^T (m * h_{t-1})`` (a
    checkpointed backward recomputes its segments with it too).

    ``norms`` is ``None`` unless ``step_norms``; then it is a (T, B) array of
    ``||dL/dh_t||`` (the whole gradient reaching hidden state t of sequence b, from the
    loss at step t and from every later step), 0 at padded steps. ``saved`` from a
    checkpointed forward (a :class:`Checkpoints`): each segment's activations are
    recomputed first (:func:`_segments`); the result has the bits of full BPTT.

    ``head`` (a :class:`FusedHead`): dL/dh_t is the head's gradient (plus ``dhs``),
    computed per block of steps of :class:`_GradBlocks`; the last element is its
    ``(loss, dweight, dbias)``.
    """
    del num_threads
    T, B = x.shape[:2]
    active = _active_masks(lengths, T)
    norms = np.zeros((T, B), dtype=h0.dtype) if step_norms else None
    mask = recurrent_mask
    grads = _GradBlocks(x, hs, h0, params["W_ih"], cell == "gru", mask, dhs, head, input_grad)
    if cell == "rnn":
        slope = negative_slope
        dh0 = _rnn_backward(params, hs, dh_n, activation, slope, active, norms, grads, mask)
        return grads.dx, dh0, None, grads.params(), norms, grads.head_sums()
    segments = _segments(cell, params, x, h0, c0, hs, saved, lengths, mask)
    if cell == "lstm":
        dh0, dc0 = _lstm_backward(
            params, segments, dh_n, given(dc_n, "dc_n"), active, norms, grads, mask
        )
        return grads.dx, dh0, dc0, grads.params(), norms, grads.head_sums()
    dh0 = _gru_backward(params, h0, hs, segments, dh_n, active, norms, grads, mask)
    return grads.dx, dh0, None, grads.params(), norms, grads.head_sums()


def _rnn_backward(
    params: Params,
    hs: FloatArray,
    dh_n: FloatArray,
    activation: str,
    slope: float,
    active: NDArray[np.bool_] | None,
    norms: FloatArray | None,
    grads: _GradBlocks,
    mask: FloatArray | None,
) -> FloatArray:
    T = hs.shape[0]
    W_hh = params["W_hh"]
    dh: FloatArray = dh_n.copy()  # dL/dh_t arriving from later steps (and from h_n)
    new = np.empty_like(dh)
    for t in range(T - 1, -1, -1):
        da = grads.rows(t)[0]  # dL/da_t, the pre-activation gradient
        np.add(dh, grads.dh_out(t), out=da)  # dL/dh_t = dhs_t + W^T dL/da_{t+1}
        if active is not None:
            da[~active[t]] = 0
        if norms is not None:
            norms[t] = np.linalg.norm(da, axis=1)
        dact = _activation_grad(hs[t], activation, slope)  # act'(a_t)
        if dact is not None:
            da *= dact  # dL/da_t = dL/dh_t * act'(a_t)
        np.matmul(da, W_hh, out=new)  # dL/dh_{t-1} = W^T dL/da_t
        if mask is not None:
            new *= mask  # (m * W^T dL/da_t with recurrent dropout)
        if active is None:
            dh, new = new, dh
        else:  # padded steps pass the gradient of the carried state through
            np.copyto(dh, new, where=active[t][:, None])
        grads.step_done(t)
    return dh


def _lstm_backward(
    params: Params,
    segments: Iterator[tuple[int, int, FloatArray, FloatArray, FloatArray | None]],
    dh_n: FloatArray,
    dc_n: FloatArray,
    active: NDArray[np.bool_] | None,
    norms: FloatArray | None,
    grads: _GradBlocks,
    mask: FloatArray | None,
) -> tuple[FloatArray, FloatArray]:
    W_hh = params["W_hh"]
    H = W_hh.shape[1]
    dh, dc = dh_n.copy(), dc_n.copy()
    new_dh = np.empty_like(dh)
    dh_t = np.empty_like(dh)
    dc_t = np.empty_like(dc)
    tc = np.empty_like(dh)
    tmp = np.empty_like(dh)
    for s0, s1, gates, cs, c_before in segments:
        for t in range(s1 - 1, s0 - 1, -1):
            u = t - s0  # the step within the segment
            dA_t = grads.rows(t)[0]
            i, f, g, o = (gates[u][:, k * H : (k + 1) * H] for k in range(4))
            dai, daf, dag, dao = (dA_t[:, k * H : (k + 1) * H] for k in range(4))
            c_prev = cs[u - 1] if u > 0 else given(c_before, "c0")
            np.add(dh, grads.dh_out(t), out=dh_t)  # dL/dh_t
            if active is not None:
                dh_t[~active[t]] = 0
            if norms is not None:
                norms[t] = np.linalg.norm(dh_t, axis=1)
            np.tanh(cs[u], out=tc)
            np.multiply(dh_t, tc, out=dao)  # dL/do = dh * tanh(c)
            dao *= o
            np.subtract(1, o, out=tmp)
            dao *= tmp  # through sigmoid: o (1 - o)
            np.multiply(tc, tc, out=tmp)  # dL/dc_t = dc + dh * o * (1 - tanh(c)^2)
            np.subtract(1, tmp, out=tmp)
            tmp *= o
            tmp *= dh_t
            np.add(dc, tmp, out=dc_t)
            if active is not None:
                dc_t[~active[t]] = 0
            np.multiply(dc_t, g, out=dai)  # dL/di = dc * g, through sigmoid
            dai *= i
            np.subtract(1, i, out=tmp)
            dai *= tmp
            np.multiply(dc_t, c_prev, out=daf)  # dL/df = dc * c_{t-1}, through sigmoid
            daf *= f
            np.subtract(1, f, out=tmp)
            daf *= tmp
            np.multiply(g, g, out=tmp)  # dL/dg = dc * i, through tanh: 1 - g^2
            np.subtract(1, tmp, out=tmp)
            np.multiply(dc_t, i, out=dag)
            dag *= tmp
            np.matmul(dA_t, W_hh, out=new_dh)  # dL/dh_{t-1} = W_hh^T dA_t
            if mask is not None:
                new_dh *= mask
            dc_t *= f  # dL/dc_{t-1} = dc_t * f
            if active is None:
                dh, new_dh = new_dh, dh
                dc, dc_t = dc_t, dc
            else:
                m = active[t][:, None]
                np.copyto(dh, new_dh, where=m)
                np.copyto(dc, dc_t, where=m)
            grads.step_done(t)
    return dh, dc


def _gru_backward(
    params: Params,
    h0: FloatArray,
    hs: FloatArray,
    segments: Iterator[tuple[int, int, FloatArray, FloatArray, FloatArray | None]],
    dh_n: FloatArray,
    active: NDArray[np.bool_] | None,
    norms: FloatArray | None,
    grads: _GradBlocks,
    mask: FloatArray | None,
) -> FloatArray:
    W_hh = params["W_hh"]
    H = W_hh.shape[1]
    dh: FloatArray = dh_n.copy()
    dh_t = np.empty_like(dh)
    new_dh = np.empty_like(dh)
    tmp = np.empty_like(dh)
    for s0, s1, gates, hn, _ in segments:
        for t in range(s1 - 1, s0 - 1, -1):
            u = t - s0  # the step within the segment
            dA_in, dA_rec = grads.rows(t)  # d/d(W_i. x + b_i.), d/d(W_h. h + b_h.)
            r, z, n = (gates[u][:, k * H : (k + 1) * H] for k in range(3))
            dar, daz, dan = (dA_in[:, k * H : (k + 1) * H] for k in range(3))
            h_prev = hs[t - 1] if t > 0 else h0
            np.add(dh, grads.dh_out(t), out=dh_t)  # dL/dh_t
            if active is not None:
                dh_t[~active[t]] = 0
            if norms is not None:
                norms[t] = np.linalg.norm(dh_t, axis=1)
            np.subtract(1, z, out=tmp)  # dL/dn = dh (1 - z), through tanh: 1 - n^2
            np.multiply(dh_t, tmp, out=dan)
            np.multiply(n, n, out=tmp)
            np.subtract(1, tmp, out=tmp)
            dan *= tmp
            np.subtract(h_prev, n, out=daz)  # dL/dz = dh (h_{t-1} - n), through sigmoid
            daz *= dh_t
            daz *= z
            np.subtract(1, z, out=tmp)
            daz *= tmp
            np.multiply(dan, hn[u], out=dar)  # dL/dr = dL/dn_pre * (W_hn h + b_hn)
            dar *= r
            np.subtract(1, r, out=tmp)
            dar *= tmp
            dA_rec[:, : 2 * H] = dA_in[:, : 2 * H]  # r, z: same on both sides
            np.multiply(dan, r, out=dA_rec[:, 2 * H :])  # the n side is gated by r
            np.matmul(dA_rec, W_hh, out=new_dh)  # dL/dh_{t-1} = W_hh^T dA_rec + dh z
            if mask is not None:
                new_dh *= mask  # m * W_hh^T dA_rec: the direct path dh z has no mask
            np.multiply(dh_t, z, out=tmp)
            new_dh += tmp
            if active is None:
                dh, new_dh = new_dh, dh
            else:
                np.copyto(dh, new_dh, where=active[t][:, None])
            grads.step_done(t)
    return dh


# --- the output head: linear layer + softmax cross-entropy ------------------------------


def linear_cross_entropy(
    h: FloatArray,
    weight: FloatArray,
    bias: FloatArray,
    targets: IndexArray,
    row_weights: FloatArray | None,
    *,
    scale: float,
    num_threads: int,
) -> HeadOutput:
    """A linear softmax head and its cross-entropy, forward and backward; return
    ``(loss, dh, dweight, dbias)``.

    ``h`` (N, H), ``weight`` (K, H) [V], ``bias`` (K,) [c], ``targets`` (N,) int64 in
    0..K-1, ``row_weights`` (N,) or ``None`` (all 1), ``scale`` a float. With
    ``z = h @ weight.T + bias`` and ``w = scale * row_weights``::

        loss  = sum_n w_n (logsumexp(z_n) - z_n[targets_n])
        dz_n  = w_n (softmax(z_n) - onehot(targets_n))
        dh = dz @ weight,   dweight = dz^T h,   dbias = sum_n dz_n

    The logits are kept class-major, (K, N): every reduction over the classes is then an
    element-wise operation across K rows, which NumPy does several times faster than a
    reduction along a short last axis (and ``weight @ h.T`` is one plain GEMM).
    """
    del num_threads
    N = h.shape[0]
    z = weight @ h.T  # (K, N) logits
    z += bias[:, None]
    z -= z.max(axis=0)  # log-sum-exp with one exp: softmax = e / sum(e)
    rows = np.arange(N)
    picked = z[targets, rows]  # z_y - max
    np.exp(z, out=z)
    sums = z.sum(axis=0)
    nll = np.log(sums) - picked
    w = np.full(N, scale, dtype=h.dtype)
    if row_weights is not None:
        w *= row_weights
    loss = float(np.sum(nll * w, dtype=np.float64))
    z *= w / sums  # w * softmax
    z[targets, rows] -= w  # - w * onehot
    return loss, z.T @ weight, z @ h, z.sum(axis=1)
