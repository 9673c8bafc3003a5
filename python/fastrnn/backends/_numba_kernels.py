"""Private Numba kernels of the ``numba`` backend: the time loops and the big products.

The public adapter (:mod:`fastrnn.backends.numba_backend`) validates nothing (the
functional core did), allocates, and calls these kernels. Every time-loop kernel works
on a contiguous range ``b0:b1`` of the sequences of a batch, with its own time loop (and
the product kernels and the fused head on a range of rows): the serial call is
``kernel(0, B, ...)`` and the ``*_parallel`` wrappers split the range into chunks over
``prange``. Only the real steps of each sequence are computed (they are a prefix, so
``hs[t-1, b]`` is the previous state); padded steps get zero outputs and zero gradients,
and the state and its gradient pass through them unchanged.

Nothing is allocated inside a time loop: the per-step product of a chunk goes to one
scratch matrix sized before the loop, the gate math runs right after it, reading the
hoisted input projection and writing the activations over it, and the backward pass
keeps its running ``dh``/``dc`` in the ``dh0``/``dc0`` output rows.

Importing this module compiles nothing; a kernel is compiled (or loaded from the on-disk
cache) for one of the explicit C-contiguous signatures of :data:`SIGNATURES` by
:func:`compiled`, on first use or from :func:`fastrnn.warmup`.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

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


# float32 exp for the softmax of the fused head: Cephes' expf (a degree-5 polynomial on
# [-ln2/2, ln2/2] after x = n ln2 + r, with 2^n built in the exponent bits), within 1 ulp
# of the exact value; below exp(-87.34) = 2^-126 it gives 0 (no subnormals). Plain
# arithmetic and one bit cast, so the loops over the logits vectorize; math.exp is a
# scalar libm call per element (numba has no vector exp without Intel's SVML), 8x slower.
# Its own fastmath flags (``contract`` only): reassociation would undo the range reduction.

_E_LO, _E_HI = _F(-87.3365447505531), _F(88.7228391116729)  # log(2^-126), log(FLT_MAX)
_LOG2E = _F(1.44269504088896341)
_LN2_HI, _LN2_LO = _F(0.693359375), _F(-2.12194440e-4)  # ln 2 in two parts
_E0, _E1, _E2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_E3, _E4, _E5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_ZERO32, _ONE32, _INF32 = _F(0), _F(1), _F(np.inf)
_EXP_JIT = {"fastmath": {"contract"}, "error_model": "numpy"}


def exp(v):
    """exp of a scalar (the Python twin of the jitted overload below)."""
    return math.exp(v)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 ``bits``."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 32):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


def _exp_f32(v):
    x = _E_HI if v > _E_HI else v  # the clamps keep NaN, as in _tanh_f32
    x = _E_LO if x < _E_LO else x
    n = np.floor(x * _LOG2E + _HALF32)  # x = n ln2 + r, |r| <= ln2 / 2
    n = n if n > _F(-126) else _F(-126)  # also NaN -> -126, a defined int conversion
    n = _F(127) if n > _F(127) else n
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    p = _E0 * r + _E1
    p = p * r + _E2
    p = p * r + _E3
    p = p * r + _E4
    p = p * r + _E5
    p = p * (r * r) + r + _ONE32  # exp(r)
    y = p * _f32_from_bits(np.int32((np.int64(n) + 127) << 23))  # * 2^n
    y = _ZERO32 if v < _E_LO else y
    return _INF32 if v > _E_HI else y


@overload(exp, jit_options=_EXP_JIT)
def _ol_exp(v):
    if _is_f32(v):
        return _exp_f32
    if isinstance(v, types.Float):
        return lambda v: math.exp(v)
    return None


# --- building blocks -------------------------------------------------------------------
#
# The loops index the 3-d arrays directly (``hs[t, b, j]``) instead of taking row views:
# a view costs reference-count updates, which at H=64 and B=1 was measurable against the
# few hundred nanoseconds a step takes.


@njit(**_JIT)
def _steps(lengths, b0, b1):
    """The number of steps any sequence of b0:b1 is still running: max(lengths[b0:b1])."""
    n = 0
    for b in range(b0, b1):
        n = max(n, lengths[b])
    return n


@njit(**_JIT)
def _activate(hs, t, b, rec, r, bias, act, slope):
    """hs[t, b] <- act(hs[t, b] + rec[r] + bias) for the vanilla RNN (:data:`ACTIVATIONS`)."""
    zero = hs.dtype.type(0)
    H = hs.shape[2]
    if act == 0:
        for j in range(H):
            hs[t, b, j] = tanh(hs[t, b, j] + rec[r, j] + bias[j])
    elif act == 1:
        for j in range(H):
            hs[t, b, j] = max(hs[t, b, j] + rec[r, j] + bias[j], zero)
    elif act == 2:
        for j in range(H):
            a = hs[t, b, j] + rec[r, j] + bias[j]
            hs[t, b, j] = a if a > zero else a * slope
    else:
        for j in range(H):
            hs[t, b, j] += rec[r, j] + bias[j]


@njit(**_JIT)
def _zero_steps(a, t0, t1, b0, b1):
    """a[t0:t1, b0:b1] = 0."""
    zero = a.dtype.type(0)
    for t in range(t0, t1):
        for b in range(b0, b1):
            for j in range(a.shape[2]):
                a[t, b, j] = zero


# The per-step product of a chunk of sequences is one BLAS call (``np.dot`` with ``out``):
# ``h_{t-1} @ W_hh^T`` forward, ``dA_t @ W_hh`` backward. Rows of sequences that have
# ended are zero (their outputs and gradients are zeroed as they end), so they ride along
# harmlessly; each sequence reads and writes only its own rows around the product.
# Forward kernels add the biases in the gate loop (the input projection is a bare GEMM);
# backward kernels sum the bias gradients per sequence in float64 (``db``, (B, G*H)) and
# write ||dL/dh_t|| to ``norms`` of shape (B, T), so that threads working on neighbouring
# sequences do not write to one cache line at every step.

# --- rnn -------------------------------------------------------------------------------


@njit(**_JIT)
def rnn_forward(b0, b1, hs, W_hh_T, bias, h0, lengths, act, slope, h_n):
    """Sequences b0:b1. ``hs`` holds W_ih x_t on entry and h_t on return; ``bias`` is
    b_ih + b_hh."""
    T, _, H = hs.shape
    steps = _steps(lengths, b0, b1)
    rec = np.empty((b1 - b0, H), dtype=hs.dtype)
    for t in range(steps):
        np.dot(hs[t - 1, b0:b1] if t > 0 else h0[b0:b1], W_hh_T, rec)  # W h_{t-1}, chunk
        for b in range(b0, b1):
            if t < lengths[b]:
                _activate(hs, t, b, rec, b - b0, bias, act, slope)
            else:
                _zero_steps(hs, t, t + 1, b, b + 1)
    _zero_steps(hs, steps, T, b0, b1)
    for b in range(b0, b1):
        for j in range(H):
            h_n[b, j] = hs[lengths[b] - 1, b, j]


@njit(**_JIT)
def rnn_backward(b0, b1, hs, W_hh, dhs, lengths, act, slope, dh, dA, db, norms):
    """Sequences b0:b1. ``dh`` holds dh_n on entry and dh0 on return; ``dA`` gets dL/da_t."""
    T, _, H = hs.shape
    zero, one = hs.dtype.type(0), hs.dtype.type(1)
    steps = _steps(lengths, b0, b1)
    tmp = np.empty((b1 - b0, H), dtype=hs.dtype)
    _zero_steps(dA, steps, T, b0, b1)
    for t in range(steps - 1, -1, -1):
        for b in range(b0, b1):
            if t >= lengths[b]:
                _zero_steps(dA, t, t + 1, b, b + 1)
                continue
            ss = zero
            for j in range(H):
                v = dh[b, j] + dhs[t, b, j]  # dL/dh_t
                ss += v * v
                h = hs[t, b, j]  # dL/da_t = dL/dh_t * act'(a_t), act' in terms of h_t
                if act == 0:
                    v *= one - h * h
                elif act != 3 and h <= zero:
                    v = zero if act == 1 else v * slope
                dA[t, b, j] = v
                db[b, j] += v
            norms[b, t] = math.sqrt(ss)
        np.dot(dA[t, b0:b1], W_hh, tmp)  # dL/dh_{t-1} = W^T dL/da_t
        for b in range(b0, b1):
            if t < lengths[b]:  # padded steps pass dh through unchanged
                for j in range(H):
                    dh[b, j] = tmp[b - b0, j]


# --- lstm ------------------------------------------------------------------------------


@njit(**_JIT)
def lstm_forward(b0, b1, gates, W_hh_T, bias, h0, c0, lengths, hs, cs, h_n, c_n):
    """``gates`` holds W_ih x_t on entry and the activations i, f, g, o on return
    (``bias`` is b_ih + b_hh); ``cs`` gets the cell states."""
    T, _, H = hs.shape
    steps = _steps(lengths, b0, b1)
    rec = np.empty((b1 - b0, 4 * H), dtype=hs.dtype)
    for t in range(steps):
        np.dot(hs[t - 1, b0:b1] if t > 0 else h0[b0:b1], W_hh_T, rec)  # all 4 gates
        for b in range(b0, b1):
            if t >= lengths[b]:
                _zero_steps(hs, t, t + 1, b, b + 1)
                continue
            r = b - b0
            for j in range(H):
                i = sigmoid(gates[t, b, j] + rec[r, j] + bias[j])
                f = sigmoid(gates[t, b, H + j] + rec[r, H + j] + bias[H + j])
                g = tanh(gates[t, b, 2 * H + j] + rec[r, 2 * H + j] + bias[2 * H + j])
                o = sigmoid(gates[t, b, 3 * H + j] + rec[r, 3 * H + j] + bias[3 * H + j])
                gates[t, b, j] = i
                gates[t, b, H + j] = f
                gates[t, b, 2 * H + j] = g
                gates[t, b, 3 * H + j] = o
                c = f * (cs[t - 1, b, j] if t > 0 else c0[b, j]) + i * g
                cs[t, b, j] = c
                hs[t, b, j] = o * tanh(c)
    _zero_steps(hs, steps, T, b0, b1)
    for b in range(b0, b1):
        for j in range(H):
            h_n[b, j] = hs[lengths[b] - 1, b, j]
            c_n[b, j] = cs[lengths[b] - 1, b, j]


@njit(**_JIT)
def lstm_backward(b0, b1, gates, cs, c0, W_hh, dhs, lengths, dh, dc, dA, db, norms):
    """``dh``/``dc`` hold dh_n/dc_n on entry and dh0/dc0 on return."""
    T, _, H = cs.shape
    zero, one = cs.dtype.type(0), cs.dtype.type(1)
    steps = _steps(lengths, b0, b1)
    tmp = np.empty((b1 - b0, H), dtype=cs.dtype)
    _zero_steps(dA, steps, T, b0, b1)
    for t in range(steps - 1, -1, -1):
        for b in range(b0, b1):
            if t >= lengths[b]:
                _zero_steps(dA, t, t + 1, b, b + 1)
                continue
            ss = zero
            for j in range(H):
                dht = dh[b, j] + dhs[t, b, j]  # dL/dh_t
                ss += dht * dht
                i = gates[t, b, j]
                f = gates[t, b, H + j]
                g = gates[t, b, 2 * H + j]
                o = gates[t, b, 3 * H + j]
                tc = tanh(cs[t, b, j])
                dct = dc[b, j] + dht * o * (one - tc * tc)  # dL/dc_t
                c_prev = cs[t - 1, b, j] if t > 0 else c0[b, j]
                dai = dct * g * i * (one - i)
                daf = dct * c_prev * f * (one - f)
                dag = dct * i * (one - g * g)
                dao = dht * tc * o * (one - o)
                dA[t, b, j] = dai
                dA[t, b, H + j] = daf
                dA[t, b, 2 * H + j] = dag
                dA[t, b, 3 * H + j] = dao
                db[b, j] += dai
                db[b, H + j] += daf
                db[b, 2 * H + j] += dag
                db[b, 3 * H + j] += dao
                dc[b, j] = dct * f  # dL/dc_{t-1}
            norms[b, t] = math.sqrt(ss)
        np.dot(dA[t, b0:b1], W_hh, tmp)  # dL/dh_{t-1} = W_hh^T dA_t
        for b in range(b0, b1):
            if t < lengths[b]:
                for j in range(H):
                    dh[b, j] = tmp[b - b0, j]


# --- gru -------------------------------------------------------------------------------


@njit(**_JIT)
def gru_forward(b0, b1, gates, W_hh_T, bias, b_hn, h0, lengths, hs, hn, h_n):
    """``gates`` holds W_i. x_t on entry and r, z, n on return (``bias`` is b_ih with
    b_hr, b_hz added); ``hn`` gets W_hn h_{t-1} + b_hn."""
    T, _, H = hs.shape
    steps = _steps(lengths, b0, b1)
    rec = np.empty((b1 - b0, 3 * H), dtype=hs.dtype)
    for t in range(steps):
        np.dot(hs[t - 1, b0:b1] if t > 0 else h0[b0:b1], W_hh_T, rec)  # W_h{r,z,n} h_{t-1}
        for b in range(b0, b1):
            if t >= lengths[b]:
                _zero_steps(hs, t, t + 1, b, b + 1)
                continue
            q = b - b0
            for j in range(H):
                r = sigmoid(gates[t, b, j] + rec[q, j] + bias[j])
                z = sigmoid(gates[t, b, H + j] + rec[q, H + j] + bias[H + j])
                hnj = rec[q, 2 * H + j] + b_hn[j]
                n = tanh(gates[t, b, 2 * H + j] + bias[2 * H + j] + r * hnj)
                gates[t, b, j] = r
                gates[t, b, H + j] = z
                gates[t, b, 2 * H + j] = n
                hn[t, b, j] = hnj
                h_prev = hs[t - 1, b, j] if t > 0 else h0[b, j]
                hs[t, b, j] = n + z * (h_prev - n)  # (1 - z) n + z h_{t-1}
    _zero_steps(hs, steps, T, b0, b1)
    for b in range(b0, b1):
        for j in range(H):
            h_n[b, j] = hs[lengths[b] - 1, b, j]


@njit(**_JIT)
def gru_backward(
    b0, b1, gates, hn, hs, h0, W_hh, dhs, lengths, dh, dA_in, dA_rec, db, db_hn, norms
):
    """``dh`` holds dh_n on entry and dh0 on return; ``dA_in``/``dA_rec`` get the
    gradients of the input-side and recurrent-side pre-activations, ``db`` the sums of
    ``dA_in`` and ``db_hn`` those of the n part of ``dA_rec`` (its r, z parts are dA_in's)."""
    T, _, H = hs.shape
    zero, one = hs.dtype.type(0), hs.dtype.type(1)
    steps = _steps(lengths, b0, b1)
    tmp = np.empty((b1 - b0, H), dtype=hs.dtype)
    _zero_steps(dA_in, steps, T, b0, b1)
    _zero_steps(dA_rec, steps, T, b0, b1)
    for t in range(steps - 1, -1, -1):
        for b in range(b0, b1):
            if t >= lengths[b]:
                _zero_steps(dA_in, t, t + 1, b, b + 1)
                _zero_steps(dA_rec, t, t + 1, b, b + 1)
                continue
            ss = zero
            for j in range(H):
                dht = dh[b, j] + dhs[t, b, j]  # dL/dh_t
                ss += dht * dht
                r = gates[t, b, j]
                z = gates[t, b, H + j]
                n = gates[t, b, 2 * H + j]
                h_prev = hs[t - 1, b, j] if t > 0 else h0[b, j]
                dan = dht * (one - z) * (one - n * n)
                daz = dht * (h_prev - n) * z * (one - z)
                dar = dan * hn[t, b, j] * r * (one - r)
                dA_in[t, b, j] = dar
                dA_in[t, b, H + j] = daz
                dA_in[t, b, 2 * H + j] = dan
                dA_rec[t, b, j] = dar
                dA_rec[t, b, H + j] = daz
                dA_rec[t, b, 2 * H + j] = dan * r
                db[b, j] += dar
                db[b, H + j] += daz
                db[b, 2 * H + j] += dan
                db_hn[b, j] += dan * r
                dh[b, j] = dht * z  # the direct path h_{t-1} -> h_t
            norms[b, t] = math.sqrt(ss)
        np.dot(dA_rec[t, b0:b1], W_hh, tmp)  # + W_hh^T dA_rec
        for b in range(b0, b1):
            if t < lengths[b]:
                for j in range(H):
                    dh[b, j] += tmp[b - b0, j]


# --- batch-parallel wrappers: contiguous chunks of sequences, one time loop each ---------


@njit(parallel=True, **_JIT)
def rnn_forward_parallel(hs, W_hh_T, bias, h0, lengths, act, slope, h_n, chunks):
    B = hs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        rnn_forward(b0, b1, hs, W_hh_T, bias, h0, lengths, act, slope, h_n)


@njit(parallel=True, **_JIT)
def rnn_backward_parallel(hs, W_hh, dhs, lengths, act, slope, dh, dA, db, norms, chunks):
    B = hs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        rnn_backward(b0, b1, hs, W_hh, dhs, lengths, act, slope, dh, dA, db, norms)


@njit(parallel=True, **_JIT)
def lstm_forward_parallel(gates, W_hh_T, bias, h0, c0, lengths, hs, cs, h_n, c_n, chunks):
    B = hs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        lstm_forward(b0, b1, gates, W_hh_T, bias, h0, c0, lengths, hs, cs, h_n, c_n)


@njit(parallel=True, **_JIT)
def lstm_backward_parallel(gates, cs, c0, W_hh, dhs, lengths, dh, dc, dA, db, norms, chunks):
    B = cs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        lstm_backward(b0, b1, gates, cs, c0, W_hh, dhs, lengths, dh, dc, dA, db, norms)


@njit(parallel=True, **_JIT)
def gru_forward_parallel(gates, W_hh_T, bias, b_hn, h0, lengths, hs, hn, h_n, chunks):
    B = hs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        gru_forward(b0, b1, gates, W_hh_T, bias, b_hn, h0, lengths, hs, hn, h_n)


@njit(parallel=True, **_JIT)
def gru_backward_parallel(
    gates, hn, hs, h0, W_hh, dhs, lengths, dh, dA_in, dA_rec, db, db_hn, norms, chunks
):
    B = hs.shape[1]
    for c in prange(chunks):
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        gru_backward(
            b0, b1, gates, hn, hs, h0, W_hh, dhs, lengths, dh, dA_in, dA_rec, db, db_hn, norms
        )


# --- the big products: blocks of rows, one BLAS call each -------------------------------
#
# The input projection before the time loop, and dx, dW_ih, dW_hh after it. They run
# here rather than through NumPy so that the backend's threads are its own chunks only:
# NumPy's multithreaded BLAS leaves its workers spinning after each call, and on a busy
# machine they slowed the time loops that followed by up to 2.7x (S2, 2 threads).


@njit(**_JIT)
def matmul(r0, r1, a, b, out):
    """out[r0:r1] = a[r0:r1] @ b."""
    np.dot(a[r0:r1], b, out[r0:r1])


@njit(**_JIT)
def matmul_tn(r0, r1, a, b, out):
    """out = a[r0:r1]^T @ b[r0:r1]: the sum over rows r0:r1 of outer products."""
    np.dot(a[r0:r1].T, b[r0:r1], out)


@njit(parallel=True, **_JIT)
def matmul_parallel(a, b, out, chunks):
    M = a.shape[0]
    for c in prange(chunks):
        matmul(c * M // chunks, (c + 1) * M // chunks, a, b, out)


@njit(parallel=True, **_JIT)
def matmul_tn_parallel(a, b, out, chunks):
    M = a.shape[0]
    partial = np.empty((chunks, out.shape[0], out.shape[1]), dtype=out.dtype)
    for c in prange(chunks):
        matmul_tn(c * M // chunks, (c + 1) * M // chunks, a, b, partial[c])
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            s = partial[0, i, j]
            for c in range(1, chunks):
                s += partial[c, i, j]
            out[i, j] = s


# --- the fused softmax head: linear layer, softmax cross-entropy and its gradients ------
#
# Rows r0:r1 of h, by blocks of _HEAD_BLOCK rows: a block's logits (128 KiB at K=32 in
# float32) stay in the core's L2 cache between the product that makes them and the two
# that use them. A block's logits are kept class-major, (K, rows), as in the reference:
# the max, the sum of the exponentials and the scaling by 1 / sum run down the classes
# with every row in its own SIMD lane, whatever K is (row-major, a short last axis needs
# a horizontal reduction per row: about 15% slower overall at K=32). Three products per
# block, each one BLAS call: z = weight @ h_blk^T, dweight += dz @ h_blk, dh_blk = dz^T
# @ weight; they take about 90% of the time. A fourth BLAS call sums the columns of dz
# (dbias): a reduction vectorized by LLVM adds in an order that can differ between the
# serial kernel and its copy inlined in the parallel one, and the result must not depend
# on which ran. The block size matters little: N=160000, H=64, K=32, float32, one BLAS
# thread, 27.4 ms with blocks of 256 rows, 26.8 with 512 or 1024, 27.1 with 2048 (2
# threads: 14.1, 13.8, 13.8, 13.8). Each block's loss and products are added to float64
# sums of the kernel's rows; the caller adds up all ranges' sums.

_HEAD_BLOCK = 1024


@njit(**_JIT)
def linear_cross_entropy(
    r0, r1, h, weight, bias, targets, row_weights, scale, dh, dweight, dbias, loss
):
    """Rows r0:r1: ``dh[r0:r1]`` gets their dL/dh; ``dweight`` (K, H), ``dbias`` (K,) and
    ``loss[0]`` get their sums over these rows (float64). ``row_weights`` is empty for all
    ones; a row's weight is ``scale * row_weights[n]``."""
    K, H = weight.shape
    dt = h.dtype
    zero = dt.type(0)
    weighted = row_weights.shape[0] > 0
    buf = np.empty(K * _HEAD_BLOCK, dtype=dt)
    mx = np.empty(_HEAD_BLOCK, dtype=dt)  # the row maxima, then w / sum(exp)
    picked = np.empty(_HEAD_BLOCK, dtype=dt)  # z_y - max
    sums = np.empty(_HEAD_BLOCK, dtype=dt)
    tmp = np.empty((K, H), dtype=dt)
    ones = np.ones(_HEAD_BLOCK, dtype=dt)
    colsum = np.empty(K, dtype=dt)
    dweight[:] = 0.0
    dbias[:] = 0.0
    total = 0.0
    for s in range(r0, r1, _HEAD_BLOCK):
        e = min(s + _HEAD_BLOCK, r1)
        n = e - s
        z = buf[: K * n].reshape(K, n)
        np.dot(weight, h[s:e].T, z)  # the logits, less the bias, class-major
        for i in range(n):
            mx[i] = z[0, i] + bias[0]
            sums[i] = zero
        for k in range(K):
            for i in range(n):
                v = z[k, i] + bias[k]
                z[k, i] = v
                mx[i] = v if v > mx[i] else mx[i]
        for i in range(n):
            picked[i] = z[targets[s + i], i] - mx[i]
        for k in range(K):
            for i in range(n):
                v = exp(z[k, i] - mx[i])  # softmax = exp(z - max) / sum: one exp
                z[k, i] = v
                sums[i] += v
        for i in range(n):  # nll = logsumexp(z) - z_y = log(sum) - (z_y - max)
            w = scale * row_weights[s + i] if weighted else scale
            total += np.float64(w) * (math.log(np.float64(sums[i])) - np.float64(picked[i]))
            mx[i] = w / sums[i]
        for k in range(K):
            for i in range(n):
                z[k, i] *= mx[i]  # w * softmax
        for i in range(n):  # - w * onehot
            w = scale * row_weights[s + i] if weighted else scale
            z[targets[s + i], i] -= w
        np.dot(z, ones[:n], colsum)  # dbias: BLAS sums the same way in any caller
        for k in range(K):
            dbias[k] += colsum[k]
        np.dot(z, h[s:e], tmp)  # dweight += dz^T h
        for k in range(K):
            for j in range(H):
                dweight[k, j] += tmp[k, j]
        np.dot(z.T, weight, dh[s:e])  # dh = dz @ weight
    loss[0] = total


@njit(parallel=True, **_JIT)
def linear_cross_entropy_parallel(
    h, weight, bias, targets, row_weights, scale, dh, dweight, dbias, loss, chunks
):
    """Contiguous chunks of rows over ``prange``; chunk ``c`` writes its sums to
    ``dweight[c]``, ``dbias[c]`` and ``loss[c]``, which the caller adds up."""
    N = h.shape[0]
    for c in prange(chunks):
        r0, r1 = c * N // chunks, (c + 1) * N // chunks
        linear_cross_entropy(
            r0,
            r1,
            h,
            weight,
            bias,
            targets,
            row_weights,
            scale,
            dh,
            dweight[c],
            dbias[c],
            loss[c : c + 1],
        )


# --- explicit signatures, compiled on first use ------------------------------------------


def _signatures(dtype: type) -> dict[str, tuple]:
    """Each kernel's argument types for one float dtype: C-contiguous arrays only."""
    f = types.float32 if dtype is np.float32 else types.float64
    v, m, a3 = f[::1], f[:, ::1], f[:, :, ::1]
    i, lens = types.int64, types.int64[::1]
    d = types.float64[:, ::1]  # bias-gradient sums: float64 for both dtypes
    serial = {
        "rnn_forward": (a3, m, v, m, lens, i, f, m),
        "rnn_backward": (a3, m, a3, lens, i, f, m, a3, d, m),
        "lstm_forward": (a3, m, v, m, m, lens, a3, a3, m, m),
        "lstm_backward": (a3, a3, m, m, a3, lens, m, m, a3, d, m),
        "gru_forward": (a3, m, v, v, m, lens, a3, a3, m),
        "gru_backward": (a3, a3, a3, m, m, a3, lens, m, a3, a3, d, d, m),
        "matmul": (m, m, m),
        "matmul_tn": (m, m, m),
    }
    sigs = {name: (i, i, *args) for name, args in serial.items()}
    sigs.update({f"{name}_parallel": (*args, i) for name, args in serial.items()})
    # the head: h, weight, bias, targets, row_weights, scale, dh, then the float64 sums of
    # dweight, dbias and the loss: of the kernel's rows, or one per chunk of rows
    head = (m, m, v, lens, v, f, m)
    sums = types.float64[::1]
    sigs["linear_cross_entropy"] = (i, i, *head, d, sums, sums)
    sigs["linear_cross_entropy_parallel"] = (*head, types.float64[:, :, ::1], d, sums, i)
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
    if key not in _ready and hasattr(kernel, "compile"):  # not under NUMBA_DISABLE_JIT=1
        with _compile_lock:
            if key not in _ready:
                kernel.compile(SIGNATURES[key])
                _ready.add(key)
    return kernel
