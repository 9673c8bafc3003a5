"""Private Numba kernels of the ``numba`` backend: the sequential time loops, nothing else.

The public adapter (:mod:`fastrnn.backends.numba_backend`) does the big products with
NumPy (the input projection before the loop, the weight gradients and ``dx`` after it)
and calls these kernels for the recurrences in between. Every kernel here works on a
contiguous range ``b0:b1`` of the sequences of a batch, with its own time loop: the
serial call is ``kernel(0, B, ...)`` and the ``*_parallel`` wrappers split the batch
into chunks over ``prange``. Only the real steps of each sequence are computed (they are
a prefix, so ``hs[t-1, b]`` is the previous state); padded steps get zero outputs and
zero gradients, and the state and its gradient pass through them unchanged.

Nothing is allocated inside a time loop: the per-step product writes straight into the
output row that already holds the hoisted input projection, the gate math runs right
after it on the same row, and the backward pass keeps its running ``dh``/``dc`` in the
``dh0``/``dc0`` output rows.

Importing this module compiles nothing; a kernel is compiled (or loaded from the on-disk
cache) for one of the explicit C-contiguous signatures of :data:`SIGNATURES` by
:func:`compiled`, on first use or from :func:`fastrnn.warmup`.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

# Contraction to FMA and reassociation (to vectorize the dot products); NaN and inf keep
# their IEEE meaning so that a diverging network shows up as it does in the reference.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
# error_model="numpy": IEEE division (no ZeroDivisionError check, which stops LLVM from
# vectorizing any loop that divides, such as the float32 tanh below).
_JIT = {"cache": True, "nogil": True, "fastmath": FASTMATH, "error_model": "numpy"}

ACTIVATIONS = {"tanh": 0, "relu": 1, "leaky_relu": 2, "identity": 3}

# --- scalar math ----------------------------------------------------------------------
#
# float32 tanh as a [13/6] minimax rational function on [-7.9053, 7.9053] (tanh is +-1 to
# float32 precision beyond): the approximation Eigen uses for its vectorized tanh. Plain
# arithmetic, so LLVM vectorizes the loops that call it, where math.tanh is a scalar
# libm call per element. float64 keeps math.tanh (the 1e-10 contract).

_F = np.float32
_T_CLAMP = _F(7.90531110763549805)
_T_TINY = _F(0.0004)
_A1, _A3, _A5 = _F(4.89352455891786e-03), _F(6.37261928875436e-04), _F(1.48572235717979e-05)
_A7, _A9 = _F(5.12229709037114e-08), _F(-8.60467152213735e-11)
_A11, _A13 = _F(2.00018790482477e-13), _F(-2.76076847742355e-16)
_B0, _B2 = _F(4.89352518554385e-03), _F(2.26843463243900e-03)
_B4, _B6 = _F(1.18534705686654e-04), _F(1.19825839466702e-06)
_HALF32 = _F(0.5)


def tanh(v):
    """tanh of a scalar (the Python twin of the jitted overload below)."""
    return math.tanh(v)


def sigmoid(v):
    """sigmoid(v) = (1 + tanh(v / 2)) / 2: no overflow for any v."""
    return 0.5 * math.tanh(0.5 * v) + 0.5


def _tanh_f32(v):
    # the clamp keeps NaN (comparisons with NaN are false), so NaN stays NaN as in np.tanh
    x = _T_CLAMP if v > _T_CLAMP else v
    x = -_T_CLAMP if x < -_T_CLAMP else x
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = x * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return v if abs(v) < _T_TINY else p / q


def _is_f32(v) -> bool:
    return isinstance(v, types.Float) and v.bitwidth == 32


@overload(tanh, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_tanh(v):
    if _is_f32(v):
        return _tanh_f32
    if isinstance(v, types.Float):
        return lambda v: math.tanh(v)
    return None


@overload(sigmoid, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_sigmoid(v):
    if _is_f32(v):
        return lambda v: _HALF32 * tanh(_HALF32 * v) + _HALF32
    if isinstance(v, types.Float):
        return lambda v: 0.5 * math.tanh(0.5 * v) + 0.5
    return None


# --- building blocks -------------------------------------------------------------------


@njit(**_JIT)
def _activate(out, rec, act, slope):
    """out <- act(out + rec) for the vanilla RNN (codes of :data:`ACTIVATIONS`)."""
    zero = out.dtype.type(0)
    if act == 0:
        for j in range(out.shape[0]):
            out[j] = tanh(out[j] + rec[j])
    elif act == 1:
        for j in range(out.shape[0]):
            out[j] = max(out[j] + rec[j], zero)
    elif act == 2:
        for j in range(out.shape[0]):
            a = out[j] + rec[j]
            out[j] = a if a > zero else a * slope
    else:
        for j in range(out.shape[0]):
            out[j] += rec[j]


@njit(**_JIT)
def _activation_grad_(da, h, act, slope):
    """da <- da * act'(a), written in terms of h = act(a) (slope >= 0: h > 0 iff a > 0)."""
    one, zero = da.dtype.type(1), da.dtype.type(0)
    if act == 0:
        for j in range(da.shape[0]):
            da[j] *= one - h[j] * h[j]
    elif act == 1:
        for j in range(da.shape[0]):
            if h[j] <= zero:
                da[j] = zero
    elif act == 2:
        for j in range(da.shape[0]):
            if h[j] <= zero:
                da[j] *= slope


