"""Dropout (issue 18): PyTorch's ``dropout`` between stacked layers, and the variational
``recurrent_dropout`` (in every backend's kernels) and ``input_dropout`` (in the functional
core) of Gal and Ghahramani (2016) / Keras.

What is checked: p = 0 and evaluation mode are bit for bit no dropout; an all-ones mask is
the unmasked computation on every backend; the masks are reproducible from the seed and
have the right statistics; the recurrent mask is one mask reused at every step; the
gradients with fixed masks match central differences on every backend and match the NumPy
reference; ``dropout=1`` cuts the stack; the inter-layer masks of the layers, fed PyTorch's
masks, give ``torch.nn.LSTM(dropout=p)``'s outputs and gradients.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import fastrnn
from conftest import (
    CELL_CASES,
    CELL_IDS,
    assert_matches_central_differences,
    case_loss,
    central_differences,
    dropout_mask,
    fd_tolerance,
    make_case,
    run_case,
    using_threads,
)
from fastrnn import layers
from fastrnn.cli import train
from fastrnn.functional import GATES

LAYERS = {"rnn": layers.RNN, "lstm": layers.LSTM, "gru": layers.GRU}
P = {"dropout": 0.3, "recurrent_dropout": 0.4, "input_dropout": 0.25}


def _masks(case: dict, seed: int = 11) -> dict:
    _, B, D = case["x"].shape
    H = case["params"]["W_hh"].shape[1]
    dt = case["x"].dtype
    rng = np.random.default_rng(seed)
    return {
        "input_mask": dropout_mask(rng, (B, D), 0.3, dt),
        "recurrent_mask": dropout_mask(rng, (B, H), 0.5, dt),
    }


# --- no dropout is no dropout, bit for bit -----------------------------------------------


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_ones_masks_equal_no_masks_bit_for_bit(backend, cell, activation, dtype):
    """The masked code path of every backend's kernels, with masks of ones, gives the bits
    of the unmasked one (forward, backward, every output), with padding and threads."""
    case = make_case(cell, dtype=dtype, T=7, B=5, D=3, H=6, lengths=True, h0=True, seed=3)
    _, B, D = case["x"].shape
    H = case["params"]["W_hh"].shape[1]
    ones = {"input_mask": np.ones((B, D), dtype), "recurrent_mask": np.ones((B, H), dtype)}
    for threads in (1, 2):
        with using_threads(threads):
            plain = run_case(backend, cell, activation, case)
            masked = run_case(backend, cell, activation, case, **ones)
        for name, want in plain.items():
            np.testing.assert_array_equal(masked[name], want, err_msg=f"{name}, {threads} threads")


@pytest.mark.parametrize("cell", list(LAYERS))
def test_zero_probabilities_and_eval_mode_equal_no_dropout(backend, cell):
    """Layers with p = 0 (training), and with p > 0 in evaluation mode, give the bits of a
    layer without dropout: outputs, states, dx and every parameter gradient."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 4)).astype(np.float32)
    kw = {"num_layers": 3, "bidirectional": True, "seed": 5}
    with fastrnn.use_backend(backend):
        plain = LAYERS[cell](4, 5, **kw)
        zero = LAYERS[cell](4, 5, **kw, dropout=0.0, recurrent_dropout=0.0, input_dropout=0.0)
        want, want_state = plain(x, lengths=[6, 2, 4])
        got, got_state = zero(x, lengths=[6, 2, 4])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.stack(got_state), np.stack(want_state))
        dout = rng.normal(size=want.shape).astype(np.float32)
        np.testing.assert_array_equal(zero.backward(dout)[0], plain.backward(dout)[0])
        for k, v in plain.grads.items():
            np.testing.assert_array_equal(zero.grads[k], v, err_msg=k)
        dropped = LAYERS[cell](4, 5, **kw, **P)
        assert not np.array_equal(dropped(x)[0], plain(x)[0])  # training: dropout acts
        plain.eval(), dropped.eval()
        np.testing.assert_array_equal(dropped(x)[0], plain(x)[0])
        dropped.train()
        assert not np.array_equal(dropped(x)[0], plain(x)[0])  # and again after train()


