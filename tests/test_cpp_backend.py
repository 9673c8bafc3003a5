"""What only the C++ backend has: the GIL released around its kernels, thread safety, the
thread-count setting, the caller's floating-point mode restored, the per-instruction-set
kernel modules, and the checks of its raw entry points (which must raise, never crash).

Agreement with the reference for every cell, dtype and option is tests/test_backends.py.
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastrnn
from conftest import forward_case, make_case, need_backend, run_case

if "cpp" not in fastrnn.available_backends():  # skip, or fail if required: see need_backend
    need_backend("cpp", allow_module_level=True)

from fastrnn import _core
from fastrnn.backends import cpp_backend, numpy_backend

LEVELS = ("generic", "avx2", "avx512")


def _forward_backward(case, cell, backend="cpp"):
    """Every output and gradient of forward + backward, as a list (see conftest.run_case)."""
    return list(run_case(backend, cell, "tanh", case).values())


@pytest.fixture
def threads():
    """Restore the thread-count setting after a test changes it."""
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


def test_gil_is_released_during_a_long_forward():
    """A Python thread keeps running while the kernel runs: its longest pause is far
    shorter than the call (with the GIL held it would pause for the whole call)."""
    case = make_case("lstm", dtype=np.float32, T=10000, B=8, D=16, H=64)
    stop = threading.Event()
    stamps: list[float] = []

    def spin():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0)

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.02)
        start = time.perf_counter()
        for _ in range(3):
            fastrnn.forward("lstm", case["params"], case["x"], backend="cpp")
        end = time.perf_counter()
    finally:
        stop.set()
        spinner.join()
    during = np.array([s for s in stamps if start <= s <= end])
    assert during.size > 10, (
        f"the other thread ran {during.size} times during a {end - start:.3f}s call"
    )
    longest_pause = np.max(np.diff(np.concatenate([[start], during, [end]])))
    assert longest_pause < 0.5 * (end - start), (
        f"the other thread paused {longest_pause:.3f}s of a {end - start:.3f}s call"
    )


def _same(a, b):
    """Equal up to the last bit or two: Eigen evaluates the first and last few elements of a
    column without SIMD when the array's address is not aligned, so two calls can differ in
    the last ulp depending on where NumPy put the arrays. Mixing up data between threads
    would give errors of order 1."""
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_concurrent_calls_give_the_serial_results(threads):
    fastrnn.set_num_threads(2)
    cases = [
        (cell, make_case(cell, T=60, B=6, D=5, H=12, lengths=True, h0=True, seed=seed))
        for seed, cell in enumerate(["rnn", "lstm", "gru", "lstm", "rnn", "gru", "gru", "lstm"])
    ]
    serial = [_forward_backward(case, cell) for cell, case in cases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda cc: _forward_backward(cc[1], cc[0]), cases * 3))
    for i, got in enumerate(concurrent):
        for a, b in zip(got, serial[i % len(cases)], strict=True):
            _same(a, b)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_thread_count_does_not_change_results(threads, cell):
    case = make_case(cell, T=30, B=7, D=6, H=20, lengths=True, h0=True, seed=3)
    results = {}
    for n in (1, 2, 3, 8):  # 8 > B: more threads than sequences
        fastrnn.set_num_threads(n)
        results[n] = _forward_backward(case, cell)
    for n in (2, 3, 8):
        for a, b in zip(results[n], results[1], strict=True):
            _same(a, b)


def test_denormal_mode_of_the_caller_is_restored():
    """The kernels flush subnormals to zero while they run; the caller's mode is back after."""
    tiny = np.array([1e-40], dtype=np.float32)  # subnormal
    assert (tiny * np.float32(0.5))[0] != 0
    case = make_case("gru", dtype=np.float32, lengths=True, h0=True)
    _forward_backward(case, "gru")
    assert (tiny * np.float32(0.5))[0] != 0, "flush-to-zero leaked into the calling thread"


