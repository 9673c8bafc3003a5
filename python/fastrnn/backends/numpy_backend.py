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

from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from ._contract import (
    BackwardOutput,
    FloatArray,
    ForwardOutput,
    HeadOutput,
    IndexArray,
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


def _input_projection(x: FloatArray, W_ih: FloatArray, bias: FloatArray) -> FloatArray:
    """U x_t + b for all T steps in one GEMM: (T, B, D) -> (T, B, G*H)."""
    T, B, D = x.shape
    a: FloatArray = x.reshape(T * B, D) @ W_ih.T
    a += bias
    return a.reshape(T, B, -1)


def _prev_state_product(
    dA: FloatArray, hs: FloatArray, h0: FloatArray, mask: FloatArray | None
) -> FloatArray:
    """sum_t dA_t^T (m * h_{t-1}), with h_{-1} = h0 and m the recurrent dropout mask (1 if
    None), as two GEMMs over all steps (no copy without a mask)."""
    T, B, GH = dA.shape
    H = hs.shape[2]
    out: FloatArray = dA[0].T @ _masked(h0, mask)
    if T > 1:
        prev = _masked(hs[:-1], mask)
        out += dA[1:].reshape((T - 1) * B, GH).T @ prev.reshape((T - 1) * B, H)
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
    x: FloatArray,
    h0: FloatArray,
    c0: FloatArray | None,
    *,
    activation: str,
    negative_slope: float,
    lengths: IndexArray | None,
    num_threads: int,
    training: bool = True,
    recurrent_mask: FloatArray | None = None,
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
    in one (B, H) buffer, so nothing but ``hs`` grows with T.
    """
    del num_threads  # NumPy's BLAS decides its own threading
    T, B, _ = x.shape
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    # Inference keeps nothing, so it runs in blocks of steps whose input projection stays
    # in cache, carrying the state from block to block: the peak memory is hs and a block.
    per_step = B * G * h0.shape[1] * x.dtype.itemsize
    block = T if training else max(1, INFERENCE_BLOCK_BYTES // per_step)
    mask = recurrent_mask
    if block >= T:
        return _forward(
            cell, params, x, h0, c0, activation, negative_slope, lengths, training, mask
        )
    hs = np.empty((T, B, h0.shape[1]), dtype=x.dtype)
    h, c = h0, c0
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
    x: FloatArray,
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
    x: FloatArray,
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
    x: FloatArray,
    h0: FloatArray,
    c0: FloatArray,
    lengths: IndexArray | None,
    training: bool,
    mask: FloatArray | None,
) -> ForwardOutput:
    T, B, _ = x.shape
    H = h0.shape[1]
    W_hh_T = contiguous_T(params["W_hh"])
    # pre-activations of all four gates for every step; turned into activations in place
    gates = _input_projection(x, params["W_ih"], params["b_ih"] + params["b_hh"])
    hs = np.empty((T, B, H), dtype=x.dtype)
    # the cell state of every step for backward, or one step's (rewritten in place)
    cs = np.empty((T if training else 1, B, H), dtype=x.dtype)
    active = _active_masks(lengths, T)
    h, c = (h0.copy(), c0.copy()) if active is not None else (h0, c0)
    rec = np.empty((B, 4 * H), dtype=x.dtype)
    ig = np.empty((B, H), dtype=x.dtype)
    hm = np.empty_like(h0)  # m * h_{t-1} with recurrent dropout
    for t in range(T):
        g_t = gates[t]
        c_t = cs[t if training else 0]
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
    return hs, h.copy(), c.copy(), (gates, cs) if training else None


def _gru_forward(
    params: Params,
    x: FloatArray,
    h0: FloatArray,
    lengths: IndexArray | None,
    training: bool,
    mask: FloatArray | None,
) -> ForwardOutput:
    T, B, _ = x.shape
    H = h0.shape[1]
    W_hh_T = contiguous_T(params["W_hh"])
    b_hh = params["b_hh"]
    # W_i{r,z,n} x_t + b_i{r,z,n} for every step; r, z, n activations overwrite it
    gates = _input_projection(x, params["W_ih"], params["b_ih"])
    # W_hn h_{t-1} + b_hn of every step, saved for backward (inference reads it from rec)
    hn = np.empty((T, B, H), dtype=x.dtype) if training else None
    hs = np.empty((T, B, H), dtype=x.dtype)
    active = _active_masks(lengths, T)
    h = h0.copy() if active is not None else h0
    rec = np.empty((B, 3 * H), dtype=x.dtype)
    hm = np.empty_like(h0)  # m * h_{t-1} with recurrent dropout; the interpolation reads h
    for t in range(T):
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
    return hs, h.copy(), None, (gates, hn) if hn is not None else None


# --- backward (BPTT) -----------------------------------------------------------------


def backward(
    cell: str,
    params: Params,
    x: FloatArray,
    h0: FloatArray,
    c0: FloatArray | None,
    hs: FloatArray,
    saved: Saved,
    dhs: FloatArray,
    dh_n: FloatArray,
    dc_n: FloatArray | None,
    *,
    activation: str,
    negative_slope: float,
    lengths: IndexArray | None,
    num_threads: int,
    step_norms: bool,
    recurrent_mask: FloatArray | None = None,
) -> BackwardOutput:
    """Backpropagation through time; return ``(dx, dh0, dc0, dparams, norms)``.

    ``recurrent_mask``: the forward's; the gradient through the recurrent product is then
    ``dh_{t-1} = m * (W_hh^T dA_t)`` and ``dW_hh = sum_t dA_t^T (m * h_{t-1})``.

    ``norms`` is ``None`` unless ``step_norms``; then it is a (T, B) array of
    ``||dL/dh_t||`` (the whole gradient reaching hidden state t of sequence b, from the
    loss at step t and from every later step), 0 at padded steps.
    """
    del num_threads
    T, B, _ = x.shape
    active = _active_masks(lengths, T)
    norms = np.zeros((T, B), dtype=x.dtype) if step_norms else None
    mask = recurrent_mask
    if cell == "rnn":
        dx, dh0, dparams = _rnn_backward(
            params, x, h0, hs, dhs, dh_n, activation, negative_slope, active, norms, mask
        )
        return dx, dh0, None, dparams, norms
    if cell == "lstm":
        c0, dc_n = given(c0, "c0"), given(dc_n, "dc_n")
        return _lstm_backward(
            params, x, h0, c0, hs, given(saved, "saved"), dhs, dh_n, dc_n, active, norms, mask
        )
    dx, dh0, dparams = _gru_backward(
        params, x, h0, hs, given(saved, "saved"), dhs, dh_n, active, norms, mask
    )
    return dx, dh0, None, dparams, norms


def _weight_grads(
    dA_in: FloatArray,
    dA_rec: FloatArray,
    x: FloatArray,
    hs: FloatArray,
    h0: FloatArray,
    W_ih: FloatArray,
    mask: FloatArray | None,
) -> tuple[FloatArray, dict[str, FloatArray]]:
    """dW_ih = dA^T X, dW_hh = dA^T (m * H_prev), the bias sums and dx: one GEMM each."""
    T, B, D = x.shape
    GH = dA_in.shape[2]
    flat = dA_in.reshape(T * B, GH)
    db_ih = flat.sum(axis=0)
    return (
        (flat @ W_ih).reshape(T, B, D),
        {
            "W_ih": flat.T @ x.reshape(T * B, D),
            "W_hh": _prev_state_product(dA_rec, hs, h0, mask),
            "b_ih": db_ih,
            # rnn and lstm: both biases enter the same pre-activation, so share the sum
            "b_hh": db_ih.copy() if dA_rec is dA_in else dA_rec.reshape(T * B, GH).sum(axis=0),
        },
    )


def _rnn_backward(
    params: Params,
    x: FloatArray,
    h0: FloatArray,
    hs: FloatArray,
    dhs: FloatArray,
    dh_n: FloatArray,
    activation: str,
    slope: float,
    active: NDArray[np.bool_] | None,
    norms: FloatArray | None,
    mask: FloatArray | None,
) -> tuple[FloatArray, FloatArray, dict[str, FloatArray]]:
    T = x.shape[0]
    W_hh = params["W_hh"]
    dact = _activation_grad(hs, activation, slope)  # act'(a_t) for all t at once
    dA = np.empty_like(hs)  # dL/da_t, the pre-activation gradient
    dh = dh_n.copy()  # dL/dh_t arriving from later steps (and from h_n)
    new = np.empty_like(dh)
    for t in range(T - 1, -1, -1):
        da = dA[t]
        np.add(dh, dhs[t], out=da)  # dL/dh_t = dhs_t + W^T dL/da_{t+1}
        if active is not None:
            da[~active[t]] = 0
        if norms is not None:
            norms[t] = np.linalg.norm(da, axis=1)
        if dact is not None:
            da *= dact[t]  # dL/da_t = dL/dh_t * act'(a_t)
        np.matmul(da, W_hh, out=new)  # dL/dh_{t-1} = W^T dL/da_t
        if mask is not None:
            new *= mask  # (m * W^T dL/da_t with recurrent dropout)
        if active is None:
            dh, new = new, dh
        else:  # padded steps pass the gradient of the carried state through
            np.copyto(dh, new, where=active[t][:, None])
    dx, dparams = _weight_grads(dA, dA, x, hs, h0, params["W_ih"], mask)
    return dx, dh, dparams


def _lstm_backward(
    params: Params,
    x: FloatArray,
    h0: FloatArray,
    c0: FloatArray,
    hs: FloatArray,
    saved: tuple[FloatArray, FloatArray],
    dhs: FloatArray,
    dh_n: FloatArray,
    dc_n: FloatArray,
    active: NDArray[np.bool_] | None,
    norms: FloatArray | None,
    mask: FloatArray | None,
) -> BackwardOutput:
    T = x.shape[0]
    H = h0.shape[1]
    W_hh = params["W_hh"]
    gates, cs = saved
    dA = np.empty_like(gates)  # pre-activation gradients of i, f, g, o
    dh, dc = dh_n.copy(), dc_n.copy()
    new_dh = np.empty_like(dh)
    dh_t = np.empty_like(dh)
    dc_t = np.empty_like(dc)
    tc = np.empty_like(dh)
    tmp = np.empty_like(dh)
    for t in range(T - 1, -1, -1):
        i, f, g, o = (gates[t][:, k * H : (k + 1) * H] for k in range(4))
        dai, daf, dag, dao = (dA[t][:, k * H : (k + 1) * H] for k in range(4))
        c_prev = cs[t - 1] if t > 0 else c0
        np.add(dh, dhs[t], out=dh_t)  # dL/dh_t
        if active is not None:
            dh_t[~active[t]] = 0
        if norms is not None:
            norms[t] = np.linalg.norm(dh_t, axis=1)
        np.tanh(cs[t], out=tc)
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
        np.matmul(dA[t], W_hh, out=new_dh)  # dL/dh_{t-1} = W_hh^T dA_t
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
    dx, dparams = _weight_grads(dA, dA, x, hs, h0, params["W_ih"], mask)
    return dx, dh, dc, dparams, norms


def _gru_backward(
    params: Params,
    x: FloatArray,
    h0: FloatArray,
    hs: FloatArray,
    saved: tuple[FloatArray, FloatArray],
    dhs: FloatArray,
    dh_n: FloatArray,
    active: NDArray[np.bool_] | None,
    norms: FloatArray | None,
    mask: FloatArray | None,
) -> tuple[FloatArray, FloatArray, dict[str, FloatArray]]:
    T = x.shape[0]
    H = h0.shape[1]
    W_hh = params["W_hh"]
    gates, hn = saved
    dA_in = np.empty_like(gates)  # d/d(W_i. x + b_i.) for r, z, n
    dA_rec = np.empty_like(gates)  # d/d(W_h. h + b_h.) for r, z, n
    dh = dh_n.copy()
    dh_t = np.empty_like(dh)
    new_dh = np.empty_like(dh)
    tmp = np.empty_like(dh)
    for t in range(T - 1, -1, -1):
        r, z, n = (gates[t][:, k * H : (k + 1) * H] for k in range(3))
        dar, daz, dan = (dA_in[t][:, k * H : (k + 1) * H] for k in range(3))
        h_prev = hs[t - 1] if t > 0 else h0
        np.add(dh, dhs[t], out=dh_t)  # dL/dh_t
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
        np.multiply(dan, hn[t], out=dar)  # dL/dr = dL/dn_pre * (W_hn h + b_hn)
        dar *= r
        np.subtract(1, r, out=tmp)
        dar *= tmp
        dA_rec[t][:, : 2 * H] = dA_in[t][:, : 2 * H]  # r, z: same on both sides
        np.multiply(dan, r, out=dA_rec[t][:, 2 * H :])  # the n side is gated by r
        np.matmul(dA_rec[t], W_hh, out=new_dh)  # dL/dh_{t-1} = W_hh^T dA_rec + dh z
        if mask is not None:
            new_dh *= mask  # m * W_hh^T dA_rec: the direct path dh z has no mask
        np.multiply(dh_t, z, out=tmp)
        new_dh += tmp
        if active is None:
            dh, new_dh = new_dh, dh
        else:
            np.copyto(dh, new_dh, where=active[t][:, None])
    dx, dparams = _weight_grads(dA_in, dA_rec, x, hs, h0, params["W_ih"], mask)
    return dx, dh, dparams


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