@njit(**_JIT)
def _add_norm(dst, a, b):
    """dst <- a + b element-wise; returns ||a + b||."""
    ss = dst.dtype.type(0)
    for j in range(dst.shape[0]):
        v = a[j] + b[j]
        dst[j] = v
        ss += v * v
    return math.sqrt(ss)


@njit(**_JIT)
def _steps(lengths, b0, b1):
    """The number of steps any sequence of b0:b1 is still running: max(lengths[b0:b1])."""
    n = 0
    for b in range(b0, b1):
        n = max(n, lengths[b])
    return n


# The per-step product of a chunk of sequences is one BLAS call (``np.dot`` with ``out``):
# ``h_{t-1} @ W_hh^T`` forward, ``dA_t @ W_hh`` backward. Rows of sequences that have
# ended are zero (their outputs and gradients are zeroed as they end), so they ride along
# harmlessly; each sequence reads and writes only its own rows around the product.

# --- rnn -------------------------------------------------------------------------------


@njit(**_JIT)
def rnn_forward(b0, b1, hs, W_hh_T, h0, lengths, act, slope, h_n):
    """Sequences b0:b1. ``hs`` holds W_ih x_t + b_ih + b_hh on entry, h_t on return."""
    T = hs.shape[0]
    zero = hs.dtype.type(0)
    steps = _steps(lengths, b0, b1)
    rec = np.empty((b1 - b0, hs.shape[2]), dtype=hs.dtype)
    for t in range(steps):
        h_prev = hs[t - 1, b0:b1] if t > 0 else h0[b0:b1]
        np.dot(h_prev, W_hh_T, rec)  # W h_{t-1}: one product for the chunk
        for b in range(b0, b1):
            if t < lengths[b]:
                _activate(hs[t, b], rec[b - b0], act, slope)  # h_t = act(U x_t + b + W h_{t-1})
            else:
                hs[t, b] = zero
    for t in range(steps, T):
        hs[t, b0:b1] = zero
    for b in range(b0, b1):
        h_n[b] = hs[lengths[b] - 1, b]


