"""Checkpointed BPTT with dropout: a checkpointed backward recomputes each segment with the
forward's own step code, so it must apply the same recurrent mask as the forward did, and
its weight gradients must take ``m * h_{t-1}``. The gradients are then bit-identical to
full BPTT with the same masks, on every backend, for every cell, with lengths."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from conftest import (
    assert_within_rounding,
    blas_rows_keep_their_bits,
    dropout_mask,
    forward_backward_arrays,
    using_threads,
)
from fastrnn import layers

LAYERS = {"rnn": layers.RNN, "lstm": layers.LSTM, "gru": layers.GRU}


def _case(cell, dtype, T, B, D, H, seed=0):
    rng = np.random.default_rng(seed)
    p = fastrnn.init_params(cell, D, H, seed=seed + 1, dtype=dtype)
    arr = lambda *shape: rng.normal(size=shape).astype(dtype)  # noqa: E731
    lstm = cell == "lstm"
    lens = rng.integers(1, T + 1, size=B)
    lens[0] = T
    inputs = {"x": arr(T, B, D), "h0": arr(B, H), "c0": arr(B, H) if lstm else None}
    grads = {"dhs": arr(T, B, H), "dh_n": arr(B, H), "dc_n": arr(B, H) if lstm else None}
    masks = {
        "input_mask": dropout_mask(rng, (B, D), 0.3, dtype),
        "recurrent_mask": dropout_mask(rng, (B, H), 0.5, dtype),
    }
    return p, inputs, grads, lens, masks


def _run(cell, p, inputs, grads, lens, backend, checkpoint, masks):
    res = fastrnn.forward(
        cell, p, **inputs, lengths=lens, backend=backend, checkpoint=checkpoint, **masks
    )
    return res, fastrnn.backward(res, **grads, return_step_norms=True)


_outputs = forward_backward_arrays


def _assert_identical(full, ckpt, what: str) -> None:
    want, got = _outputs(full), _outputs(ckpt)
    assert want.keys() == got.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=f"{name}, {what}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_checkpointed_gradients_with_dropout_are_full_bptts(backend, cell, dtype, threads):
    """Recurrent and input masks, lengths, h0/c0 and gradients from dhs and the final
    state: every k (1, one not dividing T, T, "sqrt") gives the bits of full BPTT with the
    same masks (outputs, dx, dh0, dc0, every parameter gradient, step norms), and the
    masks do change the result (a recompute without them would not match)."""
    T, B, D, H = 23, 5, 3, 5  # H=5: gate rows that are not whole SIMD packets
    p, inputs, grads, lens, masks = _case(cell, dtype, T, B, D, H)
    with using_threads(threads):
        full = _run(cell, p, inputs, grads, lens, backend, None, masks)
        plain = _outputs(_run(cell, p, inputs, grads, lens, backend, None, {}))
        for name in ("hs", "dW_hh", "dx"):
            assert not np.array_equal(_outputs(full)[name], plain[name]), name
        for k in (1, 4, 7, T, "sqrt"):
            ckpt = _run(cell, p, inputs, grads, lens, backend, k, masks)
            assert ckpt[0].checkpoint == (None if cell == "rnn" else k if k != "sqrt" else 5)
            _assert_identical(full, ckpt, f"checkpoint={k!r}, {threads} threads")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_checkpointed_dropout_where_the_products_use_blas(backend, cell):
    """Sizes where the C++ kernels put the products (the projection, the per-step product,
    the weight-gradient blocks) through BLAS and numpy's gradient blocks span segments:
    bit-identical where the BLAS gives a row the same bits whatever the row count, else
    equal to rounding (D terms per dot product; conftest.blas_rows_keep_their_bits)."""
    T, B, D, H = 120, 16, 64, 64
    GH = (4 if cell == "lstm" else 3) * H
    stable = blas_rows_keep_their_bits(backend, T * B, D, GH, (17 * B, 11 * B))
    p, inputs, grads, lens, masks = _case(cell, np.float32, T, B, D, H, seed=4)
    with using_threads(2):
        full = _run(cell, p, inputs, grads, lens, backend, None, masks)
        for k in (17, "sqrt"):  # sqrt: 11 steps
            ckpt = _run(cell, p, inputs, grads, lens, backend, k, masks)
            if stable:
                _assert_identical(full, ckpt, f"checkpoint={k!r}")
            else:
                assert_within_rounding(_outputs(ckpt), _outputs(full), D, f"checkpoint={k!r}")


@pytest.mark.parametrize("cell", list(LAYERS))
def test_layers_with_dropout_and_checkpoint_equal_full_bptt(backend, cell):
    """A stacked bidirectional layer with all three dropouts and checkpoint="sqrt" (or a
    memory budget) gives, from the same seed (the same masks), the bits of one without
    checkpointing: outputs, states, dx and every parameter gradient (where the BLAS keeps a
    row's bits whatever the row count of the projection: layer inputs of 3 and 10 features,
    44 rows, segments of 4 and 3 steps; else equal to rounding, 44 terms per sum)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(11, 4, 3)).astype(np.float32)
    kw = {"num_layers": 2, "bidirectional": True, "seed": 9}
    drop = {"dropout": 0.3, "recurrent_dropout": 0.4, "input_dropout": 0.25}
    GH = {"rnn": 1, "lstm": 4, "gru": 3}[cell] * 5
    stable = all(blas_rows_keep_their_bits(backend, 44, D, GH, (16, 12)) for D in (3, 10))
    with fastrnn.use_backend(backend):
        full = LAYERS[cell](3, 5, **kw, **drop)
        runs = [LAYERS[cell](3, 5, **kw, **drop, checkpoint=c) for c in ("sqrt", 3)]
        want, want_state = full(x, lengths=[11, 4, 7, 1])
        dout = rng.normal(size=want.shape).astype(np.float32)
        want_dx = full.backward(dout)[0]
        wanted = {"out": want, "state": np.stack(want_state), "dx": want_dx, **full.grads}
        for layer in runs:
            got, got_state = layer(x, lengths=[11, 4, 7, 1])
            dx = layer.backward(dout)[0]
            arrays = {"out": got, "state": np.stack(got_state), "dx": dx, **layer.grads}
            if stable:
                for name, value in wanted.items():
                    np.testing.assert_array_equal(arrays[name], value, err_msg=name)
            else:
                assert_within_rounding(arrays, wanted, 44)


