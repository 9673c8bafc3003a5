"""Shared fixtures and helpers: the backend parametrization (with the CI switch that makes
a backend that does not load a failure), random test cases, and finite differences with
tolerances derived from the step and the dtype."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pytest

import fastrnn
from fastrnn.backends import BACKENDS

# --- backends that must load ------------------------------------------------------------

REQUIRE_VAR = "FASTRNN_REQUIRE_BACKENDS"


def required_backends() -> frozenset[str]:
    """The backends named in ``FASTRNN_REQUIRE_BACKENDS`` (comma-separated; CI sets
    ``numpy,numba,cpp``): for these, "does not load" fails a test instead of skipping it."""
    names = {n.strip() for n in os.environ.get(REQUIRE_VAR, "").split(",") if n.strip()}
    unknown = sorted(names - set(BACKENDS))
    if unknown:
        raise pytest.UsageError(
            f"{REQUIRE_VAR}={os.environ[REQUIRE_VAR]!r} names unknown backends {unknown}; "
            f"valid names are {', '.join(BACKENDS)}"
        )
    return frozenset(names)


def need_backend(name: str, *, allow_module_level: bool = False) -> None:
    """Return if backend ``name`` loads. Otherwise skip (the test, or the module with
    ``allow_module_level``) with the reason it does not load, or fail with that reason
    when ``FASTRNN_REQUIRE_BACKENDS`` names it: in CI a broken backend must not pass as a
    row of skips."""
    if name in fastrnn.available_backends():
        return
    why = fastrnn.unavailable_backends()[name]
    if name in required_backends():
        pytest.fail(
            f"backend {name!r} is required ({REQUIRE_VAR}) but does not load: {why}",
            pytrace=False,
        )
    pytest.skip(f"backend {name!r} unavailable: {why}", allow_module_level=allow_module_level)


# --- no skips in CI ----------------------------------------------------------------------
# With FASTRNN_NO_SKIPS=1 (set by .ci/run) a skipped test is a failure, whatever skipped it:
# a peer that the test extra installs (torch, mpi4py, onnx, onnxruntime, matplotlib,
# scikit-learn) missing from the environment must not pass as a row of skips. Only what no
# install can change may skip: the CPU, the build's platform, the operating system, Python.
NO_SKIPS_VAR = "FASTRNN_NO_SKIPS"
HARDWARE_SKIPS = (
    "this CPU cannot run",  # a kernel ISA level above this CPU's (test_robustness)
    "this build has no",  # ISA levels exist on x86-64 GCC/Clang builds only
    "needs os.",  # os.fork / os.sched_setaffinity: not on every operating system
    "tomllib is Python 3.11+",
)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skipped ``report`` into a failure unless the skip is one of HARDWARE_SKIPS."""
    if not report.skipped or getattr(report, "wasxfail", None) is not None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(HARDWARE_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped, but {NO_SKIPS_VAR} is set (CI): {reason}"


class _NoSkips:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]):
        _fail_skip((yield).get_result())  # a test that skips itself or via a marker

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector):
        _fail_skip((yield).get_result())  # a module that skips itself at import


