"""Token ids as the input of a recurrent layer (issue 13): an integer x (T, B) in 0..D-1
stands for its one-hot rows. Checked against the one-hot float input at every level: the
functional core (every cell, lengths, checkpoint, the input-dropout fallback, the errors),
the layers (stacked, bidirectional, batch-first, dropout), the models (training losses,
logits, generated text) and the PyTorch drop-in's skipped dx.

The NumPy reference gives the same bits for ids and one-hot rows (a gather of W_ih's
columns against a product with zeros and ones, which adds nothing); the fast backends are
held to that in the forward and to the rounding of a sum of T*B terms in dW_ih (whose
scatter-add may add in another order than the GEMM dA^T X)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import fastrnn
from conftest import CELL_CASES, CELL_IDS, blas_sums_in_order, make_case, run_case
from fastrnn import _validation as V
from fastrnn.datasets import one_hot

DTYPES = [np.float32, np.float64]


def _ids_case(cell: str, dtype, *, T=6, B=4, D=7, seed=0, **kw) -> tuple[dict, np.ndarray]:
    """A :func:`make_case` case whose x is the one-hot rows of random ids; and the ids."""
    case = make_case(cell, dtype=dtype, T=T, B=B, D=D, seed=seed, **kw)
    ids = np.random.default_rng(seed + 1).integers(0, D, (T, B))
    case["x"] = one_hot(ids, D, dtype=dtype)
    return case, ids


def _run(backend, cell, activation, case, x, **kw) -> dict:
    """:func:`conftest.run_case` with the input ``x``: every output and gradient."""
    return run_case(backend, cell, activation, {**case, "x": x}, **kw)


def _assert_same(got: dict, want: dict, backend: str, n_terms: int) -> None:
    """Ids against one-hot rows: bit for bit on the reference where NumPy's BLAS sums a
    product's terms in order (the zero terms of the one-hot product add nothing, so it has
    the bits of the ids' scatter-add; conftest.blas_sums_in_order); otherwise, and on a
    fast backend, each entry within the rounding of a sum of ``n_terms`` terms (relative to
    the largest magnitude of the reference's)."""
    for key, ref in want.items():
        if ref is None:
            assert got[key] is None, key
            continue
        if backend == "numpy" and blas_sums_in_order(ref.dtype):
            np.testing.assert_array_equal(got[key], ref, err_msg=key)
        else:
            eps = float(np.finfo(ref.dtype).eps)
            atol = n_terms * eps * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
            np.testing.assert_allclose(got[key], ref, rtol=0, atol=atol, err_msg=key)


def _assert_identical(got: dict, want: dict) -> None:
    """Bit for bit, whatever the backend and the BLAS: both sides ran the same path."""
    assert got.keys() == want.keys()
    for key, ref in want.items():
        if ref is None:
            assert got[key] is None, key
        else:
            np.testing.assert_array_equal(got[key], ref, err_msg=key)


# --- the functional core -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
def test_ids_equal_one_hot_rows(backend, cell, activation, lengths, dtype):
    case, ids = _ids_case(cell, dtype, lengths=lengths, h0=True)
    want = _run(backend, cell, activation, case, case["x"])
    got = _run(backend, cell, activation, case, ids)
    assert got["dx"] is None and want["dx"].shape == case["x"].shape
    want["dx"] = None
    _assert_same(got, want, backend, ids.size)


@pytest.mark.parametrize("every", [1, 2, 4])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_ids_with_checkpoint_are_bit_identical_to_full_bptt(backend, cell, every):
    case, ids = _ids_case(cell, np.float64, T=7, lengths=True)
    full = _run(backend, cell, "tanh", case, ids)
    ckpt = _run(backend, cell, "tanh", case, ids, checkpoint=every)
    _assert_identical(ckpt, full)  # bit for bit on every backend
    want = _run(backend, cell, "tanh", case, case["x"], checkpoint=every)
    want["dx"] = None
    _assert_same(ckpt, want, backend, ids.size)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_input_grad_false_skips_dx_and_changes_nothing_else(backend, cell):
    case = make_case(cell, h0=True)
    res = fastrnn.forward(cell, case["params"], case["x"], case["h0"], case["c0"], backend=backend)
    full = fastrnn.backward(res, case["dhs"], case["dh_n"], case["dc_n"])
    skip = fastrnn.backward(res, case["dhs"], case["dh_n"], case["dc_n"], input_grad=False)
    assert full.dx is not None and skip.dx is None
    np.testing.assert_array_equal(skip.dh0, full.dh0)
    for k in full.params:
        np.testing.assert_array_equal(skip.params[k], full.params[k], err_msg=k)
    with pytest.raises(TypeError, match="input_grad"):
        fastrnn.backward(res, case["dhs"], input_grad="no")


def test_input_grad_false_with_input_dropout_skips_dx(backend):
    case = make_case("gru")
    mask = np.where(np.arange(4) % 2, 2.0, 0.0) * np.ones((3, 1))
    res = fastrnn.forward("gru", case["params"], case["x"], backend=backend, input_mask=mask)
    assert fastrnn.backward(res, case["dhs"], input_grad=False).dx is None
    assert fastrnn.backward(res, case["dhs"]).dx.shape == case["x"].shape


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_ids_with_input_mask_run_the_masked_one_hot_rows(backend, cell):
    """Input dropout on ids: the core makes the masked one-hot rows and runs the float path
    (the one mechanism of masks); the same bits as the user doing it, and no dx."""
    case, ids = _ids_case(cell, np.float64)
    rng = np.random.default_rng(5)
    mask = ((rng.random((4, 7)) >= 0.5) * 2.0).astype(np.float64)
    got = _run(backend, cell, "tanh", case, ids, input_mask=mask)
    want = _run(backend, cell, "tanh", case, case["x"] * mask)
    assert got["dx"] is None
    want["dx"] = None
    _assert_identical(got, want)  # the same float path on every backend
    res = fastrnn.forward(cell, case["params"], ids, backend=backend, input_mask=mask)
    assert res.x.shape == (6, 4, 7) and res.token_ids


def test_the_backend_receives_the_ids(backend, monkeypatch):
    from fastrnn import backends

    module = backends.load(backend)
    seen = {}
    for name in ("forward", "backward"):
        real = getattr(module, name)

        def spy(cell, params, x, *args, _real=real, _name=name, **kwargs):
            seen[_name] = (x.dtype, x.shape, kwargs.get("input_grad"))
            return _real(cell, params, x, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    case, ids = _ids_case("gru", np.float32)
    fastrnn.backward(fastrnn.forward("gru", case["params"], ids, backend=backend))
    assert seen["forward"][:2] == (np.int64, ids.shape)
    assert seen["backward"] == (np.int64, ids.shape, False)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_one_hot_float_rows_run_as_ids(backend, dtype, monkeypatch):
    """A float x whose every row is one-hot reaches the backend as its ids (forward, and
    backward without dx); a backward that wants dx gets the float rows; an x that is not
    one-hot everywhere (one row scaled, one row of zeros, one tiny extra entry) stays float.
    The results equal those of the ids: the forward bit for bit."""
    from fastrnn import backends

    module = backends.load(backend)
    seen: list[tuple] = []
    for name in ("forward", "backward"):
        real = getattr(module, name)

        def spy(cell, params, x, *args, _real=real, _name=name, **kwargs):
            seen.append((_name, x.dtype, kwargs.get("input_grad")))
            return _real(cell, params, x, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    case, ids = _ids_case("lstm", dtype)
    rows = one_hot(ids, 7, dtype=dtype)
    res = fastrnn.forward("lstm", case["params"], rows, backend=backend)
    want = fastrnn.forward("lstm", case["params"], ids, backend=backend)
    np.testing.assert_array_equal(res.hs, want.hs)
    assert seen[-2:] == [("forward", np.int64, None), ("forward", np.int64, None)]
    g = fastrnn.backward(res, dhs=np.ones_like(res.hs))
    assert seen[-1] == ("backward", dtype, True) and g.dx is not None
    g_ids = fastrnn.backward(res, dhs=np.ones_like(res.hs), input_grad=False)
    assert seen[-1] == ("backward", np.int64, False) and g_ids.dx is None
    by_hand = dataclasses.replace(res, one_hot_ids=None)  # as fastrnn.torch rebuilds it
    fastrnn.backward(by_hand, dhs=np.ones_like(res.hs), input_grad=False)
    assert seen[-1] == ("backward", np.int64, False)
    tol = 50 * np.finfo(dtype).eps
    for k, v in g.params.items():
        np.testing.assert_allclose(g_ids.params[k], v, rtol=tol, atol=tol * np.abs(v).max())
    for change in ("scaled", "zeros", "tiny", "two-and-none", "first-and-last"):
        other = rows.copy()
        if change == "scaled":
            other[2, 1] *= 2
        elif change == "zeros":
            other[2, 1] = 0
        elif change == "two-and-none":  # as many nonzeros as rows, but not one per row
            other[2, 1] = 0
            other[3, 0, (ids[3, 0] + 1) % 7] = 1
        elif change == "first-and-last":  # a row whose x @ (0..D-1) points at a 1
            other[2, 1] = 0
            other[3, 0] = 0
            other[3, 0, [0, 6]] = 1
        else:
            other[2, 1, (ids[2, 1] + 1) % 7] = np.finfo(dtype).tiny
        fastrnn.forward("lstm", case["params"], other, backend=backend)
        assert seen[-1] == ("forward", dtype, None), change


def test_forward_result_keeps_the_ids_as_int64(backend):
    backend = backend
    case, ids = _ids_case("lstm", np.float32)
    for given in (ids.astype(np.int32), ids.astype(np.uint8), np.asfortranarray(ids)):
        res = fastrnn.forward("lstm", case["params"], given, backend=backend)
        assert res.token_ids and res.x.dtype == np.int64 and res.x.flags.c_contiguous
        np.testing.assert_array_equal(res.x, ids)


def test_ids_from_a_torch_integer_tensor():
    torch = pytest.importorskip("torch")
    case, ids = _ids_case("gru", np.float64)
    res = fastrnn.forward("gru", case["params"], torch.from_numpy(ids), backend="numpy")
    want = fastrnn.forward("gru", case["params"], case["x"], backend="numpy")
    np.testing.assert_array_equal(res.hs, want.hs)


def test_empty_ids(backend):
    case, _ = _ids_case("lstm", np.float64)
    for shape in [(0, 4), (6, 0)]:
        res = fastrnn.forward("lstm", case["params"], np.zeros(shape, np.int64), backend=backend)
        g = fastrnn.backward(res)
        assert res.hs.shape == (*shape, 5) and g.dx is None
        assert g.params["W_ih"].shape == case["params"]["W_ih"].shape


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (np.array([[0, 1], [7, 2]]), ValueError, r"x\[1, 0\] = 7 is out of range.*0\.\.6"),
        (np.array([[0, -1]]), ValueError, r"x\[0, 1\] = -1 is out of range.*input_size=7"),
        (np.zeros((2, 3, 7), np.int64), TypeError, r"int64; cast.*shape \(2, 3, 7\).*\(T, B\)"),
        (np.zeros(3, np.int64), ValueError, r"integer array of shape \(3,\).*token ids"),
        (np.zeros((2, 3), bool), TypeError, r"ids \(T, B\)\), got bool.*astype\(np.int64\)"),
        (np.zeros((2, 3), np.float32), ValueError, r"x has shape \(2, 3\), expected.*token ids"),
    ],
    ids=["too-large", "negative", "3d-int", "1d-int", "bool", "2d-float"],
)
def test_bad_ids_are_clear_errors(x, error, match):
    params = fastrnn.init_params("gru", 7, 5)
    with pytest.raises(error, match=match):
        fastrnn.forward("gru", params, x)


def test_a_list_of_ints_is_still_read_as_features():
    params = fastrnn.init_params("rnn", 2, 3, dtype=np.float64)
    x = [[[1, 0]], [[0, 1]]]  # a list has no dtype: converted to the parameters'
    res = fastrnn.forward("rnn", params, x)
    np.testing.assert_array_equal(res.x, np.array(x, dtype=np.float64))
    assert not res.token_ids


def test_memory_estimate_counts_no_one_hot_floats_for_ids(monkeypatch):
    asked = []

    def check_memory(nbytes: int, what: str) -> None:
        if what.startswith(("forward", "backward")):  # (not the copies of arrays)
            asked.append(nbytes)

    monkeypatch.setattr(V, "check_memory", check_memory)
    T, B, D = 6, 4, 7
    case, ids = _ids_case("lstm", np.float32, T=T, B=B, D=D)
    res_float = fastrnn.forward("lstm", case["params"], case["x"], backend="numpy")
    fastrnn.backward(res_float, case["dhs"])
    res_ids = fastrnn.forward("lstm", case["params"], ids, backend="numpy")
    fastrnn.backward(res_ids, case["dhs"])
    float_fwd, float_bwd, ids_fwd, ids_bwd = asked
    assert float_fwd - ids_fwd == 4 * T * B * D  # x's values
    assert float_bwd - ids_bwd == 4 * T * B * D  # dx


# --- the layers --------------------------------------------------------------------------


def _layer_pair(cls, **kw):
    return cls(7, 5, seed=3, dtype=np.float64, **kw), cls(7, 5, seed=3, dtype=np.float64, **kw)


def _layer_run(layer, x, dout_seed=0, **bkw):
    out, state = layer(x)
    dout = np.random.default_rng(dout_seed).normal(size=out.shape)
    dx, dstate = layer.backward(dout, **bkw)
    return out, state, dx, dstate, dict(layer.grads)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU], ids=lambda c: c.__name__)
