"""The output head fused into BPTT (``backward(res, head=HeadSpec(...))``, issue 15): the
head's dL/dh per block of steps inside the backward on every backend, bit-identical with
and without checkpointing, equal to the two-step path (``linear_cross_entropy`` then
``backward(dhs)``), right against a float64 central difference, clear errors, the layers'
``backward_head`` and the models that use it."""

from __future__ import annotations

import numpy as np
import pytest
from test_checkpoint import _assert_identical as assert_layer_identical
from test_checkpoint import _case as checkpoint_case

import fastrnn
from conftest import using_threads
from fastrnn import layers
from fastrnn.backends import numpy_backend
from fastrnn.functional import HeadSpec

K = 7


@pytest.fixture
def small_blocks(monkeypatch):
    """NumPy's weight-gradient blocks of a few steps (its default blocks are 4 MiB of
    gradients: one block at these sizes), so that the head runs over several blocks."""
    monkeypatch.setattr(numpy_backend, "GRAD_BLOCK_BYTES", 2**10)


def _case(cell, dtype, T, B, D, H, *, lengths=True, seed=0):
    """test_checkpoint's case (params, x, h0/c0, lengths, dhs, dh_n/dc_n) and a head of K
    classes whose mask drops the padded steps."""
    p, inputs, grads, lens = checkpoint_case(cell, dtype, T, B, D, H, lengths, seed)
    rng = np.random.default_rng(seed + 100)
    mask = None if lens is None else np.arange(T)[:, None] < lens
    weight, bias = rng.normal(size=(K, H)).astype(dtype), rng.normal(size=K).astype(dtype)
    head = HeadSpec(weight, bias, rng.integers(0, K, size=(T, B)), mask)
    final = {"dh_n": grads["dh_n"], "dc_n": grads["dc_n"]}
    return p, inputs, lens, head, final, grads["dhs"]


def _fused(cell, p, inputs, lens, head, final, backend, checkpoint, dhs=None):
    res = fastrnn.forward(cell, p, **inputs, lengths=lens, backend=backend, checkpoint=checkpoint)
    return res, fastrnn.backward(res, dhs, **final, head=head, return_step_norms=True)


def _assert_identical(a, b):
    """The layer's outputs and gradients (test_checkpoint's check) and the head's sums."""
    assert_layer_identical(a, b)
    ga, gb = a[1], b[1]
    assert ga.head.loss == gb.head.loss
    np.testing.assert_array_equal(ga.head.dweight, gb.head.dweight)
    np.testing.assert_array_equal(ga.head.dbias, gb.head.dbias)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bit_identical_with_and_without_checkpoint(
    backend, cell, dtype, lengths, threads, small_blocks
):
    """The head's loss, dweight, dbias and every gradient of the layer have the same bits
    for full BPTT and every k (with lengths, h0/c0, dh_n/dc_n): the head runs on the blocks
    of the weight gradients, which do not depend on k. T=130 over B=5 sequences spans
    several blocks on every backend (cpp ~52 steps, numba 51, numpy here a few)."""
    T, B, D, H = 130, 5, 3, 5
    p, inputs, lens, head, final, _ = _case(cell, dtype, T, B, D, H, lengths=lengths)
    with using_threads(threads):
        full = _fused(cell, p, inputs, lens, head, final, backend, None)
        for k in (1, 17, 52, T + 3, "sqrt"):
            _assert_identical(full, _fused(cell, p, inputs, lens, head, final, backend, k))


