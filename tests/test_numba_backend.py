"""The numba backend beyond the reference comparison of test_backends.py: lazy compilation,
warmup, threads, the GIL, its float32 tanh, and the report when numba cannot load."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastrnn
from conftest import CELL_CASES, CELL_IDS, make_case, need_backend, run_case


@pytest.fixture
def kernels():
    """The private kernel module; a skip (or failure, see need_backend) if numba does not load."""
    need_backend("numba")
    from fastrnn.backends import _numba_kernels

    return _numba_kernels


def _python(code: str, timeout: float = 120, **env: str) -> str:
    """Run ``code`` in a fresh interpreter, with ``env`` added to the environment; return
    its stdout (a failure fails the test)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _run(cell, activation, case, backend="numba"):
    return run_case(backend, cell, activation, case)


# --- lazy compilation and warmup -------------------------------------------------------


def test_import_compiles_nothing(kernels):
    out = _python(
        """
        import sys
        import fastrnn
        assert "numba" not in sys.modules, "import fastrnn imported numba"
        assert "numba" in fastrnn.available_backends()  # loads the backend module
        from fastrnn.backends import _numba_kernels as k
        compiled = [name for name, _ in k.SIGNATURES if getattr(k, name).signatures]
        assert not compiled, f"compiled or loaded at import: {compiled}"
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_first_call_compiles_only_what_it_uses(kernels):
    out = _python(
        """
        import numpy as np
        import fastrnn
        from fastrnn.backends import _numba_kernels as k
        fastrnn.set_num_threads(1)
        p = fastrnn.init_params("gru", 3, 4, seed=0)
        fastrnn.forward("gru", p, np.ones((2, 1, 3), np.float32), backend="numba")
        done = [
            f"{name}-{dtype.__name__}"
            for (name, dtype), sig in k.SIGNATURES.items()
            if tuple(sig) in [tuple(s) for s in getattr(k, name).signatures]
        ]
        print(done, sum(len(getattr(k, n).signatures) for n in {name for name, _ in k.SIGNATURES}))
        """
    )
    assert out.strip() == "['gru_forward-float32'] 1"


def test_warmup_compiles_every_kernel(kernels):
    seconds = fastrnn.warmup("numba")
    assert list(seconds) == ["numba"] and seconds["numba"] >= 0
    for (name, _dtype), sig in kernels.SIGNATURES.items():
        assert tuple(sig) in [tuple(s) for s in getattr(kernels, name).signatures], name
    # all C-contiguous: no other layout was compiled along the way
    for name, _ in kernels.SIGNATURES:
        for sig in getattr(kernels, name).signatures:
            assert all(getattr(t, "layout", "C") == "C" for t in sig), (name, sig)


def test_warmup_default_is_every_available_backend():
    assert set(fastrnn.warmup()) == set(fastrnn.available_backends())
    assert list(fastrnn.warmup(["numpy"])) == ["numpy"]


@pytest.mark.parametrize(
    ("arg", "error", "match"),
    [("bogus", ValueError, "unknown backend 'bogus'"), (3, TypeError, "got int")],
)
def test_warmup_rejects_bad_names(arg, error, match):
    with pytest.raises(error, match=match):
        fastrnn.warmup(arg)


def test_kernels_run_as_python_under_numba_disable_jit(kernels):
    # the debugging mode of numba: the same kernels, interpreted
    out = _python(
        """
        import os
        os.environ["NUMBA_DISABLE_JIT"] = "1"
        import numpy as np
        import fastrnn
        fastrnn.set_num_threads(2)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(4, 3, 2))
        for cell in ("rnn", "lstm", "gru"):
            p = fastrnn.init_params(cell, 2, 3, seed=0, dtype=np.float64)
            got, want = (
                fastrnn.backward(
                    fastrnn.forward(cell, p, x, lengths=[4, 1, 2], backend=name),
                    dh_n=np.ones((3, 3)),
                )
                for name in ("numba", "numpy")
            )
            assert np.allclose(got.dx, want.dx, rtol=1e-12, atol=1e-14), cell
            assert np.allclose(got.params["W_hh"], want.params["W_hh"], rtol=1e-12), cell
        print(fastrnn.warmup("numba")["numba"] < 1)
        """
    )
    assert out.strip() == "True"


# --- numba missing ---------------------------------------------------------------------


def test_missing_numba_is_reported_and_numpy_still_works():
    out = _python(
        """
        import sys
        sys.modules["numba"] = None  # makes `import numba` fail as if it were not installed
        import numpy as np
        import fastrnn
        assert "numba" not in fastrnn.available_backends()
        print(fastrnn.unavailable_backends()["numba"])
        p = fastrnn.init_params("rnn", 3, 4, seed=0)
        x = np.ones((2, 1, 3), np.float32)
        try:
            fastrnn.forward("rnn", p, x, backend="numba")
        except RuntimeError as exc:
            print(exc)
        res = fastrnn.forward("rnn", p, x, backend="numpy")
        assert res.hs.shape == (2, 1, 4)
        """
    )
    reason, error = out.strip().splitlines()
    assert "Error" in reason and "numba" in reason
    assert "'numba' is not available" in error and "pip install numba" in error


def test_missing_scipy_is_reported(kernels):
    out = _python(
        """
        import sys
        sys.modules["scipy"] = None  # as if SciPy were not installed
        import fastrnn
        assert "numba" not in fastrnn.available_backends()
        print(fastrnn.unavailable_backends()["numba"])
        """
    )
    assert "SciPy is missing" in out


# --- threads and the GIL ---------------------------------------------------------------


@pytest.fixture
def two_threads(kernels):
    """The test may set fastrnn's thread count; it is restored after it. (Two chunks run on
    two threads even on a single core: the calling thread and one of the pool's.)"""
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
def test_thread_count_does_not_change_results(two_threads, cell, activation):
    import numba

    case = make_case(cell, T=9, B=7, D=3, H=6, lengths=True, h0=True, seed=3)
    numba_threads = numba.get_num_threads()
    fastrnn.set_num_threads(1)
    serial = _run(cell, activation, case)
    fastrnn.set_num_threads(2)
    parallel = _run(cell, activation, case)
    assert numba.get_num_threads() == numba_threads, "the caller's numba thread count changed"
    for name, want in serial.items():
        # chunks of 3 and 4 sequences instead of 7 take other BLAS paths: rounding only
        np.testing.assert_allclose(parallel[name], want, rtol=1e-13, atol=1e-14, err_msg=name)