# --- the masks -------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(LAYERS))
def test_the_same_seed_gives_the_same_masks(backend, cell):
    """Two layers with one seed: the same parameters, outputs and gradients in every
    forward; another seed: other masks. A Generator as seed is used as it is."""
    x = np.random.default_rng(1).normal(size=(5, 4, 3))
    kw = {"num_layers": 2, "dtype": np.float64, **P}
    with fastrnn.use_backend(backend):
        a, b, c = (LAYERS[cell](3, 4, seed=s, **kw) for s in (7, 7, 8))
        c.load_state_dict(a.state_dict())  # the same parameters, another generator
        for _ in range(2):  # the masks are redrawn at every forward, the same way
            out_a, out_b, out_c = a(x)[0], b(x)[0], c(x)[0]
            np.testing.assert_array_equal(out_a, out_b)
            assert not np.array_equal(out_a, out_c)
            np.testing.assert_array_equal(a.backward(out_a)[0], b.backward(out_b)[0])
        first, second = a(x)[0], a(x)[0]
        assert not np.array_equal(first, second)  # a fresh mask at every forward
        g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
        d, e = LAYERS[cell](3, 4, seed=g1, **kw), LAYERS[cell](3, 4, seed=g2, **kw)
        np.testing.assert_array_equal(d(x)[0], e(x)[0])
        assert d._rng is g1


def test_mask_statistics_and_values():
    """Each kind of mask drops a fraction p of its entries (within 5 standard deviations),
    keeps the others at exactly 1/(1-p) in the layer's dtype, and has the documented
    shape: recurrent (B, H) and input (B, D) per sequence, between layers (T, B, dirs*H)."""
    T, B, D, H = 40, 50, 6, 30
    for dtype in (np.float32, np.float64):
        layer = layers.LSTM(D, H, 2, bidirectional=True, seed=0, dtype=dtype, **P)
        layer(np.zeros((T, B, D), dtype=dtype))
        cache = layer._cache
        kinds = {
            "input_dropout": [r.input_mask for r in cache["results"]],
            "recurrent_dropout": [r.recurrent_mask for r in cache["results"]],
            "dropout": cache["between"],
        }
        shapes = {
            "input_dropout": [(B, D), (B, D), (B, 2 * H), (B, 2 * H)],
            "recurrent_dropout": [(B, H)] * 4,
            "dropout": [(T, B, 2 * H)],
        }
        for name, masks in kinds.items():
            p = P[name]
            assert [m.shape for m in masks] == shapes[name], name
            m = np.concatenate([m.ravel() for m in masks])
            assert {m.dtype} == {np.dtype(dtype)}
            kept = m[m != 0]
            np.testing.assert_array_equal(kept, dtype(1) / dtype(1 - p))
            n = m.size
            dropped = n - kept.size
            assert abs(dropped - p * n) < 5 * np.sqrt(n * p * (1 - p)), (name, dropped / n)
        # the inter-layer mask is fresh at every step (PyTorch's), unlike the variational ones
        between = cache["between"][0]
        assert not all(np.array_equal(between[t], between[0]) for t in range(T))


def test_probability_one_drops_everything():
    """p = 1 is allowed (PyTorch allows it) and gives masks of zeros, not inf."""
    layer = layers.GRU(3, 4, 2, seed=0, dtype=np.float64, dropout=1.0, recurrent_dropout=1.0)
    layer(np.ones((3, 2, 3)))
    for res in layer._cache["results"]:
        np.testing.assert_array_equal(res.recurrent_mask, 0.0)
    np.testing.assert_array_equal(layer._cache["between"][0], 0.0)


# --- the recurrent mask is one mask, reused at every step --------------------------------


