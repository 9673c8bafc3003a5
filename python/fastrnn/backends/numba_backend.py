"""The Numba backend: the contract of :class:`fastrnn.backends._contract.Backend`, jitted
(its reference is :mod:`fastrnn.backends.numpy_backend`).

The batch is split into contiguous chunks of sequences, each with its own time loop
(:mod:`fastrnn.backends._numba_kernels`); a chunk works through its steps by blocks of
about 256 rows (steps times sequences). The forward projects a block's inputs, W_ih x_t,
in one BLAS call right before its steps; the backward, once its loop has passed a block,
adds the block's share of dW_ih, dW_hh and the bias gradients and writes its dx while the
block's gate gradients are in cache. Token ids as ``x`` (the contract's one-hot rows): the
projection gathers rows of W_ih^T and dW_ih gets a scatter-add of the block's gate
gradients, so none of the three products with the input runs (there is no dx; with
``input_grad=False`` there is none for a float ``x`` either). Per step: one packed product
for all gates (one BLAS ``?gemm`` call), then the gate math fused after it (the biases
added there), no allocation inside the loop. Nothing of size T is made beyond the outputs
and, for training, the saved activations; every kernel is ``nogil``, so other Python
threads keep running.

All BLAS calls go to the OpenBLAS NumPy ships (64-bit integers), or SciPy's (with
``FASTRNN_BLAS=scipy``, or where NumPy's is not found), bound by ``_numba_kernels`` at
import (:func:`fastrnn.backends._blas.kernel_gemm`). They are kept single-threaded: the
backend's threads are its chunks and nothing else, so BLAS threads never compete with them.

Threads: the chunks are ``min(num_threads, B)``, a function of the call's arguments only.
The calling thread runs the first and a pool of Python threads the others (the kernels
release the GIL), each chunk the same compiled serial kernel: a result has the same bits
whichever thread ran a chunk and however many calls compete for the threads. Each chunk's
weight-gradient sums are added in chunk order after the kernels. (Numba's ``prange``
wrappers did this before; LLVM compiled the kernel inlined there differently from the
serial one, so a call that fell back to the serial kernel under contention got other bits,
and a process forked after its parent ran GNU OpenMP threads could not use them at all.)

``forward(..., training=False)`` saves nothing for backward (``saved`` is ``None``; the
gate activations are written to one step of scratch) and gives the same outputs.

Importing this module compiles nothing (it fails with numba's ``ImportError`` when numba
is missing, which the registry reports): each kernel is compiled for its explicit
signature on first use, or ahead of time by :func:`warmup`, and cached on disk.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numba  # noqa: F401  (fails with numba's ImportError when numba is missing)
import numpy as np
import threadpoolctl
from numpy.typing import NDArray

from . import _numba_kernels as _k
from . import numpy_backend as _ref
from ._block_pool import POOL
from ._contract import (
    BackwardOutput,
    Checkpoints,
    FloatArray,
    ForwardOutput,
    FusedHead,
    HeadOutput,
    IndexArray,
    InputArray,
    Params,
    Saved,
)
from .numpy_backend import given

_A = TypeVar("_A", bound=NDArray[Any])

UNAVAILABLE_REASON: str | None = (
    None
    if importlib.util.find_spec("scipy") is not None
    else "SciPy is missing: the numba kernels' products call the BLAS SciPy ships "
    "(`pip install scipy`)"
)

_pool: ThreadPoolExecutor | None = None  # the threads that run chunks 1, 2, ... of a call
_pool_lock = threading.Lock()


def _workers() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="fastrnn-numba")
        return _pool


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's pool threads: it makes its own."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None  # threadpoolctl's limiter (threadpoolctl has no types)
_blas_controller: threadpoolctl.ThreadpoolController | None = None


def blas_name() -> str:
    """The BLAS library the kernels call (``FASTRNN_BLAS=scipy``: SciPy's OpenBLAS)."""
    return str(_k.BLAS_NAME)


def _kernel_blas() -> threadpoolctl.ThreadpoolController:
    """The BLAS library the kernels call (``_numba_kernels.BLAS_PATH``: NumPy's OpenBLAS, or
    SciPy's), as a threadpoolctl handle; with no path, the BLAS SciPy loaded."""
    global _blas_controller
    if _blas_controller is None:
        if _k.BLAS_PATH is None:
            import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS, the one called)
        blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
        paths = [lib.filepath for lib in blas.lib_controllers]
        if _k.BLAS_PATH is not None:
            own = [p for p in paths if p == _k.BLAS_PATH]
        else:  # SciPy's wheel keeps its OpenBLAS in scipy.libs
            own = [p for p in paths if "scipy" in os.path.basename(os.path.dirname(p))]
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