def test_layer_ids_equal_one_hot(backend, cls, bidirectional, batch_first):
    """Two stacked layers: the first reads the ids, the second the float outputs; both
    directions read the same ids; the outputs, states and gradients are the one-hot ones."""
    kw = {"num_layers": 2, "bidirectional": bidirectional, "batch_first": batch_first}
    a, b = _layer_pair(cls, **kw)
    ids = np.random.default_rng(1).integers(0, 7, (3, 6) if batch_first else (6, 3))
    with fastrnn.use_backend(backend):
        out, state, dx, dstate, grads = _layer_run(a, ids)
        out1, state1, dx1, dstate1, grads1 = _layer_run(b, one_hot(ids, 7, dtype=np.float64))
    assert dx is None and dx1.shape == (*ids.shape, 7)
    want = {"out": out1, "h": dstate1[0] if isinstance(dstate1, tuple) else dstate1}
    want |= {"state": state1[0] if isinstance(state1, tuple) else state1, **grads1}
    got = {"out": out, "h": dstate[0] if isinstance(dstate, tuple) else dstate}
    got |= {"state": state[0] if isinstance(state, tuple) else state, **grads}
    _assert_same(got, want, backend, ids.size)


def test_layer_ids_with_every_dropout_equal_one_hot(backend):
    """The same seed draws the same masks for ids and one-hot rows (input dropout on the
    first layer takes the core's one-hot fallback)."""
    kw = {"num_layers": 2, "dropout": 0.3, "recurrent_dropout": 0.2, "input_dropout": 0.4}
    a, b = _layer_pair(fastrnn.LSTM, **kw)
    ids = np.random.default_rng(2).integers(0, 7, (5, 4))
    with fastrnn.use_backend(backend):
        out, _, dx, _, grads = _layer_run(a, ids)
        out1, _, _, _, grads1 = _layer_run(b, one_hot(ids, 7, dtype=np.float64))
    assert dx is None
    _assert_identical({"out": out, **grads}, {"out": out1, **grads1})


