"""Inference without the training tax: ``forward(..., training=False)`` and eval mode."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastrnn
from fastrnn.layers import GRU, LSTM, RNN, Linear


def assert_same_to_rounding(actual: np.ndarray, desired: np.ndarray) -> None:
    """The inference forward computes the same values as the training forward, but the cpp
    kernels project each step into scratch of their own instead of all steps at once: where
    the gate rows are not whole SIMD packets, a product may round its last bit otherwise."""
    eps = np.finfo(desired.dtype).eps
    np.testing.assert_allclose(actual, desired, rtol=0, atol=16 * eps)


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
    assert_same_to_rounding(infer.hs, train.hs)
    assert_same_to_rounding(infer.h_n, train.h_n)
    if cell == "lstm":
        assert_same_to_rounding(infer.c_n, train.c_n)
    assert infer.saved is None and not infer.training
    assert train.training
    with pytest.raises(ValueError, match=r"forward\(\.\.\., training=False\).*saves nothing"):
        fastrnn.backward(infer, dhs=np.ones_like(infer.hs))


@pytest.mark.parametrize("block_steps", [1, 3])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_numpy_inference_in_blocks_of_steps(cell, block_steps, monkeypatch):
    """The reference's inference forward runs in blocks of steps, carrying the state across
    block borders (also where a sequence ends inside a block)."""
    from fastrnn.backends import numpy_backend

    rng = np.random.default_rng(1)
    T, B, D, H = 10, 3, 4, 5
    p = fastrnn.init_params(cell, D, H, seed=2, dtype=np.float64)
    x = rng.normal(size=(T, B, D))
    h0 = rng.normal(size=(B, H))
    c0 = rng.normal(size=(B, H)) if cell == "lstm" else None
    kw = {"lengths": np.array([10, 3, 7]), "backend": "numpy"}
    train = fastrnn.forward(cell, p, x, h0, c0, **kw)
    per_step = B * {"rnn": 1, "lstm": 4, "gru": 3}[cell] * H * 8
    monkeypatch.setattr(numpy_backend, "INFERENCE_BLOCK_BYTES", block_steps * per_step)
    infer = fastrnn.forward(cell, p, x, h0, c0, training=False, **kw)
    eps = np.finfo(np.float64).eps  # the input projection's GEMM has another row count
    np.testing.assert_allclose(infer.hs, train.hs, rtol=0, atol=64 * eps)
    np.testing.assert_allclose(infer.h_n, train.h_n, rtol=0, atol=64 * eps)
    if cell == "lstm":
        np.testing.assert_allclose(infer.c_n, train.c_n, rtol=0, atol=64 * eps)
    assert np.all(infer.hs[3:, 1] == 0) and np.all(infer.hs[7:, 2] == 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inference_forward_holds_no_per_step_activations(cell):
    """The numpy reference allocates the per-step saved values only in training: the peak
    memory of an inference forward is lower by at least the per-step gates."""
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

    # training holds the gates (G per step) and one more (T, B, H) array; inference only hs
    G = {"lstm": 4, "gru": 3}[cell]
    assert peak(True) - peak(False) >= 0.9 * G * T * B * H * 8


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
    assert_same_to_rounding(out_eval, out_train)
    for a, b in zip(np.atleast_1d(state_eval), np.atleast_1d(state_train), strict=True):
        assert_same_to_rounding(a, b)
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