@njit(**_JIT)
def rnn_backward(b0, b1, hs, W_hh, dhs, lengths, act, slope, dh, dA, norms):
    """Sequences b0:b1. ``dh`` holds dh_n on entry and dh0 on return; ``dA`` gets dL/da_t."""
    T = hs.shape[0]
    zero = hs.dtype.type(0)
    steps = _steps(lengths, b0, b1)
    tmp = np.empty((b1 - b0, hs.shape[2]), dtype=hs.dtype)
    for t in range(steps, T):
        dA[t, b0:b1] = zero
    for t in range(steps - 1, -1, -1):
        for b in range(b0, b1):
            if t < lengths[b]:
                norms[t, b] = _add_norm(dA[t, b], dh[b], dhs[t, b])  # dL/dh_t
                _activation_grad_(dA[t, b], hs[t, b], act, slope)  # dL/da_t
            else:
                dA[t, b] = zero
        np.dot(dA[t, b0:b1], W_hh, tmp)  # dL/dh_{t-1} = W^T dL/da_t
        for b in range(b0, b1):
            if t < lengths[b]:  # padded steps pass dh through unchanged
                dh[b] = tmp[b - b0]


# --- lstm ------------------------------------------------------------------------------


@njit(**_JIT)
def lstm_forward(b0, b1, gates, W_hh_T, h0, c0, lengths, hs, cs, h_n, c_n):
    """``gates`` holds W_ih x_t + b_ih + b_hh on entry and the activations i, f, g, o on
    return; ``cs`` gets the cell states."""
    T = gates.shape[0]
    H = hs.shape[2]
    zero = hs.dtype.type(0)
    steps = _steps(lengths, b0, b1)
    rec = np.empty((b1 - b0, 4 * H), dtype=hs.dtype)
    for t in range(steps):
        h_prev = hs[t - 1, b0:b1] if t > 0 else h0[b0:b1]
        np.dot(h_prev, W_hh_T, rec)  # all four gates of the chunk: one packed product
        for b in range(b0, b1):
            h_t = hs[t, b]
            if t >= lengths[b]:
                h_t[:] = zero
                continue
            c_prev = cs[t - 1, b] if t > 0 else c0[b]
            g = gates[t, b]
            r = rec[b - b0]
            c_t = cs[t, b]
            for j in range(H):
                i = sigmoid(g[j] + r[j])
                f = sigmoid(g[H + j] + r[H + j])
                gg = tanh(g[2 * H + j] + r[2 * H + j])
                o = sigmoid(g[3 * H + j] + r[3 * H + j])
                g[j] = i
                g[H + j] = f
                g[2 * H + j] = gg
                g[3 * H + j] = o
                c = f * c_prev[j] + i * gg
                c_t[j] = c
                h_t[j] = o * tanh(c)
    for t in range(steps, T):
        hs[t, b0:b1] = zero
    for b in range(b0, b1):
        h_n[b] = hs[lengths[b] - 1, b]
        c_n[b] = cs[lengths[b] - 1, b]


@njit(**_JIT)
def lstm_backward(b0, b1, gates, cs, c0, W_hh, dhs, lengths, dh, dc, dA, norms):
    """``dh``/``dc`` hold dh_n/dc_n on entry and dh0/dc0 on return."""
    T = gates.shape[0]
    H = cs.shape[2]
    zero, one = cs.dtype.type(0), cs.dtype.type(1)
    steps = _steps(lengths, b0, b1)
    tmp = np.empty((b1 - b0, H), dtype=cs.dtype)
    for t in range(steps, T):
        dA[t, b0:b1] = zero
    for t in range(steps - 1, -1, -1):
        for b in range(b0, b1):
            da = dA[t, b]
            if t >= lengths[b]:
                da[:] = zero
                continue
            g = gates[t, b]
            c_t = cs[t, b]
            c_prev = cs[t - 1, b] if t > 0 else c0[b]
            dhb = dh[b]
            dcb = dc[b]
            dh_up = dhs[t, b]
            ss = zero
            for j in range(H):
                dht = dhb[j] + dh_up[j]  # dL/dh_t
                ss += dht * dht
                i = g[j]
                f = g[H + j]
                gg = g[2 * H + j]
                o = g[3 * H + j]
                tc = tanh(c_t[j])
                dct = dcb[j] + dht * o * (one - tc * tc)  # dL/dc_t
                da[j] = dct * gg * i * (one - i)
                da[H + j] = dct * c_prev[j] * f * (one - f)
                da[2 * H + j] = dct * i * (one - gg * gg)
                da[3 * H + j] = dht * tc * o * (one - o)
                dcb[j] = dct * f  # dL/dc_{t-1}
            norms[t, b] = math.sqrt(ss)
        np.dot(dA[t, b0:b1], W_hh, tmp)  # dL/dh_{t-1} = W_hh^T dA_t
        for b in range(b0, b1):
            if t < lengths[b]:
                dh[b] = tmp[b - b0]