def test_layer_backward_head_and_input_grad_false(backend):
    a, b = _layer_pair(fastrnn.GRU, batch_first=True)
    head = fastrnn.Linear(5, 7, seed=0, dtype=np.float64)
    ids = np.random.default_rng(4).integers(0, 7, (3, 6))
    targets = np.roll(ids, -1, axis=1)
    with fastrnn.use_backend(backend):
        a(ids)
        loss, dx, _ = a.backward_head(head, targets)
        b(one_hot(ids, 7, dtype=np.float64))
        loss1, dx1, _ = b.backward_head(head, targets, input_grad=False)
    assert dx is None and dx1 is None
    assert abs(loss - loss1) <= 64 * np.finfo(np.float64).eps * abs(loss1)
    _assert_same(dict(a.grads), dict(b.grads), backend, ids.size)


def test_layer_bad_ids_name_the_layout():
    layer = fastrnn.LSTM(7, 5, batch_first=True)
    with pytest.raises(ValueError, match=r"x\[0, 2\] = 9 is out of range.*input_size=7"):
        layer(np.array([[1, 2, 9]]))
    with pytest.raises(TypeError, match=r"astype\(np.float32\) .*token ids are .* \(B, T\)"):
        layer(np.zeros((2, 3, 7), np.int64))
    with pytest.raises(ValueError, match=r"shape \(3,\), read as token ids: expected \(B, T\)"):
        layer(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"expected \(B, T, input_size\).*token ids \(B, T\)"):
        layer(np.zeros((2, 3, 6), np.float32))


