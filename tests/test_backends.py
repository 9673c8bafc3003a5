"""Every backend against the NumPy reference: every cell, activation and dtype, with and
without lengths and h0/c0, and with gradients entering through dhs, the final state or both."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from conftest import CELL_CASES, CELL_IDS, make_case

TOL = {np.float64: 1e-10, np.float32: 1e-4}


def _run(backend, cell, activation, case, entry, step_norms=True):
    res = fastrnn.forward(
        cell,
        case["params"],
        case["x"],
        case["h0"],
        case["c0"],
        activation=activation,
        lengths=case["lengths"],
        backend=backend,
    )
    final = entry in ("final", "both")
    g = fastrnn.backward(
        res,
        case["dhs"] if entry in ("dhs", "both") else None,
        case["dh_n"] if final else None,
        case["dc_n"] if final else None,
        return_step_norms=step_norms,
    )
    return res, g


def _close(name, got, want, rtol):
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape}, reference {want.shape}"
    scale = max(float(np.max(np.abs(want))), 1.0) if want.size else 1.0
    err = float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.0e}"


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-state", "h0"])
@pytest.mark.parametrize("entry", ["dhs", "final", "both"])
def test_backend_matches_reference(
    fast_backend, cell, activation, dtype, with_lengths, with_h0, entry
):
    case = make_case(
        cell, dtype=dtype, T=7, B=5, D=6, H=8, lengths=with_lengths, h0=with_h0, seed=5
    )
    # the reference in float64 is the truth for both dtypes
    case64 = {
        k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
        for k, v in case.items()
    }
    case64["params"] = {k: v.astype(np.float64) for k, v in case["params"].items()}
    ref, gref = _run("numpy", cell, activation, case64, entry)
    res, g = _run(fast_backend, cell, activation, case, entry)
    rtol = TOL[dtype]
    cast = np.dtype(dtype)
    _close("hs", res.hs, ref.hs.astype(cast), rtol)
    _close("h_n", res.h_n, ref.h_n.astype(cast), rtol)
    _close("dx", g.dx, gref.dx.astype(cast), rtol)
    _close("dh0", g.dh0, gref.dh0.astype(cast), rtol)
    _close("step_norms", g.step_norms, gref.step_norms.astype(cast), rtol)
    for name in case["params"]:
        _close(f"d{name}", g.params[name], gref.params[name].astype(cast), rtol)
    if cell == "lstm":
        _close("c_n", res.c_n, ref.c_n.astype(cast), rtol)
        _close("dc0", g.dc0, gref.dc0.astype(cast), rtol)
    else:
        assert res.c_n is None and g.dc0 is None
    if with_lengths:
        pad = np.arange(case["x"].shape[0])[:, None] >= case["lengths"][None, :]
        assert np.all(res.hs[pad] == 0), "padded outputs must be exactly zero"


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1), (40, 1, 3, 16), (3, 17, 33, 65)], ids=["tiny", "long-B1", "odd-sizes"]
)
def test_backend_matches_reference_shapes(fast_backend, cell, activation, shape):
    T, B, D, H = shape
    case = make_case(cell, T=T, B=B, D=D, H=H, lengths=B > 2, h0=True, seed=2)
    ref, gref = _run("numpy", cell, activation, case, "both")
    res, g = _run(fast_backend, cell, activation, case, "both")
    _close("hs", res.hs, ref.hs, 1e-10)
    _close("dx", g.dx, gref.dx, 1e-10)
    _close("dh0", g.dh0, gref.dh0, 1e-10)
    for name in case["params"]:
        _close(f"d{name}", g.params[name], gref.params[name], 1e-10)


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
def test_backend_without_step_norms(fast_backend, cell, activation):
    case = make_case(cell, lengths=True, h0=True, seed=4)
    _, gref = _run("numpy", cell, activation, case, "both", step_norms=False)
    _, g = _run(fast_backend, cell, activation, case, "both", step_norms=False)
    assert g.step_norms is None
    _close("dx", g.dx, gref.dx, 1e-10)


def test_backward_twice_gives_the_same_gradients(backend):
    """backward must not consume what forward saved."""
    case = make_case("lstm", h0=True, lengths=True)
    res = fastrnn.forward(
        "lstm",
        case["params"],
        case["x"],
        case["h0"],
        case["c0"],
        lengths=case["lengths"],
        backend=backend,
    )
    g1 = fastrnn.backward(res, case["dhs"], case["dh_n"], case["dc_n"])
    g2 = fastrnn.backward(res, case["dhs"], case["dh_n"], case["dc_n"])
    np.testing.assert_array_equal(g1.dx, g2.dx)
    np.testing.assert_array_equal(g1.params["W_hh"], g2.params["W_hh"])


def test_inputs_are_not_modified(backend):
    case = make_case("gru", h0=True, lengths=True)
    copies = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in case.items()}
    params_copy = {k: v.copy() for k, v in case["params"].items()}
    res = fastrnn.forward(
        "gru", case["params"], case["x"], case["h0"], lengths=case["lengths"], backend=backend
    )
    fastrnn.backward(res, case["dhs"], case["dh_n"])
    for k, v in copies.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(case[k], v)
    for k, v in params_copy.items():
        np.testing.assert_array_equal(case["params"][k], v)


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_repeated_calls_are_bit_identical(backend, cell, activation, dtype):
    """The same input gives the same bits on every call, wherever the arrays live in memory
    (results must not depend on the allocator's alignment: saved models must predict
    exactly what they predicted before saving)."""
    case = make_case(cell, dtype=dtype, T=6, B=3, D=5, H=9, lengths=True, h0=True, seed=8)
    first = None
    for offset in range(12):
        x = case["x"]
        moved = np.empty(x.size + 16, dtype=dtype)[offset : offset + x.size].reshape(x.shape)
        moved[...] = x
        case_moved = dict(case, x=moved, params={k: v.copy() for k, v in case["params"].items()})
        res, g = _run(backend, cell, activation, case_moved, "both")
        got = [res.hs, res.h_n, g.dx, g.dh0, g.step_norms, *g.params.values()]
        if first is None:
            first = got
        for a, b in zip(first, got, strict=True):
            np.testing.assert_array_equal(a, b)
