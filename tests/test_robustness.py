"""Nothing a Python caller passes may crash the process or give a wrong-shaped result.

Property tests (hypothesis) over shapes (zeros and ones included), dtypes, memory orders
and strides, NaN/Inf, lengths, params of the wrong cell and wrong-shaped gradients, for
every backend through the public API and for the raw entry points of the compiled
extension; the answer is a result of the right shape or a ValueError/TypeError/MemoryError
that names the argument. A subprocess runs the worst inputs, so that a crash shows up as a
failed test rather than a dead test run.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastrnn
from conftest import CELL_CASES, need_backend
from fastrnn.functional import GATES, PARAM_NAMES

PROPERTY = settings(
    max_examples=30,
    deadline=None,  # the first call of a numba kernel compiles it
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples in every run: CI results are reproducible
)
ERRORS = (ValueError, TypeError, MemoryError)
BAD_DTYPES = [
    np.int8,
    np.int32,
    np.int64,
    np.uint8,
    np.float16,
    np.longdouble,
    np.complex64,
    np.complex128,
    object,
    bool,
    "U3",
    "S2",
    "datetime64[s]",
]


# --- building valid cases --------------------------------------------------------------


def _params(cell: str, D: int, H: int, dtype, rng) -> dict[str, np.ndarray]:
    """Random params of any sizes, D = 0 included (init_params wants D >= 1)."""
    G = GATES[cell]
    shapes = {"W_ih": (G * H, D), "W_hh": (G * H, H), "b_ih": (G * H,), "b_hh": (G * H,)}
    return {k: (0.5 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


@st.composite
def cases(draw, zero_sizes: bool = True):
    """A valid forward/backward problem: cell, activation, sizes, dtype and arrays."""
    cell, activation = draw(st.sampled_from(CELL_CASES))
    low = 0 if zero_sizes else 1
    T, B = draw(st.integers(low, 4)), draw(st.integers(low, 3))
    D, H = draw(st.integers(low, 3)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    case = {
        "cell": cell,
        "activation": activation,
        "params": _params(cell, D, H, dtype, rng),
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "h0": rng.standard_normal((B, H)).astype(dtype) if draw(st.booleans()) else None,
        "c0": None,
        "lengths": None,
        "dhs": rng.standard_normal((T, B, H)).astype(dtype),
        "dh_n": rng.standard_normal((B, H)).astype(dtype),
        "dc_n": rng.standard_normal((B, H)).astype(dtype) if cell == "lstm" else None,
    }
    if cell == "lstm" and case["h0"] is not None:
        case["c0"] = rng.standard_normal((B, H)).astype(dtype)
    if T >= 1 and B >= 1 and draw(st.booleans()):
        case["lengths"] = rng.integers(1, T + 1, size=B)
    return case


def _run(case: dict, backend: str, step_norms: bool = True):
    res = fastrnn.forward(
        case["cell"],
        case["params"],
        case["x"],
        case["h0"],
        case["c0"],
        activation=case["activation"],
        lengths=case["lengths"],
        backend=backend,
    )
    g = fastrnn.backward(res, case["dhs"], case["dh_n"], case["dc_n"], return_step_norms=step_norms)
    return res, g


def _outputs(res, g) -> dict[str, np.ndarray | None]:
    out = {"hs": res.hs, "h_n": res.h_n, "c_n": res.c_n, "dx": g.dx, "dh0": g.dh0}
    out |= {"dc0": g.dc0, "step_norms": g.step_norms}
    out |= {f"d{k}": v for k, v in g.params.items()}
    return out


def _check_shapes(case: dict, res, g) -> None:
    """Every output has the shape and dtype the contract promises."""
    T, B, D = case["x"].shape
    H = case["params"]["W_hh"].shape[1]
    dt = case["x"].dtype
    lstm = case["cell"] == "lstm"
    want = {
        "hs": (T, B, H),
        "h_n": (B, H),
        "c_n": (B, H) if lstm else None,
        "dx": (T, B, D),
        "dh0": (B, H),
        "dc0": (B, H) if lstm else None,
        "step_norms": (T, B),
    }
    want |= {f"d{k}": v.shape for k, v in case["params"].items()}
    for name, arr in _outputs(res, g).items():
        if want[name] is None:
            assert arr is None, f"{name} must be None for {case['cell']}"
            continue
        assert isinstance(arr, np.ndarray), f"{name} is {type(arr).__name__}"
        assert arr.shape == want[name], f"{name} has shape {arr.shape}, expected {want[name]}"
        assert arr.dtype == dt, f"{name} has dtype {arr.dtype}, expected {dt}"


# --- memory orders and strides ------------------------------------------------------------

LAYOUTS = ["C", "F", "negative", "strided"]


def _layout(arr: np.ndarray | None, how: str) -> np.ndarray | None:
    """The same values as ``arr`` in another memory layout."""
    if arr is None or how == "C":
        return arr
    if how == "F":
        return np.asfortranarray(arr)
    every = (slice(None, None, -1),) * arr.ndim
    if how == "negative":  # negative strides on every axis
        return arr[every].copy()[every]
    big = np.zeros(tuple(2 * n + 1 for n in arr.shape), dtype=arr.dtype)  # a strided view
    view = big[(slice(1, None, 2),) * arr.ndim]
    view[...] = arr
    return view


@PROPERTY
@given(case=cases(), data=st.data())
def test_every_layout_gives_the_c_order_result(backend, case, data):
    """Fortran order, negative strides and strided views give the same results as
    C-contiguous arrays, bit for bit, and every output has the promised shape."""
    want_res, want_g = _run(case, backend)
    _check_shapes(case, want_res, want_g)
    odd = dict(case)
    for name in ("x", "h0", "c0", "dhs", "dh_n", "dc_n", "lengths"):
        odd[name] = _layout(case[name], data.draw(st.sampled_from(LAYOUTS), label=name))
    odd["params"] = {
        k: _layout(v, data.draw(st.sampled_from(LAYOUTS), label=k))
        for k, v in case["params"].items()
    }
    res, g = _run(odd, backend)
    for name, got in _outputs(res, g).items():
        want = _outputs(want_res, want_g)[name]
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


@PROPERTY
@given(case=cases())
def test_zero_and_one_sizes_agree_with_the_reference(fast_backend, case):
    ref_res, ref_g = _run(case, "numpy")
    res, g = _run(case, fast_backend)
    _check_shapes(case, res, g)
    tol = 1e-4 if case["x"].dtype == np.float32 else 1e-10
    for name, got in _outputs(res, g).items():
        want = _outputs(ref_res, ref_g)[name]
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)


# --- dtypes ------------------------------------------------------------------------------

ARRAY_ARGS = ["x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh", "dhs", "dh_n", "dc_n"]


def _message_name(arg: str) -> str:
    return f"params['{arg}']" if arg in PARAM_NAMES else arg


def _replace(case: dict, arg: str, value: object) -> dict:
    case = dict(case)
    if arg in PARAM_NAMES:
        case["params"] = dict(case["params"], **{arg: value})
    else:
        case[arg] = value
    return case


def _expect_error(case: dict, backend: str, arg: str, errors=ERRORS) -> Exception:
    """The call fails with one of ``errors`` whose message names ``arg``."""
    with pytest.raises(errors) as info:
        _run(case, backend)
    assert _message_name(arg) in str(info.value), f"{info.value!r} does not name {arg}"
    return info.value


def _valid_for(case: dict, arg: str) -> np.ndarray:
    """A correctly shaped array for ``arg`` (c0/dc_n exist only for lstm)."""
    if arg in PARAM_NAMES:
        return case["params"][arg]
    if case[arg] is not None:
        return case[arg]
    B, H = case["x"].shape[1], case["params"]["W_hh"].shape[1]
    return np.zeros((B, H), dtype=case["x"].dtype)


@PROPERTY
@given(
    case=cases(),
    arg=st.sampled_from(ARRAY_ARGS),
    dtype=st.sampled_from(BAD_DTYPES),
)
def test_bad_dtypes_are_type_errors(backend, case, arg, dtype):
    assume(arg not in ("c0", "dc_n") or case["cell"] == "lstm")
    good = _valid_for(case, arg)
    bad = np.zeros(good.shape, dtype=dtype)
    _expect_error(_replace(case, arg, bad), backend, arg, TypeError)


@PROPERTY
@given(case=cases(), arg=st.sampled_from(["x", "h0", "c0", "b_ih", "dhs", "dh_n"]))
def test_the_other_float_dtype_is_a_type_error(backend, case, arg):
    assume(arg != "c0" or case["cell"] == "lstm")
    good = _valid_for(case, arg)
    other = np.float32 if good.dtype == np.float64 else np.float64
    err = _expect_error(_replace(case, arg, good.astype(other)), backend, arg, TypeError)
    assert "dtype" in str(err)


# --- shapes --------------------------------------------------------------------------------

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


def _shape_is_valid(case: dict, arg: str, shape: tuple[int, ...]) -> bool:
    T, B, D = case["x"].shape
    H = case["params"]["W_hh"].shape[1]
    GH = case["params"]["W_hh"].shape[0]
    G = GH // H
    if arg == "x":  # x alone decides T and B when h0, lengths and the gradients follow it
        return len(shape) == 3 and shape[2] == D
    if arg == "W_hh":  # another hidden size is a mismatch found at W_ih: still an error
        return shape == (GH, H)
    return (
        shape
        == {
            "h0": (B, H),
            "c0": (B, H),
            "W_ih": (G * H, D),
            "b_ih": (GH,),
            "b_hh": (GH,),
            "dhs": (T, B, H),
            "dh_n": (B, H),
            "dc_n": (B, H),
        }[arg]
    )


@PROPERTY
@given(case=cases(), arg=st.sampled_from(ARRAY_ARGS), shape=shapes)
def test_wrong_shapes_are_value_errors_naming_the_argument(backend, case, arg, shape):
    assume(arg not in ("c0", "dc_n") or case["cell"] == "lstm")
    assume(not _shape_is_valid(case, arg, shape))
    if arg == "x":  # x alone: arguments sized after the old x must not be found first
        case = dict(case, h0=None, c0=None, lengths=None, dhs=None, dh_n=None, dc_n=None)
    bad = np.zeros(shape, dtype=case["x"].dtype)
    with pytest.raises(ValueError) as info:
        _run(_replace(case, arg, bad), backend)
    msg = str(info.value)
    if arg in PARAM_NAMES:  # a mismatch of two params may be reported at the other one
        assert "params['" in msg, msg
    else:
        assert _message_name(arg) in msg, msg
    assert "shape" in msg, msg


# --- values that are not arrays ------------------------------------------------------------

GARBAGE = [
    "abc",
    b"bytes",
    3,
    3.5,
    1 + 2j,
    {},
    [],
    [[1.0, 2.0], [3.0]],  # ragged
    object(),
    print,
    np.float64(1.0),
    [None],
]


@PROPERTY
@given(
    case=cases(zero_sizes=False),
    arg=st.sampled_from([*ARRAY_ARGS, "lengths"]),
    garbage=st.sampled_from(GARBAGE),
)
def test_things_that_are_not_arrays(backend, case, arg, garbage):
    assume(arg not in ("c0", "dc_n") or case["cell"] == "lstm")
    _expect_error(_replace(case, arg, garbage), backend, arg)


@pytest.mark.parametrize(
    "params",
    [None, [], "W_ih", [("W_ih", 1)], 3],
    ids=["None", "list", "str", "pairs", "int"],
)
def test_params_that_are_not_a_dict(backend, params):
    x = np.zeros((2, 1, 3))
    with pytest.raises(TypeError, match=r"params must be a dict with keys \['W_ih'"):
        fastrnn.forward("rnn", params, x, backend=backend)


@pytest.mark.parametrize("change", ["missing", "extra", "both", "renamed"])
def test_params_with_missing_or_extra_keys(backend, change):
    p = fastrnn.init_params("gru", 3, 4, dtype=np.float64)
    if change in ("missing", "both"):
        del p["b_hh"]
    if change in ("extra", "both"):
        p["W_ho"] = np.zeros((2, 4))
    if change == "renamed":
        p["weight_hh_l0"] = p.pop("W_hh")
    with pytest.raises(ValueError, match=r"params must have exactly the keys .*missing"):
        fastrnn.forward("gru", p, np.zeros((2, 1, 3)), backend=backend)


@pytest.mark.parametrize(
    ("made_for", "used_as"),
    [(a, b) for a in ("rnn", "lstm", "gru") for b in ("rnn", "lstm", "gru") if a != b],
)
def test_params_of_the_wrong_cell(backend, made_for, used_as):
    p = fastrnn.init_params(made_for, 3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match=rf"params\['W_hh'\] has shape .*cell '{used_as}'"):
        fastrnn.forward(used_as, p, np.zeros((2, 1, 3)), backend=backend)


# --- lengths --------------------------------------------------------------------------------


@st.composite
def bad_lengths(draw, T: int, B: int):
    kind = draw(st.sampled_from(["range", "dtype", "shape", "ragged"]))
    if kind == "range":
        lens = np.full(B, T, dtype=np.int64)
        lens[draw(st.integers(0, B - 1))] = draw(
            st.sampled_from([0, -1, T + 1, 2**62, -(2**63), 2**31])
        )
        return draw(st.sampled_from([lens, lens.tolist(), lens.astype(np.uint64)]))
    if kind == "dtype":
        dtype = draw(st.sampled_from([np.float32, np.float64, np.complex64, bool, object, "U2"]))
        return np.full(B, T).astype(dtype)
    if kind == "shape":
        shape = draw(shapes.filter(lambda s: s != (B,)))
        return np.full(shape, T, dtype=np.int64)
    return [[T] * 2, [T]] if B == 2 else [[T]] * B + [T]


@PROPERTY
@given(case=cases(zero_sizes=False), data=st.data())
def test_bad_lengths(backend, case, data):
    T, B, _ = case["x"].shape
    lens = data.draw(bad_lengths(T, B))
    if isinstance(lens, np.ndarray) and lens.dtype.kind in "iu" and lens.shape == (B,):
        assume(lens.min() < 1 or lens.max() > T)
    if not isinstance(lens, np.ndarray) and np.asarray(lens, dtype=object).shape == (B,):
        assume(not all(isinstance(v, int) and 1 <= v <= T for v in lens))
    _expect_error(dict(case, lengths=lens), backend, "lengths")


# --- NaN and Inf ---------------------------------------------------------------------------


@PROPERTY
@given(case=cases(zero_sizes=False), data=st.data())
def test_nan_and_inf_stay_in_their_sequence(backend, case, data):
    """Non-finite inputs in some sequences give a result of the right shape, and every
    other sequence gets exactly what it gets alone: nothing leaks across the batch."""
    T, B, _ = case["x"].shape
    assume(B >= 2 and case["x"].shape[2] >= 1)
    bad_b = data.draw(st.integers(0, B - 1), label="bad sequence")
    x = case["x"].copy()
    t = data.draw(st.integers(0, T - 1), label="step")
    x[t, bad_b, 0] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="value")
    case = dict(case, x=x)
    with np.errstate(all="ignore"):
        res, g = _run(case, backend)
        _check_shapes(case, res, g)
        keep = np.array([b for b in range(B) if b != bad_b])
        alone = {
            k: (v[:, keep] if k in ("x", "dhs") else v[keep])
            for k, v in case.items()
            if isinstance(v, np.ndarray) and k != "params"
        }
        clean = dict(case, **alone)
        clean_res, clean_g = _run(clean, backend)
    tol = 1e-4 if x.dtype == np.float32 else 1e-10
    for name, got, want in [
        ("hs", res.hs[:, keep], clean_res.hs),
        ("h_n", res.h_n[keep], clean_res.h_n),
        ("dx", g.dx[:, keep], clean_g.dx),
        ("dh0", g.dh0[keep], clean_g.dh0),
        ("step_norms", g.step_norms[:, keep], clean_g.step_norms),
    ]:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)


def test_nan_params_give_nan_not_a_crash(backend):
    p = fastrnn.init_params("lstm", 3, 4, dtype=np.float64)
    p["W_hh"][0, 0] = np.nan
    with np.errstate(all="ignore"):
        res = fastrnn.forward("lstm", p, np.ones((5, 2, 3)), backend=backend)
        g = fastrnn.backward(res, np.ones_like(res.hs), return_step_norms=True)
    assert res.hs.shape == (5, 2, 4) and np.isnan(res.hs[-1]).any()
    assert g.dx.shape == (5, 2, 3) and g.step_norms.shape == (5, 2)


# --- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [(10**7, 10**5, 3), (0, 10**11, 3), (10**12, 1, 3)],
    ids=["big", "zero-steps-huge-batch", "long"],
)
def test_sizes_beyond_memory_are_refused_before_allocating(backend, shape):
    """A broadcast view costs nothing; the refusal must come before any allocation."""
    p = fastrnn.init_params("lstm", 3, 64, dtype=np.float32)
    x = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.float32), shape)
    with pytest.raises(MemoryError, match=r"needs about .* GiB but only .* GiB") as info:
        fastrnn.forward("lstm", p, x, backend=backend)
    msg = str(info.value)
    assert f"T={shape[0]}, B={shape[1]}" in msg or f"shape {shape}" in msg


def test_init_params_beyond_memory_is_refused():
    with pytest.raises(MemoryError, match=r"init_params\('lstm', 10, 1000000\) needs about"):
        fastrnn.init_params("lstm", 10, 10**6)


# --- other arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"cell": None}, ValueError, "cell"),
        ({"cell": "LSTM"}, ValueError, "cell"),
        ({"activation": None}, ValueError, "activation"),
        ({"activation": 3}, ValueError, "activation"),
        ({"negative_slope": "0.1"}, TypeError, "negative_slope"),
        ({"negative_slope": True}, TypeError, "negative_slope"),
        ({"negative_slope": -1}, ValueError, "negative_slope"),
        ({"backend": 3}, ValueError, "backend"),
        ({"backend": "torch"}, ValueError, "backend"),
    ],
)
def test_bad_scalar_arguments(kwargs, error, name):
    args = {"cell": "rnn", "params": fastrnn.init_params("rnn", 3, 4, dtype=np.float64)}
    args |= {"x": np.zeros((2, 1, 3))} | kwargs
    with pytest.raises(error, match=name):
        fastrnn.forward(args.pop("cell"), args.pop("params"), args.pop("x"), **args)


@pytest.mark.parametrize("res", [None, {}, "res", (1, 2)])
def test_backward_of_something_else(res):
    with pytest.raises(TypeError, match=r"res must be the ForwardResult of fastrnn\.forward"):
        fastrnn.backward(res)


def test_dc_n_for_a_cell_without_one(backend):
    p = fastrnn.init_params("gru", 2, 3, dtype=np.float64)
    res = fastrnn.forward("gru", p, np.zeros((2, 1, 2)), backend=backend)
    with pytest.raises(ValueError, match="dc_n is the gradient of the lstm cell state"):
        fastrnn.backward(res, dc_n=np.zeros((1, 3)))


# --- the raw entry points of the compiled extension ------------------------------------------

LEVELS = ["generic", "avx2", "avx512"]


def _raw_module(level: str):
    """fastrnn._kernels_<level>; a skip when this CPU cannot run that level, or when the cpp
    backend does not load (a failure instead if it is required, see need_backend)."""
    need_backend("cpp")
    from fastrnn import _core

    if not _core.cpu_supports(level):
        pytest.skip(f"this CPU cannot run the {level} kernels")
    if level not in _core.build_info()["kernel_isas_built"]:
        pytest.skip(f"this build has no {level} kernels (not an x86-64 GCC/Clang build)")
    return importlib.import_module(f"fastrnn._kernels_{level}")


@pytest.fixture(params=LEVELS)
def raw(request):
    return _raw_module(request.param)


def _raw_args(cell: str, T=3, B=2, D=3, H=4, dtype=np.float64, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    p = _params(cell, D, H, dtype, rng)
    lstm = cell == "lstm"
    return {
        "cell": cell,
        "activation": "tanh",
        "negative_slope": 0.01,
        **p,
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "h0": np.zeros((B, H), dtype=dtype),
        "c0": np.zeros((B, H), dtype=dtype) if lstm else None,
        "lengths": None,
        "num_threads": 1,
    }


def _raw_backward_args(raw, fwd: dict) -> dict:
    hs, _h_n, _c_n, gates, extra = raw.forward(**fwd)
    T, B, H = hs.shape
    dt = hs.dtype
    args = {k: v for k, v in fwd.items() if k not in ("b_ih", "b_hh")}
    return args | {
        "hs": hs,
        "gates": gates,
        "extra": extra,
        "dhs": np.ones((T, B, H), dtype=dt),
        "dh_n": np.ones((B, H), dtype=dt),
        "dc_n": np.ones((B, H), dtype=dt) if fwd["cell"] == "lstm" else None,
        "step_norms": True,
    }


def _corruptions(value: object) -> list[object]:
    """Wrong versions of one argument of a raw call."""
    out: list[object] = [None, "abc", 3, object()]
    if isinstance(value, np.ndarray):
        out += [
            value.astype(np.float32 if value.dtype == np.float64 else np.float64),
            value.astype(np.int64),
            value.astype(object),
            value[..., None],
            value.reshape(-1),
            np.zeros((0,) * value.ndim, dtype=value.dtype),
            np.zeros(tuple(n + 1 for n in value.shape), dtype=value.dtype),
            np.asfortranarray(np.repeat(value[..., None], 2, axis=-1))[..., 0],
            value[::-1] if value.ndim else value,
        ]
    return out


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_raw_forward_rejects_every_corrupted_argument(raw, cell):
    args = _raw_args(cell)
    raw.forward(**args)  # the valid call works
    for name, value in args.items():
        for bad in _corruptions(value):
            if value is None and bad is None:
                continue
            try:
                out = raw.forward(**dict(args, **{name: bad}))
            except ERRORS:
                continue
            # a value accepted as given must still give right-shaped output
            assert out[0].shape == (*args["x"].shape[:2], args["W_hh"].shape[1]), name


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_raw_backward_rejects_every_corrupted_argument(raw, cell):
    args = _raw_backward_args(raw, _raw_args(cell))
    raw.backward(**args)
    for name, value in args.items():
        for bad in _corruptions(value):
            if value is None and bad is None:
                continue
            try:
                out = raw.backward(**dict(args, **{name: bad}))
            except ERRORS:
                continue
            assert out[0].shape == args["x"].shape, name


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_raw_lengths_and_threads_out_of_range(raw, cell):
    args = _raw_args(cell)
    for lengths in (np.array([0, 3]), np.array([1, 4]), np.array([-(2**63), 1]), np.array([3])):
        with pytest.raises(ValueError, match="lengths"):
            raw.forward(**dict(args, lengths=lengths))
    with pytest.raises(TypeError, match="lengths"):
        raw.forward(**dict(args, lengths=np.array([1, 2], dtype=np.int32)))
    for n in (0, -1):
        with pytest.raises(ValueError, match="num_threads"):
            raw.forward(**dict(args, num_threads=n))
    with pytest.raises(TypeError):
        raw.forward(**dict(args, num_threads=2**70))
    for value in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="negative_slope"):
            raw.forward(**dict(args, negative_slope=value))


_SUBPROCESS = textwrap.dedent(
    """
    import importlib, sys
    import numpy as np
    import fastrnn
    level = sys.argv[1]
    raw = importlib.import_module("fastrnn._kernels_" + level)
    f64 = np.float64
    calls = 0
    def attempt(fn, **kw):
        global calls
        calls += 1
        try:
            fn(**kw)
        except (ValueError, TypeError, MemoryError):
            pass
    for cell, G in (("rnn", 1), ("lstm", 4), ("gru", 3)):
        H, D, T, B = 4, 3, 5, 2
        base = dict(cell=cell, activation="tanh", negative_slope=0.0,
                    W_ih=np.zeros((G * H, D)), W_hh=np.zeros((G * H, H)),
                    b_ih=np.zeros(G * H), b_hh=np.zeros(G * H), x=np.zeros((T, B, D)),
                    h0=np.zeros((B, H)), c0=np.zeros((B, H)) if cell == "lstm" else None,
                    lengths=None, num_threads=1)
        # sizes that disagree with each other: the kernels must never read past a buffer
        attempt(raw.forward, **dict(base, W_ih=np.zeros((G * H, D + 7))))
        attempt(raw.forward, **dict(base, W_hh=np.zeros((G * (H + 9), H + 9))))
        attempt(raw.forward, **dict(base, b_ih=np.zeros(1)))
        attempt(raw.forward, **dict(base, h0=np.zeros((B + 5, H))))
        attempt(raw.forward, **dict(base, h0=np.zeros((B, H)).T))
        attempt(raw.forward, **dict(base, x=np.zeros((T, B, D))[:, :, ::2]))
        attempt(raw.forward, **dict(base, x=np.broadcast_to(np.zeros(1), (T, B, D))))
        attempt(raw.forward, **dict(base, x=np.zeros((T, B, D), dtype=np.float32)))
        attempt(raw.forward, **dict(base, lengths=np.array([T + 1, 2**62])))
        attempt(raw.forward, **dict(base, lengths=np.array([1, -(2**63)])))
        attempt(raw.forward, **dict(base, num_threads=10**6))
        attempt(raw.forward, **dict(base, x=np.zeros((0, B, D))))
        attempt(raw.forward, **dict(base, x=np.zeros((T, 0, D)), h0=np.zeros((0, H))))
        attempt(raw.forward, **dict(base, cell="cnn"))
        hs, h_n, c_n, gates, extra = raw.forward(**base)
        back = dict({k: v for k, v in base.items() if k not in ("b_ih", "b_hh")},
                    hs=hs, gates=gates, extra=extra, dhs=np.zeros_like(hs),
                    dh_n=np.zeros((B, H)), dc_n=np.zeros((B, H)) if cell == "lstm" else None,
                    step_norms=True)
        attempt(raw.backward, **back)
        attempt(raw.backward, **dict(back, hs=hs[:-1]))
        attempt(raw.backward, **dict(back, dhs=np.zeros((T, B, H + 3))))
        attempt(raw.backward, **dict(back, dh_n=np.zeros((B, 1))))
        if gates is not None:
            attempt(raw.backward, **dict(back, gates=gates[:, :, :-1]))
            attempt(raw.backward, **dict(back, extra=extra[:-1]))
            attempt(raw.backward, **dict(back, gates=None))
        attempt(raw.backward, **dict(back, x=np.zeros((T + 2, B, D))))
        attempt(raw.backward, **dict(back, lengths=np.array([0, 0])))
    print("survived", calls)
    """
)


@pytest.mark.parametrize("level", LEVELS)
def test_raw_bad_inputs_do_not_crash_the_interpreter(level):
    _raw_module(level)  # skips with the reason when this CPU or build has no such level
    proc = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, level],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"the interpreter died (return code {proc.returncode}):\n{proc.stderr[-3000:]}"
    )
    assert proc.stdout.startswith("survived"), proc.stdout
