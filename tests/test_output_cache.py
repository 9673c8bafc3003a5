"""The output caches: the C++ backend's (``src/cpp/fastrnn/output_cache.hpp``) and the
numba backend's (``fastrnn/backends/_block_pool.py``). The large blocks of output arrays
NumPy has freed are kept and handed to the next outputs of their size, never while an
array still uses them. With a cache's poison switch on, every block taken from it starts
as 0xff bytes (NaN), so an output element a kernel leaves unwritten shows: a second call on
the same input must then give the first call's bits exactly."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fastrnn
from conftest import make_case, need_backend
from fastrnn.backends import _block_pool

KEEP = 64 << 10  # from here an output's block is kept (OutputCache::kKeepBytes, MIN_BYTES)
LARGE = 2 << 20  # from here in whole 2 MB pages (OutputCache::kLargeBytes, _LARGE)
# T * B * H float32 values over LARGE: hs, the gates, the lstm cell states, dx (D = H)
T, B, D, H = 1400, 8, 48, 48


def _poison(backend: str, on: bool) -> None:
    if backend == "cpp":
        from fastrnn import _core

        _core._set_output_cache_poison(on)
    else:
        _block_pool.POOL.poison = on


@pytest.fixture(params=["cpp", "numba"])
def backend(request):
    """The backend whose cache a test takes: empty, 1 GiB, the poison switch on; the
    previous limit restored (hits and misses count on from the start of the process)."""
    if request.param not in fastrnn.available_backends():  # skip, or fail if required
        need_backend(request.param)
    previous = fastrnn.set_output_cache(0)
    fastrnn.set_output_cache(1 << 30)
    _poison(request.param, True)
    yield request.param
    _poison(request.param, False)
    fastrnn.set_output_cache(previous)


def _info(backend: str) -> dict[str, int]:
    return fastrnn.output_cache_info()[backend]


def _head(rng: np.random.Generator, dtype, K: int = 5) -> fastrnn.HeadSpec:
    weight, bias = (rng.normal(size=(K, H)) * 0.3).astype(dtype), rng.normal(size=K).astype(dtype)
    return fastrnn.HeadSpec(weight, bias, rng.integers(0, K, size=(T, B)))


def _arrays(backend: str, cell: str, mode: str, case: dict) -> dict[str, np.ndarray]:
    """Every array one training step (or forward) of ``mode`` returns, copied out of the
    cache's blocks; the originals are freed on return, their large blocks kept."""
    kw: dict = {"lengths": case["lengths"], "backend": backend}
    if mode == "inference":
        kw["training"] = False
    if mode == "checkpoint":
        kw["checkpoint"] = 64
    res = fastrnn.forward(cell, case["params"], case["x"], case["h0"], case["c0"], **kw)
    out = {"hs": res.hs, "h_n": res.h_n, "c_n": res.c_n}
    if mode == "head":
        g = fastrnn.backward(res, head=_head(np.random.default_rng(1), res.hs.dtype))
    elif mode != "inference":
        g = fastrnn.backward(res, case["dhs"], case["dh_n"], case["dc_n"], return_step_norms=True)
    if mode != "inference":
        out |= {"dx": g.dx, "dh0": g.dh0, "dc0": g.dc0, "norms": g.step_norms}
        out |= {f"d{k}": v for k, v in g.params.items()}
    return {k: np.array(v, copy=True) for k, v in out.items() if v is not None}


