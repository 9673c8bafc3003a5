"""The Numba backend: the contract of :mod:`fastrnn.backends.numpy_backend`, jitted.

The split of work follows the performance principles of the design notes. The big
products run once per call, each one BLAS call per chunk of rows: the input projection
of all T steps before the time loop, and ``dx``, ``dW_ih`` and ``dW_hh`` after it. The
time loops (:mod:`fastrnn.backends._numba_kernels`) do one packed product per step for
all gates, with the gate math fused right after it (the biases added there, and their
gradients summed there), no allocation inside the loop; every kernel is ``nogil``, so
other Python threads keep running.

The per-step product is a BLAS call from inside the jitted loop (``np.dot`` with ``out``),
which Numba routes to the BLAS that SciPy ships; that is why SciPy is a dependency. It beat
hand-written loops at every measured shape (H=64, float32, one thread: 0.20 against 0.46
us for a 64x64 matrix-vector product, 4.7 against 11 us for B=16 and 4 gates). All BLAS
calls of this backend go there and are kept single-threaded: the backend's threads are
its chunks (of sequences, or of rows of the big products) and nothing else, so NumPy's
BLAS threads never compete with them.

Threads: with ``num_threads > 1`` and ``B > 1`` the batch is split into contiguous chunks
of sequences, each with its own time loop, over ``prange``; otherwise the serial kernel
runs and pays nothing for threading. Numba's thread count is set for the call and the
caller's value restored after it. One parallel region runs at a time; a call that finds
one running (from another Python thread) runs serially instead of waiting, and so does a
process forked after its parent ran numba's OpenMP threads (which would kill it).

Importing this module compiles nothing (it fails with numba's ``ImportError`` when numba
is missing, which the registry reports): each kernel is compiled for its explicit
signature on first use, or ahead of time by :func:`warmup`, and cached on disk.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import Iterator

import numba
import numpy as np
import threadpoolctl

from . import _numba_kernels as _k
from . import numpy_backend as _ref

UNAVAILABLE_REASON = (
    None
    if importlib.util.find_spec("scipy") is not None
    else "SciPy is missing: Numba's np.dot, the per-step product, calls the BLAS SciPy ships "
    "(`pip install scipy`)"
)

_parallel_lock = threading.Lock()
_threads_usable = True  # False in a child forked after GNU OpenMP started in the parent


def _after_fork_in_child() -> None:
    """GNU OpenMP (numba's "omp" threading layer) is not fork-safe: a child that launches a
    parallel region after its parent did is killed by numba. Such children run serially."""
    global _threads_usable
    try:
        layer = numba.threading_layer()  # ValueError: the parent never launched threads
    except ValueError:
        return
    if layer not in ("tbb", "workqueue"):
        _threads_usable = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None
_blas_controller: threadpoolctl.ThreadpoolController | None = None


def _kernel_blas() -> threadpoolctl.ThreadpoolController:
    """The BLAS library that Numba's ``np.dot`` calls (SciPy's), as a threadpoolctl handle.

    SciPy's wheels ship their own OpenBLAS (under ``scipy.libs``); if SciPy shares a BLAS
    with NumPy (conda, distributions), that shared one is the handle.
    """
    global _blas_controller
    if _blas_controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library Numba calls)

        blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
        own = [
            lib.filepath
            for lib in blas.lib_controllers
            if "scipy" in os.path.basename(os.path.dirname(lib.filepath))
        ]
        _blas_controller = blas.select(filepath=own) if own else blas
    return _blas_controller


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """The per-step BLAS calls run on the thread that makes them, for as long as any
    kernel runs; the library's previous thread count is restored after the last one."""
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _kernel_blas().limit(limits=1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def _writable(a: np.ndarray) -> np.ndarray:
    """``a``, or a copy if it is read-only (the kernels' signatures take mutable arrays)."""
    return a if a.flags.writeable else a.copy()


def _lengths(lengths: np.ndarray | None, T: int, B: int) -> np.ndarray:
    return np.full(B, T, dtype=np.int64) if lengths is None else _writable(lengths)


def _run_parallel(name: str, dtype: np.dtype, chunks: int, *args) -> bool:
    """Kernel ``{name}_parallel`` over ``chunks`` chunks, on up to as many threads; ``False``
    (and nothing run) if there is one chunk, threads are unusable, or another parallel
    region is running."""
    if chunks <= 1 or not _threads_usable or not _parallel_lock.acquire(blocking=False):
        return False
    try:
        kernel = _k.compiled(f"{name}_parallel", dtype.type)
        previous = numba.get_num_threads()
        numba.set_num_threads(min(chunks, numba.config.NUMBA_NUM_THREADS))
        try:
            kernel(*args, chunks)
        finally:
            numba.set_num_threads(previous)
    finally:
        _parallel_lock.release()
    return True


def _run(name: str, dtype: np.dtype, n: int, num_threads: int, *args) -> None:
    """Kernel ``name`` over ``n`` independent units (sequences, or rows of a product):
    serially, or split into contiguous chunks over up to ``num_threads`` threads."""
    chunks = min(int(num_threads), n, numba.config.NUMBA_NUM_THREADS) if _threads_usable else 1
    with _single_threaded_blas():
        if not _run_parallel(name, dtype, chunks, *args):
            _k.compiled(name, dtype.type)(0, n, *args)


def _matmul(a: np.ndarray, b: np.ndarray, num_threads: int) -> np.ndarray:
    """a @ b for C-contiguous 2-d arrays, by blocks of rows of ``a``."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    _run("matmul", a.dtype, a.shape[0], num_threads, _writable(a), _writable(b), out)
    return out


def _matmul_tn(a: np.ndarray, b: np.ndarray, num_threads: int) -> np.ndarray:
    """a^T @ b for C-contiguous 2-d arrays with the same number of rows (a sum over rows)."""
    out = np.empty((a.shape[1], b.shape[1]), dtype=a.dtype)
    _run("matmul_tn", a.dtype, a.shape[0], num_threads, _writable(a), _writable(b), out)
    return out


# --- forward -------------------------------------------------------------------------


def _projection(x: np.ndarray, W_ih: np.ndarray, num_threads: int) -> np.ndarray:
    """W_ih x_t for all T steps in one product, (T, B, D) -> (T, B, G*H); the kernels add
    the biases in their gate loop, which saves a pass over the whole array."""
    T, B, D = x.shape
    return _matmul(x.reshape(T * B, D), _ref._contiguous_T(W_ih), num_threads).reshape(T, B, -1)


@_single_threaded_blas()  # once per call: the kernels' own entries are then just a count
def forward(
    cell, params, x, h0, c0, *, activation, negative_slope, lengths, num_threads, training=True
):
    """Run the recurrence; return ``(hs, h_n, c_n, saved)`` as the reference does
    (``saved`` is None when not ``training``).

    ``saved``: nothing for rnn; the gate activations i, f, g, o and the cell states for
    lstm ((4+1)*H values per step and sequence); r, z, n and ``W_hn h + b_hn`` for gru
    ((3+1)*H values).
    """
    T, B, _ = x.shape
    H = h0.shape[1]
    dt = x.dtype
    lens = _lengths(lengths, T, B)
    W_hh_T = _ref._contiguous_T(params["W_hh"])  # the per-step product is h_{t-1} @ W_hh^T
    h0 = _writable(h0)
    h_n = np.empty((B, H), dtype=dt)
    proj = _projection(x, params["W_ih"], num_threads)
    if cell == "rnn":  # proj becomes hs: a_t = U x_t + b + W h_{t-1}, then h_t = act(a_t)
        bias = params["b_ih"] + params["b_hh"]
        act, slope = _k.ACTIVATIONS[activation], dt.type(negative_slope)
        _run("rnn_forward", dt, B, num_threads, proj, W_hh_T, bias, h0, lens, act, slope, h_n)
        return proj, h_n, None, None
    hs = np.empty((T, B, H), dtype=dt)
    if cell == "lstm":  # proj becomes the gate activations
        bias = params["b_ih"] + params["b_hh"]
        cs = np.empty((T, B, H), dtype=dt)
        c_n = np.empty((B, H), dtype=dt)
        args = (proj, W_hh_T, bias, h0, _writable(c0), lens, hs, cs, h_n, c_n)
        _run("lstm_forward", dt, B, num_threads, *args)
        return hs, h_n, c_n, (proj, cs) if training else None
    # gru: b_hr and b_hz join b_ih; b_hn stays inside r * (W_hn h + b_hn)
    bias = params["b_ih"].copy()
    bias[: 2 * H] += params["b_hh"][: 2 * H]
    b_hn = _writable(np.ascontiguousarray(params["b_hh"][2 * H :]))
    hn = np.empty((T, B, H), dtype=dt)
    args = (proj, W_hh_T, bias, b_hn, h0, lens, hs, hn, h_n)
    _run("gru_forward", dt, B, num_threads, *args)
    return hs, h_n, None, (proj, hn) if training else None


# --- backward (BPTT) -----------------------------------------------------------------


@_single_threaded_blas()
def backward(
    cell,
    params,
    x,
    h0,
    c0,
    hs,
    saved,
    dhs,
    dh_n,
    dc_n,
    *,
    activation,
    negative_slope,
    lengths,
    num_threads,
    step_norms,
):
    """Backpropagation through time; return ``(dx, dh0, dc0, dparams, norms)``.

    ``norms`` is ``None`` unless ``step_norms``; then it is the (T, B) array of
    ``||dL/dh_t||``, 0 at padded steps.
    """
    T, B, D = x.shape
    GH = params["W_hh"].shape[0]
    dt = x.dtype
    lens = _lengths(lengths, T, B)
    W_hh = _writable(params["W_hh"])  # the per-step product is dA_t @ W_hh
    dhs, hs = _writable(dhs), _writable(hs)
    saved = saved and tuple(_writable(a) for a in saved)
    dh = dh_n.copy()  # the running dL/dh, dh0 on return
    norms = np.zeros((B, T), dtype=dt)  # ||dL/dh_t||, sequence-major for the kernels
    db = np.zeros((B, GH))  # per-sequence bias-gradient sums, in float64
    dc = None
    if cell == "rnn":
        dA_in = dA_rec = np.empty_like(hs)
        act = _k.ACTIVATIONS[activation]
        args = (hs, W_hh, dhs, lens, act, dt.type(negative_slope), dh, dA_in, db, norms)
        _run("rnn_backward", dt, B, num_threads, *args)
        db_ih = db_hh = db.sum(axis=0)
    elif cell == "lstm":
        gates, cs = saved
        dA_in = dA_rec = np.empty_like(gates)
        dc = dc_n.copy()
        args = (gates, cs, _writable(c0), W_hh, dhs, lens, dh, dc, dA_in, db, norms)
        _run("lstm_backward", dt, B, num_threads, *args)
        db_ih = db_hh = db.sum(axis=0)
    else:
        gates, hn = saved
        dA_in = np.empty_like(gates)
        dA_rec = np.empty_like(gates)
        db_hn = np.zeros((B, GH // 3))
        args = (gates, hn, hs, _writable(h0), W_hh, dhs, lens, dh, dA_in, dA_rec, db, db_hn)
        _run("gru_backward", dt, B, num_threads, *args, norms)
        db_ih = db.sum(axis=0)
        db_hh = np.concatenate([db_ih[: 2 * GH // 3], db_hn.sum(axis=0)])
    # the weight gradients and dx: one product each over all steps
    flat = dA_in.reshape(T * B, GH)
    rec = dA_rec.reshape(T * B, GH)
    H = hs.shape[2]
    dW_hh = _matmul_tn(rec[:B], h0, num_threads)  # sum_t dA_t^T h_{t-1}
    if T > 1:
        dW_hh += _matmul_tn(rec[B:], hs.reshape(T * B, H)[:-B], num_threads)
    dparams = {
        "W_ih": _matmul_tn(flat, x.reshape(T * B, D), num_threads),
        "W_hh": dW_hh,
        "b_ih": db_ih.astype(dt),
        "b_hh": db_hh.astype(dt),
    }
    dx = _matmul(flat, params["W_ih"], num_threads).reshape(T, B, D)
    return dx, dh, dc, dparams, np.ascontiguousarray(norms.T) if step_norms else None


# --- the fused softmax head -------------------------------------------------------------

# Rows per thread below which the head does not split: a chunk must be worth the start of
# a parallel region and the reduction of its own (K, H) partial sums.
_HEAD_ROWS_PER_THREAD = 1024


def linear_cross_entropy(h, weight, bias, targets, row_weights, *, scale, num_threads):
    """The contract of :func:`fastrnn.backends.numpy_backend.linear_cross_entropy`, block
    by block of rows (the logits never exist for all rows at once).

    The rows are split into ``min(num_threads, N // 1024)`` contiguous chunks (at least
    one); each sums its share of the loss, ``dweight`` and ``dbias`` in float64, and the
    chunks' sums are added in order after the kernel. The chunks depend on ``N`` and
    ``num_threads`` only, and run one after the other when they cannot run in parallel, so
    a call gives the same bits every time.
    """
    N, H = h.shape
    K = weight.shape[0]
    dt = h.dtype
    chunks = max(1, min(int(num_threads), N // _HEAD_ROWS_PER_THREAD))
    rw = np.empty(0, dtype=dt) if row_weights is None else _writable(row_weights)
    dh = np.empty((N, H), dtype=dt)
    dweight = np.empty((chunks, K, H))  # float64 sums, one per chunk
    dbias = np.empty((chunks, K))
    loss = np.empty(chunks)
    args = (_writable(h), _writable(weight), _writable(bias), _writable(targets), rw)
    args = (*args, dt.type(scale), dh)
    with _single_threaded_blas():
        if not _run_parallel("linear_cross_entropy", dt, chunks, *args, dweight, dbias, loss):
            kernel = _k.compiled("linear_cross_entropy", dt.type)
            for c in range(chunks):  # the same chunks, serially
                r0, r1 = c * N // chunks, (c + 1) * N // chunks
                kernel(r0, r1, *args, dweight[c], dbias[c], loss[c : c + 1])
    return float(loss.sum()), dh, dweight.sum(axis=0).astype(dt), dbias.sum(axis=0).astype(dt)


# --- ahead-of-time compilation ---------------------------------------------------------


def warmup() -> float:
    """Compile (or load from the on-disk cache) every kernel for float32 and float64,
    serial and parallel; return the seconds it took."""
    start = time.perf_counter()
    _kernel_blas()
    for name, dtype in _k.SIGNATURES:
        _k.compiled(name, dtype)
    return time.perf_counter() - start
