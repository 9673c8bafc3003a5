"""The C++ backend: the Eigen kernels of ``src/cpp/fastrnn/`` behind the backend contract,
:class:`fastrnn.backends._contract.Backend`.

The kernels are compiled once per instruction-set level (``fastrnn._kernels_generic``,
``_kernels_avx2``, ``_kernels_avx512``); :func:`fastrnn._core.kernel_isa` names the best
one this CPU runs (the environment variable ``FASTRNN_CPP_ISA`` can ask for a lower one),
and that module is imported here. The kernels release the GIL and split the batch over
``num_threads`` threads (each with its own time loop; one thread creates none). They run
with subnormals flushed to zero (FTZ/DAZ) and restore the caller's mode on return: with
every state subnormal, lstm ran 1.36x faster that way on this machine's CPU (rnn: no
change), and Intel CPUs are known to slow down far more on subnormals.

Large products (the input projection, the weight gradients and ``dx`` over blocks of
steps, and the per-step product from a size measured in ``blas.hpp``) go through the
OpenBLAS NumPy ships: :func:`fastrnn.backends._blas.blas_functions` finds its ILP64
``sgemm``/``dgemm`` (or SciPy's, ``scipy.linalg.cython_blas``) and the thread getter/setter
of that OpenBLAS, and they are handed to the kernel module once, at import. The kernels'
workers call BLAS with its own threading set to 1 (see ``src/cpp/fastrnn/blas.hpp``).
Without them the kernels use their own products; ``_kernels.blas()`` and
``fastrnn.build_info()["blas"]`` say which. The fused head (``head.hpp``) keeps the in-house
products.

The workers are threads of the kernels' own, or, after :func:`set_thread_team`, the
thread team of an OpenMP runtime already loaded in the process: :mod:`fastrnn.torch` hands
over PyTorch's, whose threads spin for milliseconds after each torch op and would
otherwise share the cores with ours (``parallel.hpp``). ``_kernels.thread_team()`` and
``fastrnn.build_info()["threads"]`` say which.

``saved`` is ``None`` for rnn (act' is a function of hs) and ``(gates, extra)`` otherwise:
the gate activations (T, B, G*H) and, for lstm, the cell states, for gru
``W_hn h + b_hn`` (T, B, H), i.e. (G+1)*H values per step and sequence. With
``training=False`` nothing is saved (``saved`` is ``None``) and nothing is allocated for it.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from types import ModuleType
from typing import Any

from ._blas import blas_functions
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

UNAVAILABLE_REASON: str | None = None
ISA: str | None = None
_kernels: ModuleType | None = None


def thread_team_functions(library: str) -> tuple[int, int, int, str]:
    """``(GOMP_parallel, omp_get_thread_num, omp_get_num_threads, name)``: the addresses
    of the functions of the OpenMP runtime ``library`` (a path), which must already be
    loaded in this process (it is never loaded here); an OSError or LookupError says why
    not."""
    mode = getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LAZY", 0)
    try:
        dll = ctypes.CDLL(library, mode=mode)
    except OSError as exc:
        raise OSError(
            f"the OpenMP runtime {library!r} is not loaded in this process: {exc}"
        ) from exc
    addresses = []
    for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"):
        if not hasattr(dll, name):
            raise LookupError(f"{library!r} has no {name}: not an OpenMP runtime with GNU's ABI")
        addresses.append(int(ctypes.cast(getattr(dll, name), ctypes.c_void_p).value or 0))
    return addresses[0], addresses[1], addresses[2], f"OpenMP team of {library}"


def set_thread_team(library: str | None) -> str:
    """Run the kernels' workers on the thread team of the OpenMP runtime ``library`` (the
    path of a runtime already loaded, such as PyTorch's libgomp), or with ``None`` on
    threads of their own again; returns what they run on now. The work each worker does,
    and so every result's bits, is the same either way."""
    kernels = _loaded()
    if library is None:
        kernels.set_thread_team(0, 0, 0, "own threads")
    else:
        kernels.set_thread_team(*thread_team_functions(library))
    return str(kernels.thread_team())


try:
    from fastrnn import _core

    ISA = _core.kernel_isa()
    _kernels = importlib.import_module(f"fastrnn._kernels_{ISA}")
except (ImportError, ValueError) as exc:  # extension not built, or a bad FASTRNN_CPP_ISA
    UNAVAILABLE_REASON = f"{type(exc).__name__}: {exc}"