def pytest_configure(config: pytest.Config) -> None:
    required_backends()  # a misspelt name is a usage error at once, not a silent no-op
    if os.environ.get(NO_SKIPS_VAR) == "1":  # registered as a plugin: benchmarks/ too
        config.pluginmanager.register(_NoSkips(), "fastrnn-no-skips")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Collecting imports fastrnn.torch, which hands PyTorch's OpenMP team to the C++
    kernels' workers: the suite runs them on threads of their own, as without torch, and
    the tests of the team (test_thread_team.py, test_torch_dropin.py) hand it over."""
    if "cpp" not in fastrnn.unavailable_backends():
        from fastrnn.backends import cpp_backend

        cpp_backend.set_thread_team(None)


def pytest_report_header(config: pytest.Config) -> list[str]:
    missing = fastrnn.unavailable_backends()
    lines = [f"fastrnn backends: {', '.join(fastrnn.available_backends())} load"]
    lines += [f"  {name!r} does not load: {why}" for name, why in missing.items()]
    if "cpp" not in missing:
        from fastrnn.backends import cpp_backend

        lines.append(f"cpp kernels: instruction-set level {cpp_backend.ISA}")
    required = required_backends()
    lines.append(f"{REQUIRE_VAR}: {', '.join(sorted(required)) or '(none)'}")
    return lines


CELL_CASES = [
    ("rnn", "tanh"),
    ("rnn", "relu"),
    ("rnn", "leaky_relu"),
    ("rnn", "identity"),
    ("lstm", "tanh"),
    ("gru", "tanh"),
]
CELL_IDS = [f"{c}-{a}" for c, a in CELL_CASES]


def _backend_param(name: str):
    return pytest.param(name, id=name)


@pytest.fixture(params=[_backend_param(n) for n in BACKENDS])
def backend(request) -> str:
    """Every backend; one that does not load is skipped with the reason (see need_backend)."""
    need_backend(request.param)
    return request.param


@pytest.fixture(params=[_backend_param(n) for n in BACKENDS if n != "numpy"])
def fast_backend(request) -> str:
    """Every backend but the reference, for comparisons against it."""
    need_backend(request.param)
    return request.param


def make_case(
    cell: str,
    *,
    dtype=np.float64,
    T: int = 5,
    B: int = 3,
    D: int = 4,
    H: int = 5,
    lengths: bool = False,
    h0: bool = False,
    seed: int = 0,
    scale: float = 1.0,
) -> dict:
    """A random forward input and upstream gradients, for cell ``cell``."""
    rng = np.random.default_rng(seed)
    params = fastrnn.init_params(cell, D, H, seed=seed, dtype=dtype)
    if scale != 1.0:
        params = {k: (v * scale).astype(dtype) for k, v in params.items()}
    case = {
        "params": params,
        "x": rng.normal(size=(T, B, D)).astype(dtype),
        "h0": rng.normal(size=(B, H)).astype(dtype) * 0.5 if h0 else None,
        "c0": rng.normal(size=(B, H)).astype(dtype) * 0.5 if (h0 and cell == "lstm") else None,
        "lengths": None,
        "dhs": rng.normal(size=(T, B, H)).astype(dtype),
        "dh_n": rng.normal(size=(B, H)).astype(dtype),
        "dc_n": rng.normal(size=(B, H)).astype(dtype) if cell == "lstm" else None,
    }
    if lengths:
        lens = rng.integers(1, T + 1, size=B)
        lens[0] = T  # the longest sequence fills the batch, the others are padded
        if B > 1:
            lens[1] = 1
        case["lengths"] = lens
    return case


def forward_case(
    backend: str | None, cell: str, activation: str, case: dict, **forward_kw: object
) -> fastrnn.ForwardResult:
    """The forward of a :func:`make_case` case (``forward_kw``: more keywords of
    :func:`fastrnn.forward`, e.g. dropout masks)."""
    return fastrnn.forward(
        cell,
        case["params"],
        case["x"],
        case["h0"],
        case["c0"],
        activation=activation,
        lengths=case["lengths"],
        backend=backend,
        **forward_kw,  # type: ignore[arg-type]
    )


def case_loss(
    backend: str | None,
    cell: str,
    activation: str,
    case: dict,
    *,
    terms: bool = False,
    **forward_kw: object,
) -> float:
    """L = <dhs, hs> + <dh_n, h_n> + <dc_n, c_n> of a :func:`make_case` case, whose
    gradients are the case's upstream ones; with ``terms``, the sum of the magnitudes of
    its terms instead (the scale of L, for :func:`fd_tolerance`)."""
    res = forward_case(backend, cell, activation, case, **forward_kw)
    total = 0.0
    for key, out in (("dhs", res.hs), ("dh_n", res.h_n), ("dc_n", res.c_n)):
        if case[key] is not None:
            product = case[key] * out
            total += float(np.sum(np.abs(product) if terms else product))
    return total


def run_case(
    backend: str | None, cell: str, activation: str, case: dict, **forward_kw: object
) -> dict:
    """Forward and backward (gradient from every step and the final state) on a
    :func:`make_case` case; every output and gradient, by name."""
    res = forward_case(backend, cell, activation, case, **forward_kw)
    g = fastrnn.backward(res, case["dhs"], case["dh_n"], case["dc_n"], return_step_norms=True)
    out = {"hs": res.hs, "h_n": res.h_n, "dx": g.dx, "dh0": g.dh0, "norms": g.step_norms}
    out |= {f"d{k}": v for k, v in g.params.items()}
    if cell == "lstm":
        out |= {"c_n": res.c_n, "dc0": g.dc0}
    return out


# --- finite differences ------------------------------------------------------------------
#
# A central difference D(h) = (f(x+h) - f(x-h)) / (2h) of f computed in floating point
# differs from f'(x) by at most
#     h^2 / 6 * max|f'''|         (truncation: the Taylor remainder)
#   + k * u * S / h               (rounding: each evaluation of f is off by up to k*u*S)
# with u the machine epsilon of the dtype f is computed in and S the scale of f: the sum
# of the magnitudes of the terms f adds up (rounding is relative to those, not to |f|,
# which may cancel). k counts the roundings that reach f; the few-step, few-unit
# recurrences of the tests stay below ROUNDINGS. A bound from these terms holds on every
# instruction set (FMA or not, any summation order), unlike a relative tolerance that
# happened to pass on one machine.

FD_STEP = 1e-6
"""The default step h: in float64 the two terms balance near h = (3u)^(1/3) ~ 1e-5; at
1e-6 truncation (~2e-13 S) is still far below rounding (~2e-10 k S)."""

ROUNDINGS = 64
"""k above: how many roundings of size u*S one evaluation of f may carry. Measured on the
reference gradient checks: k = 8 failed one of them, k = 16 none; 64 leaves a margin of 4
and still checks a gradient to about 1e-8 of the scale of f in float64."""


def fd_tolerance(dtype, scale: float, *, step: float = FD_STEP, d3: float | None = None) -> float:
    """The absolute error bound of a central difference with step ``step`` of a function
    evaluated in ``dtype`` whose terms have magnitudes summing to ``scale``; ``d3`` bounds
    its third derivative (default ``scale``: the O(1) nonlinearities of these cells)."""
    u = float(np.finfo(dtype).eps)
    d3 = scale if d3 is None else d3
    return step**2 / 6 * d3 + ROUNDINGS * u * scale / step


def central_differences(
    f: Callable[[], float],
    arr: np.ndarray,
    idxs: Iterable[tuple[int, ...]] | None = None,
    *,
    step: float = FD_STEP,
) -> np.ndarray:
    """d f / d arr[idx] by central differences at ``idxs`` (default: every entry, giving an
    array of ``arr``'s shape); ``f`` reads ``arr``, which is perturbed in place and restored."""
    every = idxs is None
    points = list(np.ndindex(arr.shape)) if every else list(idxs)
    out = np.zeros(len(points))
    for n, idx in enumerate(points):
        old = arr[idx]
        arr[idx] = old + step
        up = f()
        arr[idx] = old - step
        down = f()
        arr[idx] = old
        out[n] = (up - down) / (2 * step)
    return out.reshape(arr.shape) if every else out


def assert_matches_central_differences(analytic, numeric, tol: float, *, err_msg: str = ""):
    """``analytic`` equals ``numeric`` within ``tol`` (from :func:`fd_tolerance`), and the
    check can fail: ``tol`` is far below the size of the gradient it checks."""
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    size = float(np.max(np.abs(numeric), initial=0.0))
    assert size == 0.0 or tol < 1e-3 * size, (
        f"{err_msg}: a tolerance of {tol:.2e} checks nothing on a gradient of size {size:.2e}"
    )
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=tol, err_msg=err_msg)