@pytest.mark.parametrize("mode", ["train", "inference", "checkpoint", "head"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reused_blocks_give_the_same_bits(backend, cell, mode, dtype):
    # padded sequences: the kernels must write the zeros of padded steps themselves
    case = make_case(cell, T=T, B=B, D=D, H=H, lengths=True, h0=True, dtype=dtype)
    first = _arrays(backend, cell, mode, case)
    kept = _info(backend)
    assert kept["blocks"] >= 1 and kept["held"] >= LARGE, kept
    second = _arrays(backend, cell, mode, case)
    assert _info(backend)["hits"] >= kept["hits"] + 1
    assert first.keys() == second.keys()
    for name, value in first.items():
        assert np.isfinite(value).all(), name
        np.testing.assert_array_equal(second[name], value, err_msg=name)


def test_mid_size_outputs_are_kept(backend):
    # a 256 KiB hs: glibc would give its memory back to the OS when it is freed and fault
    # it in again at the next call, so it is kept too, in whole 64 KiB units
    case = make_case("rnn", T=64, B=8, D=16, H=128, dtype=np.float32)
    run = lambda: fastrnn.forward("rnn", case["params"], case["x"], backend=backend).hs  # noqa: E731
    want = run().copy()  # hs is freed: its block is kept
    info = _info(backend)
    assert KEEP <= info["held"] < LARGE and info["blocks"] == 1, info
    np.testing.assert_array_equal(run(), want)  # the kept block, poisoned, written again
    assert _info(backend)["hits"] == info["hits"] + 1


def _share_memory(a: fastrnn.ForwardResult, b: fastrnn.ForwardResult) -> bool:
    return any(np.shares_memory(x, y) for x in (a.hs, *a.saved) for y in (b.hs, *b.saved))


def test_blocks_of_live_arrays_are_never_handed_out(backend):
    case = make_case("lstm", T=T, B=B, D=D, H=H, dtype=np.float64)
    run = lambda: fastrnn.forward("lstm", case["params"], case["x"], backend=backend)  # noqa: E731
    hits = _info(backend)["hits"]  # counted since the process began
    a, b = run(), run()  # both alive: the second took new memory
    assert _info(backend)["hits"] == hits
    assert not _share_memory(a, b)
    want = a.hs.copy()
    del a  # its blocks go back to the cache, and the next forward takes them
    c = run()
    info = _info(backend)
    assert info["hits"] == hits + 3 and info["blocks"] == 0, info  # hs, gates, cell states
    assert not _share_memory(c, b)
    np.testing.assert_array_equal(c.hs, want)
    np.testing.assert_array_equal(b.hs, want)


def _kept(hs: np.ndarray, keep: str) -> np.ndarray:
    """What outlives ``hs``: a view, a copy made by pickle, an array over a memoryview of
    it, or over its buffer."""
    if keep == "view":
        return hs[T // 2 :, 1]
    if keep == "pickled":
        return pickle.loads(pickle.dumps(hs[T // 2 :, 1]))
    if keep == "memoryview":
        return np.asarray(memoryview(hs))[T // 2 :, 1]
    return np.frombuffer(hs, dtype=hs.dtype)[T * B * H // 2 :]


@pytest.mark.parametrize("keep", ["view", "pickled", "memoryview", "frombuffer"])
def test_a_view_keeps_its_block(backend, keep):
    # NumPy's views point at the array that owns the memory (cpp: it holds the capsule; numba:
    # the pool's block), which stays alive with them; a buffer export holds its exporter
    case = make_case("rnn", T=T, B=B, D=D, H=H, dtype=np.float64)
    run = lambda: fastrnn.forward("rnn", case["params"], case["x"], backend=backend).hs  # noqa: E731
    view = _kept(run(), keep)  # hs itself is gone
    want = view.copy()
    hits = _info(backend)["hits"]
    other = run()  # the view's block is not free: new memory
    if keep == "pickled":  # the unpickled copy owns its memory: hs's block was free
        assert _info(backend)["hits"] == hits + 1
    else:
        assert _info(backend)["hits"] == hits
    assert not np.shares_memory(view, other)
    other[...] = np.nan
    np.testing.assert_array_equal(view, want)


def test_the_limit_bounds_what_is_held(backend):
    case = make_case("gru", T=T, B=B, D=D, H=H, dtype=np.float64)
    hs_block = -(-T * B * H * 8 // LARGE) * LARGE  # whole 2 MB pages
    assert fastrnn.set_output_cache(0) == 1 << 30
    fastrnn.forward("gru", case["params"], case["x"], backend=backend)
    info = _info(backend)
    assert (info["limit"], info["held"], info["blocks"]) == (0, 0, 0)
    # room for one hs block: the gru's gates (3x hs) and extra (hs) do not all stay
    assert fastrnn.set_output_cache(hs_block) == 0
    fastrnn.forward("gru", case["params"], case["x"], backend=backend)
    info = _info(backend)
    assert info["held"] <= hs_block and info["blocks"] <= 1, info
    assert fastrnn.set_output_cache(1 << 30) == hs_block


def test_outputs_are_ordinary_arrays(backend):
    case = make_case("rnn", T=T, B=B, D=D, H=H, dtype=np.float32)
    for _ in range(2):  # fresh memory, then a kept block
        hs = fastrnn.forward("rnn", case["params"], case["x"], backend=backend).hs
        assert hs.flags.writeable and hs.flags.c_contiguous and not hs.flags.owndata
        assert hs.ctypes.data % 64 == 0
        back = pickle.loads(pickle.dumps(hs))
        np.testing.assert_array_equal(back, hs)
        hs[0, 0, 0] = 1.0  # writable like any NumPy array
        del hs, back


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (-1, ValueError, "max_bytes must be a non-negative int, got -1"),
        (1.5, TypeError, r"max_bytes must be an int, got a float \(1.5\)"),
        (True, TypeError, r"max_bytes must be an int, got a bool \(True\)"),
        ("1GB", TypeError, "max_bytes must be an int, got a str"),
    ],
)
def test_set_output_cache_rejects_bad_limits(value, error, message):
    with pytest.raises(error, match=message):
        fastrnn.set_output_cache(value)
    if "cpp" in fastrnn.available_backends():
        from fastrnn import _core

        with pytest.raises(ValueError, match="max_bytes must be >= 0, got -5"):
            _core.set_output_cache_limit(-5)  # the raw binding checks too


def test_every_cache_is_reported_and_set():
    want = {"numba"} | ({"cpp"} if "cpp" in fastrnn.available_backends() else set())
    assert set(fastrnn.output_cache_info()) == want
    previous = fastrnn.set_output_cache(12 << 20)
    try:
        for info in fastrnn.output_cache_info().values():
            assert set(info) == {"limit", "held", "blocks", "hits", "misses"}
            assert info["limit"] == 12 << 20
    finally:
        fastrnn.set_output_cache(previous)
    assert "set_output_cache" in fastrnn.__all__ and "output_cache_info" in fastrnn.__all__


def test_pool_size_classes():  # under KEEP: NumPy's memory; 64 KiB, then 2 MB units
    pool = _block_pool.BlockPool()
    small = pool.empty((KEEP // 8 - 1,), np.float64)  # 8 bytes under KEEP
    assert small.flags.owndata and pool.info()["misses"] == 0
    mid = pool.empty((KEEP // 8,), np.float64)
    assert not mid.flags.owndata and pool.info()["misses"] == 1
    assert mid.base.nbytes == 2 * KEEP  # whole 64 KiB units below LARGE
    del mid
    again = pool.empty((KEEP // 4,), np.float32)  # the same size class: the kept block
    assert pool.info()["hits"] == 1 and again.base.nbytes == 2 * KEEP
    large = pool.empty((3, LARGE // 8), np.float32)
    assert not large.flags.owndata and pool.info()["misses"] == 2
    assert large.shape == (3, LARGE // 8) and large.dtype == np.float32
    assert large.base.nbytes == 2 * LARGE  # whole 2 MB pages
