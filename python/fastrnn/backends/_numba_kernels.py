"""Private Numba kernels of the ``numba`` backend: the time loops and their products.

The public adapter (:mod:`fastrnn.backends.numba_backend`) validates nothing (the
functional core did), allocates, and calls these kernels. Every time-loop kernel works
on a contiguous range ``b0:b1`` of the sequences of a batch, with its own time loop (and
the fused head on a range of rows): ``kernel(b0, b1, ...)``; the adapter runs the chunks
of a batch on its threads, each chunk with this same compiled code. Only the real steps
of each sequence are computed (they are a prefix, so ``hs[t-1, b]`` is the previous
state); padded steps get zero outputs and zero gradients, and the state and its gradient
pass through them unchanged.

Nothing is allocated inside a time loop: a chunk's scratch (a block of projected inputs,
the per-step product, a block of gate gradients) is sized before the loop; the gate math
runs right after the per-step product, and the backward pass keeps its running ``dh``/``dc``
in the ``dh0``/``dc0`` output rows.

Importing this module compiles nothing; a kernel is compiled (or loaded from the on-disk
cache) for one of the explicit C-contiguous signatures of :data:`SIGNATURES` by
:func:`compiled`, on first use or from :func:`fastrnn.warmup`.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._blas import kernel_gemm
from ._contract import FloatArray, IndexArray

# mypy skips numba's stubs (see pyproject.toml), so numba's names, and the kernels the
# decorators make of the functions below, are Any to it; the annotations of the ``def``s
# document the arrays each kernel takes and let mypy check the bodies. Numba ignores them:
# a kernel's types are those of its signature in :data:`SIGNATURES`. Except for the
# ``@overload`` functions and their implementations: numba requires the two to have the same
# signature, annotations included (``inspect.signature``), and the one sees numba types
# where the other sees values; they carry their types in type comments, which leave the
# runtime signatures bare.
NumbaType: TypeAlias = Any
"""A numba type (``numba.types.Type``): what an ``@overload`` or ``@intrinsic`` sees."""
Chunk: TypeAlias = tuple[FloatArray, IndexArray, FloatArray, FloatArray, FloatArray, FloatArray]
"""``(x, ids, hs, h0, W_ih, rec_mask)``: the inputs of :func:`_block_done`."""
Grads: TypeAlias = tuple[
    FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray
]
"""``(dA_in, dA_rec, xb, hb, dxb, p_ih, p_hh)``: a backward chunk's scratch (see
:func:`_backward_buffers`)."""
GradSums: TypeAlias = tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]
"""``(dx, dW_ih, dW_hh, db, db_rec)``: what :func:`_block_done` writes and adds to (``dx``
empty: none; ``dW_ih`` (D, G*H), transposed, with token ids)."""
Head: TypeAlias = tuple[Any, ...]
"""``(weight, bias, targets, row_weights, dh_blk, hb, yb, wb, dweight, dbias, loss)``: the
fused head of a backward chunk (see :func:`_head_block`); ``weight`` (0, 0) for none."""

# Contraction to FMA and reassociation (to vectorize the dot products); NaN and inf keep
# their IEEE meaning so that a diverging network shows up as it does in the reference.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
# error_model="numpy": IEEE division (no ZeroDivisionError check, which stops LLVM from
# vectorizing any loop that divides, such as the float32 tanh below).
_JIT = {"cache": True, "nogil": True, "fastmath": FASTMATH, "error_model": "numpy"}
# The small helpers the time loops call at every step are inlined into the kernel (Numba's
# own inlining, before its reference-count pruning): an array passed in a call costs an
# atomic increment and decrement of its reference count, and at B = 1 those were 40% of an
# rnn backward's time (S1, with the fused head's 11 arrays passed at every step).
_JIT_INLINE = {**_JIT, "inline": "always"}

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


def tanh(v: float) -> float:
    """tanh of a scalar (the Python twin of the jitted overload below)."""
    return math.tanh(v)


def sigmoid(v: float) -> float:
    """sigmoid(v) = (1 + tanh(v / 2)) / 2: no overflow for any v."""
    return 0.5 * math.tanh(0.5 * v) + 0.5


def _tanh_f32(v):  # type: (np.float32) -> np.float32
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


def _is_f32(v: NumbaType) -> bool:
    return isinstance(v, types.Float) and v.bitwidth == 32


@overload(tanh, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_tanh(v):  # type: (NumbaType) -> Callable[..., Any] | None
    if _is_f32(v):
        return _tanh_f32
    if isinstance(v, types.Float):
        return lambda v: math.tanh(v)
    return None


@overload(sigmoid, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_sigmoid(v):  # type: (NumbaType) -> Callable[..., Any] | None
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


def exp(v: float) -> float:
    """exp of a scalar (the Python twin of the jitted overload below)."""
    return math.exp(v)


@intrinsic
def _f32_from_bits(typingctx: Any, bits: NumbaType) -> tuple[NumbaType, Callable[..., Any]] | None:
    """The float32 whose IEEE bits are the int32 ``bits``."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 32):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Sequence[Any]) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


def _exp_f32(v):  # type: (np.float32) -> np.float32
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
    y: np.float32 = p * _f32_from_bits(np.int32((np.int64(n) + 127) << 23))  # * 2^n
    y = _ZERO32 if v < _E_LO else y
    return _INF32 if v > _E_HI else y


@overload(exp, jit_options=_EXP_JIT)
def _ol_exp(v):  # type: (NumbaType) -> Callable[..., Any] | None
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
#
# Blocks of steps: a chunk's time loop works through its steps a block at a time, a block
# being BLOCK_ROWS rows (steps times sequences of the chunk). The forward projects a block's
# inputs, W_ih x_t, in one BLAS call right before its steps; the backward, once its loop has
# passed a block, adds the block's share of dW_ih and dW_hh and writes its dx, three BLAS
# calls, while the block's gate gradients are still in cache. Nothing of size T is made
# beyond the outputs and the saved activations, and every step's input and gradient is
# read or written once by its own thread. (The previous design projected all steps before
# the loop and ran the weight gradients over all steps after it: 1.5 to 2.7x slower in the
# backward at S2.)
#
# Token ids: every time-loop kernel takes the float input ``x`` (T, B, D) and ``ids`` (T, B)
# int64, one of them empty ((0, 0, 0) and (0, 0)). Ids stand for their one-hot rows of width
# D: the block's projection gathers rows of W_ih^T (no product), the block's dW_ih adds each
# row's gate gradients to the row of its id (:func:`_scatter_rows`), and there is no dx. The
# one-hot product adds the same numbers (its products with zero add nothing), so both give
# the same results: the same bits where BLAS sums a block's rows in order (OpenBLAS did in
# the tests for D >= 2, not for D = 1: a one-column product sums in another order). An
# empty ``dx`` (input_grad=False) skips dx and its product for a float ``x`` too.

BLOCK_ROWS = 256