# --- the models --------------------------------------------------------------------------


def _one_hot_features(model_cls):
    """The model family as it was before token ids: one-hot rows instead of the ids."""

    class OneHot(model_cls):
        def _token_features(self, ids, depth, part="embed"):
            if part in self._parts:
                return super()._token_features(ids, depth, part)
            return one_hot(ids, depth, dtype=self._dtype)

    return OneHot


TEXT = "the quick brown fox jumps over the lazy dog; " * 4


def _model_tol(backend: str, dtype) -> float:
    """Relative tolerance of model results after a few training steps: exact on the
    reference; elsewhere the rounding of dW_ih's sum (T*B terms), carried by Adam."""
    return 0.0 if backend == "numpy" else 1e4 * float(np.finfo(dtype).eps)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_language_model_ids_equal_one_hot(backend, cell):
    kw = {"seq_len": 8, "epochs": 2, "batch_size": 8, "cell": cell, "seed": 0}
    kw |= {"dtype": "float64", "progress": False, "num_layers": 2}
    with fastrnn.use_backend(backend):
        model = fastrnn.models.CharLanguageModel(12, **kw).fit(TEXT)
        ref = _one_hot_features(fastrnn.models.CharLanguageModel)(12, **kw).fit(TEXT)
        rtol = _model_tol(backend, np.float64)
        for key in ("loss", "step_loss"):
            np.testing.assert_allclose(model.history_[key], ref.history_[key], rtol=rtol)
        for name, value in ref.parameters().items():
            np.testing.assert_allclose(model.parameters()[name], value, rtol=rtol, atol=rtol)
        ids = model._encode_text("the lazy fox", "text")
        logits = model._step_logits(ids[None], np.array([len(ids)]))
        logits1 = ref._step_logits(ref._features(ids[None]), np.array([len(ids)]))
        np.testing.assert_allclose(logits, logits1, rtol=rtol, atol=rtol)
        assert model.cross_entropy(TEXT[:30]) == pytest.approx(ref.cross_entropy(TEXT[:30]))
        assert model.generate("the", 20, greedy=True) == ref.generate("the", 20, greedy=True)
        assert model.generate("fox", 20, seed=1) == ref.generate("fox", 20, seed=1)


