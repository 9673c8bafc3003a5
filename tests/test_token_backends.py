"""Token ids as the layer input, at the backend contract (``fastrnn.backends._contract``,
"Token ids"): every backend module called directly with an int64 ``x`` (T, B) gives the
results of the one-hot float input those ids stand for, and no ``dx``; and
``backward(..., input_grad=False)`` gives no ``dx`` and the same other outputs for a float
``x``. Over rnn (tanh, relu), lstm and gru, both dtypes, lengths, the recurrent dropout
mask, checkpointing, the fused head, 1 and 3 threads (one chunk, and chunks of 1 and 2
sequences), B = 1 and 5, ids at the edges 0 and D-1, and D = 1.

The ids and the one-hot input differ only in how the input projection and dW_ih are
computed: a gather instead of a product with a one-hot row (exact: its other products are
zeros), and a scatter-add instead of dA^T X (the same sums of a step's rows, perhaps added
in another order). The tolerance allows that reordering: a sum of at most T*B terms.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import fastrnn
from conftest import need_backend
from fastrnn.backends import BACKENDS
from fastrnn.backends._contract import FusedHead

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
CELL_IDS = [f"{c}-{a}" for c, a in CELLS]
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
K = 5  # classes of the fused head

# what each scenario turns on; "long" has several of the numba backend's blocks of steps
# (256 rows per chunk) and of checkpoint segments
SCENARIOS = {
    "plain": {},
    "lengths": {"lengths": True},
    "mask": {"mask": True},
    "checkpoint": {"lengths": True, "checkpoint": 4},
    "head": {"lengths": True, "head": True},
    "all": {"lengths": True, "mask": True, "checkpoint": 3, "head": True, "dhs": True},
    "long": {"lengths": True, "mask": True, "checkpoint": 100, "head": True, "T": 530},
}


@pytest.fixture(params=BACKENDS)
def module(request) -> ModuleType:
    """The backend's module; a backend that does not load skips, or fails when
    FASTRNN_REQUIRE_BACKENDS names it (conftest.need_backend)."""
    need_backend(request.param)
    return importlib.import_module(f"fastrnn.backends.{request.param}_backend")


def _case(cell: str, dtype: Any, T: int, B: int, D: int, H: int, seed: int, **opts: Any) -> dict:
    """Parameters, token ids (0 and D-1 among them), states, upstream gradients and the
    options of a scenario."""
    rng = np.random.default_rng(seed)
    arr = lambda *shape: rng.normal(size=shape).astype(dtype)  # noqa: E731
    ids = rng.integers(0, D, size=(T, B))
    ids[0, 0], ids[-1, -1] = 0, D - 1  # the edges
    lens = None
    if opts.get("lengths"):
        lens = rng.integers(1, T + 1, size=B)
        lens[0] = T
    head = None
    if opts.get("head"):
        weights = None if lens is None else (np.arange(T)[:, None] < lens).astype(dtype)
        head = FusedHead(
            weight=arr(K, H),
            bias=arr(K),
            targets=rng.integers(0, K, size=T * B),
            row_weights=None if weights is None else weights.reshape(T * B),
            scale=0.5,
        )
    lstm = cell == "lstm"
    return {
        "params": fastrnn.init_params(cell, D, H, seed=seed + 1, dtype=dtype),
        "ids": ids,
        "h0": arr(B, H),
        "c0": arr(B, H) if lstm else None,
        "lengths": lens,
        "mask": (rng.random((B, H)) < 0.7).astype(dtype) / dtype(0.7) if opts.get("mask") else None,
        "checkpoint": opts.get("checkpoint"),
        "head": head,
        "dhs": arr(T, B, H) if head is None or opts.get("dhs") else None,
        "dh_n": arr(B, H),
        "dc_n": arr(B, H) if lstm else None,
    }


def one_hot(ids: np.ndarray, D: int, dtype: Any) -> np.ndarray:
    """The float (T, B, D) input that token ids stand for."""
    return np.eye(D, dtype=dtype)[ids]


def _run(
    module: ModuleType,
    cell: str,
    activation: str,
    case: dict,
    x: np.ndarray,
    threads: int,
    input_grad: bool = True,
) -> dict[str, Any]:
    """Forward and backward of the backend module on input ``x``; every output by name."""
    kw = {
        "activation": activation,
        "negative_slope": 0.01,
        "lengths": case["lengths"],
        "num_threads": threads,
        "recurrent_mask": case["mask"],
    }
    p, h0, c0 = case["params"], case["h0"], case["c0"]
    hs, h_n, c_n, saved = module.forward(cell, p, x, h0, c0, checkpoint=case["checkpoint"], **kw)
    dx, dh0, dc0, dparams, norms, head = module.backward(
        cell,
        p,
        x,
        h0,
        c0,
        hs,
        saved,
        case["dhs"],
        case["dh_n"],
        case["dc_n"],
        step_norms=True,
        head=case["head"],
        input_grad=input_grad,
        **kw,
    )
    out = {"hs": hs, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0, "norms": norms}
    out |= {f"d{name}": value for name, value in dparams.items()}
    if head is not None:
        loss, dweight, dbias = head
        out |= {"head_loss": np.float64(loss), "head_dweight": dweight, "head_dbias": dbias}
    return out


def _tolerance(dtype: Any, T: int, B: int) -> float:
    """A relative bound for the reordered sums of T*B rows (see the module docstring)."""
    return 2.0 * T * B * float(np.finfo(dtype).eps)


def _assert_close(got: dict[str, Any], want: dict[str, Any], rtol: float, skip=("dx",)) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        if name in skip:
            continue
        if value is None:
            assert got[name] is None, f"{name}: expected None"
            continue
        assert got[name].dtype == value.dtype, f"{name}: dtype {got[name].dtype}"
        assert got[name].shape == value.shape, f"{name}: shape {got[name].shape}"
        scale = max(float(np.max(np.abs(value))), 1.0) if value.size else 1.0
        np.testing.assert_allclose(got[name], value, rtol=0, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("cell", "activation"), CELLS, ids=CELL_IDS)
def test_ids_give_the_results_of_their_one_hot_rows(
    module, cell, activation, dtype, threads, B, scenario
):
    opts = dict(SCENARIOS[scenario])
    T, D, H = opts.pop("T", 9), 6, 5
    case = _case(cell, dtype, T, B, D, H, seed=3, **opts)
    got = _run(module, cell, activation, case, case["ids"], threads)
    want = _run(module, cell, activation, case, one_hot(case["ids"], D, dtype), threads)
    assert got["dx"] is None, "token ids have no dx"
    assert want["dx"] is not None and want["dx"].shape == (T, B, D)
    assert got["dW_ih"].shape == (GATES[cell] * H, D) and got["dW_ih"].flags.c_contiguous
    _assert_close(got, want, _tolerance(dtype, T, B))
    if case["lengths"] is not None:  # the padded steps as for a float input
        pad = np.arange(T)[:, None] >= case["lengths"][None, :]
        assert np.all(got["hs"][pad] == 0)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("cell", "activation"), CELLS, ids=CELL_IDS)
def test_a_single_token_D_1(module, cell, activation, dtype, threads):
    T, B, D, H = 7, 5, 1, 4
    case = _case(cell, dtype, T, B, D, H, seed=11, lengths=True, checkpoint=3)
    assert np.all(case["ids"] == 0)
    got = _run(module, cell, activation, case, case["ids"], threads)
    want = _run(module, cell, activation, case, np.ones((T, B, 1), dtype), threads)
    assert got["dx"] is None
    _assert_close(got, want, _tolerance(dtype, T, B))


@pytest.mark.parametrize("scenario", ["plain", "all"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("cell", "activation"), CELLS, ids=CELL_IDS)
def test_no_input_grad_gives_no_dx_and_the_same_other_outputs(
    module, cell, activation, dtype, threads, scenario
):
    T, B, D, H = 9, 5, 6, 5
    case = _case(cell, dtype, T, B, D, H, seed=5, **SCENARIOS[scenario])
    x = np.random.default_rng(6).normal(size=(T, B, D)).astype(dtype)
    want = _run(module, cell, activation, case, x, threads)
    got = _run(module, cell, activation, case, x, threads, input_grad=False)
    assert got["dx"] is None and want["dx"] is not None
    _assert_close(got, want, _tolerance(dtype, T, B))  # (the same bits in our runs)
    ids = _run(module, cell, activation, case, case["ids"], threads, input_grad=False)
    assert ids["dx"] is None  # ids: no dx either way


@pytest.mark.parametrize(("cell", "activation"), CELLS, ids=CELL_IDS)
def test_every_id_is_its_own_column(module, cell, activation):
    """Each column of dW_ih gets exactly the gradients of the steps with that id: with
    every step at one id d, dW_ih is zero outside column d, and column d is the bias
    gradient of the input side (the sum of the same pre-activation gradients)."""
    T, B, D, H = 6, 3, 4, 3
    case = _case(cell, np.float64, T, B, D, H, seed=8, lengths=True)
    for d in (0, D - 1):
        out = _run(module, cell, activation, case, np.full((T, B), d, np.int64), 2)
        others = np.delete(out["dW_ih"], d, axis=1)
        assert np.all(others == 0), f"id {d}: other columns got gradients"
        np.testing.assert_allclose(out["dW_ih"][:, d], out["db_ih"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad", [-1, 6])
def test_numba_refuses_ids_outside_the_vocabulary(bad):
    """The numba kernels index W_ih^T with the ids unchecked: an id outside 0..D-1 is a
    clear error before any kernel runs, not a read or write out of bounds."""
    need_backend("numba")
    from fastrnn.backends import numba_backend

    T, B, D, H = 4, 2, 6, 3
    case = _case("gru", np.float32, T, B, D, H, seed=2)
    ids = case["ids"].copy()
    ids[2, 1] = bad
    with pytest.raises(ValueError, match=r"x: token ids must be in 0\.\.5 .* got values in"):
        _run(numba_backend, "gru", "tanh", case, ids, 1)