def test_concurrent_calls_match_serial_calls(two_threads):
    fastrnn.set_num_threads(2)
    cases = [
        make_case(c, T=30, B=6, D=4, H=8, lengths=True, h0=True, seed=s)
        for c, s in [("rnn", 0), ("lstm", 1), ("gru", 2), ("lstm", 3)]
    ]
    cells = ["rnn", "lstm", "gru", "lstm"]
    want = [_run(cell, "tanh", case) for cell, case in zip(cells, cases, strict=True)]
    got: list = [None] * 4
    errors: list = []
    barrier = threading.Barrier(4)

    def work(i):
        try:
            barrier.wait()
            for _ in range(5):
                got[i] = _run(cells[i], "tanh", cases[i])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(4):
        for name, value in want[i].items():  # the same chunks, the same code: the same bits
            np.testing.assert_array_equal(got[i][name], value, err_msg=name)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_after_parallel_run_works(two_threads):
    # numba kills a child that launches GNU OpenMP threads its parent had started
    out = _python(
        """
        import os
        import numpy as np
        import fastrnn
        fastrnn.set_num_threads(2)
        p = fastrnn.init_params("gru", 3, 4, seed=0)
        x = np.random.default_rng(0).normal(size=(6, 5, 3)).astype(np.float32)
        want = fastrnn.forward("gru", p, x, backend="numba").hs
        pid = os.fork()
        if pid == 0:
            got = fastrnn.forward("gru", p, x, backend="numba").hs
            os._exit(0 if np.allclose(got, want, rtol=1e-6, atol=1e-7) else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    assert out.strip() == "0"


def test_read_only_inputs(kernels):
    case = make_case("lstm", T=6, B=4, lengths=True, h0=True, seed=1)
    want = _run("lstm", "tanh", case)
    for value in [*case.values(), *case["params"].values()]:
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    got = _run("lstm", "tanh", case)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    # read-only arrays were copied, not given to numba to compile another variant for
    from numba import types

    for name, _ in kernels.SIGNATURES:
        for sig in getattr(kernels, name).signatures:
            assert all(t.mutable for t in sig if isinstance(t, types.Array)), (name, sig)


def test_kernels_release_the_gil(kernels):
    T, B, D, H = 200_000, 1, 4, 32
    rng = np.random.default_rng(0)
    W_ih_T, W_hh_T = rng.uniform(-0.2, 0.2, (D, H)), rng.uniform(-0.2, 0.2, (H, H))
    x = rng.normal(size=(T, B, D))
    hs = np.empty((T, B, H))
    bias, h0, h_n = np.zeros(H), np.zeros((B, H)), np.empty((B, H))
    lengths = np.full(B, T, dtype=np.int64)
    forward = kernels.compiled("rnn_forward", np.float64)
    args = (np.empty((0, 0), dtype=np.int64), W_ih_T, W_hh_T, bias, h0)  # no token ids
    no_mask = np.empty((0, 0))  # rec_mask: no recurrent dropout
    two = np.full(B, 2, dtype=np.int64)
    forward(0, B, x[:2].copy(), *args, two, 0, 0.0, hs[:2].copy(), h_n, no_mask)
    started = threading.Event()

    def run():
        started.set()
        forward(0, B, x, *args, lengths, 0, 0.0, hs, h_n, no_mask)

    worker = threading.Thread(target=run)
    worker.start()
    started.wait()
    count = 0
    while worker.is_alive():  # runs only if the worker let go of the GIL
        count += 1
    worker.join()
    assert count > 1000, f"the main thread ran {count} iterations during the kernel"


# --- float32 math ----------------------------------------------------------------------


def test_float32_tanh_and_sigmoid(kernels):
    from numba import njit

    @njit(fastmath=kernels.FASTMATH, error_model="numpy")
    def apply(v, t, s):
        for j in range(v.shape[0]):
            t[j] = kernels.tanh(v[j])
            s[j] = kernels.sigmoid(v[j])

    v = np.concatenate(
        [np.linspace(-12, 12, 100_001), [np.nan, np.inf, -np.inf, 1e-30, -5e-4, 1e4]]
    ).astype(np.float32)
    t, s = np.empty_like(v), np.empty_like(v)
    apply(v, t, s)
    v64 = v.astype(np.float64)
    with np.errstate(over="ignore"):
        s_want = 1 / (1 + np.exp(-v64))
    np.testing.assert_allclose(t, np.tanh(v64), rtol=0, atol=1e-6)
    np.testing.assert_allclose(s, s_want, rtol=0, atol=1e-6)
    assert t.dtype == np.float32 and np.isnan(t[-6]) and np.isnan(s[-6])


# --- inference forward and results independent of contention ----------------------------


def _backend_forward(case, cell, **kw):
    from fastrnn.backends import numba_backend

    p = case["params"]
    B, H = case["x"].shape[1], p["W_hh"].shape[1]
    h0 = case["h0"] if case["h0"] is not None else np.zeros((B, H), dtype=case["x"].dtype)
    c0 = case["c0"] if case["c0"] is not None else np.zeros_like(h0)
    lengths = None if case["lengths"] is None else np.asarray(case["lengths"], np.int64)
    args = (cell, p, case["x"], h0, c0 if cell == "lstm" else None)
    return numba_backend.forward(
        *args, activation="tanh", negative_slope=0.01, lengths=lengths, **kw
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_inference_forward_saves_nothing_and_gives_the_same_bits(kernels, cell, dtype):
    case = make_case(cell, dtype=dtype, T=13, B=5, D=3, H=6, lengths=True, h0=True, seed=4)
    for threads in (1, 2):
        hs, h_n, c_n, saved = _backend_forward(case, cell, num_threads=threads, training=True)
        got = _backend_forward(case, cell, num_threads=threads, training=False)
        assert got[3] is None
        assert (saved is None) == (cell == "rnn")
        for want, value in zip((hs, h_n, c_n), got[:3], strict=True):
            if want is None:
                assert value is None
            else:
                np.testing.assert_array_equal(value, want)


class _InlineExecutor:
    """Runs each submitted chunk at once on the submitting thread: every chunk serially."""

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future


@pytest.fixture
def chunks_run_serially(kernels, monkeypatch):
    """The numba backend's chunks all run on the calling thread, one after the other (as
    when every pool thread is busy with other calls)."""
    from fastrnn.backends import numba_backend

    monkeypatch.setattr(numba_backend, "_workers", _InlineExecutor)


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
def test_results_do_not_depend_on_contention(two_threads, cell, activation, request):
    # the same chunks with the same compiled kernel, whichever thread runs them: same bits
    case = make_case(cell, dtype=np.float32, T=40, B=7, D=3, H=8, lengths=True, h0=True, seed=5)
    fastrnn.set_num_threads(2)
    parallel = _run(cell, activation, case)
    request.getfixturevalue("chunks_run_serially")
    serial = _run(cell, activation, case)
    for name, want in parallel.items():
        np.testing.assert_array_equal(serial[name], want, err_msg=name)


def test_head_does_not_depend_on_contention(two_threads, request):
    rng = np.random.default_rng(7)
    N, H, K = 5000, 8, 5  # more than 2 * 1024 rows: two chunks
    h = rng.normal(size=(N, H)).astype(np.float32)
    weight = rng.normal(size=(K, H)).astype(np.float32)
    bias = rng.normal(size=K).astype(np.float32)
    targets = rng.integers(0, K, size=N)
    fastrnn.set_num_threads(2)

    def head():
        return fastrnn.linear_cross_entropy(h, weight, bias, targets, backend="numba")

    parallel = head()
    request.getfixturevalue("chunks_run_serially")
    serial = head()
    assert serial.loss == parallel.loss
    for name in ("dh", "dweight", "dbias"):
        np.testing.assert_array_equal(getattr(serial, name), getattr(parallel, name), name)


# --- the per-step product ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [
        (1, 64, 256),
        (1, 13, 7),
        (3, 21, 33),
        (1, 8, 1),
        (16, 64, 256),
        (16, 256, 64),
        (4, 4, 1),
        (7, 9, 5),
        (32, 130, 67),
        (5, 3, 17),
    ],
)
def test_small_product_is_the_matrix_product(kernels, dtype, m, k, n):
    """The in-house per-step product (used where SciPy's OpenBLAS has no small-matrix
    path) equals a @ b: blocks of four rows and the rows left over, whole groups of four
    (eight) rows of b and the rest."""
    _checked_product(kernels._small_product, dtype, m, k, n, seed=3)


def _checked_product(product, dtype, m, k, n, seed):
    """a, b and product(a, b, out) for random a (m, k), b (k, n), checked to be a @ b up to
    the rounding of a sum of k products in any order; out starts as NaN (every element must
    be written)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)
    out = np.full((m, n), np.nan, dtype=dtype)
    product(a, b, out)
    bound = k * np.finfo(dtype).eps * (np.abs(a) @ np.abs(b))
    assert np.all(np.abs(out - a @ b) <= bound), np.abs(out - a @ b).max()
    return a, b, out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [
        (1, 64, 64),  # one row: 8-vector tiles
        (1, 13, 7),  # fewer columns than a vector: single elements
        (3, 21, 33),
        (4, 4, 1),
        (4, 64, 16),  # one 4 x 2 tile (float32) or two (float64)
        (7, 9, 5),
        (9, 37, 45),  # 4-row tiles, then every kind of one-row tile
        (16, 64, 256),  # 64 KiB of float32 weights: the largest tiled
        (16, 256, 64),
        (32, 8, 100),
    ],
)
def test_tiled_product_is_the_matrix_product_and_rows_stand_alone(kernels, dtype, m, k, n):
    """The register tiles (LLVM IR, _fma_tile) give a @ b, every row the same bits as that
    row alone (its sum does not depend on the tile that computed it: the same bits whatever
    the chunks of the batch), and every element written."""
    a, b, out = _checked_product(kernels._tiled_product, dtype, m, k, n, seed=5)
    for r in range(m):
        alone = np.full((1, n), np.nan, dtype=dtype)
        kernels._tiled_product(a[r : r + 1].copy(), b, alone)
        np.testing.assert_array_equal(alone[0], out[r], err_msg=f"row {r}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_per_step_product_takes_the_tiles_for_small_weights(kernels, dtype):
    """_gemm (the per-step product in the kernels) runs the register tiles where the weights
    fit in TILE_BYTES, else _small_product (both in-house where SMALL_PRODUCT_BYTES allows,
    else BLAS): each case gives the bits of its path. (The two in-house paths may agree in
    every bit: with reassociation allowed LLVM may contract _small_product's sums into the
    tiles' chain of multiply-adds; a BLAS call sums in blocks, in another order.)"""
    from numba import njit

    @njit(fastmath=kernels.FASTMATH, error_model="numpy")  # as the kernels are compiled
    def step_product(a, b, out):
        kernels._gemm(a, b, out)

    item = np.dtype(dtype).itemsize
    most = kernels.TILE_BYTES // 16 // item  # columns of 16 rows of weights in TILE_BYTES
    for m, k, n in [(16, 64, 64), (8, 16, most), (8, 16, most + 1)]:
        a, b, got = _checked_product(step_product, dtype, m, k, n, seed=6)
        if k * n * item > kernels.SMALL_PRODUCT_BYTES:  # BLAS: checked against a @ b only
            continue
        tiled = k * n * item <= kernels.TILE_BYTES
        want = np.empty((m, n), dtype)
        (kernels._tiled_product if tiled else kernels._small_product)(a, b, want)
        np.testing.assert_array_equal(got, want, err_msg=f"{(m, k, n)}")


def test_small_products_follow_the_bound_openblas_kernels(kernels):
    """In-house up to 32 rows and 256 KiB of weights unless the OpenBLAS the kernels call
    runs its SkylakeX family of kernels (then every per-step product goes to BLAS)."""
    from fastrnn._sysinfo import blas_info, openblas_kernel_isa

    bound = [i for i in blas_info() if i["filepath"] == kernels.BLAS_PATH]
    assert len(bound) == 1, (kernels.BLAS_PATH, blas_info())
    avx512 = openblas_kernel_isa(bound[0]["architecture"]) == "avx512"
    assert kernels.SMALL_PRODUCT_BYTES == (0 if avx512 else 256 * 1024)
    assert kernels.SMALL_PRODUCT_ROWS == 32


# --- the BLAS hand-off -----------------------------------------------------------------


def test_kernels_call_the_blas_the_cpp_kernels_call(kernels):
    """The numba kernels are bound to the library :func:`find_blas` picks (NumPy's own
    OpenBLAS with 64-bit integers where NumPy ships one, as the pip wheels do), the one the
    cpp backend takes, and ``fastrnn info`` names it."""
    from fastrnn.backends import _blas, numba_backend

    handover, path = _blas.find_blas()
    assert handover[0], handover[4]  # an OpenBLAS was found (pip's NumPy and SciPy ship one)
    assert (kernels.BLAS_NAME, kernels.BLAS_PATH) == (handover[4], path)
    assert kernels._INT64_FLAG.value == int(handover[5])
    assert numba_backend.blas_name() == kernels.BLAS_NAME
    limited = numba_backend._kernel_blas().lib_controllers
    assert [lib.filepath for lib in limited] == [path]


def test_the_bound_blas_runs_one_thread_while_kernels_run(kernels):
    """Threads compose: while any kernel call runs, the library the kernels call runs one
    thread per call (reference-counted across overlapping calls); the caller's setting comes
    back after the last one, and a whole forward and backward leave it as it was."""
    import threadpoolctl

    from fastrnn.backends import numba_backend

    def bound_threads():
        infos = threadpoolctl.threadpool_info()
        return [i["num_threads"] for i in infos if i["filepath"] == kernels.BLAS_PATH]

    with threadpoolctl.threadpool_limits(limits=2):
        assert bound_threads() == [2]
        with numba_backend._single_threaded_blas():
            assert bound_threads() == [1]
            with numba_backend._single_threaded_blas():
                assert bound_threads() == [1]
            assert bound_threads() == [1]  # the outer call still runs
        assert bound_threads() == [2]
        case = make_case("lstm", T=6, B=40, D=20, H=30, seed=4)
        res = fastrnn.forward("lstm", case["params"], case["x"], backend="numba")
        fastrnn.backward(res, dhs=np.ones_like(res.hs))
        assert bound_threads() == [2]


def _jitted_dot():
    from numba import njit

    from fastrnn.backends._numba_kernels import _dot

    @njit
    def dot(a, b, out):
        _dot(a, b, out)

    return dot


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_t", [False, True], ids=["a", "a.T"])
@pytest.mark.parametrize("b_t", [False, True], ids=["b", "b.T"])
@pytest.mark.parametrize(
    "m, k, n", [(1, 1, 1), (3, 7, 5), (33, 129, 65), (256, 64, 32), (2, 0, 3), (0, 4, 2), (5, 3, 0)]
)
def test_blas_product_is_the_matrix_product(kernels, dtype, a_t, b_t, m, k, n):
    """The kernels' ``?gemm`` call (:func:`_dot`): C- and F-contiguous operands (a
    transposed view is F), shapes whose sizes are no multiple of anything, one row or
    column, and empty products (k = 0 gives zeros; no call with m or n = 0)."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(k, m) if a_t else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if b_t else (k, n)).astype(dtype)
    a, b = (a.T if a_t else a), (b.T if b_t else b)
    out = np.full((m, n), np.nan, dtype=dtype)
    _jitted_dot()(a, b, out)
    eps = np.finfo(dtype).eps
    bound = max(k, 1) * eps * (np.abs(a) @ np.abs(b))  # a sum of k products, in another order
    assert np.all(np.abs(out - a @ b) <= bound), np.abs(out - a @ b).max()


def test_scipys_openblas_on_request(kernels):
    """FASTRNN_BLAS=scipy binds the kernels to SciPy's OpenBLAS (32-bit integers) in a new
    process; the same compiled kernels (numba's cache holds the names, not the addresses)
    then agree with the reference, and threadpoolctl limits that library."""
    out = _python(
        """
        import numpy as np
        import fastrnn
        from fastrnn.backends import _numba_kernels as k, numba_backend
        print(k.BLAS_NAME)
        print(k._INT64_FLAG.value)
        print([lib.filepath == k.BLAS_PATH for lib in numba_backend._kernel_blas().lib_controllers])
        rng = np.random.default_rng(0)
        for cell in ("rnn", "lstm"):
            p = fastrnn.init_params(cell, 20, 30, seed=1, dtype=np.float64)
            x = rng.normal(size=(9, 40, 20))
            res = {}
            for be in ("numpy", "numba"):
                r = fastrnn.forward(cell, p, x, backend=be)
                g = fastrnn.backward(r, dhs=np.ones_like(r.hs))
                res[be] = (r.hs, g.dx, g.params["W_hh"], g.params["W_ih"])
            for a, b in zip(res["numba"], res["numpy"]):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        print("agree")
        """,
        timeout=600,
        FASTRNN_BLAS="scipy",
    )
    name, flag, limited, agree = out.strip().splitlines()
    assert "via SciPy" in name and flag == "0" and limited == "[True]" and agree == "agree"
