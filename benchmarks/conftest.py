"""The pytest-benchmark suite of fastrnn: every backend (and PyTorch) x cell x dtype x shape.

Five workloads (see :mod:`fastrnn.bench`): the layer's ``forward``; ``fwdbwd``, its
forward and full BPTT with a gradient entering at every step; ``train``, one training
step end to end (layer + linear softmax head + cross-entropy, forward and backward);
``charlm``, one training step of a character language model as
``CharLanguageModel.fit`` runs it (Adam, clipping) against the same model in PyTorch; and
``packed``, the ``train`` step on a ``PackedSequence`` (torch.nn against the drop-in
``fastrnn.torch`` only, ``test_bench_torch_dropin.py``). The rows ``torch`` (PyTorch's
modules) and ``fastrnn.torch`` (the same PyTorch model with fastrnn's drop-in modules)
run every workload but the layer-only ones of fastrnn's own API. Each
benchmark first checks its backend against the NumPy reference on a small case (a fast
wrong answer fails), warms up once (JIT compile and first touch are not timed), then times
the workload with ``benchmark.pedantic``.

Sizes, chosen with ``--bench-size`` or the env var ``FASTRNN_BENCH_SIZE``:

- ``ci`` (default): one tiny shape. With ``--benchmark-disable`` (set in pyproject.toml's
  addopts) every benchmark runs once as a test, which is what CI does.
- ``quick``: the ``fastrnn bench --quick`` shapes (S1..S4 shortened; LM128/4, LM512/4).
- ``full``: the named shapes S1..S4 of the backend issues (S4 for rnn only) and, for the
  char-LM step, LM128 and LM512 (H = 128 and 512, T = 64, B = 32, V = 100).

Measure for real with::

    pytest benchmarks --benchmark-enable --bench-size full --benchmark-autosave
    pytest benchmarks --benchmark-enable --bench-size full --bench-threads 1,2 -k "train and S2"
    pytest-benchmark compare 0001 0002 --group-by group

``--bench-threads`` (env ``FASTRNN_BENCH_THREADS``, default ``1``) lists thread counts;
``--bench-rounds`` (default 5) the timed rounds. The saved JSON carries the machine
(CPU, SIMD flags, numpy's BLAS via threadpoolctl, the extension's build_info) under
``machine_info["fastrnn"]`` and each benchmark's backend, shape, threads, FLOP count and
memory held for backward in its ``extra_info``.
"""

from __future__ import annotations

import functools
import os

import pytest

import fastrnn
from fastrnn import _sysinfo
from fastrnn import bench as lib
from fastrnn.bench import schedule

CI_SHAPES = {"tiny": lib.Shape("tiny", 8, 16, 4, 20)}
SIZES = {"ci": CI_SHAPES, "quick": lib.QUICK_SHAPES, "full": lib.NAMED_SHAPES}
# the char-LM step: a vocabulary of D characters, one-hot
CI_LM_SHAPES = {"lm-tiny": lib.Shape("lm-tiny", 12, 16, 4, 8, cells=("lstm", "gru"))}
LM_SIZES = {"ci": CI_LM_SHAPES, "quick": lib.QUICK_LM_SHAPES, "full": lib.LM_SHAPES}
DTYPES = ("float32", "float64")
BENCH_BACKENDS = lib.BACKENDS  # the fastrnn backends, torch and the drop-in fastrnn.torch


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastrnn benchmarks")
    group.addoption(
        "--bench-size",
        choices=tuple(SIZES),
        default=None,
        help="shapes of the benchmark suite: ci (one tiny shape, the default), quick, or "
        "full (S1..S4); env FASTRNN_BENCH_SIZE",
    )
    group.addoption(
        "--bench-threads",
        default=None,
        help="comma-separated thread counts (default 1); env FASTRNN_BENCH_THREADS",
    )
    group.addoption(
        "--bench-rounds", type=int, default=5, help="timed rounds per benchmark (default 5)"
    )


def _option(config: pytest.Config, name: str, env: str, default: str) -> str:
    try:
        value = config.getoption(name)
    except ValueError:  # this conftest was not loaded at start-up: no such option
        value = None
    return value or os.environ.get(env) or default


def _size(config: pytest.Config) -> str:
    size = _option(config, "--bench-size", "FASTRNN_BENCH_SIZE", "ci")
    if size not in SIZES:
        raise pytest.UsageError(f"FASTRNN_BENCH_SIZE must be one of {list(SIZES)}, got {size!r}")
    return size