# --- gru -------------------------------------------------------------------------------


@njit(**_JIT)
def gru_forward(b0, b1, gates, W_hh_T, b_hn, h0, lengths, hs, hn, h_n):
    """``gates`` holds W_i. x_t + b_i. with b_hr, b_hz added on entry and r, z, n on
    return; ``hn`` gets W_hn h_{t-1} + b_hn."""
    T = gates.shape[0]
    H = hs.shape[2]
    zero = hs.dtype.type(0)
    steps = _steps(lengths, b0, b1)
    rec = np.empty((b1 - b0, 3 * H), dtype=hs.dtype)
    for t in range(steps):
        h_prevs = hs[t - 1, b0:b1] if t > 0 else h0[b0:b1]
        np.dot(h_prevs, W_hh_T, rec)  # W_h{r,z,n} h_{t-1}: one packed product
        for b in range(b0, b1):
            h_t = hs[t, b]
            if t >= lengths[b]:
                h_t[:] = zero
                continue
            h_prev = h_prevs[b - b0]
            g = gates[t, b]
            r_ = rec[b - b0]
            hn_t = hn[t, b]
            for j in range(H):
                r = sigmoid(g[j] + r_[j])
                z = sigmoid(g[H + j] + r_[H + j])
                hnj = r_[2 * H + j] + b_hn[j]
                n = tanh(g[2 * H + j] + r * hnj)
                g[j] = r
                g[H + j] = z
                g[2 * H + j] = n
                hn_t[j] = hnj
                h_t[j] = n + z * (h_prev[j] - n)  # (1 - z) n + z h_{t-1}
    for t in range(steps, T):
        hs[t, b0:b1] = zero
    for b in range(b0, b1):
        h_n[b] = hs[lengths[b] - 1, b]


@njit(**_JIT)
def gru_backward(b0, b1, gates, hn, hs, h0, W_hh, dhs, lengths, dh, dA_in, dA_rec, norms):
    """``dh`` holds dh_n on entry and dh0 on return; ``dA_in``/``dA_rec`` get the
    gradients of the input-side and recurrent-side pre-activations."""
    T = gates.shape[0]
    H = hs.shape[2]
    zero, one = hs.dtype.type(0), hs.dtype.type(1)
    steps = _steps(lengths, b0, b1)
    tmp = np.empty((b1 - b0, H), dtype=hs.dtype)
    for t in range(steps, T):
        dA_in[t, b0:b1] = zero
        dA_rec[t, b0:b1] = zero
    for t in range(steps - 1, -1, -1):
        for b in range(b0, b1):
            da_in = dA_in[t, b]
            da_rec = dA_rec[t, b]
            if t >= lengths[b]:
                da_in[:] = zero
                da_rec[:] = zero
                continue
            g = gates[t, b]
            hn_t = hn[t, b]
            h_prev = hs[t - 1, b] if t > 0 else h0[b]
            dhb = dh[b]
            dh_up = dhs[t, b]
            ss = zero
            for j in range(H):
                dht = dhb[j] + dh_up[j]  # dL/dh_t
                ss += dht * dht
                r = g[j]
                z = g[H + j]
                n = g[2 * H + j]
                dan = dht * (one - z) * (one - n * n)
                daz = dht * (h_prev[j] - n) * z * (one - z)
                dar = dan * hn_t[j] * r * (one - r)
                da_in[j] = dar
                da_in[H + j] = daz
                da_in[2 * H + j] = dan
                da_rec[j] = dar
                da_rec[H + j] = daz
                da_rec[2 * H + j] = dan * r
                dhb[j] = dht * z  # the direct path h_{t-1} -> h_t
            norms[t, b] = math.sqrt(ss)
        np.dot(dA_rec[t, b0:b1], W_hh, tmp)  # W_hh^T dA_rec
        for b in range(b0, b1):
            if t < lengths[b]:
                dhb = dh[b]
                tb = tmp[b - b0]
                for j in range(H):
                    dhb[j] += tb[j]


