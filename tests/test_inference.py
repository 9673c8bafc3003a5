"""Inference without the training tax: ``forward(..., training=False)`` and eval mode."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastrnn
from fastrnn import backends
from fastrnn.layers import GRU, LSTM, RNN, Linear

# Only the numpy backend has the ``training`` keyword on this branch; the integrator widens
# this to every backend (backends.BACKENDS) once the numba and cpp branches are merged.
INFERENCE_BACKENDS = [b for b in backends.BACKENDS if b == "numpy"]


@pytest.mark.parametrize("backend", INFERENCE_BACKENDS)
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_inference_forward_equals_training_forward(backend, cell, with_lengths):
    rng = np.random.default_rng(0)
    T, B, D, H = 7, 3, 4, 5
    p = fastrnn.init_params(cell, D, H, seed=1, dtype=np.float64)
    x = rng.normal(size=(T, B, D))
    h0 = rng.normal(size=(B, H))
    c0 = rng.normal(size=(B, H)) if cell == "lstm" else None
    lengths = np.array([7, 2, 5]) if with_lengths else None
    kw = {"lengths": lengths, "backend": backend}
    train = fastrnn.forward(cell, p, x, h0, c0, **kw)
    infer = fastrnn.forward(cell, p, x, h0, c0, training=False, **kw)
    np.testing.assert_array_equal(infer.hs, train.hs)
    np.testing.assert_array_equal(infer.h_n, train.h_n)
    if cell == "lstm":
        np.testing.assert_array_equal(infer.c_n, train.c_n)
    assert infer.saved is None and not infer.training
    assert train.training
    with pytest.raises(ValueError, match=r"forward\(\.\.\., training=False\).*saves nothing"):
        fastrnn.backward(infer, dhs=np.ones_like(infer.hs))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inference_forward_holds_no_per_step_activations(cell):
    """The numpy reference allocates the per-step saved values only in training: the peak
    memory of an inference forward is lower by at least one (T, B, H) array."""
    T, B, D, H = 200, 16, 8, 64
    p = fastrnn.init_params(cell, D, H, seed=0, dtype=np.float64)
    x = np.ones((T, B, D))

    def peak(training):
        tracemalloc.start()
        res = fastrnn.forward(cell, p, x, training=training, backend="numpy")
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del res
        return top

    one_step_array = T * B * H * 8
    assert peak(True) - peak(False) >= 0.9 * one_step_array


def test_training_must_be_a_bool():
    p = fastrnn.init_params("rnn", 2, 3)
    with pytest.raises(TypeError, match="training must be True or False, got a str"):
        fastrnn.forward("rnn", p, np.ones((2, 1, 2), np.float32), training="no")


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_layer_eval_mode(cls):
    layer = cls(3, 4, 2, bidirectional=True, seed=0, dtype=np.float64)
    x = np.random.default_rng(1).normal(size=(6, 2, 3))
    assert layer.training
    out_train, state_train = layer(x)
    assert layer.eval() is layer and not layer.training
    out_eval, state_eval = layer(x)
    np.testing.assert_array_equal(out_eval, out_train)
    for a, b in zip(np.atleast_1d(state_eval), np.atleast_1d(state_train), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"evaluation mode.*call \.train\(\)"):
        layer.backward(np.ones_like(out_eval))
    assert layer.train() is layer and layer.training
    layer(x)
    dx, _ = layer.backward(np.ones_like(out_train))
    assert dx.shape == x.shape


def test_linear_eval_mode():
    head = Linear(4, 2, seed=0)
    h = np.ones((3, 4), np.float32)
    out = head.eval()(h)
    with pytest.raises(ValueError, match="evaluation mode"):
        head.backward(np.ones_like(out))
    head.train()
    np.testing.assert_array_equal(head(h), out)
    assert head.backward(np.ones_like(out)).shape == h.shape
    with pytest.raises(TypeError, match="mode must be True or False"):
        head.train("yes")
