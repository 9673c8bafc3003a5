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