def test_build_info_reports_the_chosen_instruction_set():
    info = fastrnn.build_info()
    assert info["kernel_isa"] == cpp_backend.ISA == _core.kernel_isa()
    assert info["kernel_isa"] in info["kernel_isas_built"]
    assert _core.cpu_supports(info["kernel_isa"])
    assert cpp_backend._kernels.ISA == info["kernel_isa"]
    assert _core.cpu_supports("generic")
    assert not _core.cpu_supports("no-such-level")


def _isa_levels():
    """LEVELS, each skipped where the build has no kernels for it or this CPU cannot run
    them (reasons that FASTRNN_NO_SKIPS lets pass: no install changes them)."""
    built = _core.build_info()["kernel_isas_built"]

    def why(level):
        if not _core.cpu_supports(level):
            return f"this CPU cannot run the {level} kernels"
        return f"this build has no {level} kernels (not an x86-64 GCC/Clang build)"

    return [
        pytest.param(
            level,
            marks=pytest.mark.skipif(
                level not in built or not _core.cpu_supports(level), reason=why(level)
            ),
        )
        for level in LEVELS
    ]


# (T, B, D, H): sizes that are not whole SIMD packets (Eigen's products), and a longer one
# with whole packets (the panel kernel) whose backward fills several blocks of steps per
# worker, each gathering its chunk's columns
ISA_SHAPES = [(9, 5, 7, 33), (300, 5, 16, 32)]


def raw_forward_backward(kernels, cell, case, threads):
    """Every output and gradient of a kernel module's raw forward and backward on a
    make_case case (with lengths), by name; lstm's cell states too."""
    p, x, h0, c0 = case["params"], case["x"], case["h0"], case["c0"]
    if c0 is None and cell == "lstm":
        c0 = np.zeros_like(h0)
    lengths = case["lengths"].astype(np.int64)
    hs, h_n, c_n, gates, extra = kernels.forward(
        cell,
        "tanh",
        0.01,
        p["W_ih"],
        p["W_hh"],
        p["b_ih"],
        p["b_hh"],
        x,
        h0,
        c0,
        lengths,
        threads,
    )
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, _ = kernels.backward(
        cell,
        "tanh",
        0.01,
        p["W_ih"],
        p["W_hh"],
        x,
        h0,
        c0,
        hs,
        gates,
        extra,
        case["dhs"],
        case["dh_n"],
        case["dc_n"],
        lengths,
        threads,
        False,
    )
    out = {"hs": hs, "h_n": h_n, "dx": dx, "dh0": dh0, "W_ih": dW_ih, "W_hh": dW_hh}
    out.update({"b_ih": db_ih, "b_hh": db_hh})
    if cell == "lstm":
        out.update({"c_n": c_n, "dc0": dc0})
    return out


def reference_forward_backward(cell, case):
    """The NumPy reference's results for raw_forward_backward, by the same names."""
    c0 = case["c0"]
    if c0 is None and cell == "lstm":
        c0 = np.zeros_like(case["h0"])
    p, x, h0, lengths = case["params"], case["x"], case["h0"], case["lengths"]
    ref = fastrnn.forward(cell, p, x, h0, c0, lengths=lengths, backend="numpy")
    g = fastrnn.backward(ref, case["dhs"], case["dh_n"], case["dc_n"])
    out = {"hs": ref.hs, "h_n": ref.h_n, "dx": g.dx, "dh0": g.dh0, **g.params}
    if cell == "lstm":
        out.update({"c_n": ref.c_n, "dc0": g.dc0})
    return out


def assert_close_to(got, want, dtype, rtol=None):
    """Every array of `want` matched by `got`, relative to its largest entry (sums over
    steps may cancel)."""
    rtol = rtol or (1e-4 if dtype == np.float32 else 1e-10)
    for name, w in want.items():
        err = float(np.abs(got[name] - w).max())
        assert err <= rtol * float(np.abs(w).max()), f"{name}: max error {err}"