def test_char_language_model_holds_ids_not_one_hot_rows():
    model = fastrnn.models.CharLanguageModel(8, seq_len=8, epochs=1, seed=0, progress=False)
    model.fit(TEXT)
    inputs, targets, _ = model._windows(model._encode_text(TEXT, "text"), "text")
    assert inputs.dtype == np.int64 and inputs.shape == targets.shape
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])


def test_char_language_model_tbptt_and_embedding_still_train():
    for kw in ({"tbptt": 3}, {"embedding_dim": 4}, {"tbptt": 4, "embedding_dim": 3}):
        model = fastrnn.models.CharLanguageModel(
            8, seq_len=8, epochs=3, seed=0, progress=False, **kw
        ).fit(TEXT)
        losses = model.history_["loss"]
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], kw


def test_decoders_ids_equal_one_hot(backend):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, (12, 5))
    X_vec = rng.normal(size=(12, 3))
    X_ids = rng.integers(0, 6, (12, 7))
    kw = {"epochs": 2, "batch_size": 4, "seed": 0, "dtype": "float64", "progress": False}
    with fastrnn.use_backend(backend):
        gen = fastrnn.models.SequenceGenerator(6, **kw).fit(X_vec, y)
        gen1 = _one_hot_features(fastrnn.models.SequenceGenerator)(6, **kw).fit(X_vec, y)
        s2s = fastrnn.models.Seq2Seq(6, **kw).fit(X_ids, y)
        s2s1 = _one_hot_features(fastrnn.models.Seq2Seq)(6, **kw).fit(X_ids, y)
        rtol = _model_tol(backend, np.float64)
        for model, ref, X in ((gen, gen1, X_vec), (s2s, s2s1, X_ids)):
            np.testing.assert_allclose(model.history_["loss"], ref.history_["loss"], rtol=rtol)
            pairs = zip(model.predict(X, max_length=6), ref.predict(X, max_length=6), strict=True)
            for got, want in pairs:
                np.testing.assert_array_equal(got, want)


