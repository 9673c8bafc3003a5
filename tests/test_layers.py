"""The layers: composition of functional calls, packed-sequence semantics, gradients, PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from conftest import assert_matches_central_differences, central_differences, fd_tolerance
from fastrnn.layers import GRU, LSTM, RNN, Linear, last_step, last_step_backward

LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
SHORT = {"weight_ih": "W_ih", "weight_hh": "W_hh", "bias_ih": "b_ih", "bias_hh": "b_hh"}


@pytest.fixture(autouse=True)
def _reference_backend():
    """The reference backend unless a test asks for another (`backend` fixture)."""
    with fastrnn.use_backend("numpy"):
        yield


def _params_of(layer, k, d):
    suffix = "_reverse" if d else ""
    return {s: layer.params[f"{t}_l{k}{suffix}"] for t, s in SHORT.items()}


def _reverse_each(a, lengths):
    """Reverse a[:len_b, b] for each b with plain loops (independent of the layer code)."""
    out = a.copy()
    for b, n in enumerate(lengths):
        out[:n, b] = a[:n, b][::-1]
    return out


def _compose(layer, x, h0, c0, lengths):
    """The stack as a composition of single-layer functional calls."""
    T, B, _ = x.shape
    lens = np.full(B, T) if lengths is None else lengths
    dirs = 2 if layer.bidirectional else 1
    inp, h_n, c_n = x, [], []
    for k in range(layer.num_layers):
        outs = []
        for d in range(dirs):
            i = k * dirs + d
            xi = inp if d == 0 else _reverse_each(inp, lens)
            res = fastrnn.forward(
                layer._cell,
                _params_of(layer, k, d),
                xi,
                None if h0 is None else h0[i],
                None if c0 is None else c0[i],
                activation=layer.activation,
                lengths=lengths,
            )
            outs.append(res.hs if d == 0 else _reverse_each(res.hs, lens))
            h_n.append(res.h_n)
            c_n.append(res.c_n)
        inp = np.concatenate(outs, axis=2)
    return inp, np.stack(h_n), (np.stack(c_n) if layer._cell == "lstm" else None)


def _make(cell, *, num_layers=2, bidirectional=True, T=5, B=3, D=3, H=4, seed=0, **kw):
    layer = LAYERS[cell](
        D, H, num_layers, bidirectional=bidirectional, seed=seed, dtype=np.float64, **kw
    )
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(T, B, D))
    L = num_layers * (2 if bidirectional else 1)
    h0 = rng.normal(size=(L, B, H)) * 0.5
    c0 = rng.normal(size=(L, B, H)) * 0.5 if cell == "lstm" else None
    lengths = np.array([T, 2, 1, T - 1][:B])
    return layer, x, h0, c0, lengths


def _state(cell, h, c):
    return (h, c) if cell == "lstm" else h


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_stack_equals_composition_of_functional_calls(cell, with_lengths, backend):
    layer, x, h0, c0, lengths = _make(cell)
    lengths = lengths if with_lengths else None
    with fastrnn.use_backend(backend):
        out, state = layer.forward(x, _state(cell, h0, c0), lengths=lengths)
        want_out, want_h, want_c = _compose(layer, x, h0, c0, lengths)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    h = state[0] if cell == "lstm" else state
    np.testing.assert_allclose(h, want_h, rtol=1e-12, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(state[1], want_c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_backward_through_the_stack_agrees_on_every_backend(cell, backend):
    layer, x, h0, c0, lengths = _make(cell)
    rng = np.random.default_rng(3)
    dout = rng.normal(size=(x.shape[0], x.shape[1], 2 * layer.hidden_size))
    dh = rng.normal(size=h0.shape)
    dc = rng.normal(size=h0.shape) if cell == "lstm" else None
    results = {}
    for name in ("numpy", backend):
        with fastrnn.use_backend(name):
            layer.forward(x, _state(cell, h0, c0), lengths=lengths)
            dx, dstate = layer.backward(dout, _state(cell, dh, dc))
        results[name] = (dx, dstate, {k: v.copy() for k, v in layer.grads.items()})
    (dx0, ds0, g0), (dx1, ds1, g1) = results["numpy"], results[backend]
    np.testing.assert_allclose(dx1, dx0, rtol=1e-10, atol=1e-12)
    for a, b in zip(np.atleast_1d(ds1), np.atleast_1d(ds0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padded_batch_equals_each_sequence_alone(cell):
    """Packed-sequence meaning: padding never influences a real step, either direction."""
    layer, x, _, _, lengths = _make(cell, B=4)
    x[lengths[1] :, 1] = 1e3  # garbage in the padding must not matter
    out, state = layer.forward(x, lengths=lengths)
    h = state[0] if cell == "lstm" else state
    for b, n in enumerate(lengths):
        alone, st = layer.forward(x[:n, b : b + 1])
        np.testing.assert_allclose(out[:n, b], alone[:, 0], rtol=1e-12, atol=1e-12)
        assert np.all(out[n:, b] == 0)
        h_alone = st[0] if cell == "lstm" else st
        np.testing.assert_allclose(h[:, b], h_alone[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_batch_first_is_the_transpose(cell):
    layer, x, h0, c0, lengths = _make(cell)
    out, state = layer.forward(x, _state(cell, h0, c0), lengths=lengths)
    dout = np.random.default_rng(5).normal(size=out.shape)
    dx, _ = layer.backward(dout)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    layer.batch_first = True
    out_bf, state_bf = layer.forward(x.transpose(1, 0, 2), _state(cell, h0, c0), lengths=lengths)
    np.testing.assert_allclose(out_bf, out.transpose(1, 0, 2), rtol=1e-13, atol=1e-15)
    for a, b in zip(np.atleast_1d(state_bf), np.atleast_1d(state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)  # the state is never batch-first
    dx_bf, _ = layer.backward(dout.transpose(1, 0, 2))
    np.testing.assert_allclose(dx_bf, dx.transpose(1, 0, 2), rtol=1e-13, atol=1e-13)
    for k in grads:
        np.testing.assert_allclose(layer.grads[k], grads[k], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_state_carries_across_calls(cell):
    """Running the sequence in two calls with the state handed over equals one call."""
    layer, x, h0, c0, _ = _make(cell, T=6, bidirectional=False)
    out, state = layer.forward(x, _state(cell, h0, c0))
    out1, st1 = layer.forward(x[:2], _state(cell, h0, c0))
    out2, st2 = layer.forward(x[2:], st1)
    np.testing.assert_allclose(np.concatenate([out1, out2]), out, rtol=1e-12)
    pairs = zip(state, st2, strict=True) if cell == "lstm" else [(state, st2)]
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-12)


def _sample(arr, rng, n=5):
    flat = rng.choice(arr.size, size=min(n, arr.size), replace=False)
    return [np.unravel_index(i, arr.shape) for i in flat]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gradcheck_through_the_whole_stack(cell):
    """Finite differences (float64) for x, the initial state and every parameter array."""
    layer, x, h0, c0, lengths = _make(cell, T=4)
    rng = np.random.default_rng(7)
    out, _ = layer.forward(x, _state(cell, h0, c0), lengths=lengths)
    dout = rng.normal(size=out.shape)
    dh = rng.normal(size=h0.shape)
    dc = rng.normal(size=h0.shape) if cell == "lstm" else None

    def loss(terms=False):
        """<dout, out> + <dh, h_n> (+ <dc, c_n>); with ``terms`` the sum of the magnitudes
        of its terms (its scale) instead."""
        o, s = layer.forward(x, _state(cell, h0, c0), lengths=lengths)
        pairs = [(o, dout), (s[0], dh), (s[1], dc)] if cell == "lstm" else [(o, dout), (s, dh)]
        return sum(float(np.sum(np.abs(a * b) if terms else a * b)) for a, b in pairs)

    tol = fd_tolerance(np.float64, loss(terms=True))
    dx, dstate0 = layer.backward(dout, _state(cell, dh, dc))
    grads = {k: v.copy() for k, v in layer.grads.items()}
    checks = [("x", x, dx)]
    if cell == "lstm":
        checks += [("h0", h0, dstate0[0]), ("c0", c0, dstate0[1])]
    else:
        checks += [("h0", h0, dstate0)]
    checks += [(k, layer.params[k], grads[k]) for k in layer.params]
    for name, arr, analytic in checks:
        idxs = _sample(arr, rng)
        num = central_differences(loss, arr, idxs)
        got = np.array([analytic[i] for i in idxs])
        assert_matches_central_differences(got, num, tol, err_msg=name)


def test_padded_steps_get_no_gradient_and_output_zero():
    layer, x, _, _, lengths = _make("gru")
    out, _ = layer.forward(x, lengths=lengths)
    dx, _ = layer.backward(np.ones_like(out))
    for b, n in enumerate(lengths):
        assert np.all(out[n:, b] == 0)
        assert np.all(dx[n:, b] == 0)


def test_linear_forward_backward_against_finite_differences():
    rng = np.random.default_rng(0)
    head = Linear(4, 3, seed=1, dtype=np.float64)
    h = rng.normal(size=(5, 2, 4))
    dout = rng.normal(size=(5, 2, 3))
    out = head.forward(h)
    np.testing.assert_allclose(out, h @ head.params["weight"].T + head.params["bias"])
    dh = head.backward(dout)

    def loss():
        return np.sum(head.forward(h) * dout)

    # the terms summed: every product h_i W_ki and bias entry, times dout
    w, b = head.params["weight"], head.params["bias"]
    tol = fd_tolerance(np.float64, float(np.sum(np.abs(dout) * (np.abs(h) @ np.abs(w).T + abs(b)))))
    for name, arr, analytic in [
        ("h", h, dh),
        ("weight", head.params["weight"], head.grads["weight"].copy()),
        ("bias", head.params["bias"], head.grads["bias"].copy()),
    ]:
        idxs = _sample(arr, rng, 6)
        num = central_differences(loss, arr, idxs)
        assert_matches_central_differences([analytic[i] for i in idxs], num, tol, err_msg=name)


@pytest.mark.parametrize("batch_first", [False, True])
def test_last_step_head_and_its_gradient(batch_first):
    layer, x, _, _, lengths = _make("lstm", bidirectional=False, batch_first=batch_first)
    if batch_first:
        x = x.transpose(1, 0, 2).copy()
    out, (h, _) = layer.forward(x, lengths=lengths)
    last = last_step(out, lengths, batch_first=batch_first)
    np.testing.assert_array_equal(last, h[-1])  # the last real output is the final state
    rng = np.random.default_rng(0)
    dlast = rng.normal(size=last.shape)
    dout = last_step_backward(
        dlast, lengths, x.shape[1 if batch_first else 0], batch_first=batch_first
    )
    assert dout.shape == out.shape
    # <dlast, last_step(out)> has gradient dout: check by linearity on a random out
    probe = rng.normal(size=out.shape)
    assert np.sum(dout * probe) == pytest.approx(
        np.sum(dlast * last_step(probe, lengths, batch_first=batch_first)), rel=1e-12
    )
    want = out[:, -1] if batch_first else out[-1]
    np.testing.assert_array_equal(last_step(out, batch_first=batch_first), want)


def test_parameter_names_and_shapes_follow_pytorch():
    layer = LSTM(3, 4, 2, bidirectional=True)
    names = list(layer.params)
    assert names[:5] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "bias_ih_l0",
        "bias_hh_l0",
        "weight_ih_l0_reverse",
    ]
    assert len(names) == 16 and names[-1] == "bias_hh_l1_reverse"
    assert layer.params["weight_ih_l1"].shape == (16, 8)
    assert layer.params["weight_hh_l1_reverse"].shape == (16, 4)
    assert GRU(3, 5).params["weight_ih_l0"].shape == (15, 3)
    assert all(v.dtype == np.float32 for v in layer.params.values())
    assert set(layer.grads) == set(layer.params)


def test_seed_makes_init_reproducible():
    a, b = GRU(3, 4, 2, seed=3), GRU(3, 4, 2, seed=3)
    c = GRU(3, 4, 2, seed=4)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["weight_hh_l1"], c.params["weight_hh_l1"])


def test_state_dict_round_trip_in_place():
    a, b = LSTM(3, 4, 2, seed=0), LSTM(3, 4, 2, seed=1)
    ref = b.params["weight_ih_l0"]
    b.load_state_dict(a.state_dict())
    assert b.params["weight_ih_l0"] is ref  # optimizers keep working on the same arrays
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_float32_runs_and_keeps_dtype():
    layer = GRU(3, 4, 2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)
    out, h = layer.forward(x, lengths=np.array([5, 3]))
    assert out.dtype == np.float32 and h.dtype == np.float32
    dx, dh0 = layer.backward(np.ones_like(out))
    assert dh0.dtype == np.float32
    assert dx.dtype == np.float32 and all(g.dtype == np.float32 for g in layer.grads.values())


# --- bad input -------------------------------------------------------------------------


def test_bad_input_messages():
    layer = LSTM(3, 4, 2, bidirectional=True, dtype=np.float64)
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match=r"x has shape \(5, 2, 4\), expected \(T, B, input_size"):
        layer.forward(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match=r"x has shape \(5, 3\)"):
        layer.forward(np.zeros((5, 3)))
    with pytest.raises(TypeError, match="pair"):
        layer.forward(x, np.zeros((4, 2, 4)))
    with pytest.raises(
        ValueError, match=r"state\[1\] \(c\) has shape \(2, 2, 4\), expected \(4, 2, 4\)"
    ):
        layer.forward(x, (np.zeros((4, 2, 4)), np.zeros((2, 2, 4))))
    with pytest.raises(
        TypeError, match=r"state\[0\] \(h\) has dtype float32 but the LSTM parameters are float64"
    ):
        layer.forward(x, (np.zeros((4, 2, 4), np.float32), np.zeros((4, 2, 4))))
    with pytest.raises(ValueError, match="lengths"):
        layer.forward(x, lengths=np.array([6, 1]))
    with pytest.raises(TypeError, match="dtype"):
        layer.forward(x.astype(np.float32))
    with pytest.raises(TypeError, match="only LSTM"):
        GRU(3, 4, dtype=np.float64).forward(x, (np.zeros((1, 2, 4)), np.zeros((1, 2, 4))))
    with pytest.raises(RuntimeError, match="before forward"):
        GRU(3, 4).backward()
    layer.forward(x)
    with pytest.raises(ValueError, match=r"dout has shape \(5, 2, 4\), expected \(5, 2, 8\)"):
        layer.backward(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        RNN(3, 0)
    with pytest.raises(ValueError, match="activation"):
        RNN(3, 4, activation="sigmoid")
    with pytest.raises(TypeError, match="dtype"):
        RNN(3, 4, dtype=np.int32)
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l1_reverse'\]"):
        sd = layer.state_dict()
        del sd["bias_hh_l1_reverse"]
        layer.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"weight_ih_l0.*shape \(16, 2\), expected \(16, 3\)"):
        layer.load_state_dict(layer.state_dict() | {"weight_ih_l0": np.zeros((16, 2))})
    head = Linear(4, 2)
    with pytest.raises(ValueError, match=r"h has shape \(3, 5\), expected \(\.\.\., 4\)"):
        head.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="dtype float64"):
        head.forward(np.zeros((3, 4)))


# --- PyTorch ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_matches_pytorch_with_packed_sequences(cell):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    T, B, D, H, L = 5, 3, 3, 4, 2
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    net = cls(D, H, L, bidirectional=True).double()
    layer = LAYERS[cell](D, H, L, bidirectional=True, dtype=np.float64)
    layer.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})

    rng = np.random.default_rng(0)
    x = rng.normal(size=(T, B, D))
    h0 = rng.normal(size=(2 * L, B, H))
    c0 = rng.normal(size=(2 * L, B, H))
    lengths = np.array([3, 5, 1])
    dout = rng.normal(size=(T, B, 2 * H))
    dh = rng.normal(size=(2 * L, B, H))
    dc = rng.normal(size=(2 * L, B, H))

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
    st_t = (h0t, c0t) if cell == "lstm" else h0t
    out_p, st = net(packed, st_t)
    out_t, _ = pad_packed_sequence(out_p, total_length=T)
    hn_t = st[0] if cell == "lstm" else st
    loss = (out_t * torch.tensor(dout)).sum() + (hn_t * torch.tensor(dh)).sum()
    if cell == "lstm":
        loss = loss + (st[1] * torch.tensor(dc)).sum()
    loss.backward()

    out, state = layer.forward(x, _state(cell, h0, c0), lengths=lengths)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    h = state[0] if cell == "lstm" else state
    np.testing.assert_allclose(h, hn_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(state[1], st[1].detach().numpy(), rtol=1e-10, atol=1e-12)
    dx, dstate = layer.backward(dout, _state(cell, dh, dc))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    dh0 = dstate[0] if cell == "lstm" else dstate
    np.testing.assert_allclose(dh0, h0t.grad.numpy(), rtol=1e-9, atol=1e-11)
    if cell == "lstm":
        np.testing.assert_allclose(dstate[1], c0t.grad.numpy(), rtol=1e-9, atol=1e-11)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(
            layer.grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name
        )


def test_pytorch_float32_state_dict_loads_unchanged_batch_first():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    net = torch.nn.GRU(3, 4, 2, batch_first=True)
    layer = GRU(3, 4, 2, batch_first=True)
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    layer.load_state_dict(sd)
    for k in sd:
        np.testing.assert_array_equal(layer.params[k], sd[k])
    x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
    with torch.no_grad():
        want, hn = net(torch.from_numpy(x))
    out, h = layer.forward(x)
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, hn.numpy(), rtol=1e-5, atol=1e-6)