def test_recurrent_mask_is_the_same_at_every_step(backend):
    """A linear cell that only carries its state, h_t = W_hh (m * h_{t-1}) with W_hh = I
    and no input, gives h_t = m^(t+1) * h0: a unit dropped once stays dropped and a kept
    one is scaled by 1/(1-p) at every step. A mask drawn anew at each step would give
    other powers (and revive dropped units)."""
    T, B, H = 6, 4, 8
    layer = layers.RNN(2, H, activation="identity", seed=0, dtype=np.float64, recurrent_dropout=0.5)
    layer.params["weight_hh_l0"][:] = np.eye(H)
    for k in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
        layer.params[k][:] = 0
    h0 = np.random.default_rng(2).uniform(0.5, 1.5, size=(1, B, H))
    with fastrnn.use_backend(backend):
        out, _ = layer(np.zeros((T, B, 2)), h0)
    m = layer._cache["results"][0].recurrent_mask
    assert 0 < np.count_nonzero(m) < m.size  # some units dropped, some kept
    for t in range(T):
        np.testing.assert_array_equal(out[t], m ** (t + 1) * h0[0], err_msg=f"step {t}")


def test_gru_masks_the_recurrent_product_only(backend):
    """GRU: the mask acts where h_{t-1} enters W_hh (here the n gate's W_hn h inside
    r * (...)), and the interpolation z * h_{t-1} reads the unmasked state (Keras'
    semantics). With z = 1 the state is carried unmasked; with z = 0, r = 1 and W_hn = I,
    h_t = tanh(m * h_{t-1})."""
    T, B, H = 4, 3, 5
    rng = np.random.default_rng(4)
    h0 = rng.uniform(-1, 1, size=(B, H))
    m = dropout_mask(rng, (B, H), 0.5, np.float64)
    p = {k: np.zeros_like(v) for k, v in fastrnn.init_params("gru", 2, H, dtype=np.float64).items()}
    p["W_hh"][2 * H :] = np.eye(H)
    x = np.zeros((T, B, 2))
    carry = dict(p, b_ih=np.r_[np.zeros(H), np.full(H, 40.0), np.zeros(H)])  # z = 1
    res = fastrnn.forward("gru", carry, x, h0, recurrent_mask=m, backend=backend)
    np.testing.assert_array_equal(res.hs, np.broadcast_to(h0, (T, B, H)))
    gate = dict(p, b_ih=np.r_[np.full(H, 40.0), np.full(H, -40.0), np.zeros(H)])  # r=1, z=0
    res = fastrnn.forward("gru", gate, x, h0, recurrent_mask=m, backend=backend)
    want = h0
    for t in range(T):
        want = np.tanh(m * want)
        np.testing.assert_allclose(res.hs[t], want, rtol=1e-14, atol=1e-15, err_msg=f"step {t}")