else:
    _kernels.set_blas(*blas_functions())


def output_cache_info() -> dict[str, int]:
    """The C++ backend's cache of large output blocks (``src/cpp/fastrnn/output_cache.hpp``):
    ``limit`` the bytes it may hold, ``held`` the bytes it holds in ``blocks`` blocks,
    ``hits`` and ``misses`` the outputs of 64 KiB or more that took a kept block or new
    memory. Every output array the kernels return lives in a block of it; a kept block
    goes back to the cache when NumPy frees the array, and the next output of the same
    size class takes it without the page faults and the zeroing of fresh memory."""
    _loaded()
    from fastrnn import _core

    return {str(k): int(v) for k, v in _core.output_cache_info().items()}


def set_output_cache(max_bytes: int) -> int:
    """Set the most the C++ backend's output cache may hold (bytes; default 1 GiB; ``0``
    keeps nothing, so every large output takes new memory), freeing its oldest blocks
    beyond it; returns the previous limit. The cache holds only blocks of arrays NumPy has
    freed: it never raises the memory in use at a training step's peak, but keeps it from
    one step to the next."""
    from .. import _validation as V

    limit = V.check_non_negative_int("max_bytes", max_bytes)
    _loaded()
    from fastrnn import _core

    return int(_core.set_output_cache_limit(limit))


def _loaded() -> ModuleType:
    """The kernel module, or the reason it could not be imported as a RuntimeError (the
    registry does not offer this backend then, so a call here is a direct one)."""
    if _kernels is None:
        raise RuntimeError(f"the C++ backend is unavailable: {UNAVAILABLE_REASON}")
    return _kernels


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
    """Run the recurrence; return ``(hs, h_n, c_n, saved)`` (see the module docstring;
    ``saved`` is None when not ``training``, a :class:`Checkpoints` with ``checkpoint=k``
    for lstm and gru)."""
    every = checkpoint if checkpoint is not None and training and cell != "rnn" else 0
    hs, h_n, c_n, gates, extra = _loaded().forward(
        cell,
        activation,
        negative_slope,
        params["W_ih"],
        params["W_hh"],
        params["b_ih"],
        params["b_hh"],
        x,
        h0,
        c0,
        lengths,
        num_threads,
        training=training,
        recurrent_mask=recurrent_mask,
        checkpoint=every,
    )
    if every:
        return hs, h_n, c_n, Checkpoints(every, extra)
    return hs, h_n, c_n, (None if gates is None else (gates, extra))


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
    """Backpropagation through time; return ``(dx, dh0, dc0, dparams, norms, head)`` (after
    a checkpointed forward, the kernel recomputes each segment inside the one call; a fused
    ``head`` runs inside it too, block by block of steps; ``dx`` is None with
    ``input_grad=False`` or token ids ``x``, and not computed)."""
    every, extras = 0, dict[str, Any]()
    if isinstance(saved, Checkpoints):
        gates, extra, every = None, saved.states, saved.every
        extras = {"b_ih": params["b_ih"], "b_hh": params["b_hh"]}
    else:
        gates, extra = (None, None) if saved is None else saved
    if head is not None:
        extras.update(
            head_weight=head.weight,
            head_bias=head.bias,
            head_targets=head.targets,
            head_row_weights=head.row_weights,
            head_scale=head.scale,
        )
    out = _loaded().backward(
        cell,
        activation,
        negative_slope,
        params["W_ih"],
        params["W_hh"],
        x,
        h0,
        c0,
        hs,
        gates,
        extra,
        dhs,
        dh_n,
        dc_n,
        lengths,
        num_threads,
        step_norms,
        recurrent_mask=recurrent_mask,
        checkpoint=every,
        input_grad=input_grad,
        **extras,
    )
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, norms = out[:8]
    dparams = {"W_ih": dW_ih, "W_hh": dW_hh, "b_ih": db_ih, "b_hh": db_hh}
    return dx, dh0, dc0, dparams, norms, (out[8] if head is not None else None)


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
    """The fused head (``src/cpp/fastrnn/head.hpp``); return ``(loss, dh, dweight, dbias)``."""
    loss, dh, dweight, dbias = _loaded().linear_cross_entropy(
        h, weight, bias, targets, row_weights, scale, num_threads
    )
    return loss, dh, dweight, dbias