def test_feature_models_skip_the_input_gradient(monkeypatch):
    """A model on fixed features asks its bottom layer for no dx (nothing would read it);
    a deeper layer's dx is the gradient of the layer below, always computed."""
    asked = []
    real = fastrnn.functional.backward

    def spy(*args, **kwargs):
        asked.append(kwargs["input_grad"])
        return real(*args, **kwargs)

    monkeypatch.setattr(fastrnn.functional, "backward", spy)
    X = np.random.default_rng(0).normal(size=(8, 5, 3))
    y = (X.sum(axis=(1, 2)) > 0).astype(int)
    kw = {"epochs": 1, "batch_size": 4, "progress": False}
    fastrnn.models.SequenceClassifier(4, **kw).fit(X, y)
    assert asked == [False, False]  # two batches, one layer
    asked.clear()
    tags = (X[:, :, 0] > 0).astype(int)
    fastrnn.models.SequenceTagger(4, num_layers=2, **kw).fit(X, tags)
    assert asked == [True, False] * 2  # the top layer first


# --- the PyTorch drop-in -----------------------------------------------------------------


def test_dropin_skips_dx_for_an_input_without_grad(monkeypatch):
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft

    asked = []
    real = fastrnn.backward

    def spy(*args, **kwargs):
        asked.append(kwargs["input_grad"])
        return real(*args, **kwargs)

    monkeypatch.setattr(fastrnn, "backward", spy)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(7, 5, num_layers=2, batch_first=True, dtype=torch.float64)
    mine = ft.LSTM(7, 5, num_layers=2, batch_first=True, dtype=torch.float64)
    mine.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(1))
    x = torch.nn.functional.one_hot(ids, 7).to(torch.float64)  # no grad: data
    for module in (ref, mine):
        out, _ = module(x)
        out.pow(2).sum().backward()
    assert asked == [True, False]  # layer 1 (input: layer 0's output), then layer 0
    assert x.grad is None
    for (name, p), q in zip(ref.named_parameters(), mine.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-12, msg=name)
    asked.clear()
    x.requires_grad_(True)
    out, _ = mine(x)
    out.sum().backward()
    assert asked == [True, True] and x.grad is not None


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_dropin_one_hot_ids_found_once_travel_to_backward(monkeypatch, bidirectional):
    """The forward finds a one-hot batch's ids (fastrnn.forward) and hands them to the
    backward as a tensor output: no second scan of the batch, the same gradients."""
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft

    scans = []
    real = fastrnn.functional._one_hot_ids

    def spy(x):
        found = real(x)
        scans.append(found is not None)
        return found

    monkeypatch.setattr(fastrnn.functional, "_one_hot_ids", spy)
    torch.manual_seed(0)
    kw = {"batch_first": True, "bidirectional": bidirectional, "dtype": torch.float64}
    ref = torch.nn.GRU(7, 5, **kw)
    mine = ft.GRU(7, 5, **kw)
    mine.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(1))
    x = torch.nn.functional.one_hot(ids, 7).to(torch.float64)
    for module in (ref, mine):
        out, _ = module(x)
        out.pow(2).sum().backward()
    assert scans == [True] * (2 if bidirectional else 1)  # one per direction, forward only
    for (name, p), q in zip(ref.named_parameters(), mine.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_dropin_opcheck_with_an_input_without_grad(cell):
    torch = pytest.importorskip("torch")
    import fastrnn.torch  # noqa: F401  (registers the operators)

    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    gen = torch.Generator().manual_seed(2)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=grad)

    c0 = rand(3, 5) if cell == "lstm" else None
    x = rand(4, 3, 7, grad=False)
    args = (x, rand(3, 5), c0, rand(G * 5, 7), rand(G * 5, 5), rand(G * 5), rand(G * 5))
    torch.library.opcheck(
        torch.ops.fastrnn.layer_forward.default, (*args, None, cell, "tanh", False, True)
    )
    args = tuple(None if a is None else a.detach() for a in args)  # (layer_backward has no
    out, _, _, gates, extra, backend, ids = torch.ops.fastrnn.layer_forward(  # autograd formula)
        *args, None, cell, "tanh", False, True
    )
    assert ids.shape == (4, 3) and bool((ids == -1).all())  # x is not one-hot
    back = (*args, None, out, gates, extra, backend, ids, torch.ones_like(out), None, None)
    back = (*back, cell, "tanh", False, False)
    torch.library.opcheck(torch.ops.fastrnn.layer_backward.default, back)
    grads = torch.ops.fastrnn.layer_backward(*back)
    assert grads[0].numel() == 0  # no dx