def test_char_language_model_with_dropout_and_checkpoint():
    """The char LM takes ``checkpoint`` like every model (and ``fastrnn train charlm
    --checkpoint``); with all three dropouts it trains to the same losses and parameters
    as without checkpointing (the same seed: the same masks)."""
    text = "the quick brown fox jumps over the lazy dog " * 4
    kw = {"num_layers": 2, "seq_len": 12, "epochs": 2, "seed": 0, "progress": False}
    drop = {"dropout": 0.3, "recurrent_dropout": 0.4, "input_dropout": 0.25}
    lms = [
        fastrnn.models.CharLanguageModel(16, **kw, **drop, checkpoint=c).fit(text)
        for c in (None, "sqrt")
    ]
    assert lms[1].get_params()["checkpoint"] == "sqrt"
    assert lms[1]._parts["rnn"].checkpoint == "sqrt"
    assert lms[0].history_["loss"] == lms[1].history_["loss"]
    a, b = (lm._parts["rnn"].params for lm in lms)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("checkpoint", [3, np.int64(3), "sqrt", {"max_bytes": 4096}])
def test_layer_config_keeps_dropout_and_checkpoint(tmp_path, checkpoint):
    """A saved layer comes back with its dropout probabilities and its checkpoint setting
    (both in the repr); a layer without checkpointing saves no checkpoint entry."""
    layer = layers.LSTM(3, 4, 2, seed=0, dropout=0.3, recurrent_dropout=0.4, checkpoint=checkpoint)
    assert f"checkpoint={checkpoint!r}" in repr(layer)
    layer.save(tmp_path / "lstm.npz")
    back = fastrnn.load(tmp_path / "lstm.npz")
    assert (back.dropout, back.recurrent_dropout, back.checkpoint) == (0.3, 0.4, checkpoint)
    assert "checkpoint" not in layers.LSTM(3, 4)._config()
    assert "checkpoint" not in repr(layers.LSTM(3, 4))