def _close(got, want, dtype, what):
    tol = 2e-5 if dtype == np.float32 else 1e-11
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("with_dhs", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_equals_the_two_step_path(backend, cell, dtype, with_dhs, small_blocks):
    """linear_cross_entropy(hs) then backward(dh (+ dhs)): the same loss and gradients to
    the dtype's rounding (the sums run in another order)."""
    T, B, D, H = 90, 4, 3, 6
    p, inputs, lens, head, final, dhs = _case(cell, dtype, T, B, D, H)
    dhs = dhs if with_dhs else None
    with using_threads(2):
        res = fastrnn.forward(cell, p, **inputs, lengths=lens, backend=backend)
        two = fastrnn.linear_cross_entropy(
            res.hs, head.weight, head.bias, head.targets, mask=head.mask, backend=backend
        )
        want = fastrnn.backward(res, two.dh if dhs is None else two.dh + dhs, **final)
        got = _fused(cell, p, inputs, lens, head, final, backend, "sqrt", dhs)[1]
    _close(got.head.loss, two.loss, dtype, "loss")
    _close(got.head.dweight, two.dweight, dtype, "dweight")
    _close(got.head.dbias, two.dbias, dtype, "dbias")
    for name in ("dx", "dh0", "dc0"):
        if getattr(want, name) is not None:
            _close(getattr(got, name), getattr(want, name), dtype, name)
    for name, value in want.params.items():
        _close(got.params[name], value, dtype, name)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_central_difference_in_float64(backend, cell, reduction):
    """d(head loss)/d(every parameter, x, h0) against a float64 central difference of the
    loss that the fused backward reports (the forward is the layer then the head)."""
    T, B, D, H = 6, 2, 2, 3
    p, inputs, lens, head, _, _ = _case(cell, np.float64, T, B, D, H, seed=3)
    head = HeadSpec(head.weight, head.bias, head.targets, head.mask, reduction)

    def loss_and_grads():
        res = fastrnn.forward(cell, p, **inputs, lengths=lens, backend=backend, checkpoint=2)
        return fastrnn.backward(res, head=head)

    g = loss_and_grads()
    wrt = {**{f"params.{k}": (p, k) for k in p}, "x": (inputs, "x"), "h0": (inputs, "h0")}
    wrt |= {"head.weight": (head, "weight"), "head.bias": (head, "bias")}
    analytic = {**{f"params.{k}": v for k, v in g.params.items()}, "x": g.dx, "h0": g.dh0}
    analytic |= {"head.weight": g.head.dweight, "head.bias": g.head.dbias}
    eps = 1e-6
    for name, (owner, key) in wrt.items():
        arr = owner[key] if isinstance(owner, dict) else getattr(owner, key)
        numeric = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            up = loss_and_grads().head.loss
            arr[i] = old - eps
            down = loss_and_grads().head.loss
            arr[i] = old
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def test_no_counted_step_gives_zero_head_gradients(backend):
    T, B, D, H = 5, 2, 2, 3
    p, inputs, lens, head, _, dhs = _case("gru", np.float32, T, B, D, H)
    none = HeadSpec(head.weight, head.bias, head.targets, np.zeros((T, B), bool))
    res = fastrnn.forward("gru", p, **inputs, lengths=lens, backend=backend)
    g = fastrnn.backward(res, dhs, head=none)
    assert g.head.loss == 0.0 and not g.head.dweight.any() and not g.head.dbias.any()
    plain = fastrnn.backward(res, dhs)
    np.testing.assert_array_equal(g.dx, plain.dx)


def test_without_a_head_nothing_changes(backend):
    p, inputs, lens, _, final, dhs = _case("lstm", np.float32, 8, 3, 2, 4)
    res = fastrnn.forward("lstm", p, **inputs, lengths=lens, backend=backend)
    assert fastrnn.backward(res, dhs, **final).head is None


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"weight": np.zeros((K, 4), np.float32)}, ValueError, r"head\.weight has shape \(7, 4\)"),
        ({"weight": np.zeros((K, 6), np.float64)}, TypeError, r"head\.weight"),
        ({"bias": np.zeros(K + 1, np.float32)}, ValueError, r"head\.bias has shape"),
        ({"targets": np.full((9, 3), K)}, ValueError, r"targets"),
        ({"targets": np.zeros((8, 3), np.int64)}, ValueError, r"targets"),
        ({"mask": np.ones((9, 3), np.int64)}, TypeError, r"mask"),
        ({"reduction": "max"}, ValueError, r"head\.reduction must be one of"),
    ],
)
def test_bad_head_arguments_are_clear_errors(change, error, match):
    T, B, D, H = 9, 3, 2, 6
    p, inputs, lens, head, _, _ = _case("gru", np.float32, T, B, D, H)
    spec = {"weight": head.weight, "bias": head.bias, "targets": head.targets, "mask": None}
    res = fastrnn.forward("gru", p, **inputs, lengths=lens)
    with pytest.raises(error, match=match):
        fastrnn.backward(res, head=HeadSpec(**(spec | change)))
    with pytest.raises(TypeError, match=r"head must be a fastrnn\.functional\.HeadSpec"):
        fastrnn.backward(res, head=(head.weight, head.bias, head.targets))