# --- gradients with fixed masks -----------------------------------------------------------


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_gradients_with_masks_match_central_differences(backend, cell, activation, with_lengths):
    """float64, input and recurrent masks fixed: dx, dh0 (dc0) and every parameter
    gradient of each backend against central differences of that backend's forward."""
    case = make_case(cell, T=4, B=3, D=3, H=4, lengths=with_lengths, h0=True, seed=5)
    masks = _masks(case)
    got = run_case(backend, cell, activation, case, **masks)
    tol = fd_tolerance(np.float64, case_loss(backend, cell, activation, case, terms=True, **masks))

    def f():
        return case_loss(backend, cell, activation, case, **masks)

    checks = [("dx", case["x"]), ("dh0", case["h0"])]
    checks += [("dc0", case["c0"])] if cell == "lstm" else []
    checks += [(f"d{k}", v) for k, v in case["params"].items()]
    for name, arr in checks:
        assert_matches_central_differences(
            got[name], central_differences(f, arr), tol, err_msg=f"{backend} {name}"
        )
    # the masks did something: dropped inputs get no gradient, and the result differs
    dropped = masks["input_mask"] == 0
    assert dropped.any()
    np.testing.assert_array_equal(got["dx"][:, dropped], 0.0)
    assert not np.allclose(got["dW_hh"], run_case(backend, cell, activation, case)["dW_hh"])


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_backends_match_the_reference(fast_backend, cell, activation, dtype):
    """Every output and gradient of the fast backends with masks (padding, several threads,
    a batch split over chunks) against the NumPy reference."""
    case = make_case(cell, dtype=dtype, T=9, B=7, D=5, H=6, lengths=True, h0=True, seed=9)
    masks = _masks(case)
    want = run_case("numpy", cell, activation, case, **masks)
    tol = 2e-4 if dtype == np.float32 else 1e-11
    for threads in (1, 3):
        with using_threads(threads):
            got = run_case(fast_backend, cell, activation, case, **masks)
        for name, ref in want.items():
            scale = max(1.0, float(np.max(np.abs(ref))))
            where = f"{fast_backend} {name}, {threads} threads"
            np.testing.assert_allclose(got[name], ref, rtol=0, atol=tol * scale, err_msg=where)


def test_inference_forward_applies_the_recurrent_mask(backend):
    """training=False runs the same masked recurrence (the functional core is explicit:
    a mask given is a mask applied; the layers give none in evaluation mode)."""
    case = make_case("lstm", T=30, B=3, D=3, H=4, seed=2)
    m = _masks(case)["recurrent_mask"]
    args = (case["params"], case["x"])
    train = fastrnn.forward("lstm", *args, recurrent_mask=m, backend=backend)
    infer = fastrnn.forward("lstm", *args, recurrent_mask=m, backend=backend, training=False)
    np.testing.assert_array_equal(infer.hs, train.hs)


@pytest.mark.parametrize("cell", list(LAYERS))
def test_layer_gradients_with_all_three_dropouts(backend, cell):
    """A bidirectional 2-layer stack with dropout, recurrent_dropout and input_dropout,
    the masks fixed by restarting the layer's generator: dx, dstate and every parameter
    gradient against central differences (the inter-layer mask's backward included)."""
    rng = np.random.default_rng(6)
    T, B, D, H = 4, 2, 3, 3
    layer = LAYERS[cell](D, H, 2, bidirectional=True, seed=1, dtype=np.float64, **P)
    x = rng.normal(size=(T, B, D))
    dout = rng.normal(size=(T, B, 2 * H))

    def run():
        layer._rng = np.random.default_rng(12)  # the same masks at every evaluation
        return layer(x, lengths=[4, 3])[0]

    def f():
        return float(np.sum(run() * dout))

    with fastrnn.use_backend(backend):
        run()
        dx, _ = layer.backward(dout)
        grads = {k: v.copy() for k, v in layer.grads.items()}
        scale = float(np.sum(np.abs(run() * dout)))
        tol = fd_tolerance(np.float64, scale)
        assert_matches_central_differences(dx, central_differences(f, x), tol, err_msg="dx")
        for k in ("weight_hh_l0", "weight_ih_l1_reverse", "bias_hh_l0_reverse", "weight_hh_l1"):
            num = central_differences(f, layer.params[k])
            assert_matches_central_differences(grads[k], num, tol, err_msg=k)
        assert not np.array_equal(layer._cache["between"][0], 1.0)  # the masks did something


# --- dropout between layers ---------------------------------------------------------------


