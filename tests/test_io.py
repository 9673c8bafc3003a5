"""Save/load: bit-exact round trips, the documented layout, and every bad-file error."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn import io
from fastrnn.layers import GRU, LSTM, RNN, Linear


@pytest.fixture(autouse=True)
def _reference_backend():
    """Outputs are compared bit for bit: use the (deterministic) reference backend."""
    with fastrnn.use_backend("numpy"):
        yield


def _same(a, b):
    assert list(a.params) == list(b.params)
    for k in a.params:
        assert a.params[k].dtype == b.params[k].dtype
        np.testing.assert_array_equal(a.params[k], b.params[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "make",
    [
        lambda dt: LSTM(3, 4, 2, bidirectional=True, batch_first=True, seed=0, dtype=dt),
        lambda dt: GRU(2, 3, seed=1, dtype=dt),
        lambda dt: RNN(2, 3, 2, activation="leaky_relu", negative_slope=0.2, seed=2, dtype=dt),
        lambda dt: Linear(4, 2, seed=3, dtype=dt),
    ],
    ids=["lstm", "gru", "rnn", "linear"],
)
def test_round_trip_is_bit_exact(make, dtype, tmp_path):
    obj = make(dtype)
    path = tmp_path / "obj.npz"
    obj.save(path)
    back = fastrnn.load(path)
    assert type(back) is type(obj)
    _same(obj, back)
    if not isinstance(obj, Linear):
        for attr in ("num_layers", "bidirectional", "batch_first", "activation", "negative_slope"):
            assert getattr(back, attr) == getattr(obj, attr)
        x = np.random.default_rng(0).normal(size=(2, 5, obj.input_size)).astype(dtype)
        np.testing.assert_array_equal(obj.forward(x)[0], back.forward(x)[0])


def test_layout_is_the_documented_one(tmp_path):
    path = tmp_path / "gru.npz"
    fastrnn.save(GRU(2, 3, dtype=np.float64), path)
    with np.load(path, allow_pickle=False) as npz:
        names = set(npz.files)
        header = json.loads(str(npz["__fastrnn__"][()]))
    assert names == {"__fastrnn__", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    assert header["format"] == "fastrnn" and header["version"] == io.FORMAT_VERSION
    assert header["kind"] == "GRU" and header["module"] == "fastrnn.layers"
    assert header["config"]["hidden_size"] == 3
    assert header["arrays"]["weight_ih_l0"] == {"dtype": "<f8", "shape": [9, 2]}
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves nothing behind


def test_expect_rejects_another_kind(tmp_path):
    GRU(2, 3).save(tmp_path / "gru.npz")
    assert isinstance(fastrnn.load(tmp_path / "gru.npz", expect=GRU), GRU)
    with pytest.raises(ValueError, match=r"gru\.npz' holds a GRU, expected a LSTM"):
        fastrnn.load(tmp_path / "gru.npz", expect=LSTM)


# --- bad files -------------------------------------------------------------------------


def _rewrite(src, dst, *, header=None, drop=(), add=None):
    """Copy a saved file, editing the header (a function of the dict) and the members."""
    with np.load(src, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files if k not in drop}
    if header is not None:
        h = json.loads(str(members["__fastrnn__"][()]))
        members["__fastrnn__"] = np.array(json.dumps(header(h)))
    members |= add or {}
    with open(dst, "wb") as fh:
        np.savez(fh, **members)
    return dst


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "lstm.npz"
    LSTM(3, 4, 2, seed=0).save(path)
    return path


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.npz' is not a readable fastrnn file"):
        fastrnn.load(bad)


def test_corrupted_data_is_caught_by_the_checksum(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("weight_hh_l1.npy")
    # the member's data starts after its 30-byte local header, name and extra field
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size - 3] ^= 0xFF  # flip bits inside the array values
    bad = tmp_path / "corrupted.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupted\.npz' is not a readable.*CRC"):
        fastrnn.load(bad)


def test_future_version(saved, tmp_path):
    bad = _rewrite(saved, tmp_path / "future.npz", header=lambda h: h | {"version": 99})
    with pytest.raises(ValueError, match=r"future\.npz' was written in .*version 99.*upgrade"):
        fastrnn.load(bad)


def test_missing_and_unexpected_arrays(saved, tmp_path):
    bad = _rewrite(saved, tmp_path / "missing.npz", drop=("bias_hh_l1",))
    with pytest.raises(
        ValueError, match=r"missing\.npz' does not match its header: missing .*bias_hh_l1"
    ):
        fastrnn.load(bad)
    bad = _rewrite(saved, tmp_path / "extra.npz", add={"stray": np.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected arrays \['stray'\]"):
        fastrnn.load(bad)


def test_array_not_matching_header(saved, tmp_path):
    bad = _rewrite(saved, tmp_path / "dtype.npz", add={"bias_ih_l0": np.zeros(16)})
    with pytest.raises(ValueError, match=r"dtype\.npz': array 'bias_ih_l0' has dtype <f8"):
        fastrnn.load(bad)


def test_arrays_not_fitting_the_config(saved, tmp_path):
    def grow(h):
        h["config"]["hidden_size"] = 5
        return h

    bad = _rewrite(saved, tmp_path / "mismatch.npz", header=grow)
    with pytest.raises(ValueError, match=r"mismatch\.npz' holds a LSTM whose data does not fit"):
        fastrnn.load(bad)


def test_unknown_kind_and_foreign_module(saved, tmp_path):
    bad = _rewrite(
        saved, tmp_path / "kind.npz", header=lambda h: h | {"kind": "Nope", "module": "os"}
    )
    with pytest.raises(ValueError, match=r"kind\.npz' holds an object of kind 'Nope'"):
        fastrnn.load(bad)


def test_not_a_fastrnn_file(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain\.npz' is an \.npz file but not one written by"):
        fastrnn.load(plain)
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match=r"one\.npy' is a single \.npy array"):
        fastrnn.load(npy)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"text\.npz' is not a readable fastrnn file"):
        fastrnn.load(text)
    with pytest.raises(FileNotFoundError, match=r"nothing\.npz"):
        fastrnn.load(tmp_path / "nothing.npz")


def test_pickled_members_are_refused(saved, tmp_path):
    bad = tmp_path / "pickle.npz"
    with np.load(saved, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    members["weight_ih_l0"] = np.array([{"evil": 1}], dtype=object)
    np.savez(bad, **members)
    with pytest.raises(ValueError, match=r"pickle\.npz' is not a readable fastrnn file.*pickle"):
        fastrnn.load(bad)


def test_garbled_header(saved, tmp_path):
    bad = _rewrite(saved, tmp_path / "garbled.npz", add={"__fastrnn__": np.array("{not json")})
    with pytest.raises(ValueError, match=r"garbled\.npz' has an unreadable header"):
        fastrnn.load(bad)


# --- the extension mechanism ------------------------------------------------------------


@io.register("tests.Pair")
class Pair:
    """A composite object saved through the registry, as a model would be."""

    def __init__(self, hidden):
        self.hidden = hidden
        self.rnn = GRU(2, hidden, seed=0)
        self.head = Linear(hidden, 1, seed=1)

    def _save_state(self):
        arrays = {f"rnn.{k}": v for k, v in self.rnn.params.items()}
        arrays |= {f"head.{k}": v for k, v in self.head.params.items()}
        return "tests.Pair", {"hidden": self.hidden}, arrays

    @classmethod
    def _from_state(cls, config, arrays):
        obj = cls(**config)
        obj.rnn.load_state_dict(io.subdict(arrays, "rnn."))
        obj.head.load_state_dict(io.subdict(arrays, "head."))
        return obj


def test_registered_composite_round_trip(tmp_path):
    obj = Pair(3)
    obj.head.params["bias"][...] = 0.25
    fastrnn.save(obj, tmp_path / "pair.npz")
    back = fastrnn.load(tmp_path / "pair.npz")
    assert isinstance(back, Pair) and back.hidden == 3
    _same(obj.rnn, back.rnn)
    _same(obj.head, back.head)


def test_save_refuses_unregistered_objects(tmp_path):
    with pytest.raises(TypeError, match="defines no _save_state"):
        fastrnn.save(object(), tmp_path / "x.npz")
    with pytest.raises(ValueError, match="already registered"):
        io.register("GRU")(Pair)