def test_the_kernel_binding_checks_the_head():
    """The C++ binding's own checks (the functional core's come first in normal use)."""
    from conftest import need_backend

    need_backend("cpp")
    from fastrnn.backends import cpp_backend

    T, B, D, H = 4, 2, 3, 5
    p = fastrnn.init_params("rnn", D, H, seed=0)
    x = np.ones((T, B, D), np.float32)
    res = fastrnn.forward("rnn", p, x, backend="cpp")
    args = dict(
        cell="rnn", activation="tanh", negative_slope=0.01, W_ih=p["W_ih"], W_hh=p["W_hh"],
        x=x, h0=res.h0, c0=None, hs=res.hs, gates=None, extra=None, dhs=None,
        dh_n=np.zeros((B, H), np.float32), dc_n=None,
        head_weight=np.ones((K, H), np.float32), head_bias=np.zeros(K, np.float32),
        head_targets=np.zeros(T * B, np.int64),
    )  # fmt: skip
    kernels = cpp_backend._kernels
    out = kernels.backward(**args)
    assert len(out) == 9 and out[8][1].shape == (K, H)
    bad = {
        "head_targets": (np.full(T * B, K, np.int64), ValueError, "head_targets"),
        "head_weight": (np.ones((K, H + 1), np.float32), ValueError, r"head_weight has shape"),
        "head_bias": (np.zeros(K, np.float64), TypeError, "head_bias has dtype float64"),
        "head_row_weights": (np.ones(3, np.float32), ValueError, "head_row_weights has shape"),
    }
    for name, (value, error, match) in bad.items():
        with pytest.raises(error, match=match):
            kernels.backward(**(args | {name: value}))
    with pytest.raises(TypeError, match="dhs must be a numpy array"):  # no head: dhs needed
        kernels.backward(**(args | {"head_weight": None, "head_bias": None, "head_targets": None}))


# --- layers and models -----------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("checkpoint", [None, 4])
@pytest.mark.parametrize("cls", [layers.LSTM, layers.GRU, layers.RNN])
def test_layer_backward_head_equals_the_two_calls(backend, cls, checkpoint, batch_first):
    """``backward_head`` of a two-layer stack: the loss, dx, the initial-state gradients
    and every gradient of the layers and the head as from ``head.softmax_cross_entropy``
    then ``backward``."""
    T, B, D, H = 40, 3, 4, 6
    rng = np.random.default_rng(5)
    lay = cls(D, H, num_layers=2, batch_first=batch_first, checkpoint=checkpoint, seed=0)
    head = layers.Linear(H, K, seed=1)
    lead = (B, T) if batch_first else (T, B)
    x = rng.normal(size=(*lead, D)).astype(np.float32)
    y = rng.integers(0, K, size=lead)
    mask = rng.random(lead) < 0.8
    with fastrnn.use_backend(backend):
        out, _ = lay.forward(x)
        loss, dout = head.softmax_cross_entropy(out, y, mask=mask)
        dx, dstate = lay.backward(dout)
        want = {k: v.copy() for k, v in lay.grads.items()}
        want_head = {k: v.copy() for k, v in head.grads.items()}
        lay.forward(x)
        got_loss, got_dx, got_state = lay.backward_head(head, y, mask=mask)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
    np.testing.assert_allclose(got_dx, dx, rtol=1e-4, atol=1e-6)
    for a, b in zip(np.atleast_1d(got_state), np.atleast_1d(dstate), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for name, value in want.items():
        np.testing.assert_allclose(lay.grads[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    for name, value in want_head.items():
        np.testing.assert_allclose(head.grads[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_backward_head_refuses_a_bidirectional_layer():
    lay = layers.GRU(3, 4, bidirectional=True)
    lay.forward(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match="needs a unidirectional layer"):
        lay.backward_head(layers.Linear(8, K), np.zeros((5, 2), np.int64))
    with pytest.raises(TypeError, match=r"head must be a fastrnn\.Linear"):
        layers.GRU(3, 4).backward_head(np.zeros((K, 4)), np.zeros((5, 2), np.int64))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_per_step_model_trains_the_same_with_the_fused_head(bidirectional, monkeypatch):
    """A SequenceTagger's loss and gradients through its fused-head backward equal those of
    the two-call path it used before (bidirectional keeps that path)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 12, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=(6, 12))
    lens = rng.integers(3, 13, size=6)

    def trained(fused: bool) -> tuple[float, dict[str, np.ndarray]]:
        model = fastrnn.SequenceTagger(
            8, cell="lstm", bidirectional=bidirectional, seed=0, epochs=1, progress=False
        )
        model.fit(X, y, lengths=lens)
        batch = (X, y, lens)
        with model._training_mode():
            loss = model._loss_backward(batch)
        return loss, model._grads()

    want = trained(True)
    calls = []

    def two_calls(rnn, head, out, target, mask, input_grad=True):
        calls.append(rnn.bidirectional)
        loss, dh = head.softmax_cross_entropy(out, target, mask=mask)
        dx, dstate0 = rnn.backward(dh, input_grad=input_grad)
        return float(loss), dx, dstate0

    monkeypatch.setattr("fastrnn.models.per_step.head_backward", two_calls)
    got = trained(False)
    assert calls == [bidirectional] * len(calls) and calls
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for name, value in want[1].items():
        np.testing.assert_allclose(got[1][name], value, rtol=1e-4, atol=1e-6, err_msg=name)