@njit(**_JIT)
def _block_steps(nb: int) -> int:
    """Steps per block for a chunk of ``nb`` sequences."""
    return max(1, BLOCK_ROWS // nb)


block_steps = _block_steps  # for the backend: the fused head's block buffers per chunk


@njit(**_JIT)
def _steps(lengths: IndexArray, b0: int, b1: int) -> int:
    """The number of steps any sequence of b0:b1 is still running: max(lengths[b0:b1])."""
    n = 0
    for b in range(b0, b1):
        n = max(n, lengths[b])
    return n


# --- BLAS ------------------------------------------------------------------------------
#
# The kernels call the Fortran-ABI ?gemm of the OpenBLAS the cpp backend calls too
# (:func:`fastrnn.backends._blas.find_blas`: NumPy's own, ILP64, else SciPy's, LP64) by the
# names below, which :func:`_bind_blas` binds to that library's functions at import (LLVM
# resolves them when a kernel is compiled or loaded from numba's on-disk cache, so the
# cached code holds names, not this process's addresses). Whether the integer arguments are
# 64-bit is read at run time from the third name, so one compiled kernel serves both.
# NumPy's OpenBLAS 0.3.31 ran the kernels' products 1.03 to 1.46x faster than the 0.3.30
# SciPy ships (Zen 3, see _blas.py); Numba's own ``np.dot`` calls SciPy's.

_GEMM_NAMES = {"float32": "fastrnn_numba_sgemm", "float64": "fastrnn_numba_dgemm"}
_INT64_NAME = "fastrnn_numba_blas_int64"


def _declared(module: Any, name: str, kind: Any) -> Any:
    """The declaration of the external global or function ``name`` in an LLVM module."""
    try:
        return module.get_global(name)
    except KeyError:
        if isinstance(kind, ir.FunctionType):
            return ir.Function(module, kind, name)
        return ir.GlobalVariable(module, kind, name)


@intrinsic
def _fortran_gemm(
    typingctx: Any,
    ta: NumbaType,
    tb: NumbaType,
    m: NumbaType,
    n: NumbaType,
    k: NumbaType,
    a: NumbaType,
    lda: NumbaType,
    b: NumbaType,
    ldb: NumbaType,
    c: NumbaType,
    ldc: NumbaType,
) -> tuple[NumbaType, Callable[..., Any]] | None:
    """``c = op(a) op(b)`` in column-major terms (alpha 1, beta 0): one call of the bound
    ``?gemm`` (:data:`_GEMM_NAMES`) with ``ta``, ``tb`` the character codes of the
    operations (``ord("N")``, ``ord("T")``), the integers as 64- or 32-bit values as the
    library takes them (:data:`_INT64_NAME`), all on this function's stack."""
    arrays = (a, b, c)
    if not all(isinstance(v, types.Array) for v in arrays):
        return None
    if len({v.dtype for v in arrays}) != 1 or str(c.dtype) not in _GEMM_NAMES:
        return None
    name = _GEMM_NAMES[str(c.dtype)]
    sig = types.none(ta, tb, m, n, k, a, lda, b, ldb, c, ldc)

    def codegen(context: Any, builder: Any, sig: Any, args: Sequence[Any]) -> Any:
        i8p = ir.IntType(8).as_pointer()
        i32, i64 = ir.IntType(32), ir.IntType(64)
        flt = context.get_value_type(sig.args[-2].dtype)
        wide = _declared(builder.module, _INT64_NAME, i64)
        int64 = builder.icmp_unsigned("!=", builder.load(wide), i64(0))

        def by_ref(value: Any, ty: Any) -> Any:
            return builder.bitcast(cgutils.alloca_once_value(builder, value), i8p)

        def integer(i: int) -> Any:
            v = context.cast(builder, args[i], sig.args[i], types.int64)
            return builder.select(int64, by_ref(v, i64), by_ref(builder.trunc(v, i32), i32))

        def data(i: int) -> Any:
            arr = context.make_array(sig.args[i])(context, builder, args[i])
            return builder.bitcast(arr.data, i8p)

        def char(i: int) -> Any:
            v = context.cast(builder, args[i], sig.args[i], types.int64)
            return by_ref(builder.trunc(v, ir.IntType(8)), ir.IntType(8))

        one, zero = by_ref(flt(1), flt), by_ref(flt(0), flt)
        fn = _declared(builder.module, name, ir.FunctionType(ir.VoidType(), [i8p] * 13))
        operands = [char(0), char(1), integer(2), integer(3), integer(4), one, data(5)]
        operands += [integer(6), data(7), integer(8), zero, data(9), integer(10)]
        builder.call(fn, operands)
        return context.get_dummy_value()

    return sig, codegen


def _bind_blas() -> tuple[str, str | None]:
    """Bind :data:`_GEMM_NAMES` and :data:`_INT64_NAME` to the library
    :func:`~fastrnn.backends._blas.kernel_gemm` finds; returns its description and path."""
    import llvmlite.binding as llvm

    sgemm, dgemm, int64, name, path = kernel_gemm()
    _INT64_FLAG.value = 1 if int64 else 0
    llvm.add_symbol(_GEMM_NAMES["float32"], sgemm)
    llvm.add_symbol(_GEMM_NAMES["float64"], dgemm)
    llvm.add_symbol(_INT64_NAME, ctypes.addressof(_INT64_FLAG))
    return name, path


_INT64_FLAG = ctypes.c_int64(0)  # lives as long as the module: the kernels read it
BLAS_NAME, BLAS_PATH = _bind_blas()
"""Which BLAS the kernels call, as :func:`~fastrnn.backends._blas.kernel_gemm` names it, and
the path of that library (None: SciPy's BLAS, whichever it is)."""


def _dot(a: FloatArray, b: FloatArray, out: FloatArray) -> None:
    """out = a @ b for 2-d arrays (the Python twin of the jitted overload)."""
    np.dot(a, b, out)


@overload(_dot, jit_options={"fastmath": FASTMATH, "error_model": "numpy"}, inline="always")
def _ol_dot(a, b, out):  # type: (NumbaType, NumbaType, NumbaType) -> Callable[..., None] | None
    """``out = a @ b`` through the bound BLAS, for a C-contiguous ``out`` and ``a``, ``b``
    each C- or F-contiguous (a transposed view is F): row-major ``out`` (m, n) is
    column-major ``out^T`` = ``b^T a^T``, a C operand being its transpose as column-major
    (``"N"``), an F one the operand itself (``"T"``)."""
    if not all(isinstance(v, types.Array) and v.ndim == 2 for v in (a, b, out)):
        return None
    if out.layout != "C" or a.layout not in "CF" or b.layout not in "CF":
        return None
    ta, tb = ord("N" if a.layout == "C" else "T"), ord("N" if b.layout == "C" else "T")
    a_rows_major, b_rows_major = a.layout == "C", b.layout == "C"

    def impl(a, b, out):  # type: (FloatArray, FloatArray, FloatArray) -> None
        m, k = a.shape
        n = b.shape[1]
        if m == 0 or n == 0:
            return
        if k == 0:
            out[:] = 0
            return
        lda = k if a_rows_major else m
        ldb = n if b_rows_major else k
        _fortran_gemm(tb, ta, n, m, k, b, max(ldb, 1), a, max(lda, 1), out, n)

    return impl


def _gemm(a: FloatArray, b: FloatArray, out: FloatArray) -> None:
    """out = a @ b for C-contiguous 2-d arrays (the Python twin of the jitted overload)."""
    np.dot(a, b, out)


@overload(_gemm, jit_options={"fastmath": FASTMATH, "error_model": "numpy"}, inline="always")
def _ol_gemm(a, b, out):  # type: (NumbaType, NumbaType, NumbaType) -> Callable[..., None] | None
    """The per-step product: in-house for a few rows (register tiles, :func:`_tiled_product`,
    with weights up to :data:`TILE_BYTES`; else :func:`_small_product`), else one
    ``?gemm`` call (:func:`_dot`; for one row ``np.dot`` would call ``?gemv``, which took
    0.27 against 0.12 us for 64x64 and 0.89 against 0.60 us for 64x256, float32, OpenBLAS
    0.3.30 on AVX-512)."""
    if not all(isinstance(v, types.Array) and v.ndim == 2 for v in (a, b, out)):
        return None

    def impl(a, b, out):  # type: (FloatArray, FloatArray, FloatArray) -> None
        m, k = a.shape
        n = b.shape[1]
        if m <= SMALL_PRODUCT_ROWS and k * n * b.itemsize <= SMALL_PRODUCT_BYTES:
            if k * n * b.itemsize <= TILE_BYTES:
                _tiled_product(a, b, out)
            else:
                _small_product(a, b, out)
        else:
            _dot(a, b, out)

    return impl


def _small_product_bytes() -> int:
    """Up to how many bytes of ``b`` (the weights) the per-step product of at most
    :data:`SMALL_PRODUCT_ROWS` rows runs in-house (:func:`_small_product`) rather than
    through the bound BLAS (:data:`BLAS_PATH`; else SciPy's): 256 KiB, unless that OpenBLAS
    runs its SkylakeX family of kernels,
    whose small-matrix path was as fast or faster (then 0: every product through BLAS).

    With the Haswell kernels (an AVX2 CPU such as AMD's Zen) OpenBLAS packs the whole
    weight matrix at every call: on a Zen 3 EPYC, S2 lstm's forward spent 26% in
    ``sgemm_itcopy_HASWELL`` and 24% in the kernel. Measured there (GFLOP/s, 1 thread, best
    of 5, OpenBLAS 0.3.30 Haswell kernels, BLAS -> in-house; m, k, n the rows of ``a``, the
    rows and columns of ``b``): float32 (16, 64, 256) 34.7 -> 75.0, (16, 256, 64) 34.8 ->
    50.1, (4, 256, 64) 12.2 -> 49.3, (1, 64, 256) 49.3 -> 48.9, (32, 128, 512) 51.6 ->
    61.8, (32, 256, 1024) [1 MiB] 51.1 -> 55.8, (64, 64, 256) 64.2 -> 58.2; float64 (16,
    64, 256) 30.9 -> 42.3, (16, 256, 64) 30.4 -> 36.0, (32, 128, 512) [512 KiB] 33.4 ->
    34.0, (64, 256, 64) 37.5 -> 29.4. Earlier, with the SkylakeX kernels, one row in-house
    was no faster (S1 lstm 31.6 -> 31.1 ms, rnn 5.7 -> 6.5), and with the Haswell kernels
    it took a fifth of BLAS's time (S1 lstm 151.9 -> 30.7 ms). With NumPy's OpenBLAS 0.3.31
    bound instead (same Zen 3, in a jitted loop, BLAS / in-house GFLOP/s), 16 rows were a
    draw ((16, 64, 256) 67.0 / 69.5, (16, 256, 64) 66.2 / 53.7, (32, 128, 512) 73.7 / 79.9)
    and one to four rows still in-house's ((1, 64, 256) 9.7 / 48.2); S2 with in-house up to
    8 rows instead of 32 moved numba/cpp within the noise (rnn 1.31 -> 1.46, lstm 1.20 ->
    1.02, gru 1.14 -> 1.18), so the limit stays. Decided once at import, so
    the choice is compiled into (and cached with) the kernels: numba's cache is per CPU,
    and OpenBLAS picks its kernels by the CPU unless OPENBLAS_CORETYPE says otherwise."""
    from .._sysinfo import blas_info, openblas_kernel_isa

    libraries = blas_info()
    bound = [i for i in libraries if BLAS_PATH and i["filepath"] == BLAS_PATH]
    bound = bound or [i for i in libraries if i["owner"] == "scipy"]
    small_matrix_path = len(bound) == 1 and (
        openblas_kernel_isa(bound[0]["architecture"]) == "avx512"
    )
    return 0 if small_matrix_path else 256 * 1024


SMALL_PRODUCT_ROWS = 32  # from 64 rows BLAS was faster (see _small_product_bytes)
SMALL_PRODUCT_BYTES = _small_product_bytes()


@njit(**_JIT_INLINE)
def _small_product(a: FloatArray, b: FloatArray, out: FloatArray) -> None:
    """out = a @ b for a few rows of ``a`` and ``b`` in L2, without packing: four rows of
    out at a time get four rows of b at a time (sixteen multiply-adds per load of a
    vector of each of the four b rows; the loop over a row vectorizes), the rows left
    over one at a time with the same sums in the same order, so that a row's result does
    not depend on the other rows (the same bits whatever the chunks of the batch)."""
    m, k = a.shape
    n = b.shape[1]
    m4, k4 = m - m % 4, k - k % 4
    for i in range(0, m4, 4):
        for j in range(n):
            out[i, j] = 0
            out[i + 1, j] = 0
            out[i + 2, j] = 0
            out[i + 3, j] = 0
        for q in range(0, k4, 4):
            a00, a01, a02, a03 = a[i, q], a[i, q + 1], a[i, q + 2], a[i, q + 3]
            a10, a11, a12, a13 = a[i + 1, q], a[i + 1, q + 1], a[i + 1, q + 2], a[i + 1, q + 3]
            a20, a21, a22, a23 = a[i + 2, q], a[i + 2, q + 1], a[i + 2, q + 2], a[i + 2, q + 3]
            a30, a31, a32, a33 = a[i + 3, q], a[i + 3, q + 1], a[i + 3, q + 2], a[i + 3, q + 3]
            for j in range(n):
                b0, b1, b2, b3 = b[q, j], b[q + 1, j], b[q + 2, j], b[q + 3, j]
                out[i, j] += (a00 * b0 + a01 * b1) + (a02 * b2 + a03 * b3)
                out[i + 1, j] += (a10 * b0 + a11 * b1) + (a12 * b2 + a13 * b3)
                out[i + 2, j] += (a20 * b0 + a21 * b1) + (a22 * b2 + a23 * b3)
                out[i + 3, j] += (a30 * b0 + a31 * b1) + (a32 * b2 + a33 * b3)
        for q in range(k4, k):
            for r in range(i, i + 4):
                v = a[r, q]
                for j in range(n):
                    out[r, j] += v * b[q, j]
    for i in range(m4, m):  # the same sums, in the same order, a row at a time
        for j in range(n):
            out[i, j] = 0
        for q in range(0, k4, 4):
            v0, v1, v2, v3 = a[i, q], a[i, q + 1], a[i, q + 2], a[i, q + 3]
            for j in range(n):
                out[i, j] += (v0 * b[q, j] + v1 * b[q + 1, j]) + (
                    v2 * b[q + 2, j] + v3 * b[q + 3, j]
                )
        for q in range(k4, k):
            v = a[i, q]
            for j in range(n):
                out[i, j] += v * b[q, j]


# Register tiles of the per-step product, written as LLVM IR: numba's loops keep each
# accumulator in memory between multiply-adds (the ``out`` rows of _small_product), so a
# tile whose accumulators stay in vector registers for the whole sum needs the IR itself.
# ``_fma_tile(rows, vectors, lanes)`` makes tile(a, b, out, i, j): out[i:i+rows, j:j+w] =
# a[i:i+rows] @ b[:, j:j+w] with w = vectors 256-bit vectors (lanes) or one element, every
# element the sum fmuladd(a[r, q], b[q, c], s) over q = 0, 1, ... from s = 0: the same
# operations in the same order whichever tile computes it, so a row's result does not
# depend on the rows beside it (the chunks of the batch) nor on its column's tile. Used
# where the weights (b) fit in 64 KiB: measured (Zen 3, 1 thread, GFLOP/s, in a jitted
# loop, _small_product -> tiles; m, k, n the rows of a, the rows and columns of b): float32
# (16, 64, 64) 60.0 -> 92.3, (8, 64, 64) 59.8 -> 90.9, (8, 256, 64) 58.1 -> 73.1, (1, 64,
# 64) 48.0 -> 67.6, (1, 256, 64) 35.0 -> 47.5, (1, 64, 192) 37.1 -> 41.3, (16, 64, 256)
# 71.9 -> 69.9, (7, 37, 45) 25.6 -> 19.9; float64 (16, 64, 64) 32.7 -> 43.3, (1, 64, 64)
# 20.9 -> 33.8. With larger weights the tiles' column walks (a stride of a b row per
# step) lost: float64 (16, 64, 256) 39.5 -> 34.9, (1, 64, 192) 24.6 -> 20.8, float32 (32,
# 256, 1024) 62.9 -> 23.4.
TILE_BYTES = 64 * 1024


def _fma_tile(rows: int, vectors: int, lanes: bool) -> Any:
    """The intrinsic tile(a, b, out, i, j) of ``rows`` rows by ``vectors`` 256-bit vectors
    of columns (``lanes``), or by one column; a, b, out 2-d of one float dtype with
    contiguous rows (the per-step product's arrays are C-contiguous: _gemm)."""

    @intrinsic
    def tile(typingctx, a, b, out, i, j):  # type: ignore[no-untyped-def]
        def codegen(context: Any, builder: Any, sig: Any, args: Sequence[Any]) -> Any:
            ft = context.get_value_type(sig.args[0].dtype)
            size = context.get_abi_sizeof(ft)
            L = 32 // size if lanes else 1
            vt = ir.VectorType(ft, L) if L > 1 else ft
            kind = (f"v{L}" if L > 1 else "") + ("f32" if size == 4 else "f64")
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.fmuladd." + kind
            )
            A, B, O = (
                context.make_array(t)(context, builder, v)
                for t, v in zip(sig.args[:3], args[:3], strict=True)
            )
            i64 = ir.IntType(64)

            def ld(arr: Any) -> Any:  # elements per row
                stride = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
                return builder.sdiv(stride, ir.Constant(i64, size))

            lda, ldb, ldo = ld(A), ld(B), ld(O)  # once, before the loop

            def at(data: Any, start: Any, col: Any) -> Any:  # pointer to a vector (or element)
                ptr = builder.gep(data, [builder.add(start, col)])
                return builder.bitcast(ptr, vt.as_pointer()) if L > 1 else ptr

            zero = ir.Constant(vt, [ir.Constant(ft, 0.0)] * L) if L > 1 else ir.Constant(ft, 0.0)
            acc = [
                [cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
                for _ in range(rows)
            ]  # promoted to registers by LLVM
            row = [builder.add(args[3], ir.Constant(i64, r)) for r in range(rows)]
            a_row = [builder.mul(r, lda) for r in row]  # where each row of a starts
            col = [builder.add(args[4], ir.Constant(i64, v * L)) for v in range(vectors)]
            K = cgutils.unpack_tuple(builder, A.shape, 2)[1]
            with cgutils.for_range(builder, K) as loop:
                q = loop.index
                b_row = builder.mul(q, ldb)
                bq = [builder.load(at(B.data, b_row, col[v]), align=size) for v in range(vectors)]
                for r in range(rows):
                    x = builder.load(builder.gep(A.data, [builder.add(a_row[r], q)]))
                    if L > 1:  # broadcast
                        x = builder.insert_element(
                            ir.Constant(vt, ir.Undefined), x, ir.Constant(ir.IntType(32), 0)
                        )
                        x = builder.shuffle_vector(
                            x,
                            ir.Constant(vt, ir.Undefined),
                            ir.Constant(ir.VectorType(ir.IntType(32), L), [0] * L),
                        )
                    for v in range(vectors):
                        s = builder.load(acc[r][v])
                        builder.store(builder.call(fma, [x, bq[v], s]), acc[r][v])
            for r in range(rows):
                o_row = builder.mul(row[r], ldo)
                for v in range(vectors):
                    builder.store(builder.load(acc[r][v]), at(O.data, o_row, col[v]), align=size)
            return context.get_dummy_value()

        return types.void(a, b, out, i, j), codegen

    return tile


_tile_4x2 = _fma_tile(4, 2, True)  # 8 accumulators, 2 loads of b and 4 of a per step
_tile_1x8 = _fma_tile(1, 8, True)  # one row: 8 independent chains hide the FMA latency
_tile_1x4 = _fma_tile(1, 4, True)
_tile_1x1 = _fma_tile(1, 1, True)
_tile_1 = _fma_tile(1, 1, False)  # one element


@njit(**_JIT_INLINE)
def _row_tiles(a: FloatArray, b: FloatArray, out: FloatArray, i: int, j: int) -> None:
    """out[i, j:] = a[i] @ b[:, j:] by the one-row tiles, widest first."""
    n, L = b.shape[1], 32 // b.itemsize
    while j + 8 * L <= n:
        _tile_1x8(a, b, out, i, j)
        j += 8 * L
    while j + 4 * L <= n:
        _tile_1x4(a, b, out, i, j)
        j += 4 * L
    while j + L <= n:
        _tile_1x1(a, b, out, i, j)
        j += L
    while j < n:
        _tile_1(a, b, out, i, j)
        j += 1


@njit(**_JIT_INLINE)
def _tiled_product(a: FloatArray, b: FloatArray, out: FloatArray) -> None:
    """out = a @ b by register tiles (see _fma_tile): blocks of 4 rows by 2 vectors, a block
    of columns at a time over all its rows (its part of b stays in L1), then the rows and
    columns left over by one-row tiles."""
    m, n = a.shape[0], b.shape[1]
    W = 2 * (32 // b.itemsize)
    m4, nw = m - m % 4, n - n % W
    for j in range(0, nw, W):
        for i in range(0, m4, 4):
            _tile_4x2(a, b, out, i, j)
    for i in range(m):
        _row_tiles(a, b, out, i, nw if i < m4 else 0)


@njit(**_JIT)
def _gather(src: FloatArray, t0: int, count: int, b0: int, b1: int, out: FloatArray) -> None:
    """out[s * nb + r] = src[t0 + s, b0 + r] for s < count, r < nb = b1 - b0: a block of
    steps of the chunk as contiguous, step-major rows."""
    nb = b1 - b0
    for s in range(count):
        for r in range(nb):
            for j in range(src.shape[2]):
                out[s * nb + r, j] = src[t0 + s, b0 + r, j]


@njit(**_JIT)
def _project(
    x: FloatArray,
    ids: IndexArray,
    t0: int,
    count: int,
    b0: int,
    b1: int,
    W_ih_T: FloatArray,
    xb: FloatArray,
    proj: FloatArray,
) -> None:
    """proj[s * nb + r] = W_ih x[t0 + s, b0 + r] for the block of steps t0:t0+count; with
    token ids (``ids`` not empty) row ``ids[t0 + s, b0 + r]`` of W_ih^T, copied."""
    nb = b1 - b0
    if ids.shape[0] > 0:
        for s in range(count):
            for r in range(nb):
                d, q = ids[t0 + s, b0 + r], s * nb + r
                for j in range(proj.shape[1]):
                    proj[q, j] = W_ih_T[d, j]
        return
    _gather(x, t0, count, b0, b1, xb)
    _dot(xb[: count * nb], W_ih_T, proj[: count * nb])


# Variational recurrent dropout: ``rec_mask`` (B, H), one mask per sequence, the same at
# every step, multiplies the state where it enters the recurrent product, W_hh (m * h_{t-1});
# backward, dh_{t-1} gets m * (W_hh^T dA_t) and dW_hh the products with m * h_{t-1}. An
# empty (0, 0) mask means none (and costs nothing).


@njit(**_JIT_INLINE)
def _times_mask(h: FloatArray, mask: FloatArray, b0: int, out: FloatArray) -> FloatArray:
    """out[r] = mask[b0 + r] * h[r] for the chunk's rows; returns ``out``."""
    for r in range(h.shape[0]):
        for j in range(h.shape[1]):
            out[r, j] = mask[b0 + r, j] * h[r, j]
    return out


@njit(**_JIT_INLINE)
def _zero_steps(a: FloatArray, t0: int, t1: int, b0: int, b1: int) -> None:
    """a[t0:t1, b0:b1] = 0."""
    zero = a.dtype.type(0)
    for t in range(t0, t1):
        for b in range(b0, b1):
            for j in range(a.shape[2]):
                a[t, b, j] = zero


@njit(**_JIT_INLINE)
def _copy_row(src: FloatArray, q: int, dst: FloatArray, t: int, b: int) -> None:
    """dst[t, b] = src[q, :dst.shape[2]]."""
    for j in range(dst.shape[2]):
        dst[t, b, j] = src[q, j]


@njit(**_JIT)
def _forward_buffers(
    x: FloatArray, b0: int, b1: int, GH: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """A chunk's scratch: a block of inputs and of their projection, and the per-step
    product."""
    nb = b1 - b0
    rows = _block_steps(nb) * nb
    xb = np.empty((rows, x.shape[2]), dtype=x.dtype)
    return xb, np.empty((rows, GH), dtype=x.dtype), np.empty((nb, GH), dtype=x.dtype)


@njit(**_JIT)
def _step_scratch(hs: FloatArray, width: int) -> FloatArray:
    """Where an inference forward writes what a training one saves: one step's worth."""
    return np.empty((1, hs.shape[1], width), dtype=hs.dtype)


@njit(**_JIT)
def _finish_forward(
    hs: FloatArray, lengths: IndexArray, b0: int, b1: int, steps: int, h_n: FloatArray
) -> None:
    """Zero the steps after the chunk's longest sequence; h_n from each last real step."""
    _zero_steps(hs, steps, hs.shape[0], b0, b1)
    for b in range(b0, b1):
        for j in range(hs.shape[2]):
            h_n[b, j] = hs[lengths[b] - 1, b, j]


# The backward's blocks. ``grads`` holds a chunk's scratch; the time loop writes the gate
# gradients of step t to rows (t % S) * nb + r of ``dA_in`` (and, for gru, ``dA_rec``, the
# recurrent side's), and _block_done adds the block's products when t is its first step.


@njit(**_JIT)
def _span(lengths: IndexArray, b0: int, b1: int, s0: int, s1: int, out: IndexArray) -> None:
    """out[b] = the real steps of sequence b among s0:s1, for b in b0:b1: the lengths of a
    segment that a checkpointed backward recomputes with the forward kernel. (The backward
    kernels of lstm and gru run over a span of steps t_lo:t_hi, ``t_hi`` = T first: full BPTT
    is one span, checkpointed BPTT one per segment, newest first, with the chunk's ``grads``
    kept from span to span so that its blocks of steps are those of full BPTT.)"""
    for b in range(b0, b1):
        out[b] = min(max(lengths[b] - s0, 0), s1 - s0)


@njit(**_JIT)
def _backward_buffers(
    x: FloatArray,
    ids: IndexArray,
    hs: FloatArray,
    W_ih: FloatArray,
    dx: FloatArray,
    b0: int,
    b1: int,
    two_sided: bool,
) -> Grads:
    """A chunk's scratch for the backward: dA_in, dA_rec (the same array unless
    ``two_sided``), the block's inputs, previous states and dx (no columns for an empty
    ``x`` or ``dx``), and the block's products dA_in^T X (G*H, D), with token ids its
    transpose (D, G*H), zero (:func:`_scatter_rows` keeps it so), and dA_rec^T H_prev."""
    nb = b1 - b0
    rows = _block_steps(nb) * nb
    dt = hs.dtype
    GH, D = W_ih.shape
    H = hs.shape[2]
    dA_in = np.empty((rows, GH), dtype=dt)
    dA_rec = np.empty((rows, GH), dtype=dt) if two_sided else dA_in
    xb, hb = np.empty((rows, x.shape[2]), dt), np.empty((rows, H), dt)
    dxb = np.empty((rows, dx.shape[2]), dt)
    p_ih = np.zeros((D, GH), dt) if ids.shape[0] > 0 else np.empty((GH, D), dt)
    return dA_in, dA_rec, xb, hb, dxb, p_ih, np.empty((GH, H), dt)


@njit(**_JIT)
def _add(acc: FloatArray, a: FloatArray) -> None:
    """acc += a (2-d, float64 accumulator)."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            acc[i, j] += a[i, j]


@njit(**_JIT)
def _add_rows(dA: FloatArray, count: int, b0: int, b1: int, db: FloatArray) -> None:
    """db[b0 + r] += dA[s * nb + r] for the block's rows (float64 sums per sequence)."""
    nb = b1 - b0
    for s in range(count):
        for r in range(nb):
            for j in range(dA.shape[1]):
                db[b0 + r, j] += dA[s * nb + r, j]


@njit(**_JIT)
def _scatter_rows(
    dA: FloatArray,
    ids: IndexArray,
    t0: int,
    count: int,
    b0: int,
    b1: int,
    acc: FloatArray,
    dW_T: FloatArray,
) -> None:
    """dW_T += (dA^T X)^T for the block's rows, X their one-hot rows of ``ids``: row d of
    ``dW_T`` (D, G*H) gets the sum of the rows of dA whose id is d. The sums are made in
    ``acc`` (D, G*H) in the dtype and in the block's row order, as the one-hot product
    makes them, then added to ``dW_T`` once per id; ``acc`` is zero on entry and on return,
    so only the block's ids are touched (the cost does not grow with D)."""
    nb = b1 - b0
    zero = acc.dtype.type(0)
    for s in range(count):
        for r in range(nb):
            d, q = ids[t0 + s, b0 + r], s * nb + r
            for j in range(dA.shape[1]):
                acc[d, j] += dA[q, j]
    for s in range(count):
        for r in range(nb):
            d = ids[t0 + s, b0 + r]
            for j in range(dA.shape[1]):  # an id seen before adds the zeros left here
                dW_T[d, j] += acc[d, j]
                acc[d, j] = zero


@njit(**_JIT)
def _block_done(
    t0: int, count: int, b0: int, b1: int, ins: Chunk, grads: Grads, outs: GradSums
) -> None:
    """The block of steps t0:t0+count is done: dW_ih += dA_in^T X, dW_hh += dA_rec^T
    H_prev, dx = dA_in W_ih, one BLAS call each on the block's rows; ``db`` and ``db_rec``
    (unless empty) get the sums of dA_in's and dA_rec's rows. (Summed here, not in the gate
    loop: a float64 sum there kept LLVM from vectorizing the lstm's backward gate loop.)
    With token ids dW_ih (transposed) gets a scatter-add instead of the product; an empty
    ``dx`` gets nothing (ids, or input_grad=False)."""
    x, ids, hs, h0, W_ih, rec_mask = ins
    dA_in, dA_rec, xb, hb, dxb, p_ih, p_hh = grads
    dx, dW_ih, dW_hh, db, db_rec = outs
    nb = b1 - b0
    n = count * nb
    _add_rows(dA_in, count, b0, b1, db)
    if db_rec.shape[0] > 0:
        _add_rows(dA_rec, count, b0, b1, db_rec)
    if t0 > 0:
        _gather(hs, t0 - 1, count, b0, b1, hb)
    else:
        for r in range(nb):
            for j in range(hs.shape[2]):
                hb[r, j] = h0[b0 + r, j]
        _gather(hs, 0, count - 1, b0, b1, hb[nb:])
    if rec_mask.shape[0] > 0:  # what entered W_hh: m * h_{t-1}
        for q in range(n):
            for j in range(hb.shape[1]):
                hb[q, j] *= rec_mask[b0 + q % nb, j]
    if ids.shape[0] > 0:
        _scatter_rows(dA_in, ids, t0, count, b0, b1, p_ih, dW_ih)
    else:
        _gather(x, t0, count, b0, b1, xb)
        _dot(dA_in[:n].T, xb[:n], p_ih)
        _add(dW_ih, p_ih)
    _dot(dA_rec[:n].T, hb[:n], p_hh)
    _add(dW_hh, p_hh)
    if dx.shape[0] > 0:
        _dot(dA_in[:n], W_ih, dxb[:n])
        for s in range(count):
            for r in range(nb):
                _copy_row(dxb, s * nb + r, dx, t0 + s, b0 + r)


@njit(**_JIT)
def _start_backward(
    dx: FloatArray, dW_ih: FloatArray, dW_hh: FloatArray, steps: int, b0: int, b1: int
) -> None:
    """Zero the chunk's weight-gradient sums and the dx of steps no sequence reaches."""
    dW_ih[:] = 0.0
    dW_hh[:] = 0.0
    _zero_steps(dx, steps, dx.shape[0], b0, b1)


# The per-step product of a chunk of sequences is one BLAS call (``_gemm``):
# ``h_{t-1} @ W_hh^T`` forward, ``dA_t @ W_hh`` backward. Rows of sequences that have
# ended are zero (their outputs and gradients are zeroed as they end), so they ride along
# harmlessly; each sequence reads and writes only its own rows around the product.
# Forward kernels add the biases in the gate loop (the input projection is a bare GEMM)
# and write the saved activations only when given arrays for them (``gates`` with T rows;
# inference passes empty ones and nothing is saved). Backward kernels write ||dL/dh_t|| to
# ``norms`` of shape (B, T), so that threads working on neighbouring sequences do not write
# to one cache line at every step, the bias gradients per sequence to ``db`` (float64, (B,
# G*H), block by block) and the weight gradients of their chunk to ``dW_ih`` and ``dW_hh``,
# float64 sums the caller adds up over the chunks.

# The fused head of a backward (``head``, :data:`Head`): dL/dh_t is the head's gradient,
# computed for a whole block of steps of the chunk (the blocks above, aligned at t = 0) when
# the time loop enters the block, into ``dh_blk``, whose rows are those of dA (t % S * nb +
# b - b0); ``dhs`` (unless empty) adds to it. The head's sums (float64) go to the chunk's
# ``dweight``, ``dbias`` and ``loss``, block by block in the same order whatever the spans.


@njit(**_JIT)
def _head_block(
    t0: int, count: int, b0: int, b1: int, hs: FloatArray, dhs: FloatArray, head: Head, scale: float
) -> None:
    """The head on the chunk's rows of steps t0:t0+count (gathered into ``hb``)."""
    weight, bias, targets, row_weights, dh_blk, hb, yb, wb, dweight, dbias, loss = head
    B, H = hs.shape[1], hs.shape[2]
    nb = b1 - b0
    weighted = row_weights.shape[0] > 0
    for s in range(count):
        for r in range(nb):
            q, row = s * nb + r, (t0 + s) * B + b0 + r
            for j in range(H):
                hb[q, j] = hs[t0 + s, b0 + r, j]
            yb[q] = targets[row]
            if weighted:
                wb[q] = row_weights[row]
    rw = wb if weighted else row_weights
    sums = (dweight, dbias, loss)
    linear_cross_entropy(0, count * nb, hb, weight, bias, yb, rw, scale, dh_blk, *sums)
    if dhs.shape[0] > 0:
        for s in range(count):
            for r in range(nb):
                for j in range(H):
                    dh_blk[s * nb + r, j] += dhs[t0 + s, b0 + r, j]


@njit(**_JIT)
def _head_start(
    steps: int, S: int, b0: int, b1: int, hs: FloatArray, dhs: FloatArray, head: Head, scale: float
) -> bool:
    """Whether there is a head; if so, its blocks that start at or after ``steps`` (no
    sequence of the chunk reaches them, so the time loop never enters them; their rows
    still count in the loss), newest first."""
    if head[0].shape[0] == 0:
        return False
    T = hs.shape[0]
    for t0 in range((T - 1) // S * S, steps - 1, -S):
        _head_block(t0, min(S, T - t0), b0, b1, hs, dhs, head, scale)
    return True


@njit(**_JIT_INLINE)
def _head_due(t: int, steps: int, S: int) -> bool:
    """Whether the time loop enters a block of the head at step t (the block's newest step
    the chunk reaches). The kernels test this before they call :func:`_head_enter`: an
    array argument passed at every step costs an atomic reference count each way."""
    return t == steps - 1 or t % S == S - 1


@njit(**_JIT)
def _head_enter(
    t: int, S: int, b0: int, b1: int, hs: FloatArray, dhs: FloatArray, head: Head, scale: float
) -> None:
    """The head of the block of step t, which the time loop enters here (:func:`_head_due`)."""
    t0 = t - t % S
    _head_block(t0, min(S, hs.shape[0] - t0), b0, b1, hs, dhs, head, scale)


# --- rnn -------------------------------------------------------------------------------


@njit(**_JIT_INLINE)
def _activate(
    hs: FloatArray,
    t: int,
    b: int,
    proj: FloatArray,
    p: int,
    rec: FloatArray,
    r: int,
    bias: FloatArray,
    act: int,
    slope: float,
) -> None:
    """hs[t, b] <- act(proj[p] + rec[r] + bias) for the vanilla RNN (:data:`ACTIVATIONS`)."""
    zero = hs.dtype.type(0)
    H = hs.shape[2]
    if act == 0:
        for j in range(H):
            hs[t, b, j] = tanh(proj[p, j] + rec[r, j] + bias[j])
    elif act == 1:
        for j in range(H):
            hs[t, b, j] = max(proj[p, j] + rec[r, j] + bias[j], zero)
    elif act == 2:
        for j in range(H):
            a = proj[p, j] + rec[r, j] + bias[j]
            hs[t, b, j] = a if a > zero else a * slope
    else:
        for j in range(H):
            hs[t, b, j] = proj[p, j] + rec[r, j] + bias[j]


@njit(**_JIT)
def rnn_forward(
    b0: int,
    b1: int,
    x: FloatArray,
    ids: IndexArray,
    W_ih_T: FloatArray,
    W_hh_T: FloatArray,
    bias: FloatArray,
    h0: FloatArray,
    lengths: IndexArray,
    act: int,
    slope: float,
    hs: FloatArray,
    h_n: FloatArray,
    rec_mask: FloatArray,
) -> None:
    """Sequences b0:b1; ``bias`` is b_ih + b_hh."""
    H = hs.shape[2]
    nb, S = b1 - b0, _block_steps(b1 - b0)
    steps = _steps(lengths, b0, b1)
    xb, proj, rec = _forward_buffers(x, b0, b1, H)
    hm = np.empty((nb, H), dtype=hs.dtype)  # m * h_{t-1} with recurrent dropout
    for t in range(steps):
        s = t % S
        if s == 0:
            _project(x, ids, t, min(S, steps - t), b0, b1, W_ih_T, xb, proj)
        h_prev = hs[t - 1, b0:b1] if t > 0 else h0[b0:b1]
        if rec_mask.shape[0] > 0:
            h_prev = _times_mask(h_prev, rec_mask, b0, hm)
        _gemm(h_prev, W_hh_T, rec)  # W h_{t-1}, chunk
        for b in range(b0, b1):
            if t < lengths[b]:
                _activate(hs, t, b, proj, s * nb + b - b0, rec, b - b0, bias, act, slope)
            else:
                _zero_steps(hs, t, t + 1, b, b + 1)
    _finish_forward(hs, lengths, b0, b1, steps, h_n)


@njit(**_JIT)
def rnn_backward(
    b0: int,
    b1: int,
    x: FloatArray,
    ids: IndexArray,
    hs: FloatArray,
    h0: FloatArray,
    W_ih: FloatArray,
    W_hh: FloatArray,
    dhs: FloatArray,
    lengths: IndexArray,
    act: int,
    slope: float,
    dh: FloatArray,
    dx: FloatArray,
    db: FloatArray,
    norms: FloatArray,
    rec_mask: FloatArray,
    dW_ih: FloatArray,
    dW_hh: FloatArray,
    head: Head,
    scale: float,
) -> None:
    """Sequences b0:b1. ``dh`` holds dh_n on entry and dh0 on return. ``head``: see
    :func:`_head_block` (dL/dh_t from the head's block then, ``dhs`` added if not empty)."""
    H = hs.shape[2]
    zero, one = hs.dtype.type(0), hs.dtype.type(1)
    nb, S = b1 - b0, _block_steps(b1 - b0)
    steps = _steps(lengths, b0, b1)
    grads = _backward_buffers(x, ids, hs, W_ih, dx, b0, b1, False)
    db_rec = np.empty((0, 0))  # the recurrent side's bias sums are db's
    dA = grads[0]
    tmp = np.empty((nb, H), dtype=hs.dtype)
    _start_backward(dx, dW_ih, dW_hh, steps, b0, b1)
    fused = _head_start(steps, S, b0, b1, hs, dhs, head, scale)
    dh_blk = head[4]
    ins, outs = (x, ids, hs, h0, W_ih, rec_mask), (dx, dW_ih, dW_hh, db, db_rec)
    for t in range(steps - 1, -1, -1):
        q0 = t % S * nb
        if fused and _head_due(t, steps, S):
            _head_enter(t, S, b0, b1, hs, dhs, head, scale)
        for b in range(b0, b1):
            q = q0 + b - b0
            if t >= lengths[b]:
                dA[q] = zero
                continue
            ss = zero
            for j in range(H):
                v = dh[b, j] + (dh_blk[q, j] if fused else dhs[t, b, j])  # dL/dh_t
                ss += v * v
                h = hs[t, b, j]  # dL/da_t = dL/dh_t * act'(a_t), act' in terms of h_t
                if act == 0:
                    v *= one - h * h
                elif act != 3 and h <= zero:
                    v = zero if act == 1 else v * slope
                dA[q, j] = v
            norms[b, t] = math.sqrt(ss)
        _gemm(dA[q0 : q0 + nb], W_hh, tmp)  # dL/dh_{t-1} = W^T dL/da_t
        if rec_mask.shape[0] > 0:
            _times_mask(tmp, rec_mask, b0, tmp)
        for b in range(b0, b1):
            if t < lengths[b]:  # padded steps pass dh through unchanged
                for j in range(H):
                    dh[b, j] = tmp[b - b0, j]
        if q0 == 0:
            _block_done(t, min(S, steps - t), b0, b1, ins, grads, outs)


# --- lstm ------------------------------------------------------------------------------


@njit(**_JIT)
def lstm_forward(
    b0: int,
    b1: int,
    x: FloatArray,
    ids: IndexArray,
    W_ih_T: FloatArray,
    W_hh_T: FloatArray,
    bias: FloatArray,
    h0: FloatArray,
    c0: FloatArray,
    lengths: IndexArray,
    hs: FloatArray,
    h_n: FloatArray,
    c_n: FloatArray,
    gates: FloatArray,
    cs: FloatArray,
    every: int,
    ckpt: FloatArray,
    rec_mask: FloatArray,
) -> None:
    """``bias`` is b_ih + b_hh; ``gates`` gets the activations i, f, g, o and ``cs`` the
    cell states, if they have T rows (else nothing is saved); with ``every`` > 0
    (checkpointed BPTT) ``ckpt`` gets the cell state before steps 0, every, 2 every, ..."""
    H = hs.shape[2]
    nb, S = b1 - b0, _block_steps(b1 - b0)
    steps = _steps(lengths, b0, b1)
    xb, proj, rec = _forward_buffers(x, b0, b1, 4 * H)
    training = gates.shape[0] > 0
    if not training:  # one step of scratch instead, rewritten at every step
        gates, cs = _step_scratch(hs, 4 * H), _step_scratch(hs, H)
    c = c0[b0:b1].copy()  # the running cell state
    hm = np.empty((nb, H), dtype=hs.dtype)  # m * h_{t-1} with recurrent dropout
    for t in range(steps):
        if every > 0 and t % every == 0:
            ckpt[t // every, b0:b1] = c
        s = t % S
        if s == 0:
            _project(x, ids, t, min(S, steps - t), b0, b1, W_ih_T, xb, proj)
        h_prev = hs[t - 1, b0:b1] if t > 0 else h0[b0:b1]
        if rec_mask.shape[0] > 0:
            h_prev = _times_mask(h_prev, rec_mask, b0, hm)
        _gemm(h_prev, W_hh_T, rec)  # all 4 gates
        u = t if training else 0
        for b in range(b0, b1):
            if t >= lengths[b]:
                _zero_steps(hs, t, t + 1, b, b + 1)
                continue
            r = b - b0
            p = s * nb + r
            for j in range(H):
                i = sigmoid(proj[p, j] + rec[r, j] + bias[j])
                f = sigmoid(proj[p, H + j] + rec[r, H + j] + bias[H + j])
                g = tanh(proj[p, 2 * H + j] + rec[r, 2 * H + j] + bias[2 * H + j])
                o = sigmoid(proj[p, 3 * H + j] + rec[r, 3 * H + j] + bias[3 * H + j])
                gates[u, b, j] = i
                gates[u, b, H + j] = f
                gates[u, b, 2 * H + j] = g
                gates[u, b, 3 * H + j] = o
                cj = f * c[r, j] + i * g
                c[r, j] = cj
                cs[u, b, j] = cj
                hs[t, b, j] = o * tanh(cj)
            if t == lengths[b] - 1:
                for j in range(H):
                    c_n[b, j] = c[r, j]
    _finish_forward(hs, lengths, b0, b1, steps, h_n)


@njit(**_JIT)
def lstm_backward(
    b0: int,
    b1: int,
    x: FloatArray,
    ids: IndexArray,
    hs: FloatArray,
    h0: FloatArray,
    W_ih: FloatArray,
    W_hh: FloatArray,
    gates: FloatArray,
    cs: FloatArray,
    c0: FloatArray,
    dhs: FloatArray,
    lengths: IndexArray,
    dh: FloatArray,
    dc: FloatArray,
    dx: FloatArray,
    db: FloatArray,
    norms: FloatArray,
    t_lo: int,
    t_hi: int,
    grads: Grads,
    rec_mask: FloatArray,
    dW_ih: FloatArray,
    dW_hh: FloatArray,
    head: Head,
    scale: float,
) -> None:
    """``dh``/``dc`` hold dh_n/dc_n on entry and dh0/dc0 on return. The steps t_lo:t_hi
    (see :func:`_span`): ``gates`` and ``cs`` hold steps t_lo and on, ``c0`` the cell state
    before t_lo."""
    H = hs.shape[2]
    zero, one = cs.dtype.type(0), cs.dtype.type(1)
    nb, S = b1 - b0, _block_steps(b1 - b0)
    steps = _steps(lengths, b0, b1)
    db_rec = np.empty((0, 0))  # the recurrent side's bias sums are db's
    dA = grads[0]
    tmp = np.empty((nb, H), dtype=cs.dtype)
    fused = head[0].shape[0] > 0
    if t_hi == hs.shape[0]:
        _start_backward(dx, dW_ih, dW_hh, steps, b0, b1)
        _head_start(steps, S, b0, b1, hs, dhs, head, scale)
    dh_blk = head[4]
    ins, outs = (x, ids, hs, h0, W_ih, rec_mask), (dx, dW_ih, dW_hh, db, db_rec)
    for t in range(min(t_hi, steps) - 1, t_lo - 1, -1):
        if fused and _head_due(t, steps, S):
            _head_enter(t, S, b0, b1, hs, dhs, head, scale)
        u = t - t_lo  # the step in gates and cs
        q0 = t % S * nb
        for b in range(b0, b1):
            q = q0 + b - b0
            if t >= lengths[b]:
                dA[q] = zero
                continue
            ss = zero
            for j in range(H):
                dht = dh[b, j] + (dh_blk[q, j] if fused else dhs[t, b, j])  # dL/dh_t
                ss += dht * dht
                i = gates[u, b, j]
                f = gates[u, b, H + j]
                g = gates[u, b, 2 * H + j]
                o = gates[u, b, 3 * H + j]
                tc = tanh(cs[u, b, j])
                dct = dc[b, j] + dht * o * (one - tc * tc)  # dL/dc_t
                c_prev = cs[u - 1, b, j] if u > 0 else c0[b, j]
                dai = dct * g * i * (one - i)
                daf = dct * c_prev * f * (one - f)
                dag = dct * i * (one - g * g)
                dao = dht * tc * o * (one - o)
                dA[q, j] = dai
                dA[q, H + j] = daf
                dA[q, 2 * H + j] = dag
                dA[q, 3 * H + j] = dao
                dc[b, j] = dct * f  # dL/dc_{t-1}
            norms[b, t] = math.sqrt(ss)
        _gemm(dA[q0 : q0 + nb], W_hh, tmp)  # dL/dh_{t-1} = W_hh^T dA_t
        if rec_mask.shape[0] > 0:
            _times_mask(tmp, rec_mask, b0, tmp)
        for b in range(b0, b1):
            if t < lengths[b]:
                for j in range(H):
                    dh[b, j] = tmp[b - b0, j]
        if q0 == 0:
            _block_done(t, min(S, steps - t), b0, b1, ins, grads, outs)


# --- gru -------------------------------------------------------------------------------


@njit(**_JIT)
def gru_forward(
    b0: int,
    b1: int,
    x: FloatArray,
    ids: IndexArray,
    W_ih_T: FloatArray,
    W_hh_T: FloatArray,
    bias: FloatArray,
    b_hn: FloatArray,
    h0: FloatArray,
    lengths: IndexArray,
    hs: FloatArray,
    h_n: FloatArray,
    gates: FloatArray,
    hn: FloatArray,
    rec_mask: FloatArray,
) -> None:
    """``bias`` is b_ih with b_hr, b_hz added; ``gates`` gets r, z, n and ``hn``
    W_hn h_{t-1} + b_hn, if they have T rows (else nothing is saved)."""
    H = hs.shape[2]
    nb, S = b1 - b0, _block_steps(b1 - b0)
    steps = _steps(lengths, b0, b1)
    xb, proj, rec = _forward_buffers(x, b0, b1, 3 * H)
    training = gates.shape[0] > 0
    if not training:  # one step of scratch instead, rewritten at every step
        gates, hn = _step_scratch(hs, 3 * H), _step_scratch(hs, H)
    hm = np.empty((nb, H), dtype=hs.dtype)  # m * h_{t-1}; the interpolation reads h_{t-1}
    for t in range(steps):
        s = t % S
        if s == 0:
            _project(x, ids, t, min(S, steps - t), b0, b1, W_ih_T, xb, proj)
        h_prev_b = hs[t - 1, b0:b1] if t > 0 else h0[b0:b1]
        if rec_mask.shape[0] > 0:
            h_prev_b = _times_mask(h_prev_b, rec_mask, b0, hm)
        _gemm(h_prev_b, W_hh_T, rec)  # W_h{r,z,n} h_{t-1}
        u = t if training else 0
        for b in range(b0, b1):
            if t >= lengths[b]:
                _zero_steps(hs, t, t + 1, b, b + 1)
                continue
            q = b - b0
            p = s * nb + q
            for j in range(H):
                r = sigmoid(proj[p, j] + rec[q, j] + bias[j])
                z = sigmoid(proj[p, H + j] + rec[q, H + j] + bias[H + j])
                hnj = rec[q, 2 * H + j] + b_hn[j]
                n = tanh(proj[p, 2 * H + j] + bias[2 * H + j] + r * hnj)
                gates[u, b, j] = r
                gates[u, b, H + j] = z
                gates[u, b, 2 * H + j] = n
                hn[u, b, j] = hnj
                h_prev = hs[t - 1, b, j] if t > 0 else h0[b, j]
                hs[t, b, j] = n + z * (h_prev - n)  # (1 - z) n + z h_{t-1}
    _finish_forward(hs, lengths, b0, b1, steps, h_n)


@njit(**_JIT)
def gru_backward(
    b0: int,
    b1: int,
    x: FloatArray,
    ids: IndexArray,
    hs: FloatArray,
    h0: FloatArray,
    W_ih: FloatArray,
    W_hh: FloatArray,
    gates: FloatArray,
    hn: FloatArray,
    dhs: FloatArray,
    lengths: IndexArray,
    dh: FloatArray,
    dx: FloatArray,
    db: FloatArray,
    db_rec: FloatArray,
    norms: FloatArray,
    t_lo: int,
    t_hi: int,
    grads: Grads,
    rec_mask: FloatArray,
    dW_ih: FloatArray,
    dW_hh: FloatArray,
    head: Head,
    scale: float,
) -> None:
    """``dh`` holds dh_n on entry and dh0 on return; ``db`` and ``db_rec`` get the sums of
    the input-side and recurrent-side pre-activation gradients (they differ in the n part:
    r * dL/da_n on the recurrent side). The steps t_lo:t_hi (see :func:`_span`): ``gates``
    and ``hn`` hold steps t_lo and on."""
    H = hs.shape[2]
    zero, one = hs.dtype.type(0), hs.dtype.type(1)
    nb, S = b1 - b0, _block_steps(b1 - b0)
    steps = _steps(lengths, b0, b1)
    dA_in, dA_rec = grads[0], grads[1]
    tmp = np.empty((nb, H), dtype=hs.dtype)
    fused = head[0].shape[0] > 0
    if t_hi == hs.shape[0]:
        _start_backward(dx, dW_ih, dW_hh, steps, b0, b1)
        _head_start(steps, S, b0, b1, hs, dhs, head, scale)
    dh_blk = head[4]
    ins, outs = (x, ids, hs, h0, W_ih, rec_mask), (dx, dW_ih, dW_hh, db, db_rec)
    for t in range(min(t_hi, steps) - 1, t_lo - 1, -1):
        if fused and _head_due(t, steps, S):
            _head_enter(t, S, b0, b1, hs, dhs, head, scale)
        u = t - t_lo  # the step in gates and hn
        q0 = t % S * nb
        for b in range(b0, b1):
            q = q0 + b - b0
            if t >= lengths[b]:
                dA_in[q] = zero
                dA_rec[q] = zero
                continue
            ss = zero
            for j in range(H):
                dht = dh[b, j] + (dh_blk[q, j] if fused else dhs[t, b, j])  # dL/dh_t
                ss += dht * dht
                r = gates[u, b, j]
                z = gates[u, b, H + j]
                n = gates[u, b, 2 * H + j]
                h_prev = hs[t - 1, b, j] if t > 0 else h0[b, j]
                dan = dht * (one - z) * (one - n * n)
                daz = dht * (h_prev - n) * z * (one - z)
                dar = dan * hn[u, b, j] * r * (one - r)
                dA_in[q, j] = dar
                dA_in[q, H + j] = daz
                dA_in[q, 2 * H + j] = dan
                dA_rec[q, j] = dar
                dA_rec[q, H + j] = daz
                dA_rec[q, 2 * H + j] = dan * r
                dh[b, j] = dht * z  # the direct path h_{t-1} -> h_t
            norms[b, t] = math.sqrt(ss)
        _gemm(dA_rec[q0 : q0 + nb], W_hh, tmp)  # + W_hh^T dA_rec
        if rec_mask.shape[0] > 0:  # m * W_hh^T dA_rec; the direct path dh z has no mask
            _times_mask(tmp, rec_mask, b0, tmp)
        for b in range(b0, b1):
            if t < lengths[b]:
                for j in range(H):
                    dh[b, j] += tmp[b - b0, j]
        if q0 == 0:
            _block_done(t, min(S, steps - t), b0, b1, ins, grads, outs)


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
# (dbias): its order of addition does not depend on how LLVM vectorizes the kernel. The
# block size matters little: N=160000, H=64, K=32, float32, one BLAS
# thread, 27.4 ms with blocks of 256 rows, 26.8 with 512 or 1024, 27.1 with 2048 (2
# threads: 14.1, 13.8, 13.8, 13.8). Each block's loss and products are added to float64
# sums of the kernel's rows; the caller adds up all ranges' sums.

_HEAD_BLOCK = 1024


@njit(**_JIT)
def linear_cross_entropy(
    r0: int,
    r1: int,
    h: FloatArray,
    weight: FloatArray,
    bias: FloatArray,
    targets: IndexArray,
    row_weights: FloatArray,
    scale: float,
    dh: FloatArray,
    dweight: FloatArray,
    dbias: FloatArray,
    loss: FloatArray,
) -> None:
    """Rows r0:r1: ``dh[r0:r1]`` gets their dL/dh; ``dweight`` (K, H), ``dbias`` (K,) and
    ``loss[0]`` get their sums over these rows added (float64; the caller zeroes them
    first). ``row_weights`` is empty for all ones; a row's weight is
    ``scale * row_weights[n]``."""
    K, H = weight.shape
    dt = h.dtype
    zero = dt.type(0)
    weighted = row_weights.shape[0] > 0
    buf = np.empty(K * _HEAD_BLOCK, dtype=dt)
    mx = np.empty(_HEAD_BLOCK, dtype=dt)  # the row maxima, then w / sum(exp)
    picked = np.empty(_HEAD_BLOCK, dtype=dt)  # z_y - max
    sums = np.empty(_HEAD_BLOCK, dtype=dt)
    tmp = np.empty((K, H), dtype=dt)
    ones = np.ones((_HEAD_BLOCK, 1), dtype=dt)
    colsum = np.empty((K, 1), dtype=dt)
    total = 0.0
    for s in range(r0, r1, _HEAD_BLOCK):
        e = min(s + _HEAD_BLOCK, r1)
        n = e - s
        z = buf[: K * n].reshape(K, n)
        _dot(weight, h[s:e].T, z)  # the logits, less the bias, class-major
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
        _dot(z, ones[:n], colsum)  # dbias: BLAS sums the same way in any caller
        for k in range(K):
            dbias[k] += colsum[k, 0]
        _dot(z, h[s:e], tmp)  # dweight += dz^T h
        for k in range(K):
            for j in range(H):
                dweight[k, j] += tmp[k, j]
        _dot(z.T, weight, dh[s:e])  # dh = dz @ weight
    loss[0] += total


# --- explicit signatures, compiled on first use ------------------------------------------


def _signatures(dtype: type) -> dict[str, tuple[NumbaType, ...]]:
    """Each kernel's argument types for one float dtype: C-contiguous arrays only."""
    f = types.float32 if dtype is np.float32 else types.float64
    v, m, a3 = f[::1], f[:, ::1], f[:, :, ::1]
    i, lens = types.int64, types.int64[::1]
    d = types.float64[:, ::1]  # bias-gradient sums: float64 for both dtypes
    grads = types.UniTuple(m, 7)  # a chunk's backward scratch (_backward_buffers)
    x = (a3, types.int64[:, ::1])  # the input: x (T, B, D) or token ids (T, B), one empty
    serial = {  # the arguments after b0, b1
        "rnn_forward": (*x, m, m, v, m, lens, i, f, a3, m),
        "rnn_backward": (*x, a3, m, m, m, a3, lens, i, f, m, a3, d, m),
        "lstm_forward": (*x, m, m, v, m, m, lens, a3, m, m, a3, a3, i, a3),
        "lstm_backward": (*x, a3, m, m, m, a3, a3, m, a3, lens, m, m, a3, d, m, i, i, grads),
        "gru_forward": (*x, m, m, v, v, m, lens, a3, m, a3, a3),
        "gru_backward": (*x, a3, m, m, m, a3, a3, a3, lens, m, a3, d, d, m, i, i, grads),
        "_span": (lens, i, i, i, i, lens),
        "_backward_buffers": (*x, a3, m, a3, i, i, types.boolean),
    }
    # the kernels: b0, b1, the arguments, then rec_mask (B, H), (0, 0) for none
    sigs = {name: args if name[0] == "_" else (i, i, *args, m) for name, args in serial.items()}
    # + dW_ih, dW_hh, the head (see Head) and its scale
    sums = types.float64[::1]
    head = types.Tuple((m, v, lens, v, m, m, lens, v, d, sums, sums))
    for name in ("rnn_backward", "lstm_backward", "gru_backward"):
        sigs[name] = (*sigs[name], d, d, head, f)
    # the head: h, weight, bias, targets, row_weights, scale, dh, then the float64 sums of
    # dweight, dbias and the loss of the kernel's rows
    sigs["linear_cross_entropy"] = (i, i, m, m, v, lens, v, f, m, d, sums, sums)
    return sigs


SIGNATURES: dict[tuple[str, type], tuple[NumbaType, ...]] = {
    (name, dtype): sig
    for dtype in (np.float32, np.float64)
    for name, sig in _signatures(dtype).items()
}

_compile_lock = threading.Lock()
_ready: set[tuple[str, type]] = set()


def compiled(name: str, dtype: type) -> Any:
    """Kernel ``name`` with its signature for ``dtype`` compiled or loaded from the cache."""
    key = (name, dtype)
    kernel = globals()[name]
    if key not in _ready and hasattr(kernel, "compile"):  # not under NUMBA_DISABLE_JIT=1
        with _compile_lock:
            if key not in _ready:
                kernel.compile(SIGNATURES[key])
                _ready.add(key)
    return kernel