# --- threads and dropout masks -----------------------------------------------------------


@contextlib.contextmanager
def using_threads(n: int) -> Iterator[None]:
    """Run the block with ``fastrnn.set_num_threads(n)``, then restore the old count."""
    old = fastrnn.get_num_threads()
    fastrnn.set_num_threads(n)
    try:
        yield
    finally:
        fastrnn.set_num_threads(old)


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float, dtype) -> np.ndarray:
    """An inverted-dropout mask: 0 with probability p, else 1/(1-p)."""
    return ((rng.random(shape) >= p) / (1 - p)).astype(dtype)


# --- what the BLAS at hand does to the bits of a product ----------------------------------
# Some results are bit-identical only where the BLAS sums a product the same way whatever
# the surrounding call: checkpointed BPTT (the recompute projects one segment's rows, the
# full forward all of them) and one-hot rows run as token ids (the reference's scatter-add
# against the BLAS product dA^T X). OpenBLAS's SkylakeX kernels do; its Haswell kernels
# (AVX2-only CPUs) do not: their edge tiles and their dgemm's split sums give other last
# bits. The tests ask the BLAS first, then check bit-identity, or else agreement to rounding.


@functools.cache
def blas_rows_keep_their_bits(
    backend: str, rows: int, D: int, GH: int, segment_rows: tuple[int, ...], dtype=np.float32
) -> bool:
    """Whether the BLAS that ``backend`` calls (NumPy's OpenBLAS for numpy and cpp, SciPy's
    for numba) gives every row of ``X @ W.T`` ((rows, D) times (D, GH)) the same bits when
    the rows are cut into products of m rows (the last one shorter), for each m in
    ``segment_rows``, as in one product of all ``rows``."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(rows, D)).astype(dtype)
    W = rng.normal(size=(GH, D)).astype(dtype)
    if backend == "numba":
        from scipy.linalg import blas

        gemm = blas.sgemm if np.dtype(dtype) == np.float32 else blas.dgemm

        def product(a: np.ndarray) -> np.ndarray:
            return gemm(1.0, a, W, trans_b=True)
    else:

        def product(a: np.ndarray) -> np.ndarray:
            return a @ W.T

    full = product(X)
    cuts = [(s, min(s + m, rows)) for m in segment_rows for s in range(0, rows, m)]
    return all(np.array_equal(full[a:b], product(X[a:b])) for a, b in cuts)


@functools.cache
def blas_sums_in_order(dtype) -> bool:
    """Whether NumPy's BLAS gives ``dA^T X``, X one-hot rows, the bits of adding the rows of
    dA into their columns one after another (the reference's scatter-add for token ids)."""
    import scipy.sparse

    rng = np.random.default_rng(2)
    for rows, GH, D in ((24, 5, 7), (48, 20, 7), (64, 15, 11), (120, 32, 9)):
        dA = rng.normal(size=(rows, GH)).astype(dtype)
        ids = rng.integers(0, D, rows)
        one_hot = np.eye(D, dtype=dtype)[ids]
        ones = np.ones(rows, dtype=dtype)
        xt = scipy.sparse.csr_array((ones, (ids, np.arange(rows))), shape=(D, rows))
        if not np.array_equal(dA.T @ one_hot, (xt @ dA).T):
            return False
    return True


def forward_backward_arrays(run: tuple) -> dict[str, np.ndarray]:
    """Every array of a ``(ForwardResult, Gradients)`` pair by name: the outputs, the
    gradients, step norms and parameter gradients (``d<name>``); ``None`` left out."""
    res, g = run
    out = {name: getattr(res, name) for name in ("hs", "h_n", "c_n")}
    out.update({name: getattr(g, name) for name in ("dx", "dh0", "dc0", "step_norms")})
    out.update({f"d{name}": value for name, value in g.params.items()})
    return {name: value for name, value in out.items() if value is not None}


def assert_within_rounding(got: dict, want: dict, n_terms: int, what: str = "") -> None:
    """The same arrays by name, each within the rounding of a sum of ``n_terms`` terms in
    its dtype, relative to the largest magnitude of ``want``'s."""
    assert got.keys() == want.keys(), what
    for name, ref in want.items():
        eps = float(np.finfo(ref.dtype).eps)
        atol = n_terms * eps * float(np.max(np.abs(ref), initial=0.0))
        np.testing.assert_allclose(got[name], ref, rtol=0, atol=atol, err_msg=f"{name} {what}")