@pytest.mark.parametrize("shape", ISA_SHAPES, ids=["ragged", "packets-long"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("level", _isa_levels())
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_every_instruction_set_level_matches_the_reference(level, cell, dtype, shape):
    kernels = importlib.import_module(f"fastrnn._kernels_{level}")
    T, B, D, H = shape
    case = make_case(cell, T=T, B=B, D=D, H=H, lengths=True, h0=True, seed=1, dtype=dtype)
    got = raw_forward_backward(kernels, cell, case, 2)
    assert_close_to(got, reference_forward_backward(cell, case), dtype)


@pytest.mark.parametrize("rows", [37, 70_000], ids=["few-rows", "streamed-dh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("level", _isa_levels())
def test_every_instruction_set_level_computes_the_head(level, dtype, rows):
    # H = 64: whole packets at every level (dh streamed past 16 MB); K = 10: not
    kernels = importlib.import_module(f"fastrnn._kernels_{level}")
    rng = np.random.default_rng(3)
    h = rng.normal(size=(rows, 64)).astype(dtype)
    weight, bias = rng.normal(size=(10, 64)).astype(dtype), rng.normal(size=10).astype(dtype)
    targets = rng.integers(0, 10, size=rows)
    row_weights = rng.random(rows).astype(dtype)
    got = kernels.linear_cross_entropy(h, weight, bias, targets, row_weights, 0.5, 2)
    # the reference with the same row weights and scale
    ref = numpy_backend.linear_cross_entropy(
        h, weight, bias, targets, row_weights, scale=0.5, num_threads=1
    )
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    assert got[0] == pytest.approx(ref[0], rel=rtol)
    for a, b in zip(got[1:], ref[1:], strict=True):
        assert float(np.abs(a - b).max()) <= rtol * float(np.abs(b).max())


def test_isa_environment_variable_caps_the_level():
    code = "from fastrnn import _core; print(_core.kernel_isa())"
    env = {**os.environ, "FASTRNN_CPP_ISA": "generic"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "generic"


# --- the raw entry points check every buffer -----------------------------------------


def _raw_args(cell="lstm", dtype=np.float64, T=4, B=3, D=2, H=5):
    case = make_case(cell, dtype=dtype, T=T, B=B, D=D, H=H, h0=True)
    p = case["params"]
    return {
        "cell": cell,
        "activation": "tanh",
        "negative_slope": 0.01,
        "W_ih": p["W_ih"],
        "W_hh": p["W_hh"],
        "b_ih": p["b_ih"],
        "b_hh": p["b_hh"],
        "x": case["x"],
        "h0": case["h0"],
        "c0": case["c0"],
        "lengths": None,
        "num_threads": 1,
    }


def _backward_args(fwd_args):
    k = cpp_backend._kernels
    hs, _, _, gates, extra = k.forward(**fwd_args)
    args = {key: v for key, v in fwd_args.items() if key not in ("b_ih", "b_hh")}
    B, H = fwd_args["h0"].shape
    dt = fwd_args["x"].dtype
    args.update(
        hs=hs,
        gates=gates,
        extra=extra,
        dhs=np.ones_like(hs),
        dh_n=np.ones((B, H), dt),
        dc_n=np.ones((B, H), dt) if fwd_args["cell"] == "lstm" else None,
    )
    return args


BAD_INPUTS = [
    # sizes are read from x and W_hh, so an x of the wrong width shows up at W_ih
    (
        "x",
        lambda a: a["x"][:, :, :1].copy(),
        ValueError,
        r"W_ih has shape \(20, 2\), expected \(20, 1\)",
    ),
    ("x", lambda a: a["x"].astype(np.float16), TypeError, "float32 or float64"),
    ("x", lambda a: a["x"].astype(np.int32), TypeError, "float32 or float64"),
    # int64 x is token ids (T, B) in 0..D-1, D from W_ih
    ("x", lambda a: a["x"].astype(np.int64), ValueError, r"expected \(T, B\) token ids"),
    ("x", lambda a: np.full(a["x"].shape[:2], 2), ValueError, r"x must be in 0..D-1 = 0..1"),
    ("x", lambda a: np.full(a["x"].shape[:2], -1), ValueError, "got -1 at index 0"),
    ("x", lambda a: np.zeros(a["x"].shape[:2], np.int64).T, ValueError, "C-contiguous"),
    ("x", lambda a: a["x"][0], ValueError, "x has shape"),
    ("x", lambda a: a["x"][:0], ValueError, "T >= 1"),
    ("x", lambda a: [[[1.0]]], TypeError, "numpy array"),
    ("x", lambda a: np.asfortranarray(a["x"]), ValueError, "C-contiguous"),
    ("W_hh", lambda a: a["W_hh"][:-1], ValueError, "W_hh has shape"),
    ("W_hh", lambda a: a["W_hh"].astype(np.float32), TypeError, "W_hh has dtype"),
    # a non-native byte order is refused by name (the functional core converts it first)
    ("x", lambda a: a["x"].astype(">f8"), TypeError, "x has dtype .*non-native byte order"),
    ("W_hh", lambda a: a["W_hh"].astype(">f8"), TypeError, "W_hh has dtype .*non-native"),
    ("h0", lambda a: a["h0"].astype(">f8"), TypeError, "h0 has dtype .*non-native"),
    ("W_ih", lambda a: a["W_ih"].T, ValueError, "W_ih has shape"),
    ("W_ih", lambda a: a["W_ih"][:, ::-1], ValueError, "C-contiguous"),
    ("b_ih", lambda a: a["b_ih"][:-1], ValueError, "b_ih has shape"),
    ("b_hh", lambda a: None, TypeError, "b_hh must be a numpy array"),
    ("h0", lambda a: a["h0"].T.copy(), ValueError, "h0 has shape"),
    ("c0", lambda a: None, ValueError, "c0 is required"),
    ("lengths", lambda a: np.array([1, 2, 9]), ValueError, "lengths must be in 1..T"),
    ("lengths", lambda a: np.array([0, 2, 3]), ValueError, "lengths must be in 1..T"),
    ("lengths", lambda a: np.array([1, 2, 3], np.int32), TypeError, "int64"),
    ("lengths", lambda a: np.array([1, 2, 3], ">i8"), TypeError, "lengths has dtype .*non-native"),
    ("lengths", lambda a: np.array([1, 2]), ValueError, "lengths has shape"),
    ("num_threads", lambda a: 0, ValueError, "num_threads"),
    ("cell", lambda a: "elman", ValueError, "cell must be one of"),
    ("activation", lambda a: "gelu", ValueError, "activation must be one of"),
    ("negative_slope", lambda a: float("nan"), ValueError, "negative_slope"),
]


@pytest.mark.parametrize(
    ("name", "make", "error", "match"),
    BAD_INPUTS,
    ids=[f"{n}-{i}" for i, (n, *_) in enumerate(BAD_INPUTS)],
)
def test_raw_forward_rejects_bad_input(name, make, error, match):
    args = _raw_args()
    args[name] = make(args)
    with pytest.raises(error, match=match):
        cpp_backend._kernels.forward(**args)


BAD_BACKWARD = [
    ("hs", lambda a: a["hs"][:-1], ValueError, "hs has shape"),
    ("gates", lambda a: a["gates"][..., :-1], ValueError, "gates has shape"),
    ("gates", lambda a: None, ValueError, "gates is required"),
    ("extra", lambda a: a["extra"].astype(np.float32), TypeError, "extra has dtype"),
    ("dhs", lambda a: a["dhs"][:, :, ::2], ValueError, "dhs has shape"),
    ("dh_n", lambda a: a["dh_n"].T, ValueError, "dh_n has shape"),
    ("dc_n", lambda a: None, ValueError, "dc_n is required"),
]


@pytest.mark.parametrize(
    ("name", "make", "error", "match"),
    BAD_BACKWARD,
    ids=[f"{n}-{i}" for i, (n, *_) in enumerate(BAD_BACKWARD)],
)
def test_raw_backward_rejects_bad_input(name, make, error, match):
    args = _backward_args(_raw_args())
    args[name] = make(args)
    with pytest.raises(error, match=match):
        cpp_backend._kernels.backward(**args)


def test_raw_entry_points_reject_saved_arrays_for_rnn():
    args = _backward_args(_raw_args(cell="rnn"))
    args["gates"] = np.zeros((4, 3, 5))
    with pytest.raises(ValueError, match="gates must be None for cell 'rnn'"):
        cpp_backend._kernels.backward(**args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_raw_forward_keeps_the_dtype(dtype):
    hs, h_n, c_n, gates, extra = cpp_backend._kernels.forward(**_raw_args(dtype=dtype))
    assert {a.dtype for a in (hs, h_n, c_n, gates, extra)} == {np.dtype(dtype)}


@pytest.mark.parametrize(("cell", "gates"), [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_saves_at_most_g_plus_one_h_values_per_step(cell, gates):
    """Beyond inputs and outputs, forward keeps (G+1)*H values per step and sequence
    (rnn: nothing, act' is a function of hs)."""
    T, B, H = 6, 4, 7
    case = make_case(cell, T=T, B=B, H=H)
    res = fastrnn.forward(cell, case["params"], case["x"], backend="cpp")
    saved = [] if res.saved is None else list(res.saved)
    total = sum(a.size for a in saved)
    assert total == (0 if cell == "rnn" else T * B * (gates + 1) * H)


# --- the fused head's raw entry point ---------------------------------------------------


def _head_args(dtype=np.float64):
    rng = np.random.default_rng(0)
    return {
        "h": rng.normal(size=(6, 5)).astype(dtype),
        "weight": rng.normal(size=(4, 5)).astype(dtype),
        "bias": rng.normal(size=4).astype(dtype),
        "targets": np.array([0, 1, 2, 3, 0, 1], dtype=np.int64),
        "row_weights": None,
        "scale": 1.0,
        "num_threads": 1,
    }


BAD_HEAD = [
    ("h", lambda a: a["h"].astype(np.int32), TypeError, "h has dtype int32"),
    ("h", lambda a: a["h"][:, :4].copy(), ValueError, r"h has shape \(6, 4\), expected \(N, 5\)"),
    ("h", lambda a: a["h"][None], ValueError, r"h has shape \(1, 6, 5\)"),
    ("h", lambda a: np.asfortranarray(a["h"]), ValueError, "h must be C-contiguous"),
    ("weight", lambda a: a["weight"][0], ValueError, r"weight has shape \(5,\)"),
    ("weight", lambda a: a["weight"][:0], ValueError, r"weight has shape \(0, 5\)"),
    ("weight", lambda a: a["weight"].astype(np.float32), TypeError, "weight has dtype float32"),
    ("bias", lambda a: a["bias"][:3], ValueError, r"bias has shape \(3,\), expected \(4,\)"),
    ("bias", lambda a: "0", TypeError, "bias must be a numpy array"),
    ("targets", lambda a: a["targets"].astype(np.int32), TypeError, "targets has dtype int32"),
    ("targets", lambda a: a["targets"][:5], ValueError, r"targets has shape \(5,\)"),
    ("targets", lambda a: a["targets"] + 1, ValueError, r"targets must be in 0\.\.K-1 = 0\.\.3"),
    ("targets", lambda a: a["targets"] - 1, ValueError, "got -1 at index 0"),
    ("row_weights", lambda a: np.ones(5), ValueError, r"row_weights has shape \(5,\)"),
    ("row_weights", lambda a: np.ones(6, np.float32), TypeError, "row_weights has dtype"),
    ("scale", lambda a: float("inf"), ValueError, "scale must be finite"),
    ("num_threads", lambda a: 0, ValueError, "num_threads must be >= 1"),
]


@pytest.mark.parametrize(
    ("name", "make", "error", "match"),
    BAD_HEAD,
    ids=[f"{n}-{i}" for i, (n, *_) in enumerate(BAD_HEAD)],
)
def test_raw_head_rejects_bad_input(name, make, error, match):
    args = _head_args()
    args[name] = make(args)
    with pytest.raises(error, match=match):
        cpp_backend._kernels.linear_cross_entropy(**args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_raw_head_with_no_rows(dtype):
    args = _head_args(dtype)
    args.update(h=args["h"][:0], targets=args["targets"][:0])
    loss, dh, dweight, dbias = cpp_backend._kernels.linear_cross_entropy(**args)
    assert loss == 0.0 and dh.shape == (0, 5) and dh.dtype == dtype
    assert not dweight.any() and not dbias.any()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_workers_leave_the_callers_cpu_affinity_alone(threads):
    """Worker threads are kept off the caller's CPU by their own affinity; the caller's is
    never touched, and a caller restricted to one CPU still gets correct results."""
    allowed = os.sched_getaffinity(0)
    case = make_case("lstm", T=40, B=6, D=5, H=12, lengths=True, h0=True, seed=4)
    fastrnn.set_num_threads(1)
    want = _forward_backward(case, "lstm")
    try:
        for cpus in ({min(allowed)}, allowed):  # one CPU: nothing to keep off
            os.sched_setaffinity(0, cpus)
            fastrnn.set_num_threads(3)
            got = _forward_backward(case, "lstm")
            assert os.sched_getaffinity(0) == cpus
            for a, b in zip(got, want, strict=True):
                _same(a, b)
    finally:
        os.sched_setaffinity(0, allowed)


# --- arrays compared by dtype value (issue 18) ------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_pickled_arrays_give_the_results_of_ordinary_ones(cell, dtype):
    """A pickled array's dtype is equal to, not the same object as, np.dtype(dtype)."""
    case = make_case(cell, T=7, B=3, D=4, H=6, lengths=True, h0=True, seed=2, dtype=dtype)
    pickled = pickle.loads(pickle.dumps(case))
    assert pickled["x"].dtype is not case["x"].dtype  # what the bindings used to compare
    want = run_case("cpp", cell, "tanh", case)
    got = run_case("cpp", cell, "tanh", pickled)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# --- scratch kept between calls --------------------------------------------------------


def _with_head(cell, case, seed, **forward_kw):
    """run_case, then the backward again with a softmax head of 7 classes fused (its block
    buffers too), the head's weights and targets drawn from ``seed``; ``forward_kw``: more
    keywords of :func:`fastrnn.forward` for both."""
    out = run_case("cpp", cell, "tanh", case, **forward_kw)
    T, B, H = case["dhs"].shape
    rng = np.random.default_rng(seed)
    dtype = case["x"].dtype
    head = fastrnn.functional.HeadSpec(
        rng.normal(size=(7, H)).astype(dtype),
        rng.normal(size=7).astype(dtype),
        rng.integers(0, 7, size=(T, B)),
    )
    g = fastrnn.backward(forward_case("cpp", cell, "tanh", case, **forward_kw), head=head)
    out |= {f"head d{k}": v for k, v in g.params.items()}
    out |= {"head loss": np.asarray(g.head.loss), "head dweight": g.head.dweight}
    return out


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_scratch_kept_between_calls_changes_no_bits(cell, dtype, num_threads, threads):
    """The backward's block buffers stay with the threads between calls and are not cleared
    (src/cpp/fastrnn/memory.hpp, Scratch): a call whose buffers another call of the same
    shapes just filled with other values still gives the first call's bits (a read before
    a write would show). Two threads: the pool's threads keep theirs, chunks gathered."""
    fastrnn.set_num_threads(num_threads)
    kw = {"T": 100, "B": 4, "D": 5, "H": 16, "lengths": True, "h0": True, "dtype": dtype}
    first = _with_head(cell, make_case(cell, seed=5, **kw), 5)
    _with_head(cell, make_case(cell, seed=6, **kw), 6)  # the same shapes, other values
    again = _with_head(cell, make_case(cell, seed=5, **kw), 5)
    assert first.keys() == again.keys()
    for name in first:
        np.testing.assert_array_equal(again[name], first[name], err_msg=name)


@pytest.mark.parametrize(("B", "spare"), [(1, 2), (2, 4)], ids=["B1", "B2"])
@pytest.mark.parametrize("checkpoint", [None, 37], ids=["full", "checkpointed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_block_products_on_a_helper_thread_give_the_same_bits(
    cell, dtype, checkpoint, B, spare, threads
):
    """With threads to spare (at least two per chunk of sequences), each chunk's block
    products and fused head run on a helper thread, overlapped with the dh recurrence
    (recurrent.hpp, GradBlocks with a TaskRelay). They run in the same order as on the
    loop's own thread, so every output has the bits of the run without a helper: ``B``
    threads, one chunk per sequence. T = 1100 steps make 5 blocks of 256 (the last partial),
    so both alternating buffers are reused; lengths leave padded steps in some blocks."""
    kw = {"T": 1100, "B": B, "D": 5, "H": 16, "lengths": True, "h0": True, "dtype": dtype}
    case = make_case(cell, seed=8, **kw)
    fk = {"checkpoint": checkpoint}
    got = {}
    for n in (B, spare):
        fastrnn.set_num_threads(n)
        got[n] = _with_head(cell, case, 8, **fk)
    assert got[B].keys() == got[spare].keys()
    for name in got[B]:
        np.testing.assert_array_equal(got[spare][name], got[B][name], err_msg=name)


# --- inference forward -----------------------------------------------------------------


# H = 16: whole SIMD packets of gate rows at every level (the panel projection), so that
# the per-step projection of inference gives the same bits as training's projection of
# all steps; lengths and 2 threads: padded steps and two chunks
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_inference_forward_equals_training_and_saves_nothing(cell, dtype, threads):
    case = make_case(cell, T=23, B=5, D=7, H=16, lengths=True, h0=True, seed=4, dtype=dtype)
    args = (cell, case["params"], case["x"], case["h0"], case["c0"])
    kw = {"activation": "tanh", "negative_slope": 0.01}
    kw["lengths"] = case["lengths"].astype(np.int64)
    trained = cpp_backend.forward(*args, **kw, num_threads=threads)
    inferred = cpp_backend.forward(*args, **kw, num_threads=threads, training=False)
    assert inferred[3] is None
    assert (trained[3] is None) == (cell == "rnn")
    for got, want in zip(inferred[:3], trained[:3], strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_matches_numpy_to_a_few_ulp(dtype):
    """The kernels' tanh (Eigen's for float32, fastrnn/tanh.hpp's packet code for float64)
    against NumPy's, through an rnn step that computes h = tanh(x) (W_ih = I, W_hh = 0):
    normal, tiny (relative accuracy near 0) and huge inputs, at every position of a SIMD
    packet (the rows are 37 wide, so loop heads and tails are hit too). Measured over 10^6
    points in [-20, 20] and 10^5 near 0: float32 at most 5 ulp from NumPy's, float64 at most
    3 (the rational form of tanh.hpp; Kahan's expm1 before it, 5); the bound leaves room for
    another libm under NumPy."""
    H = 37
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(3000) * 3,
            rng.standard_normal(1000) * 1e-7,
            [0.0, -0.0, 1e-300, -1e-300, 19.9, 20.1, -25.0, 700.0, -700.0, 1e-8, -0.55],
        ]
    ).astype(dtype)
    B = -(-x.size // H)
    X = np.zeros(B * H, dtype)
    X[: x.size] = x
    eye, zeros = np.eye(H, dtype=dtype), np.zeros((H, H), dtype)
    h0 = np.zeros((B, H), dtype)
    hs = cpp_backend._loaded().forward(
        "rnn", "tanh", 0.0, eye, zeros, zeros[0], zeros[0], X.reshape(1, B, H), h0
    )[0]
    got, want = hs.reshape(-1)[: x.size], np.tanh(x)
    ulps = np.abs(got - want) / np.spacing(np.maximum(np.abs(want), np.finfo(dtype).tiny))
    assert ulps.max() <= 8, f"tanh off by {ulps.max()} ulp at x = {x[np.argmax(ulps)]!r}"
