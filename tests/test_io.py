"""Save/load: bit-exact round trips, the documented layout, and every bad-file error."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

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
    with pytest.raises(
        ValueError,
        match=r"kind\.npz' holds an object of kind 'Nope'.*module 'os', outside the fastrnn",
    ):
        fastrnn.load(bad)


def test_unknown_kind_says_why_its_module_did_not_register_it(saved, tmp_path, monkeypatch):
    missing = _rewrite(
        saved,
        tmp_path / "missing.npz",
        header=lambda h: h | {"kind": "Nope", "module": "fastrnn.no_such_module"},
    )
    with pytest.raises(
        ValueError,
        match=r"kind 'Nope' from the module 'fastrnn\.no_such_module', which failed to import: "
        r"ModuleNotFoundError: No module named 'fastrnn\.no_such_module'",
    ) as info:
        fastrnn.load(missing)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    # a module that exists but fails inside its own import (a dependency it needs is
    # missing): that error is the reason given
    extra = tmp_path / "modules"
    extra.mkdir()
    (extra / "needs_dependency.py").write_text("import fastrnn_test_no_such_dependency\n")
    monkeypatch.setattr(fastrnn, "__path__", [*fastrnn.__path__, str(extra)])
    broken = _rewrite(
        saved,
        tmp_path / "broken.npz",
        header=lambda h: h | {"kind": "B", "module": "fastrnn.needs_dependency"},
    )
    with pytest.raises(
        ValueError,
        match=r"module 'fastrnn\.needs_dependency', which failed to import: ModuleNotFoundError: "
        r"No module named 'fastrnn_test_no_such_dependency'",
    ):
        fastrnn.load(broken)
    # a module that imports fine but registers no such kind
    other = _rewrite(
        saved, tmp_path / "other.npz", header=lambda h: h | {"kind": "Nope", "module": "fastrnn.io"}
    )
    with pytest.raises(
        ValueError, match=r"kind 'Nope', but its module 'fastrnn\.io' does not register that kind"
    ):
        fastrnn.load(other)


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
    with pytest.raises(ValueError, match=r"text\.npz' is not an npz archive.*starts with b'hell'"):
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


def test_register_sets_the_kind_and_a_subclass_does_not_inherit_it(tmp_path):
    assert Pair.__fastrnn_kind__ == "tests.Pair" and io.kind_of(Pair(2)) == "tests.Pair"
    assert io.kind_of(GRU) == "GRU" and io.registered_kinds()["GRU"] is GRU

    class MyGRU(GRU):
        pass

    with pytest.raises(TypeError, match=r"MyGRU: its class is not registered.*parent GRU is"):
        fastrnn.save(MyGRU(2, 3), tmp_path / "mine.npz")
    with pytest.raises(TypeError, match="kind must be a str, got int"):
        io.register(3)
    with pytest.raises(TypeError, match="must define _save_state"):
        io.register("tests.Plain")(type("Plain", (), {}))


def test_old_save_state_form_is_checked_against_the_registered_kind(tmp_path):
    @io.register("tests.Old")
    class Old:
        said = "tests.Old"

        def _save_state(self):
            return self.said, {}, {"a": np.arange(3)}

        @classmethod
        def _from_state(cls, config, arrays):
            obj = cls()
            obj.a = arrays["a"]
            return obj

    fastrnn.save(Old(), tmp_path / "old.npz")
    np.testing.assert_array_equal(fastrnn.load(tmp_path / "old.npz").a, np.arange(3))
    liar = Old()
    liar.said = "GRU"
    with pytest.raises(ValueError, match=r"returned the kind 'GRU', but Old is registered as"):
        fastrnn.save(liar, tmp_path / "liar.npz")


# --- issue 18: the messages name the real cause, and a dict of arrays saves -----------


def test_swapped_save_arguments_say_so(tmp_path):
    layer = GRU(2, 3)
    for path in (str(tmp_path / "g.npz"), tmp_path / "g.npz"):
        with pytest.raises(TypeError, match=r"save\(obj, path\): got a path first"):
            fastrnn.save(path, layer)
    assert not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike, got GRU"):
        fastrnn.save(layer, layer)


def test_a_params_dict_round_trips_bit_for_bit(tmp_path):
    p = fastrnn.init_params("lstm", 3, 4, seed=0, dtype=np.float32)
    p = {k: p[k] for k in ("b_hh", "W_ih", "W_hh", "b_ih")}  # not the usual order
    fastrnn.save(p, tmp_path / "params.npz")
    back = fastrnn.load(tmp_path / "params.npz")
    assert type(back) is dict and list(back) == list(p)  # the same names, in order
    for k, v in p.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert back[k].tobytes() == v.tobytes()
    x = np.random.default_rng(1).normal(size=(2, 1, 3)).astype(np.float32)
    out = fastrnn.forward("lstm", back, x, backend="numpy")
    np.testing.assert_array_equal(out.hs, fastrnn.forward("lstm", p, x, backend="numpy").hs)
    mixed = {
        "steps": np.arange(5, dtype=np.int16),
        "mask": np.array([True, False]),
        "scale": np.float64(np.pi),
        "big": np.arange(6, dtype=">f8").reshape(2, 3),
    }
    fastrnn.save(mixed, tmp_path / "mixed.npz")
    back = fastrnn.load(tmp_path / "mixed.npz", expect=dict)
    for k, v in mixed.items():
        v = np.asarray(v)
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert back[k].tobytes() == v.tobytes()
    with pytest.raises(ValueError, match=r"params\.npz' holds a dict, expected a GRU"):
        fastrnn.load(tmp_path / "params.npz", expect=GRU)
    fastrnn.save({}, tmp_path / "empty.npz")
    assert fastrnn.load(tmp_path / "empty.npz") == {}


def test_a_dict_that_is_not_name_to_array_is_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match=r"key 0 \(int\): the names of saved arrays are str"):
        fastrnn.save({0: np.zeros(2)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match=r"entry 'rnn' is a dict, not an array"):
        fastrnn.save({"rnn": {"W": np.zeros(2)}}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match=r"array 'w' of dict is a str of dtype <U3; only arrays"):
        fastrnn.save({"w": "abc"}, tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())


def test_an_empty_file_is_not_an_npz_archive(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npz' is not an npz archive.*an empty file"):
        fastrnn.load(empty)
    with pytest.raises(ValueError, match=r"is not a readable fastrnn file: IsADirectoryError"):
        fastrnn.load(tmp_path)


def test_io_is_a_leaf_and_load_imports_the_module_the_file_names(tmp_path):
    """io imports nothing from the package; a file names the module that registers its kind."""
    GRU(2, 3, seed=0).save(tmp_path / "gru.npz")
    Pair(2).head.save(tmp_path / "linear.npz")
    code = f"""
import sys
import fastrnn.io as io
assert not [m for m in ("fastrnn.layers", "fastrnn.optim", "fastrnn.models") if m in sys.modules]
gru = io.load({str(tmp_path / "gru.npz")!r})
assert type(gru).__module__ == "fastrnn.layers" and type(gru).__name__ == "GRU"
assert "fastrnn.optim" not in sys.modules and "fastrnn.models" not in sys.modules
"""
    src = str(Path(fastrnn.__file__).parent.parent)
    env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