# --- the benchmark -----------------------------------------------------------------------


def test_bench_charlm_batch_holds_ids_and_matches_torch():
    pytest.importorskip("torch")
    from fastrnn.bench import cases, runners

    case = cases.make_case("lstm", 9, 6, 3, 5, np.float32, what="charlm")
    np.testing.assert_array_equal(case.x, one_hot(case.ids, 9, dtype=np.float32))
    runner = runners.FastrnnRunner(case, "numpy", "charlm")
    assert runner.batch[0].dtype == np.int64 and runner.batch[0].shape == (3, 5)
    assert runners.check_against_reference("numpy", "gru", np.float32, "charlm") is None


def test_bench_estimate_counts_ids_and_the_fused_head():
    from fastrnn.bench import cases

    T, B, D, H = 64, 32, 100, 128
    args = ("lstm", D, H, B, T, np.float32)
    ours = cases.estimate_bytes(*args, "charlm", backend="numpy")
    torch_row = cases.estimate_bytes(*args, "charlm", backend="torch")
    # torch holds one-hot rows (no dx either) and dhs; ours the ids (8 bytes) and no dhs
    assert abs(torch_row - 8192 * T - ours - 1.25 * T * B * 4 * (D + H - 2)) <= 1
    train = cases.estimate_bytes(*args, "train", backend="cpp")
    torch_train = cases.estimate_bytes(*args, "train", backend="torch") - 8192 * T
    assert abs(torch_train - train - 1.25 * T * B * 4 * H) <= 1  # no dhs with the fused head


def test_gradcheck_takes_ids():
    params = fastrnn.init_params("lstm", 7, 4, seed=0, dtype=np.float64)
    ids = np.random.default_rng(0).integers(0, 7, (5, 3))
    report = fastrnn.gradcheck("lstm", params, ids, backend="numpy", rtol=1e-6, atol=1e-8)
    assert report.ok and "x" not in report.max_ratio  # ids have no gradient