# --- batch-parallel wrappers: contiguous chunks of sequences, one time loop each ---------


@njit(parallel=True, **_JIT)
def rnn_forward_parallel(hs, W_hh_T, h0, lengths, act, slope, h_n, chunks):
    B = hs.shape[1]
    for c in prange(chunks):
        rnn_forward(
            c * B // chunks, (c + 1) * B // chunks, hs, W_hh_T, h0, lengths, act, slope, h_n
        )


@njit(parallel=True, **_JIT)
def rnn_backward_parallel(hs, W_hh, dhs, lengths, act, slope, dh, dA, norms, chunks):
    B = hs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        rnn_backward(b0, b1, hs, W_hh, dhs, lengths, act, slope, dh, dA, norms)


@njit(parallel=True, **_JIT)
def lstm_forward_parallel(gates, W_hh_T, h0, c0, lengths, hs, cs, h_n, c_n, chunks):
    B = hs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        lstm_forward(b0, b1, gates, W_hh_T, h0, c0, lengths, hs, cs, h_n, c_n)


@njit(parallel=True, **_JIT)
def lstm_backward_parallel(gates, cs, c0, W_hh, dhs, lengths, dh, dc, dA, norms, chunks):
    B = cs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        lstm_backward(b0, b1, gates, cs, c0, W_hh, dhs, lengths, dh, dc, dA, norms)


@njit(parallel=True, **_JIT)
def gru_forward_parallel(gates, W_hh_T, b_hn, h0, lengths, hs, hn, h_n, chunks):
    B = hs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        gru_forward(b0, b1, gates, W_hh_T, b_hn, h0, lengths, hs, hn, h_n)


@njit(parallel=True, **_JIT)
def gru_backward_parallel(gates, hn, hs, h0, W_hh, dhs, lengths, dh, dA_in, dA_rec, norms, chunks):
    B = hs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        gru_backward(b0, b1, gates, hn, hs, h0, W_hh, dhs, lengths, dh, dA_in, dA_rec, norms)


# --- explicit signatures, compiled on first use ------------------------------------------


def _signatures(dtype: type) -> dict[str, tuple]:
    """Each kernel's argument types for one float dtype: C-contiguous arrays only."""
    f = types.float32 if dtype is np.float32 else types.float64
    v, m, a3 = f[::1], f[:, ::1], f[:, :, ::1]
    i, lens = types.int64, types.int64[::1]
    serial = {
        "rnn_forward": (a3, m, m, lens, i, f, m),
        "rnn_backward": (a3, m, a3, lens, i, f, m, a3, m),
        "lstm_forward": (a3, m, m, m, lens, a3, a3, m, m),
        "lstm_backward": (a3, a3, m, m, a3, lens, m, m, a3, m),
        "gru_forward": (a3, m, v, m, lens, a3, a3, m),
        "gru_backward": (a3, a3, a3, m, m, a3, lens, m, a3, a3, m),
    }
    sigs = {name: (i, i, *args) for name, args in serial.items()}
    sigs.update({f"{name}_parallel": (*args, i) for name, args in serial.items()})
    return sigs


SIGNATURES: dict[tuple[str, type], tuple] = {
    (name, dtype): sig
    for dtype in (np.float32, np.float64)
    for name, sig in _signatures(dtype).items()
}

_compile_lock = threading.Lock()
_ready: set[tuple[str, type]] = set()


def compiled(name: str, dtype: type):
    """Kernel ``name`` with its signature for ``dtype`` compiled or loaded from the cache."""
    key = (name, dtype)
    kernel = globals()[name]
    if key not in _ready:
        with _compile_lock:
            if key not in _ready:
                kernel.compile(SIGNATURES[key])
                _ready.add(key)
    return kernel
