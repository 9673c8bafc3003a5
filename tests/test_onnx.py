"""ONNX export (fastrnn.onnx): onnxruntime runs the exported graph and gives what fastrnn
computes, for every cell, stack depth, direction, layout, with and without lengths, and for
the fitted many-to-one models with their heads."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import fastrnn  # noqa: E402
import fastrnn.onnx as fonnx  # noqa: E402
from fastrnn import layers  # noqa: E402

# float32: onnxruntime and fastrnn sum in another order; 1e-5 is the bound, about
# 100 float32 ulps at the outputs' magnitude (|tanh| <= 1, small stacks)
ATOL = 1e-5
T, B, D, H = 6, 4, 3, 5
LENGTHS = np.array([6, 2, 5, 1])


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _check_layer(layer, x, lengths=None, state=None):
    model = fonnx.export(layer, lengths=lengths is not None, initial_state=state is not None)
    feed = {"x": x}
    if lengths is not None:
        feed["lengths"] = lengths.astype(np.int64)
    if state is not None:
        parts = state if isinstance(state, tuple) else (state,)
        feed.update(zip(("h0", "c0")[: len(parts)], parts, strict=True))
    got = _run(model, feed)
    out, st = layer.forward(x, state, lengths=lengths)
    expected = [out, *(st if isinstance(st, tuple) else (st,))]
    assert [o.name for o in model.graph.output] == ["output", "h_n", "c_n"][: len(expected)]
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize(
    ("cls", "activation"),
    [("RNN", "tanh"), ("RNN", "relu"), ("LSTM", None), ("GRU", None)],
    ids=["rnn-tanh", "rnn-relu", "lstm", "gru"],
)
def test_layer_matches_forward(cls, activation, num_layers, bidirectional, with_lengths):
    kw = {} if activation is None else {"activation": activation}
    layer = getattr(layers, cls)(D, H, num_layers, bidirectional=bidirectional, seed=3, **kw).eval()
    # larger weights than the default init, so that every gate's weights matter
    for value in layer.params.values():
        value *= 2
    x = np.random.default_rng(0).standard_normal((T, B, D)).astype(np.float32)
    _check_layer(layer, x, LENGTHS if with_lengths else None)


@pytest.mark.parametrize("activation", ["leaky_relu", "identity"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_other_rnn_activations(activation, bidirectional):
    layer = layers.RNN(
        D, H, 2, bidirectional=bidirectional, activation=activation, negative_slope=0.2, seed=1
    )
    x = np.random.default_rng(1).standard_normal((T, B, D)).astype(np.float32)
    _check_layer(layer, x, LENGTHS)


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_batch_first_and_initial_state(cls):
    layer = getattr(layers, cls)(D, H, 2, bidirectional=True, batch_first=True, seed=2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    h0 = rng.standard_normal((4, B, H)).astype(np.float32)
    state = (h0, rng.standard_normal((4, B, H)).astype(np.float32)) if cls == "LSTM" else h0
    _check_layer(layer, x, LENGTHS, state)
    model = fonnx.export(layer)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[:2]] == [
        "batch",
        "time",
    ]


def test_float64_exported_as_float32():
    """onnxruntime runs float32 RNN/LSTM/GRU only: a float64 layer exports as float64
    (checked, not run) or, with dtype="float32", as float32 that onnxruntime runs."""
    layer = layers.LSTM(D, H, bidirectional=True, seed=4, dtype=np.float64)
    model = fonnx.export(layer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    model = fonnx.export(layer, lengths=True, dtype="float32")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = np.random.default_rng(4).standard_normal((T, B, D))
    got = _run(model, {"x": x.astype(np.float32), "lengths": LENGTHS})
    expected = layer.forward(x, lengths=LENGTHS)
    for g, e in zip(got, [expected[0], *expected[1]], strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_gate_order_matters(monkeypatch, cell):
    """An export that kept fastrnn's gate order would give other outputs: the comparisons
    above can fail."""
    layer = getattr(layers, cell)(D, H, seed=5)
    x = np.random.default_rng(5).standard_normal((T, B, D)).astype(np.float32)
    out, _ = layer.forward(x)
    n_gates = 4 if cell == "LSTM" else 3
    monkeypatch.setitem(fonnx._GATE_ORDER, cell.lower(), list(range(n_gates)))
    got = _run(fonnx.export(layer), {"x": x})[0]
    assert np.abs(got - out).max() > 1e-3


def test_file_and_checker(tmp_path):
    layer = layers.GRU(D, H, 2, bidirectional=True, seed=6)
    path = tmp_path / "gru.onnx"
    returned = fonnx.export(layer, path, lengths=True)
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.opset_import[0].version >= 17
    assert loaded.SerializeToString() == returned.SerializeToString()
    ops = [n.op_type for n in loaded.graph.node]
    assert ops.count("GRU") == 2
    assert all(
        a.i == 1
        for n in loaded.graph.node
        if n.op_type == "GRU"
        for a in n.attribute
        if a.name == "linear_before_reset"
    )


def _data(n=24, T=7, D=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, D)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=n)
    return X, lengths


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize(
    ("cell", "num_layers", "bidirectional"),
    [("lstm", 1, False), ("gru", 2, True), ("rnn", 2, False), ("lstm", 2, True)],
)
def test_classifier_predict_proba(tmp_path, cell, num_layers, bidirectional, n_classes):
    X, lengths = _data()
    y = np.array(["a", "b", "c"])[np.arange(len(X)) % n_classes]
    clf = fastrnn.SequenceClassifier(
        6, cell=cell, num_layers=num_layers, bidirectional=bidirectional, epochs=2, seed=0
    ).fit(X, y, lengths)
    path = tmp_path / "clf.onnx"
    fonnx.export(clf, path, lengths=True)
    model = onnx.load(path)
    assert [o.name for o in model.graph.output] == ["probabilities"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == clf.classes_.tolist()
    (proba,) = _run(model, {"X": X, "lengths": lengths.astype(np.int64)})
    np.testing.assert_allclose(proba, clf.predict_proba(X, lengths), rtol=0, atol=1e-5)
    # without lengths: every sequence has T steps
    (proba,) = _run(fonnx.export(clf), {"X": X})
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=1e-5)


@pytest.mark.parametrize("vector", [False, True])
def test_regressor_predict(vector):
    X, lengths = _data(seed=1)
    y = X[:, 0, :2] if vector else X[:, 0, 0]
    reg = fastrnn.SequenceRegressor(5, cell="gru", bidirectional=True, epochs=2, seed=0).fit(
        X, y, lengths
    )
    (pred,) = _run(fonnx.export(reg, lengths=True), {"X": X, "lengths": lengths})
    expected = reg.predict(X, lengths)
    assert pred.shape == expected.shape
    np.testing.assert_allclose(pred, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_tagger_predict_proba(bidirectional):
    X, lengths = _data(seed=2)
    y = (X[..., 0] > 0).astype(np.int64) + 2 * (X[..., 1] > 1)
    tagger = fastrnn.SequenceTagger(
        5, cell="lstm", num_layers=2, bidirectional=bidirectional, epochs=2, seed=0
    ).fit(X, y, lengths)
    model = fonnx.export(tagger, lengths=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == tagger.classes_.tolist()
    (proba,) = _run(model, {"X": X, "lengths": lengths})
    expected = tagger.predict_proba(X, lengths)
    assert proba.shape == expected.shape
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-5)
    (proba,) = _run(fonnx.export(tagger), {"X": X})
    np.testing.assert_allclose(proba, tagger.predict_proba(X), rtol=0, atol=1e-5)


def test_errors():
    with pytest.raises(TypeError, match="got Linear"):
        fonnx.export(layers.Linear(3, 2))
    with pytest.raises(fastrnn.models.NotFittedError, match="not fitted"):
        fonnx.export(fastrnn.SequenceClassifier(4))
    X, _ = _data(n=8)
    clf = fastrnn.SequenceClassifier(4, epochs=1).fit(X, np.arange(8) % 2)
    with pytest.raises(TypeError, match="initial_state=True applies to layers only"):
        fonnx.export(clf, initial_state=True)
    with pytest.raises(TypeError, match="lengths"):
        fonnx.export(layers.RNN(2, 2), lengths="yes")
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int32"):
        fonnx.export(layers.RNN(2, 2), dtype="int32")
    with pytest.raises(TypeError, match="path must be"):
        fonnx.export(layers.RNN(2, 2), 3)


def test_import_fastrnn_does_not_import_onnx():
    code = (
        "import sys, fastrnn, fastrnn.onnx; fastrnn.RNN; "
        "assert 'onnx' not in sys.modules, 'onnx imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_onnx_message():
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import fastrnn, fastrnn.layers\n"
        "try:\n"
        "    fastrnn.onnx.export(fastrnn.layers.RNN(2, 2))\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'fastrnn[onnx]'\" in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
