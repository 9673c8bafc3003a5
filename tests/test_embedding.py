"""The Embedding layer: lookup, sparse gradient, padding_idx, validation, saving, PyTorch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fastrnn
from conftest import assert_matches_central_differences, central_differences, fd_tolerance
from fastrnn.layers import Embedding


def test_forward_is_a_row_lookup_for_any_shape():
    emb = Embedding(7, 3, seed=0, dtype=np.float64)
    for shape in [(), (5,), (2, 4), (2, 3, 2)]:
        ids = np.random.default_rng(1).integers(0, 7, size=shape)
        out = emb(ids)
        assert out.shape == (*shape, 3)
        assert out.dtype == np.float64
        for idx in np.ndindex(*shape):
            np.testing.assert_array_equal(out[idx], emb.params["weight"][ids[idx]])
    # the output is a new array, not a view of the weights
    out = emb(np.array([0]))
    out[...] = 99
    assert not np.any(emb.params["weight"] == 99)


def test_gradient_accumulates_repeated_ids_and_skips_padding():
    emb = Embedding(6, 2, padding_idx=1, seed=0, dtype=np.float64)
    ids = np.array([[0, 1, 3], [3, 3, 1]])
    emb(ids)
    dout = np.arange(12, dtype=np.float64).reshape(2, 3, 2)
    emb.backward(dout)
    want = np.zeros((6, 2))
    for idx in np.ndindex(ids.shape):  # plain loops, independent of the layer code
        if ids[idx] != 1:
            want[ids[idx]] += dout[idx]
    np.testing.assert_array_equal(emb.grads["weight"], want)
    assert np.all(emb.grads["weight"][[1, 2, 4, 5]] == 0)


def test_gradient_matches_central_differences():
    rng = np.random.default_rng(0)
    emb = Embedding(5, 3, padding_idx=2, seed=1, dtype=np.float64)
    ids = np.array([[0, 2, 4, 4], [1, 0, 2, 3]])
    g = rng.normal(size=(2, 4, 3))

    def loss():  # nonlinear, so that the check is not exact by construction
        return float(np.sum(np.tanh(emb.forward(ids)) * g))

    out = emb.forward(ids)
    emb.backward(g * (1 - np.tanh(out) ** 2))
    analytic = emb.grads["weight"].copy()
    numeric = central_differences(loss, emb.params["weight"])
    numeric[2] = 0  # padding_idx: no gradient by definition (PyTorch's meaning)
    tol = fd_tolerance(np.float64, float(np.sum(np.abs(g))))
    assert_matches_central_differences(analytic, numeric, tol, err_msg="weight")
    assert np.abs(analytic[[0, 1, 3, 4]]).min() > 0  # every non-padding row is checked


def test_padding_row_starts_at_zero_and_negative_padding_idx_counts_from_the_end():
    emb = Embedding(4, 3, padding_idx=-1, seed=0)
    assert emb.padding_idx == 3
    assert np.all(emb.params["weight"][3] == 0)
    assert np.all(emb.params["weight"][:3] != 0)


def test_seed_dtype_and_eval_mode():
    a, b = Embedding(5, 4, seed=3), Embedding(5, 4, seed=3)
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    assert a.params["weight"].dtype == np.float32
    a.eval()
    a(np.array([1, 2]))
    with pytest.raises(ValueError, match="evaluation mode"):
        a.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        Embedding(3, 2).backward(np.zeros((1, 2)))


def test_bad_input_messages():
    emb = Embedding(5, 2)
    with pytest.raises(ValueError, match=r"ids\[1, 2\] = 5 is out of range.*0\.\.4"):
        emb(np.array([[0, 1, 2], [3, 4, 5]]))
    with pytest.raises(ValueError, match=r"ids\[0\] = -1 is out of range"):
        emb(np.array([-1, 0]))
    with pytest.raises(TypeError, match="ids must be an integer array of token ids, got dtype"):
        emb(np.array([0.0, 1.0]))
    emb(np.array([[0, 1]]))
    with pytest.raises(ValueError, match=r"dout has shape \(2,\), expected \(1, 2, 2\)"):
        emb.backward(np.zeros(2))
    with pytest.raises(ValueError, match=r"padding_idx must be in -5\.\.4"):
        Embedding(5, 2, padding_idx=5)
    with pytest.raises(ValueError, match="num_embeddings"):
        Embedding(0, 2)
    with pytest.raises(TypeError, match="embedding_dim"):
        Embedding(3, 2.0)
    with pytest.raises(ValueError, match="shape"):
        emb.load_state_dict({"weight": np.zeros((4, 2))})


def test_save_load_and_pickle_round_trip(tmp_path):
    emb = Embedding(6, 3, padding_idx=0, seed=2, dtype=np.float64)
    path = tmp_path / "emb.npz"
    emb.save(path)
    back = fastrnn.load(path)
    assert isinstance(back, Embedding)
    assert (back.padding_idx, back.dtype) == (0, np.float64)
    np.testing.assert_array_equal(back.params["weight"], emb.params["weight"])
    ids = np.array([[5, 0, 1]])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(emb))(ids), emb(ids))


def test_matches_torch_forward_and_backward():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Embedding(8, 4, padding_idx=2).double()
    emb = Embedding(8, 4, padding_idx=2, dtype=np.float64)
    emb.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})
    ids = np.array([[1, 2, 2, 7], [7, 7, 0, 2]])
    g = np.random.default_rng(0).normal(size=(2, 4, 4))
    out_t = net(torch.from_numpy(ids))
    (out_t * torch.from_numpy(g)).sum().backward()
    out = emb(ids)
    emb.backward(g)
    np.testing.assert_array_equal(out, out_t.detach().numpy())
    np.testing.assert_allclose(emb.grads["weight"], net.weight.grad.numpy(), rtol=1e-12, atol=0)


def test_empty_ids_give_a_zero_gradient():
    emb = Embedding(4, 2, seed=0)
    out = emb(np.zeros((0, 3), dtype=np.int64))
    assert out.shape == (0, 3, 2)
    emb.backward(np.zeros((0, 3, 2), np.float32))
    assert not emb.grads["weight"].any()


def test_gradient_equals_np_add_at_on_a_large_random_batch():
    rng = np.random.default_rng(0)
    emb = Embedding(50, 8, padding_idx=7, seed=0, dtype=np.float64)
    ids = rng.integers(0, 50, size=(16, 40))
    dout = rng.normal(size=(16, 40, 8))
    emb(ids)
    emb.backward(dout)
    want = np.zeros((50, 8))
    np.add.at(want, ids.ravel(), dout.reshape(-1, 8))
    want[7] = 0
    np.testing.assert_allclose(emb.grads["weight"], want, rtol=1e-13, atol=1e-13)
