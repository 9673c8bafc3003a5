"""Gradient-flow diagnostics: norms against lag, the spectrum of W_hh, gradcheck (the
``fastrnn gradflow`` command: tests/test_gradflow_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from conftest import (
    CELL_CASES,
    CELL_IDS,
    assert_matches_central_differences,
    central_differences,
    fd_tolerance,
    make_case,
)
from fastrnn import diagnostics


def _scaled_orthogonal(H: int, a: float, seed: int = 0) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(H, H)))
    return a * q * np.sign(np.diag(r))


def _linear_rnn(D: int, H: int, a: float) -> dict[str, np.ndarray]:
    p = fastrnn.init_params("rnn", D, H, seed=1, dtype=np.float64)
    p["W_hh"] = _scaled_orthogonal(H, a)
    return p


# --- gradient_norms_by_lag ---------------------------------------------------------------


@pytest.mark.parametrize("a", [0.8, 1.0, 1.25])
def test_linear_rnn_norms_are_powers_of_the_gain(backend, a):
    """identity activation, W = a Q (Q orthogonal): dL/dh_{T-1-k} = (W^T)^k u, norm a^k."""
    T = 30
    norms = diagnostics.gradient_norms_by_lag(
        "rnn", _linear_rnn(3, 6, a), T, activation="identity", batch=4, backend=backend
    )
    assert norms.shape == (T + 1,)
    np.testing.assert_allclose(norms, a ** np.arange(T + 1), rtol=1e-9)


def test_reduce_none_gives_every_sequence(backend):
    p = fastrnn.init_params("gru", 3, 5, seed=2, dtype=np.float64)
    per = diagnostics.gradient_norms_by_lag("gru", p, 12, batch=3, reduce="none", backend=backend)
    mean = diagnostics.gradient_norms_by_lag("gru", p, 12, batch=3, backend=backend)
    assert per.shape == (13, 3)
    np.testing.assert_allclose(per[0], 1.0, rtol=1e-12)  # unit vectors at lag 0
    np.testing.assert_allclose(per.mean(axis=1), mean, rtol=1e-12)


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
def test_norms_by_lag_agree_across_backends(fast_backend, cell, activation):
    p = fastrnn.init_params(cell, 3, 7, seed=3, dtype=np.float64)
    kw = {"activation": activation, "batch": 3, "seed": 4}
    ref = diagnostics.gradient_norms_by_lag(cell, p, 25, backend="numpy", **kw)
    got = diagnostics.gradient_norms_by_lag(cell, p, 25, backend=fast_backend, **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
def test_norms_by_lag_match_finite_differences(backend, cell, activation):
    """The whole chain on a small case: each norm is the norm of a finite-difference
    derivative of the last-step loss with respect to an offset added to h_k."""
    T, B, D, H = 4, 2, 3, 3
    p = fastrnn.init_params(cell, D, H, seed=5, dtype=np.float64)
    norms = diagnostics.gradient_norms_by_lag(
        cell, p, T, activation=activation, batch=B, seed=6, reduce="none", backend=backend
    )
    rng = np.random.default_rng(6)  # the same draws as gradient_norms_by_lag
    x = rng.standard_normal((T, B, D))
    u = rng.standard_normal((B, H))
    u /= np.linalg.norm(u, axis=1, keepdims=True)

    def loss_from(k: int, h: np.ndarray, c: np.ndarray | None) -> float:
        """<u, h_{T-1}> when the state after step k-1 is (h, c) (k = 0: the initial state)."""
        if k == T:
            return float(np.sum(u * h))
        res = fastrnn.forward(cell, p, x[k:], h, c, activation=activation, backend=backend)
        return float(np.sum(u * res.h_n))

    # every loss_from is <u, h_{T-1}> at the same unperturbed point; a norm of H
    # derivatives is off by at most sqrt(H) times the error of one
    h_last = fastrnn.forward(cell, p, x, activation=activation, backend=backend).h_n
    tol = np.sqrt(H) * fd_tolerance(np.float64, float(np.sum(np.abs(u * h_last))))
    for lag in range(T + 1):
        k = T - lag  # the state h_{k-1} enters the remaining steps x[k:]
        if k == 0:
            h, c = np.zeros((B, H)), (np.zeros((B, H)) if cell == "lstm" else None)
        else:
            head = fastrnn.forward(cell, p, x[:k], activation=activation, backend=backend)
            h, c = head.h_n, head.c_n
        h = h.copy()
        num = central_differences(lambda k=k, h=h, c=c: loss_from(k, h, c), h)
        assert_matches_central_differences(
            norms[lag], np.linalg.norm(num, axis=1), tol, err_msg=f"lag {lag}"
        )


def test_the_course_picture():
    """tanh with the default init vanishes, ReLU with gain 2 explodes, a gated cell with
    an open forget/update gate keeps a signal far beyond where tanh has none."""
    T, D, H = 120, 4, 16

    def norms(cell, activation="tanh", init="uniform", gain=1.0, gate_bias=0.0):
        p = fastrnn.init_params(cell, D, H, init=init, gain=gain, seed=0, dtype=np.float64)
        p["b_ih"][H : 2 * H] += gate_bias
        return diagnostics.gradient_norms_by_lag(cell, p, T, activation=activation)

    tanh = norms("rnn")
    relu = norms("rnn", "relu", "orthogonal", gain=2.0)
    gru = norms("gru", gate_bias=6.0)
    lstm = norms("lstm", gate_bias=6.0)
    assert tanh[100] < 1e-10 * tanh[1]
    assert relu[100] > 1e4 * relu[1]
    assert gru[100] > 0.1
    assert lstm[100] > 1e6 * tanh[100]


def test_norms_by_lag_from_a_layer():
    layers = pytest.importorskip("fastrnn.layers")
    rnn = layers.RNN(3, 5, num_layers=2, activation="relu", seed=0, dtype=np.float64)
    p = {
        "W_ih": rnn.params["weight_ih_l1"],
        "W_hh": rnn.params["weight_hh_l1"],
        "b_ih": rnn.params["bias_ih_l1"],
        "b_hh": rnn.params["bias_hh_l1"],
    }
    want = diagnostics.gradient_norms_by_lag("rnn", p, 9, activation="relu")
    got = diagnostics.gradient_norms_by_lag(rnn, None, 9, layer=1)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"layer must be an int in 0\.\.1, got 2"):
        diagnostics.gradient_norms_by_lag(rnn, None, 9, layer=2)
    with pytest.raises(TypeError, match="params must be None when a layer is given"):
        diagnostics.gradient_norms_by_lag(rnn, p, 9)


def test_norms_by_lag_from_a_fitted_model():
    models = pytest.importorskip("fastrnn.models")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 5, 3)), np.arange(8) % 2
    model = models.SequenceClassifier(hidden_size=4, cell="gru", epochs=1, seed=0)
    with pytest.raises(TypeError, match=r"has no RNN/LSTM/GRU layer .*fit a model first"):
        diagnostics.gradient_norms_by_lag(model, None, 6)
    model.fit(X, y)
    got = diagnostics.gradient_norms_by_lag(model, None, 6)
    layer = next(v for v in vars(model)["_parts"].values() if hasattr(v, "num_layers"))
    np.testing.assert_array_equal(got, diagnostics.gradient_norms_by_lag(layer, None, 6))
    assert diagnostics.recurrent_spectrum(model).cell == "gru"


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"T": 0}, ValueError, "T must be a positive int, got 0"),
        ({"T": 2.5}, TypeError, r"T must be an int, got a float \(2\.5\)"),
        ({"batch": -1}, ValueError, "batch must be a positive int"),
        ({"input_scale": float("nan")}, ValueError, "input_scale must be finite"),
        ({"reduce": "max"}, ValueError, "reduce must be one of 'mean', 'none'"),
        ({"activation": "sigmoid"}, ValueError, "activation must be one of"),
        ({"cell": "cnn"}, ValueError, "cell must be one of"),
        ({"cell": 3}, TypeError, "cell must be 'rnn', 'lstm', 'gru', a fastrnn"),
        ({"cell": "lstm"}, ValueError, r"params\['W_hh'\] has shape \(4, 4\)"),
    ],
)
def test_norms_by_lag_bad_arguments(kwargs, error, pattern):
    args = {"cell": "rnn", "params": fastrnn.init_params("rnn", 2, 4), "T": 5} | kwargs
    with pytest.raises(error, match=pattern):
        diagnostics.gradient_norms_by_lag(**args)


# --- recurrent_spectrum --------------------------------------------------------------------


def test_spectrum_of_a_scaled_orthogonal_matrix():
    s = diagnostics.recurrent_spectrum(_linear_rnn(2, 5, 0.7))
    assert s.cell == "rnn"
    assert s.spectral_radius["h"] == pytest.approx(0.7, rel=1e-12)
    assert s.largest_singular_value["h"] == pytest.approx(0.7, rel=1e-12)
    assert s.bound == pytest.approx(0.7) and s.prediction == "vanishing"
    s = diagnostics.recurrent_spectrum(_linear_rnn(2, 5, 1.3), activation="relu")
    assert s.prediction == "may explode"
    s = diagnostics.recurrent_spectrum(fastrnn.init_params("rnn", 2, 5, init="identity"))
    assert s.prediction == "neutral"


def test_radius_and_norm_differ_for_a_non_normal_matrix():
    p = fastrnn.init_params("rnn", 2, 3, dtype=np.float64)
    p["W_hh"] = np.array([[0.5, 10.0, 0.0], [0.0, -0.9, 0.0], [0.0, 0.0, 0.1]])
    s = diagnostics.recurrent_spectrum(p, activation="leaky_relu", negative_slope=2.0)
    assert s.spectral_radius["h"] == pytest.approx(0.9)
    assert s.largest_singular_value["h"] == pytest.approx(np.linalg.svd(p["W_hh"])[1][0])
    assert s.activation_derivative_max == 2.0
    assert s.bound == pytest.approx(2.0 * s.largest_singular_value["h"])


@pytest.mark.parametrize(("cell", "gates"), [("lstm", "ifgo"), ("gru", "rzn")])
def test_spectrum_per_gate_block(cell, gates):
    H = 4
    p = fastrnn.init_params(cell, 3, H, dtype=np.float64)
    scales = np.arange(1, len(gates) + 1) * 0.5
    p["W_hh"] = np.concatenate([a * _scaled_orthogonal(H, 1.0, k) for k, a in enumerate(scales)])
    s = diagnostics.recurrent_spectrum(p)  # cell inferred from the shape of W_hh
    assert s.cell == cell and list(s.spectral_radius) == list(gates)
    for gate, a in zip(gates, scales, strict=True):
        assert s.spectral_radius[gate] == pytest.approx(a)
        assert s.largest_singular_value[gate] == pytest.approx(a)
    assert s.bound is None and s.prediction == "gated"


@pytest.mark.parametrize("activation", ["tanh", "relu", "leaky_relu", "identity"])
@pytest.mark.parametrize("gain", [0.5, 1.0, 1.5])
def test_the_bound_bounds_the_measured_norms(activation, gain):
    """Pascanu et al.: ||dL/dh_{T-1-k}|| <= (||W||_2 max|act'|)^k ||dL/dh_{T-1}||."""
    p = fastrnn.init_params("rnn", 3, 8, init="xavier", gain=gain, seed=7, dtype=np.float64)
    bound = diagnostics.recurrent_spectrum(p, activation=activation).bound
    norms = diagnostics.gradient_norms_by_lag(
        "rnn", p, 40, activation=activation, reduce="none", seed=8
    )
    limit = bound ** np.arange(41)[:, None]
    assert np.all(norms <= limit * (1 + 1e-9))


def test_spectrum_bad_arguments():
    with pytest.raises(ValueError, match=r"params\['W_hh'\] has shape \(10, 5\), expected"):
        diagnostics.recurrent_spectrum({"W_hh": np.zeros((10, 5))})
    p = fastrnn.init_params("gru", 2, 3)
    with pytest.raises(ValueError, match=r"params\['W_hh'\] has shape \(9, 3\).*cell 'lstm'"):
        diagnostics.recurrent_spectrum(p, "lstm")
    with pytest.raises(ValueError, match="missing"):
        diagnostics.recurrent_spectrum({"W_hh": np.zeros((3, 3))})


# --- gradcheck ---------------------------------------------------------------------------


def _tolerance(cell: str, case: dict) -> dict[str, float]:
    """gradcheck's atol/rtol from its step (eps=1e-6) and float64: its loss sums
    <dhs, hs> + <dh_n, h_n> (+ <dc_n, c_n>) with standard-normal upstream gradients drawn
    inside, so the scale of its terms is that of the same sum with any such draw."""
    res = fastrnn.forward(cell, case["params"], case["x"], case["h0"], case["c0"])
    rng = np.random.default_rng(0)
    outs = [res.hs, res.h_n] + ([res.c_n] if cell == "lstm" else [])
    scale = sum(float(np.sum(np.abs(rng.standard_normal(o.shape) * o))) for o in outs)
    return {"eps": 1e-6, "atol": fd_tolerance(np.float64, scale, step=1e-6), "rtol": 0.0}


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
def test_gradcheck_passes_on_every_backend(backend, cell, activation):
    case = make_case(cell, T=4, B=3, D=2, H=3, lengths=True, h0=True, seed=9)
    report = diagnostics.gradcheck(
        cell,
        case["params"],
        case["x"],
        case["h0"],
        case["c0"],
        activation=activation,
        lengths=case["lengths"],
        backend=backend,
        max_entries=12,
        **_tolerance(cell, case),
    )
    assert report.ok and report.checked > 0
    names = {"x", "h0", "W_ih", "W_hh", "b_ih", "b_hh"} | ({"c0"} if cell == "lstm" else set())
    assert set(report.max_ratio) == names
    assert "passed" in str(report)


def test_gradcheck_accepts_float32_and_is_the_top_level_name():
    assert fastrnn.gradcheck is diagnostics.gradcheck
    case = make_case("lstm", T=3, B=2, D=2, H=2, dtype=np.float32, seed=1)
    tol = _tolerance("lstm", case)
    report = fastrnn.gradcheck("lstm", case["params"], case["x"], max_entries=None, **tol)
    assert report.ok
    n = sum(v.size for v in case["params"].values()) + case["x"].size + 2 * 2 * 2
    assert report.checked == n


def test_gradcheck_catches_a_wrong_gradient(monkeypatch):
    """A backend whose dW_hh is 1% off fails, and the report names W_hh."""
    from fastrnn.backends import numpy_backend

    right = numpy_backend.backward

    def wrong(*args, **kwargs):
        dx, dh0, dc0, dparams, norms, head = right(*args, **kwargs)
        dparams = dict(dparams, W_hh=dparams["W_hh"] * 1.01)
        return dx, dh0, dc0, dparams, norms, head

    monkeypatch.setattr(numpy_backend, "backward", wrong)
    case = make_case("gru", T=3, B=2, D=2, H=3, seed=2)
    tol = _tolerance("gru", case)  # the tolerance a right gradient passes with
    with pytest.raises(diagnostics.GradcheckError, match=r"worst W_hh\[\d+, \d+\]") as info:
        diagnostics.gradcheck("gru", case["params"], case["x"], backend="numpy", **tol)
    report = info.value.report
    assert not report.ok and report.max_ratio["W_hh"] > 1 >= report.max_ratio["x"]
    quiet = diagnostics.gradcheck(
        "gru", case["params"], case["x"], backend="numpy", raise_on_failure=False, **tol
    )
    assert not quiet.ok and quiet.worst[0] == "W_hh"


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"eps": 0.0}, ValueError, "eps must be finite and > 0"),
        ({"eps": "small"}, TypeError, r"eps must be a number, got a str \('small'\)"),
        ({"rtol": -1.0}, ValueError, "rtol must be finite and >= 0"),
        ({"max_entries": 0}, ValueError, "max_entries must be a positive int"),
        ({"x": np.zeros((2, 1, 5))}, ValueError, r"x has shape \(2, 1, 5\), expected"),
        ({"cell": "lstm"}, ValueError, r"params\['W_hh'\] has shape"),
    ],
)
def test_gradcheck_bad_arguments(kwargs, error, pattern):
    args = {
        "cell": "rnn",
        "params": fastrnn.init_params("rnn", 2, 3, dtype=np.float64),
        "x": np.zeros((2, 1, 2)),
    } | kwargs
    with pytest.raises(error, match=pattern):
        diagnostics.gradcheck(**args)
