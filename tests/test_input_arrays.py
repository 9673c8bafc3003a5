"""Arrays however they were made (pickled, memory-mapped, read-only, byte-swapped,
``np.frombuffer``, PyTorch tensors, Python lists) give the results of ordinary arrays,
through ``fastrnn.forward``/``backward``/``linear_cross_entropy`` on every backend."""

from __future__ import annotations

import importlib.util
import itertools
import pickle

import numpy as np
import pytest

import fastrnn
from conftest import make_case, run_case

_counter = itertools.count()


def _pickled(a, tmp_path):
    return pickle.loads(pickle.dumps(a))


def _saved_memmap(a, tmp_path):  # np.load(mmap_mode="r"): a read-only np.memmap
    path = tmp_path / f"a{next(_counter)}.npy"
    np.save(path, a)
    return np.load(path, mmap_mode="r")


def _memmap(a, tmp_path):  # a writable np.memmap of a raw file
    m = np.memmap(tmp_path / f"m{next(_counter)}.bin", dtype=a.dtype, mode="w+", shape=a.shape)
    m[...] = a
    return m


def _read_only(a, tmp_path):
    r = a.copy()
    r.flags.writeable = False
    return r


def _byte_swapped(a, tmp_path):
    return a.astype(a.dtype.newbyteorder())


def _from_buffer(a, tmp_path):
    return np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)


MAKERS = {
    "pickled": _pickled,
    "saved-memmap": _saved_memmap,
    "memmap": _memmap,
    "read-only": _read_only,
    "byte-swapped": _byte_swapped,
    "frombuffer": _from_buffer,
}
if importlib.util.find_spec("torch") is not None:  # an optional dependency

    def _torch(a, tmp_path):
        import torch

        return torch.from_numpy(a.copy())

    MAKERS["torch"] = _torch


def _remake(case, make, tmp_path):
    out = dict(case)
    out["params"] = {k: make(v, tmp_path) for k, v in case["params"].items()}
    for key in ("x", "h0", "c0", "dhs", "dh_n", "dc_n"):
        if case[key] is not None:
            out[key] = make(case[key], tmp_path)
    return out


@pytest.mark.parametrize("how", list(MAKERS))
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_backward_of_arrays_however_made(backend, how, cell, dtype, tmp_path):
    case = make_case(cell, dtype=dtype, lengths=True, h0=True)
    ref = run_case(backend, cell, "tanh", case)
    got = run_case(backend, cell, "tanh", _remake(case, MAKERS[how], tmp_path))
    assert got.keys() == ref.keys()
    for name, value in ref.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
        assert got[name].dtype == np.dtype(dtype) and got[name].dtype.isnative, name


@pytest.mark.parametrize("how", list(MAKERS))
def test_linear_cross_entropy_of_arrays_however_made(backend, how, tmp_path):
    rng = np.random.default_rng(0)
    h, w, b = rng.normal(size=(6, 4)), rng.normal(size=(3, 4)), rng.normal(size=3)
    y = rng.integers(0, 3, size=6)
    ref = fastrnn.linear_cross_entropy(h, w, b, y, backend=backend)
    make = MAKERS[how]
    got = fastrnn.linear_cross_entropy(
        make(h, tmp_path), make(w, tmp_path), make(b, tmp_path), y, backend=backend
    )
    assert got.loss == ref.loss
    np.testing.assert_array_equal(got.dh, ref.dh)
    np.testing.assert_array_equal(got.dweight, ref.dweight)


def test_unpickled_arrays_reach_the_backends_with_the_canonical_dtype():
    """A pickled array's dtype equals float32 but is another object; the functional core
    hands the backends the canonical one (a view, no copy), so that a backend comparing
    dtype objects by identity works too."""
    x = pickle.loads(pickle.dumps(np.ones((2, 1, 3), np.float32)))
    assert x.dtype == np.float32 and x.dtype is not np.dtype(np.float32)
    p = fastrnn.init_params("rnn", 3, 2)
    res = fastrnn.forward("rnn", p, x, backend="numpy")
    assert res.x.dtype is np.dtype(np.float32)
    assert np.shares_memory(res.x, x)


def test_python_lists_take_the_parameters_dtype():
    """A list has no dtype of its own: it is converted to the parameters' dtype, as
    NumPy functions convert lists (an array of the other float dtype is an error)."""
    p = fastrnn.init_params("gru", 2, 3, seed=0)  # float32
    x = [[[0.5, -1.0]], [[1.0, 2.0]]]
    res = fastrnn.forward("gru", p, x, h0=[[0.0, 0.1, 0.2]])
    ref = fastrnn.forward("gru", p, np.array(x, np.float32), h0=np.array([[0.0, 0.1, 0.2]], "f"))
    np.testing.assert_array_equal(res.hs, ref.hs)
    assert res.hs.dtype == np.float32
    g = fastrnn.backward(res, dhs=np.ones((2, 1, 3)).tolist())
    assert g.dx.dtype == np.float32
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got <U1"):
        fastrnn.forward("gru", p, [[["a", "b"]]])
    with pytest.raises(TypeError, match="x is a list that NumPy cannot turn into an array"):
        fastrnn.forward("gru", p, [[[1.0, 2.0]], [[1.0]]])