def _out(shape: tuple[int, ...], dtype: np.dtype[Any]) -> FloatArray:
    """A large output (``hs``, the saved activations, ``dx``): from the pool of blocks kept
    between calls (:mod:`._block_pool`), so that the next step's outputs take no page
    faults; like ``np.empty`` in every other way."""
    return POOL.empty(shape, dtype)


def _writable(a: _A) -> _A:
    """``a``, or a copy if it is read-only (the kernels' signatures take mutable arrays)."""
    return a if a.flags.writeable else a.copy()


def _lengths(lengths: IndexArray | None, T: int, B: int) -> IndexArray:
    return np.full(B, T, dtype=np.int64) if lengths is None else _writable(lengths)


def _mask(mask: FloatArray | None, dtype: np.dtype[Any]) -> FloatArray:
    """The kernels' ``rec_mask``: the (B, H) mask, or an empty (0, 0) array for none."""
    return np.empty((0, 0), dtype=dtype) if mask is None else _writable(mask)


def _inputs(x: InputArray, D: int, dtype: np.dtype[Any]) -> tuple[FloatArray, IndexArray]:
    """The kernels' ``x`` and ``ids``: a float ``x`` and an empty (0, 0) ``ids``, or for
    token ids an empty (0, 0, 0) ``x`` and the ids (int64). The kernels index W_ih^T with
    the ids unchecked, so an id outside 0..D-1 is an error here, not a stray write."""
    if x.dtype.kind not in "iu":
        return _writable(np.asarray(x, dtype=dtype)), np.empty((0, 0), dtype=np.int64)
    ids = _writable(np.ascontiguousarray(x, dtype=np.int64))
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= D):
        raise ValueError(
            f"x: token ids must be in 0..{D - 1} (D = W_ih.shape[1] = {D}), got values in "
            f"{int(ids.min())}..{int(ids.max())}"
        )
    return np.empty((0, 0, 0), dtype=dtype), ids


def _chunks(num_threads: int, n: int) -> int:
    """How many contiguous chunks ``n`` units (sequences) are split into: a function of the
    call's arguments only, so that a result never depends on which path ran them."""
    return max(1, min(int(num_threads), n))