@pytest.mark.parametrize("cell", list(LAYERS))
def test_dropout_one_zeroes_the_next_layers_input(backend, cell):
    """dropout=1 in training: layer 1 sees zeros, so the output is that of layer 1 alone on
    a zero input, and no gradient of the output reaches x."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3, 4))
    with fastrnn.use_backend(backend):
        with pytest.warns(UserWarning, match="num_layers=1"):
            layers.LSTM(4, 5, dropout=0.5)  # PyTorch's warning: nothing to drop between
        stack = LAYERS[cell](4, 5, 2, seed=0, dtype=np.float64, dropout=1.0)
        second = LAYERS[cell](5, 5, seed=0, dtype=np.float64)
        second.load_state_dict(
            {k.replace("_l1", "_l0"): v for k, v in stack.state_dict().items() if "_l1" in k}
        )
        out, _ = stack(x)
        np.testing.assert_array_equal(out, second(np.zeros((5, 3, 5)))[0])
        dx, _ = stack.backward(rng.normal(size=out.shape))
        np.testing.assert_array_equal(dx, 0.0)
        stack.eval()  # and evaluation mode has no dropout
        assert not np.array_equal(stack(x)[0], out)


def test_inter_layer_dropout_is_pytorchs():
    """The layers' ``dropout`` against ``torch.nn.LSTM(dropout=p)`` (3 layers, so two
    masks, bidirectional, float64): PyTorch draws its masks with ``bernoulli_(1-p)`` on the
    (T, B, dirs*H) output of each layer but the last, which a layer can be given instead
    of its own draws. Outputs, final states, dx and the weight gradients agree."""
    torch = pytest.importorskip("torch")
    T, B, D, H, L, p = 5, 3, 4, 6, 3, 0.4
    ref = torch.nn.LSTM(D, H, L, dropout=p, bidirectional=True, dtype=torch.float64)
    layer = layers.LSTM(D, H, L, bidirectional=True, dtype=np.float64, dropout=p)
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    want, (h_n, c_n) = ref(x)
    torch.manual_seed(3)  # the same draws, in the same order: one per layer but the last
    ones = torch.ones(T, B, 2 * H, dtype=torch.float64)
    drawn = [torch.nn.functional.dropout(ones, p, True).numpy() for _ in range(L - 1)]
    shapes = []

    def torch_masks(shape, q):
        if q != p:  # input_dropout, recurrent_dropout: off
            return None
        shapes.append(shape)
        return drawn[len(shapes) - 1]

    layer._dropout_mask = torch_masks
    got, (h, c) = layer(x.detach().numpy())
    assert shapes == [(T, B, 2 * H)] * (L - 1)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, h_n.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(c, c_n.detach().numpy(), rtol=0, atol=1e-12)
    dout = torch.randn(T, B, 2 * H, dtype=torch.float64)
    want.backward(dout)
    dx, _ = layer.backward(dout.numpy())
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=0, atol=1e-12)
    for name, param in ref.named_parameters():
        np.testing.assert_allclose(
            layer.grads[name], param.grad.numpy(), rtol=0, atol=1e-12, err_msg=name
        )


# --- arguments, persistence, models --------------------------------------------------------


@pytest.mark.parametrize("name", list(P))
def test_bad_probabilities_are_refused(name):
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=rf"{name} must be a probability in \[0, 1\]"):
            layers.GRU(3, 4, 2, **{name: bad})
    with pytest.raises(TypeError, match=f"{name} must be a number, got a str"):
        layers.GRU(3, 4, 2, **{name: "0.5"})
    with pytest.raises(ValueError, match=rf"{name} must be a probability"):
        fastrnn.models.SequenceClassifier(**{name: 2})


def test_bad_masks_are_refused():
    case = make_case("lstm", T=3, B=2, D=3, H=4)
    args = ("lstm", case["params"], case["x"])
    with pytest.raises(ValueError, match=r"recurrent_mask has shape \(2, 3\), expected \(2, 4\)"):
        fastrnn.forward(*args, recurrent_mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"input_mask has shape \(4, 2\), expected \(2, 3\)"):
        fastrnn.forward(*args, input_mask=np.ones((4, 2)))
    with pytest.raises(ValueError, match="recurrent_mask contains NaN at index"):
        fastrnn.forward(*args, recurrent_mask=np.full((2, 4), np.nan))
    with pytest.raises(TypeError, match="input_mask has dtype float32 but"):
        fastrnn.forward(*args, input_mask=np.ones((2, 3), np.float32))


def test_layer_config_round_trips(tmp_path):
    layer = layers.GRU(3, 4, 2, seed=0, **P)
    assert "dropout=0.3, recurrent_dropout=0.4, input_dropout=0.25" in repr(layer)
    layer.save(tmp_path / "gru.npz")
    back = fastrnn.load(tmp_path / "gru.npz")
    assert (back.dropout, back.recurrent_dropout, back.input_dropout) == tuple(P.values())


def _tokens(X: np.ndarray) -> np.ndarray:
    return (X[:, :, 0] > 0).astype(int)


MODEL_CASES = {  # name -> (make the model, the targets of X)
    "classifier": (
        lambda kw: fastrnn.models.SequenceClassifier(8, **kw),
        lambda X: _tokens(X)[:, 0],
    ),
    "tagger-tbptt": (lambda kw: fastrnn.models.SequenceTagger(8, tbptt=3, **kw), _tokens),
    "seq2seq": (lambda kw: fastrnn.models.Seq2Seq(8, **kw), lambda X: _tokens(X)[:, :4]),
}


@pytest.mark.parametrize("model", list(MODEL_CASES))
def test_models_train_with_dropout_reproducibly(model):
    """The models take the three probabilities (get_params lists them), pass them to their
    recurrent stacks, train reproducibly from the seed, and predict without dropout."""
    make, targets = MODEL_CASES[model]
    X = np.random.default_rng(0).normal(size=(24, 6, 3)).astype(np.float32)
    y = targets(X)
    kw = {"num_layers": 2, "epochs": 2, "seed": 4, "progress": False, **P}
    a, b = make(kw).fit(X, y), make(kw).fit(X, y)
    assert {k: a.get_params()[k] for k in P} == P
    assert a.history_["loss"] == b.history_["loss"]
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_array_equal(a.predict(X), a.predict(X))  # no dropout at inference
    plain = make({**kw, **dict.fromkeys(P, 0.0)}).fit(X, y)
    assert plain.history_["loss"] != a.history_["loss"]
    rnn = a._parts.get("rnn") or a._parts["encoder"]
    assert (rnn.dropout, rnn.recurrent_dropout, rnn.input_dropout) == tuple(P.values())


def test_char_language_model_takes_dropout():
    lm = fastrnn.models.CharLanguageModel(
        16, num_layers=2, seq_len=8, epochs=1, seed=0, progress=False, **P
    )
    lm.fit("the quick brown fox jumps over the lazy dog " * 4)
    assert lm._parts["rnn"].recurrent_dropout == P["recurrent_dropout"]
    assert len(lm.generate("the", 5, seed=0)) >= 5


@pytest.mark.parametrize("cell", list(LAYERS))
def test_a_zero_mask_cuts_every_gate_from_the_state(backend, cell):
    """The mask covers the recurrent product of all G gates: a mask of zeros is W_hh = 0
    (gru: the interpolation z * h_{t-1} still reads the state, as without the mask)."""
    case = make_case(cell, T=3, B=2, D=3, H=4, h0=True)
    args = (case["x"], case["h0"], case["c0"])
    a = fastrnn.forward(
        cell, case["params"], *args, recurrent_mask=np.zeros((2, 4)), backend=backend
    )
    no_w = dict(case["params"], W_hh=np.zeros((GATES[cell] * 4, 4)))
    b = fastrnn.forward(cell, no_w, *args, backend=backend)
    np.testing.assert_allclose(a.hs, b.hs, rtol=0, atol=1e-15)


def test_train_command_takes_the_probabilities():
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(
        ["xor", "--dropout", "0.3", "--recurrent-dropout", "0.4", "--input-dropout", "0.25"]
    )
    kwargs = train.task_arguments(args)
    assert {k: kwargs[k] for k in P} == P
