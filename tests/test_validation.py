"""Every error of the functional core names the argument, what it got and what it expected."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn


@pytest.fixture
def rnn():
    return fastrnn.init_params("rnn", 3, 4, seed=0, dtype=np.float64)


def fwd(params, x, cell="rnn", **kw):
    return fastrnn.forward(cell, params, x, **kw)


X = np.zeros((5, 2, 3))


def test_unknown_cell(rnn):
    with pytest.raises(ValueError, match=r"cell must be one of 'rnn', 'lstm', 'gru', got 'cnn'"):
        fwd(rnn, X, cell="cnn")


def test_unknown_activation(rnn):
    with pytest.raises(ValueError, match=r"activation must be one of .* got 'sigmoid'"):
        fwd(rnn, X, activation="sigmoid")


def test_activation_for_gated_cells_is_refused():
    p = fastrnn.init_params("lstm", 3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match="activation applies to cell 'rnn' only"):
        fwd(p, X, cell="lstm", activation="relu")


@pytest.mark.parametrize("slope", [-0.1, float("nan"), float("inf")])
def test_bad_negative_slope(rnn, slope):
    with pytest.raises(ValueError, match="negative_slope must be finite and >= 0"):
        fwd(rnn, X, activation="leaky_relu", negative_slope=slope)


def test_int_input_says_to_cast(rnn):
    with pytest.raises(TypeError, match=r"x must have dtype float32 or float64, got int64; cast"):
        fwd(rnn, np.zeros((5, 2, 3), dtype=np.int64))


@pytest.mark.parametrize("dtype", [np.float16, np.complex128, object, bool])
def test_other_dtypes_are_type_errors(rnn, dtype):
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        fwd(rnn, np.zeros((5, 2, 3), dtype=dtype))


def test_mixed_dtypes_are_refused(rnn):
    with pytest.raises(TypeError, match="x has dtype float32 but the parameters are float64"):
        fwd(rnn, X.astype(np.float32))
    p = dict(rnn, b_hh=rnn["b_hh"].astype(np.float32))
    with pytest.raises(TypeError, match=r"params\['b_hh'\] has dtype float32"):
        fwd(p, X)


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((5, 2), r"x has shape \(5, 2\), expected \(T, B, 3\)"),
        ((5, 2, 4), r"x has shape \(5, 2, 4\), expected \(T, B, 3\)"),
        ((5, 2, 3, 1), r"x has shape \(5, 2, 3, 1\), expected \(T, B, 3\)"),
    ],
)
def test_wrong_x_shape(rnn, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        fwd(rnn, np.zeros(shape))


def test_wrong_h0_and_c0(rnn):
    with pytest.raises(ValueError, match=r"h0 has shape \(3, 4\), expected \(2, 4\)"):
        fwd(rnn, X, h0=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="cell 'rnn' takes no c0"):
        fwd(rnn, X, c0=np.zeros((2, 4)))
    lstm = fastrnn.init_params("lstm", 3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match=r"c0 has shape \(2, 5\), expected \(2, 4\)"):
        fwd(lstm, X, cell="lstm", c0=np.zeros((2, 5)))


def test_params_of_another_cell(rnn):
    gru = fastrnn.init_params("gru", 3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match=r"params\['W_hh'\] has shape \(12, 4\).*another cell"):
        fwd(gru, X, cell="lstm")
    with pytest.raises(ValueError, match=r"params\['W_hh'\] has shape \(4, 4\)"):
        fwd(rnn, X, cell="gru")


def test_params_keys_and_type(rnn):
    with pytest.raises(ValueError, match=r"missing \['b_hh'\], unexpected \['bias'\]"):
        fwd({k: v for k, v in rnn.items() if k != "b_hh"} | {"bias": rnn["b_hh"]}, X)
    with pytest.raises(TypeError, match="params must be a dict"):
        fwd([1, 2], X)
    with pytest.raises(ValueError, match=r"params\['W_ih'\] has shape \(4, 2, 1\)"):
        fwd(dict(rnn, W_ih=np.zeros((4, 2, 1))), X)
    with pytest.raises(ValueError, match=r"params\['b_ih'\] has shape \(3,\), expected \(4,\)"):
        fwd(dict(rnn, b_ih=np.zeros(3)), X)


@pytest.mark.parametrize(
    ("lengths", "exc", "pattern"),
    [
        ([5, 0], ValueError, r"lengths must be in 1..T = 1..5, got values \[0\]"),
        ([6, 1], ValueError, r"lengths must be in 1..T = 1..5, got values \[6\]"),
        ([5, -1], ValueError, "lengths must be in 1..T"),
        ([5], ValueError, r"lengths has shape \(1,\), expected \(2,\)"),
        ([[5, 5]], ValueError, r"lengths has shape \(1, 2\), expected \(2,\)"),
        ([5.0, 2.0], TypeError, "lengths must be an integer array"),
        ([True, True], TypeError, "lengths must be an integer array"),
        ([5.0, float("nan")], TypeError, "lengths must be an integer array"),
    ],
)
def test_bad_lengths(rnn, lengths, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fwd(rnn, X, lengths=lengths)


def test_non_contiguous_inputs_are_accepted(rnn):
    rng = np.random.default_rng(0)
    strided = rng.normal(size=(4, 10, 6))[::2, ::-3, ::2]  # negative and >1 strides
    fortran = np.asfortranarray(rng.normal(size=(5, 2, 3)))
    p = {k: np.asfortranarray(v) for k, v in rnn.items()}
    for x in (strided, fortran):
        res = fwd(p, x, h0=np.ones((4, x.shape[1]), order="F").T)
        ref = fwd(rnn, np.ascontiguousarray(x), h0=np.ones((x.shape[1], 4)))
        np.testing.assert_array_equal(res.hs, ref.hs)
        g = fastrnn.backward(res, dhs=np.asfortranarray(np.ones_like(res.hs)))
        gref = fastrnn.backward(ref, dhs=np.ones_like(ref.hs))
        np.testing.assert_array_equal(g.dx, gref.dx)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_result_dtype_is_input_dtype(cell, dtype):
    p = fastrnn.init_params(cell, 3, 4, dtype=dtype)
    res = fastrnn.forward(cell, p, np.ones((2, 2, 3), dtype=dtype))
    g = fastrnn.backward(res, dhs=np.ones_like(res.hs))
    arrays = [res.hs, res.h_n, g.dx, g.dh0, *g.params.values()]
    if cell == "lstm":
        arrays += [res.c_n, g.dc0]
    assert all(a.dtype == dtype for a in arrays)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_empty_time_or_batch_is_defined(cell):
    p = fastrnn.init_params(cell, 3, 4, dtype=np.float64)
    h0 = np.ones((2, 4))
    res = fastrnn.forward(cell, p, np.zeros((0, 2, 3)), h0)
    assert res.hs.shape == (0, 2, 4)
    np.testing.assert_array_equal(res.h_n, h0)
    g = fastrnn.backward(res, dh_n=np.full((2, 4), 2.0))
    np.testing.assert_array_equal(g.dh0, np.full((2, 4), 2.0))
    assert all(not v.any() for v in g.params.values())
    res = fastrnn.forward(cell, p, np.zeros((4, 0, 3)))
    assert res.hs.shape == (4, 0, 4) and res.h_n.shape == (0, 4)
    assert fastrnn.backward(res).dx.shape == (4, 0, 3)


def test_backward_errors(rnn):
    res = fwd(rnn, X)
    with pytest.raises(TypeError, match="res must be the ForwardResult"):
        fastrnn.backward({"hs": 1})
    with pytest.raises(ValueError, match=r"dhs has shape \(5, 2\), expected \(5, 2, 4\)"):
        fastrnn.backward(res, dhs=np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"dh_n has shape \(4,\), expected \(2, 4\)"):
        fastrnn.backward(res, dh_n=np.zeros(4))
    with pytest.raises(TypeError, match="dhs has dtype float32 but the parameters are float64"):
        fastrnn.backward(res, dhs=np.zeros((5, 2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="cell 'rnn' has none"):
        fastrnn.backward(res, dc_n=np.zeros((2, 4)))


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"cell": "tree"}, ValueError, "cell must be one of"),
        ({"init": "he"}, ValueError, "init must be one of"),
        ({"input_size": 0}, ValueError, "input_size must be a positive int, got 0"),
        ({"hidden_size": 2.5}, TypeError, "hidden_size must be an int, got a float"),
        ({"hidden_size": -1}, ValueError, "hidden_size must be a positive int, got -1"),
        ({"dtype": np.int32}, TypeError, "dtype must be float32 or float64"),
        ({"gain": float("nan")}, ValueError, "gain must be finite, got nan"),
        ({"gain": "2"}, TypeError, "gain must be a number, got a str"),
    ],
)
def test_init_params_errors(kwargs, exc, pattern):
    args = {"cell": "rnn", "input_size": 3, "hidden_size": 4} | kwargs
    with pytest.raises(exc, match=pattern):
        fastrnn.init_params(
            args.pop("cell"), args.pop("input_size"), args.pop("hidden_size"), **args
        )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("init", ["uniform", "xavier", "orthogonal", "identity"])
def test_init_params_shapes_and_seed(cell, init):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    a = fastrnn.init_params(cell, 3, 5, init=init, seed=1, dtype=np.float64)
    b = fastrnn.init_params(cell, 3, 5, init=init, seed=1, dtype=np.float64)
    assert a["W_ih"].shape == (G * 5, 3) and a["W_hh"].shape == (G * 5, 5)
    assert a["b_ih"].shape == a["b_hh"].shape == (G * 5,)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    blocks = a["W_hh"].reshape(G, 5, 5)
    if init == "orthogonal":
        for w in blocks:
            np.testing.assert_allclose(w @ w.T, np.eye(5), atol=1e-12)
    if init == "identity":
        for w in blocks:
            np.testing.assert_array_equal(w, np.eye(5))
    if init == "uniform":
        k = 1 / np.sqrt(5)
        assert all(np.abs(v).max() <= k for v in a.values())


def test_init_gain_scales_recurrent_weights():
    a = fastrnn.init_params("rnn", 3, 5, init="identity", gain=1.5, seed=0)
    np.testing.assert_allclose(a["W_hh"], 1.5 * np.eye(5))


# --- fastrnn._validation itself: one policy, TypeError for a type, ValueError for a value ------

from fastrnn import _validation as V  # noqa: E402


@pytest.mark.parametrize(
    ("value", "exc", "pattern"),
    [
        (2.0, TypeError, r"n must be an int, got a float \(2\.0\)"),
        ("3", TypeError, "n must be an int, got a str"),
        (True, TypeError, "n must be an int, got a bool"),
        (np.bool_(True), TypeError, "n must be an int"),
        (0, ValueError, "n must be a positive int, got 0"),
        (-2, ValueError, "n must be a positive int, got -2"),
    ],
)
def test_check_positive_int(value, exc, pattern):
    with pytest.raises(exc, match=pattern):
        V.check_positive_int("n", value)


def test_check_int_accepts_numpy_ints_and_returns_python_ints():
    assert V.check_positive_int("n", np.int32(3)) == 3
    assert type(V.check_positive_int("n", np.int64(3))) is int
    assert V.check_non_negative_int("n", 0) == 0
    with pytest.raises(ValueError, match="n must be a non-negative int, got -1"):
        V.check_non_negative_int("n", -1)
    with pytest.raises(ValueError, match="n must be an int >= 2, got 1"):
        V.check_int("n", 1, 2)


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (lambda: V.check_positive_float("lr", "0.1"), TypeError, "lr must be a number, got a str"),
        (lambda: V.check_positive_float("lr", None), TypeError, "lr must be a number, got a Non"),
        (lambda: V.check_positive_float("lr", True), TypeError, "lr must be a number, got a bool"),
        (lambda: V.check_positive_float("lr", 0), ValueError, r"lr must be finite and > 0, got 0"),
        (lambda: V.check_positive_float("lr", np.inf), ValueError, "lr must be finite"),
        (lambda: V.check_non_negative_float("eps", -1e-9), ValueError, "eps must be finite and >="),
        (lambda: V.check_fraction("p", 1.0), ValueError, r"p must be finite and >= 0 and < 1"),
        (lambda: V.check_fraction("p", float("nan")), ValueError, "p must be finite"),
        (lambda: V.check_choice("cell", 3, ("rnn",)), ValueError, "cell must be one of 'rnn'"),
        (lambda: V.check_bool("flag", 1), TypeError, r"flag must be True or False, got an int"),
        (lambda: V.check_float_dtype("dtype", "int8"), TypeError, "dtype must be float32 or"),
        (lambda: V.check_float_dtype("dtype", "no"), TypeError, "dtype must be float32 or"),
    ],
)
def test_scalar_checks(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_scalar_checks_return_the_value():
    assert V.check_positive_float("lr", np.float32(0.5)) == 0.5
    assert V.check_fraction("p", 0) == 0.0
    assert V.check_float("x", 3, minimum=3) == 3.0
    assert V.check_bool("flag", np.bool_(False)) is False
    assert V.check_float_dtype("dtype", "f8") is np.dtype(np.float64)


def test_as_float_array_converts_once_and_only_when_needed():
    a = np.arange(6.0).reshape(2, 3)
    assert V.as_float_array("a", a) is a  # fine as it is: no copy, no view
    swapped = V.as_float_array("a", a.astype(">f8"))
    assert swapped.dtype is np.dtype(np.float64) and swapped.dtype.isnative
    np.testing.assert_array_equal(swapped, a)
    strided = V.as_float_array("a", a[:, ::2])
    assert strided.flags.c_contiguous
    view = V.as_float_array("a", a[:, ::2], contiguous=False)
    assert np.shares_memory(view, a)
    assert V.as_float_array("a", [1, 2], np.dtype(np.float32)).dtype == np.float32
    assert V.as_float_array("a", 2.5).ndim == 0


def test_as_float_array_names_the_real_cause():
    f32 = np.dtype(np.float32)
    with pytest.raises(TypeError, match=r"a has dtype float64 but the parameters are float32"):
        V.as_float_array("a", np.zeros(2), f32)
    with pytest.raises(TypeError, match=r"a has dtype float64 but W's entries are float32"):
        V.as_float_array("a", np.zeros(2), f32, dtype_of="W's entries")
    with pytest.raises(TypeError, match=r"a must have dtype float32 or float64, got int64; cast"):
        V.as_float_array("a", np.zeros(2, np.int64))
    with pytest.raises(TypeError, match=r"a is a list that NumPy cannot turn into an array"):
        V.as_float_array("a", [[1.0], [1.0, 2.0]], f32)
    with pytest.raises(TypeError, match=r"a must be a float32 or float64 array, got a list that"):
        V.as_float_array("a", [[1.0], [1.0, 2.0]])


def test_check_finite_names_the_first_bad_position():
    a = np.zeros((3, 4))
    V.check_finite("a", a)
    V.check_finite("ids", np.array([1, 2]))  # integers cannot hold NaN
    a[2, 1] = np.inf
    a[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"^a contains NaN at index \(1, 3\) \(2 non-finite"):
        V.check_finite("a", a)
    with pytest.raises(ValueError, match=r"^v contains infinity at index 4 \(1 non-finite value"):
        V.check_finite("v", np.array([0.0, 1, 2, 3, -np.inf]))


def test_as_numeric_array_is_check_array():
    f32 = np.dtype(np.float32)
    out = V.as_numeric_array("X", [[1, 2], [3, 4]], f32)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert V.as_numeric_array("X", np.array([True, False]), f32).tolist() == [1.0, 0.0]
    with pytest.raises(
        TypeError, match="X must be an array of numbers, got dtype <U1 \\(a list\\)"
    ):
        V.as_numeric_array("X", ["a"], f32)
    with pytest.raises(ValueError, match=r"X contains NaN at index 1"):
        V.as_numeric_array("X", [0.0, float("nan")], f32)
    assert np.isnan(V.as_numeric_array("X", [float("nan")], f32, finite=False)[0])


def test_one_free_memory_read():
    """The functional core refuses what cannot fit with the one reading of free memory."""
    from fastrnn import _sysinfo

    assert V.available_memory is _sysinfo.available_memory
    V.check_memory(2**20, "small")  # below the threshold nothing is read
    avail = _sysinfo.available_memory()
    if avail is not None:
        with pytest.raises(MemoryError, match=r"huge needs about .* GiB but only"):
            V.check_memory(avail + 2**40, "huge")
