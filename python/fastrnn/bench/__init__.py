"""The benchmark library behind ``fastrnn bench`` and the pytest-benchmark suite.

- :mod:`~fastrnn.bench.cases`: the shapes (S1..S4, their ``--quick`` versions, the char-LM
  shapes LM128/LM512), the random cases (and the packed workload's lengths), the FLOP
  count and the memory estimate;
- :mod:`~fastrnn.bench.runners`: each case as a workload for one backend, PyTorch or the
  PyTorch drop-in ``fastrnn.torch``, the check against the NumPy reference, the thread
  limit, the GEMM reference;
- :mod:`~fastrnn.bench.schedule`: which rows to run and the order they run in;
- :mod:`~fastrnn.bench.report`: the result rows, their ratios, the table and the JSON.

The command line (argparse) is :mod:`fastrnn.cli.bench`.
"""

from __future__ import annotations

from .._moved import moved_names
from .cases import (
    CLASSES,
    FLOP_FORMULA,
    LM_SHAPES,
    NAMED_SHAPES,
    PACKED_BACKENDS,
    QUICK_LM_SHAPES,
    QUICK_SHAPES,
    TIMED_WITH,
    VOCAB,
    WHATS,
    Case,
    Shape,
    estimate_bytes,
    flops,
    head_classes,
    make_case,
    packed_lengths,
    timed_whats,
)
from .report import BACKENDS, Row, format_table
from .runners import (
    CHECK_CLASSES,
    CHECK_SHAPE,
    CHECK_TOL,
    PEERS,
    FastrnnRunner,
    Runner,
    TorchRunner,
    check_against_reference,
    gemm_gflops,
    held_bytes,
    make_runner,
    relative_error,
    thread_limit,
    torch_unavailable_reason,
)

__all__ = [
    "BACKENDS",
    "CHECK_CLASSES",
    "CHECK_SHAPE",
    "CHECK_TOL",
    "CLASSES",
    "FLOP_FORMULA",
    "LM_SHAPES",
    "NAMED_SHAPES",
    "PACKED_BACKENDS",
    "PEERS",
    "QUICK_LM_SHAPES",
    "QUICK_SHAPES",
    "TIMED_WITH",
    "VOCAB",
    "WHATS",
    "Case",
    "FastrnnRunner",
    "Row",
    "Runner",
    "Shape",
    "TorchRunner",
    "check_against_reference",
    "estimate_bytes",
    "flops",
    "format_table",
    "gemm_gflops",
    "head_classes",
    "held_bytes",
    "make_case",
    "make_runner",
    "packed_lengths",
    "relative_error",
    "thread_limit",
    "timed_whats",
    "torch_unavailable_reason",
]

# add_arguments and run moved to fastrnn.cli.bench; they still work, with a DeprecationWarning
__getattr__ = moved_names(__name__, dict.fromkeys(("add_arguments", "run"), "fastrnn.cli.bench"))