def _threads(config: pytest.Config) -> list[int]:
    text = _option(config, "--bench-threads", "FASTRNN_BENCH_THREADS", "1")
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise pytest.UsageError(f"--bench-threads must be positive whole numbers, got {text!r}")
    return counts


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``shape_cell`` (each shape with its cells), ``lm_shape_cell`` (the same
    for the char-LM shapes), ``bench_shape`` (each shape), ``dtype`` and ``threads``."""
    config = metafunc.config
    for name, sizes in (("shape_cell", SIZES), ("lm_shape_cell", LM_SIZES)):
        if name in metafunc.fixturenames:
            pairs = [(s, c) for s in sizes[_size(config)].values() for c in s.cells]
            metafunc.parametrize(name, pairs, ids=[f"{s.name}-{c}" for s, c in pairs])
    if "bench_shape" in metafunc.fixturenames:  # a shape alone, for cell-free workloads
        shapes = list(SIZES[_size(config)].values())
        metafunc.parametrize("bench_shape", shapes, ids=[s.name for s in shapes])
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    if "threads" in metafunc.fixturenames:
        counts = _threads(config)
        metafunc.parametrize("threads", counts, ids=[f"{n}thr" for n in counts])


@pytest.fixture
def bench_size(request: pytest.FixtureRequest) -> str:
    """The chosen size: ``ci``, ``quick`` or ``full``."""
    return _size(request.config)


@pytest.fixture(params=BENCH_BACKENDS)
def bench_backend(request: pytest.FixtureRequest) -> str:
    """Every fastrnn backend, the torch peer and the drop-in ``fastrnn.torch`` (torch's
    model with fastrnn's modules); unavailable ones are skipped with why."""
    name = request.param
    if name in lib.PEERS:
        why = lib.torch_unavailable_reason(name)
        if why:
            pytest.skip(f"peer {name!r} unavailable: {why}")
    elif name not in fastrnn.available_backends():
        pytest.skip(f"backend {name!r} unavailable: {fastrnn.unavailable_backends()[name]}")
    return name


@functools.cache
def _check(backend: str, cell: str, dtype: str, what: str) -> str | None:
    return lib.check_against_reference(backend, cell, dtype, what)


@functools.cache
def _blas() -> list[dict]:
    return _sysinfo.blas_info()


@pytest.fixture
def run_workload(benchmark, request: pytest.FixtureRequest):
    """``run_workload(backend, shape, cell, dtype, threads, what)``: check the backend
    against the reference on a small case, warm up, time the workload, record extra info."""
    rounds = request.config.getoption("--bench-rounds", default=5)

    def run(backend: str, shape: lib.Shape, cell: str, dtype: str, threads: int, what: str):
        error = _check(backend, cell, dtype, what)
        assert error is None, error
        need = lib.estimate_bytes(cell, shape.D, shape.H, shape.B, shape.T, dtype, what)
        why = schedule.too_big(need, _sysinfo.available_memory())
        if why:
            pytest.skip(why)
        case = lib.make_case(cell, shape.D, shape.H, shape.B, shape.T, dtype, what=what)
        benchmark.group = f"{what} {shape.name} {cell} {dtype} {threads}thr"
        with lib.thread_limit(threads):
            runner = lib.make_runner(case, backend, what)
            runner.run()  # warm-up: JIT compile and first touch are not timed
            raw = benchmark.pedantic(runner.run, rounds=rounds, iterations=1)
        flops = lib.flops(cell, shape.D, shape.H, shape.B, shape.T, what)
        info = {
            "backend": backend,
            "what": what,
            "shape": shape.name,
            "D": shape.D,
            "H": shape.H,
            "B": shape.B,
            "T": shape.T,
            "cell": cell,
            "dtype": dtype,
            "threads": threads,
            "flops": flops,
            "flop_formula": lib.FLOP_FORMULA,
            "held_bytes": runner.held_bytes(raw),
            "blas": _blas(),
        }
        if benchmark.stats is not None:  # timed (not --benchmark-disable)
            median = benchmark.stats.stats.median
            info.update(median_s=median, us_per_step=median / shape.T * 1e6)
            info["gflops"] = flops / median / 1e9
        benchmark.extra_info.update(info)
        return runner, raw

    return run


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Store CPU, SIMD flags, numpy's BLAS (threadpoolctl), build_info in saved runs."""
    machine_info["fastrnn"] = _sysinfo.system_info()