def _run(
    name: str,
    dtype: np.dtype[Any],
    n: int,
    chunks: int,
    args: tuple[Any, ...],
    per_chunk: Sequence[NDArray[np.float64]] = (),
) -> None:
    """Kernel ``name`` over ``n`` units (sequences, rows) split into ``chunks`` contiguous
    chunks: the calling thread runs chunk 0 and the pool's threads the others (the kernels
    release the GIL). ``per_chunk``: arrays with one slot per chunk (``a[c]`` for chunk
    ``c``), for the sums a chunk makes; the caller adds them up in chunk order. Every chunk
    runs the same compiled kernel whichever thread runs it and whenever, so a result has the
    same bits with or without other calls competing for the threads."""
    kernel = _k.compiled(name, dtype.type)

    def chunk(c: int) -> None:
        kernel(c * n // chunks, (c + 1) * n // chunks, *args, *(a[c] for a in per_chunk))

    _run_chunks(chunks, chunk)


def _run_chunks(chunks: int, chunk: Any) -> None:
    """``chunk(c)`` for c in 0..chunks-1: the calling thread runs chunk 0, the pool's
    threads the others (see :func:`_run`)."""
    with _single_threaded_blas():
        others = [_workers().submit(chunk, c) for c in range(1, chunks)]
        try:
            chunk(0)
        finally:
            concurrent.futures.wait(others)
        for f in others:
            f.result()  # raises a chunk's exception


# --- forward -------------------------------------------------------------------------


@_single_threaded_blas()  # once per call: the kernels' own entries are then just a count
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
    """Run the recurrence; return ``(hs, h_n, c_n, saved)`` as the reference does
    (``recurrent_mask``: variational recurrent dropout, as there).

    ``saved``: nothing for rnn; the gate activations i, f, g, o and the cell states for
    lstm ((4+1)*H values per step and sequence); r, z, n and ``W_hn h + b_hn`` for gru
    ((3+1)*H values). With ``training=False`` nothing is saved (``saved`` is ``None``; no
    array of size T is made beyond ``hs``) and the outputs are the same bits. With
    ``checkpoint=k`` (lstm, gru; training) the forward runs as for inference and ``saved``
    is a :class:`Checkpoints` (lstm: the cell state before every k-th step).

    Token ids ``x`` (T, B): each block's projection gathers rows of W_ih^T (no product);
    the same results as their one-hot rows (the same bits: the products with zero add
    nothing).
    """
    T, B = x.shape[:2]
    every = checkpoint if checkpoint is not None and training and cell != "rnn" else 0
    if every:
        training = False
    H = h0.shape[1]
    dt = h0.dtype
    chunks = _chunks(num_threads, B)
    # the products of the kernels: x_t @ W_ih^T by blocks of steps (with token ids a gather
    # of its rows), h_{t-1} @ W_hh^T per step
    W_ih_T = _ref.contiguous_T(params["W_ih"])
    common = (*_inputs(x, W_ih_T.shape[0], dt), W_ih_T, _ref.contiguous_T(params["W_hh"]))
    lens = _lengths(lengths, T, B)
    h0 = _writable(h0)
    hs = _out((T, B, H), dt)
    h_n = np.empty((B, H), dtype=dt)
    mask = _mask(recurrent_mask, dt)

    def saved(width: int) -> FloatArray:  # an array for backward, or an empty stand-in
        return _out((T, B, width) if training else (0, 0, 0), dt)

    if cell == "rnn":
        bias = params["b_ih"] + params["b_hh"]
        act, slope = _k.ACTIVATIONS[activation], dt.type(negative_slope)
        _run("rnn_forward", dt, B, chunks, (*common, bias, h0, lens, act, slope, hs, h_n, mask))
        return hs, h_n, None, None
    if cell == "lstm":
        bias = params["b_ih"] + params["b_hh"]
        c_n = np.empty((B, H), dtype=dt)
        gates, cs = saved(4 * H), saved(H)
        states = _out((-(-T // every) if every else 0, B, H), dt)
        c0 = _writable(given(c0, "c0"))
        args = (*common, bias, h0, c0, lens, hs, h_n, c_n, gates, cs, every, states, mask)
        _run("lstm_forward", dt, B, chunks, args)
        if every:
            return hs, h_n, c_n, Checkpoints(every, states)
        return hs, h_n, c_n, ((gates, cs) if training else None)
    # gru: b_hr and b_hz join b_ih; b_hn stays inside r * (W_hn h + b_hn)
    bias = params["b_ih"].copy()
    bias[: 2 * H] += params["b_hh"][: 2 * H]
    b_hn = _writable(np.ascontiguousarray(params["b_hh"][2 * H :]))
    gates, hn = saved(3 * H), saved(H)
    _run("gru_forward", dt, B, chunks, (*common, bias, b_hn, h0, lens, hs, h_n, gates, hn, mask))
    if every:
        return hs, h_n, None, Checkpoints(every, None)
    return hs, h_n, None, ((gates, hn) if training else None)


# --- backward (BPTT) -----------------------------------------------------------------


@_single_threaded_blas()
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

    ``norms`` is ``None`` unless ``step_norms``; then it is the (T, B) array of
    ``||dL/dh_t||``, 0 at padded steps.

    ``head``: each chunk's kernel runs it block by block of its steps (the blocks of its
    weight gradients) as its time loop enters them (``_numba_kernels._head_block``); the
    chunks' float64 sums are added in chunk order.

    ``dx`` is ``None`` with ``input_grad=False`` or token ids ``x`` (then not computed: no
    product with W_ih). Token ids ``x`` (T, B): dW_ih adds each row's gate gradients to
    the column of its id, summed block by block as the one-hot product sums them (the same
    bits where BLAS adds a block's rows in order).
    """
    T, B = x.shape[:2]
    GH, H = params["W_hh"].shape
    D = params["W_ih"].shape[1]
    dt = h0.dtype
    chunks = _chunks(num_threads, B)
    lens = _lengths(lengths, T, B)
    # the kernels' products: dA_t @ W_hh per step; dA^T X, dA^T H_prev and dA @ W_ih by blocks
    xs, ids = _inputs(x, D, dt)
    weights = (_writable(a) for a in (hs, h0, params["W_ih"], params["W_hh"]))
    common = (xs, ids, *weights)
    dh = dh_n.copy()  # the running dL/dh, dh0 on return
    want_dx = input_grad and ids.shape[0] == 0
    dx = _out((T, B, D) if want_dx else (0, 0, 0), dt)  # empty: no dx work
    norms = np.zeros((B, T), dtype=dt)  # ||dL/dh_t||, sequence-major for the kernels
    db = np.zeros((B, GH))  # per-sequence bias-gradient sums, in float64
    # per-chunk float64 sums; with token ids dW_ih is transposed, (D, G*H): a row per id
    dW_ih = np.empty((chunks, D, GH) if ids.shape[0] else (chunks, GH, D))
    dW = (dW_ih, np.empty((chunks, GH, H)))
    dhs = np.empty((0, 0, 0), dtype=dt) if dhs is None else _writable(dhs)
    mask = _mask(recurrent_mask, dt)
    heads = _Heads(head, hs, chunks)
    dc = None
    if cell == "rnn":
        act = _k.ACTIVATIONS[activation]
        args = (*common, dhs, lens, act, dt.type(negative_slope), dh, dx, db, norms, mask)
        kernel = _k.compiled("rnn_backward", dt.type)

        def chunk(c: int) -> None:
            b0, b1 = c * B // chunks, (c + 1) * B // chunks
            kernel(b0, b1, *args, dW[0][c], dW[1][c], *heads.args(c, b0, b1))

        _run_chunks(chunks, chunk)
        db_ih = db_hh = db.sum(axis=0)
    else:
        db_rec = np.zeros((B, GH)) if cell == "gru" else db  # gru: the recurrent side's
        if cell == "lstm":
            dc = given(dc_n, "dc_n").copy()
        _spans_backward(
            cell,
            params,
            common,
            c0,
            saved,
            dhs,
            lens,
            dh,
            dc,
            dx,
            db,
            db_rec,
            norms,
            dW,
            chunks,
            mask,
            heads,
        )
        db_ih, db_hh = db.sum(axis=0), db_rec.sum(axis=0)
    dW_ih_sum = dW_ih.sum(axis=0)
    dparams = {
        "W_ih": np.ascontiguousarray(dW_ih_sum.T if ids.shape[0] else dW_ih_sum, dtype=dt),
        "W_hh": dW[1].sum(axis=0).astype(dt),
        "b_ih": db_ih.astype(dt),
        "b_hh": db_hh.astype(dt),
    }
    norms_out = np.ascontiguousarray(norms.T) if step_norms else None
    return (dx if want_dx else None), dh, dc, dparams, norms_out, heads.sums()


class _Heads:
    """The fused head's per-chunk arguments of the backward kernels (``_numba_kernels.Head``
    and the scale): the head's arrays, a block of scratch and float64 sums per chunk; empty
    stand-ins without a head."""

    def __init__(self, head: FusedHead | None, hs: FloatArray, chunks: int) -> None:
        self.head, self.hs, self.chunks = head, hs, chunks
        dt = hs.dtype
        if head is None:
            self.scale = dt.type(1)
            return
        K, H = head.weight.shape
        self.scale = dt.type(head.scale)
        self.dweight = np.zeros((chunks, K, H))
        self.dbias = np.zeros((chunks, K))
        self.loss = np.zeros((chunks, 1))

    def args(self, c: int, b0: int, b1: int) -> tuple[Any, ...]:
        head, dt = self.head, self.hs.dtype
        if head is None:
            empty2, empty1 = np.empty((0, 0), dt), np.empty(0, dt)
            idx = np.empty(0, np.int64)
            f64 = (np.empty((0, 0)), np.empty(0), np.zeros(1))
            return (empty2, empty1, idx, empty1, empty2, empty2, idx, empty1, *f64), self.scale
        H = self.hs.shape[2]
        rows = _k.block_steps(b1 - b0) * (b1 - b0)  # a block of the chunk's steps
        rw = np.empty(0, dt) if head.row_weights is None else _writable(head.row_weights)
        wb = np.empty(rows if head.row_weights is not None else 0, dt)
        arrays = (
            _writable(head.weight),
            _writable(head.bias),
            _writable(head.targets),
            rw,
            np.empty((rows, H), dt),  # dh of the block
            np.empty((rows, H), dt),  # the block's states, gathered
            np.empty(rows, np.int64),  # and targets
            wb,  # and row weights
            self.dweight[c],
            self.dbias[c],
            self.loss[c],
        )
        return arrays, self.scale

    def sums(self) -> tuple[float, FloatArray, FloatArray] | None:
        if self.head is None:
            return None
        dt = self.hs.dtype
        return (
            float(self.loss.sum()),
            self.dweight.sum(axis=0).astype(dt),
            self.dbias.sum(axis=0).astype(dt),
        )


def _spans_backward(
    cell: str,
    params: Params,
    common: tuple[Any, ...],
    c0: FloatArray | None,
    saved: Saved,
    dhs: FloatArray,
    lens: IndexArray,
    dh: FloatArray,
    dc: FloatArray | None,
    dx: FloatArray,
    db: NDArray[np.float64],
    db_rec: NDArray[np.float64],
    norms: FloatArray,
    dW: tuple[NDArray[np.float64], NDArray[np.float64]],
    chunks: int,
    mask: FloatArray,
    heads: _Heads,
) -> None:
    """The lstm or gru backward kernel of each chunk over spans of steps: full BPTT one span
    with the saved arrays; checkpointed, one segment of ``saved.every`` steps at a time,
    newest first, its activations recomputed by the forward kernel itself (the compiled
    code of the forward, so the same bits) into buffers that every segment reuses. A
    chunk's block scratch lives across its spans, so its blocks of steps, and the sums of
    its weight gradients, are those of full BPTT. ``mask``: the kernels' ``rec_mask`` (the
    recompute applies it as the forward did). ``common``: the kernel's ``x, ids, hs, h0,
    W_ih, W_hh``."""
    x, ids, hs, h0, W_ih = common[:5]  # writable
    T, B, H = hs.shape
    dt = hs.dtype
    G = 4 if cell == "lstm" else 3
    kernel = _k.compiled(f"{cell}_backward", dt.type)
    buffers = _k.compiled("_backward_buffers", dt.type)
    span_lengths = _k.compiled("_span", dt.type)

    # the kernel's arguments after dhs and lengths
    tail: tuple[Any, ...] = (dh, dc, dx, db) if cell == "lstm" else (dh, dx, db, db_rec)
    tail = (*tail, norms)

    if not isinstance(saved, Checkpoints):
        gates, extra = (_writable(a) for a in given(saved, "saved"))
        first = (_writable(given(c0, "c0")),) if cell == "lstm" else ()

        def chunk(c: int) -> None:
            b0, b1 = c * B // chunks, (c + 1) * B // chunks
            grads = buffers(x, ids, hs, W_ih, dx, b0, b1, cell == "gru")
            kernel(
                b0,
                b1,
                *common,
                gates,
                extra,
                *first,
                dhs,
                lens,
                *tail,
                0,
                T,
                grads,
                mask,
                dW[0][c],
                dW[1][c],
                *heads.args(c, b0, b1),
            )

        return _run_chunks(chunks, chunk)
    every = saved.every
    W_ih_T = _ref.contiguous_T(params["W_ih"])
    W_hh_T = _ref.contiguous_T(params["W_hh"])
    if cell == "lstm":
        bias = params["b_ih"] + params["b_hh"]
        forward_args: tuple[Any, ...] = (bias,)
    else:
        bias = params["b_ih"].copy()
        bias[: 2 * H] += params["b_hh"][: 2 * H]
        forward_args = (bias, _writable(np.ascontiguousarray(params["b_hh"][2 * H :])))
    n = min(every, T)  # the segment buffers, shared by the chunks (each its own columns)
    seg_gates = np.empty((n, B, G * H), dtype=dt)
    seg_extra = np.empty((n, B, H), dtype=dt)
    seg_hs = np.empty((n, B, H), dtype=dt)
    seg_lens = np.empty(B, dtype=np.int64)
    h_n = np.empty((B, H), dtype=dt)
    c_n = np.empty((B, H), dtype=dt)
    forward = _k.compiled(f"{cell}_forward", dt.type)
    no_states = np.empty((0, 0, 0), dtype=dt)

    def segmented(c: int) -> None:
        b0, b1 = c * B // chunks, (c + 1) * B // chunks
        grads = buffers(x, ids, hs, W_ih, dx, b0, b1, cell == "gru")
        head_args = heads.args(c, b0, b1)  # its block of dh lives across the segments
        for j in range(-(-T // every) - 1, -1, -1):
            s0, s1 = j * every, min((j + 1) * every, T)
            span_lengths(lens, b0, b1, s0, s1, seg_lens)
            h_start = hs[s0 - 1] if s0 > 0 else h0
            g, e = seg_gates[: s1 - s0], seg_extra[: s1 - s0]
            first: tuple[Any, ...] = ()
            outs: tuple[Any, ...] = (h_n,)
            keep: tuple[Any, ...] = ()  # lstm: no checkpoints of the recompute's own
            if cell == "lstm":
                first = (given(saved.states, "saved.states")[j],)
                outs, keep = (h_n, c_n), (0, no_states)
            n = s1 - s0
            fwd = (*forward_args, h_start, *first, seg_lens, seg_hs[:n], *outs, g, e, *keep, mask)
            forward(b0, b1, x[s0:s1], ids[s0:s1], W_ih_T, W_hh_T, *fwd)
            bwd = (*first, dhs, lens, *tail, s0, s1, grads, mask, dW[0][c], dW[1][c], *head_args)
            kernel(b0, b1, *common, g, e, *bwd)

    _run_chunks(chunks, segmented)


# --- the fused softmax head -------------------------------------------------------------

# Rows per thread below which the head does not split: a chunk must be worth the start of
# a parallel region and the reduction of its own (K, H) partial sums.
_HEAD_ROWS_PER_THREAD = 1024


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
    dweight = np.zeros((chunks, K, H))  # float64 sums, one per chunk
    dbias = np.zeros((chunks, K))
    loss = np.zeros((chunks, 1))
    args: tuple[Any, ...] = (
        _writable(h),
        _writable(weight),
        _writable(bias),
        _writable(targets),
        rw,
    )
    args = (*args, dt.type(scale), dh)
    _run("linear_cross_entropy", dt, N, chunks, args, (dweight, dbias, loss))
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
