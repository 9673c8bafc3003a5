"""The C++ backend: the Eigen kernels of ``src/cpp/fastrnn/`` behind the backend contract.

The kernels are compiled once per instruction-set level (``fastrnn._kernels_generic``,
``_kernels_avx2``, ``_kernels_avx512``); :func:`fastrnn._core.kernel_isa` names the best
one this CPU runs (the environment variable ``FASTRNN_CPP_ISA`` can ask for a lower one),
and that module is imported here. The kernels release the GIL and split the batch over
``num_threads`` threads (each with its own time loop; one thread creates none). They run
with subnormals flushed to zero (FTZ/DAZ) and restore the caller's mode on return: with
every state subnormal, lstm ran 1.36x faster that way on this machine's CPU (rnn: no
change), and Intel CPUs are known to slow down far more on subnormals.

``saved`` is ``None`` for rnn (act' is a function of hs) and ``(gates, extra)`` otherwise:
the gate activations (T, B, G*H) and, for lstm, the cell states, for gru
``W_hn h + b_hn`` (T, B, H), i.e. (G+1)*H values per step and sequence.
"""

from __future__ import annotations

import importlib
from types import ModuleType

UNAVAILABLE_REASON: str | None = None
ISA: str | None = None
_kernels: ModuleType | None = None

try:
    from fastrnn import _core

    ISA = _core.kernel_isa()
    _kernels = importlib.import_module(f"fastrnn._kernels_{ISA}")
except (ImportError, ValueError) as exc:  # extension not built, or a bad FASTRNN_CPP_ISA
    UNAVAILABLE_REASON = f"{type(exc).__name__}: {exc}"


def forward(
    cell, params, x, h0, c0, *, activation, negative_slope, lengths, num_threads, training=True
):
    """Run the recurrence; return ``(hs, h_n, c_n, saved)`` (see the module docstring;
    ``saved`` is None when not ``training``)."""
    hs, h_n, c_n, gates, extra = _kernels.forward(
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
    )
    return hs, h_n, c_n, (None if gates is None or not training else (gates, extra))


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
    """Backpropagation through time; return ``(dx, dh0, dc0, dparams, norms)``."""
    gates, extra = (None, None) if saved is None else saved
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, norms = _kernels.backward(
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
    )
    dparams = {"W_ih": dW_ih, "W_hh": dW_hh, "b_ih": db_ih, "b_hh": db_hh}
    return dx, dh0, dc0, dparams, norms


def linear_cross_entropy(h, weight, bias, targets, row_weights, *, scale, num_threads):
    """The fused head (``src/cpp/fastrnn/head.hpp``); return ``(loss, dh, dweight, dbias)``."""
    return _kernels.linear_cross_entropy(h, weight, bias, targets, row_weights, scale, num_threads)
