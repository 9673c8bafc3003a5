"""The NumPy reference against finite differences in float64, and the lengths semantics."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from conftest import (
    CELL_CASES,
    CELL_IDS,
    assert_matches_central_differences,
    case_loss,
    central_differences,
    fd_tolerance,
    make_case,
)

GRAD_ENTRIES = ["dhs", "final", "both"]


def _loss(cell, activation, case, upstream, *, terms=False):
    """L = <dhs, hs> + <dh_n, h_n> + <dc_n, c_n>: its gradients are the upstream ones.
    With ``terms``, the sum of the magnitudes of its terms instead (the scale of L)."""
    return case_loss("numpy", cell, activation, case | upstream, terms=terms)


def _upstream(case, entry):
    return {
        "dhs": case["dhs"] if entry in ("dhs", "both") else None,
        "dh_n": case["dh_n"] if entry in ("final", "both") else None,
        "dc_n": case["dc_n"] if entry in ("final", "both") else None,
    }


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("entry", GRAD_ENTRIES)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-state", "h0"])
def test_gradients_match_finite_differences(cell, activation, entry, with_lengths, with_h0):
    case = make_case(cell, T=4, B=3, D=3, H=4, lengths=with_lengths, h0=with_h0, seed=7)
    if case["h0"] is None:  # still check dh0: differentiate at an explicit zero state
        case["h0"] = np.zeros((3, 4))
        if cell == "lstm":
            case["c0"] = np.zeros((3, 4))
    up = _upstream(case, entry)
    res = fastrnn.forward(
        cell,
        case["params"],
        case["x"],
        case["h0"],
        case["c0"],
        activation=activation,
        lengths=case["lengths"],
        backend="numpy",
    )
    g = fastrnn.backward(res, up["dhs"], up["dh_n"], up["dc_n"])

    def f():
        return _loss(cell, activation, case, up)

    tol = fd_tolerance(np.float64, _loss(cell, activation, case, up, terms=True))
    checks = [("dx", g.dx, case["x"]), ("dh0", g.dh0, case["h0"])]
    if cell == "lstm":
        checks.append(("dc0", g.dc0, case["c0"]))
    else:
        assert g.dc0 is None
    checks += [(name, g.params[name], value) for name, value in case["params"].items()]
    for name, analytic, arr in checks:
        num = central_differences(f, arr)
        assert_matches_central_differences(analytic, num, tol, err_msg=name)


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
def test_step_norms_match_finite_differences(cell, activation):
    """||dL/dh_t|| from backward equals the norm of a finite-difference derivative: the
    loss is perturbed through an additive offset on h_t, which a second run exposes by
    feeding h_t (plus the offset) as the initial state of the remaining steps."""
    T, B, H = 5, 2, 4
    case = make_case(cell, T=T, B=B, D=3, H=H, seed=3)
    res = fastrnn.forward(cell, case["params"], case["x"], activation=activation, backend="numpy")
    g = fastrnn.backward(res, case["dhs"], case["dh_n"], case["dc_n"], return_step_norms=True)
    assert g.step_norms.shape == (T, B)
    every = {"dhs": case["dhs"], "dh_n": case["dh_n"], "dc_n": case["dc_n"]}
    # each tail loss sums a part of the terms of the whole loss; a norm of H derivatives
    # is off by at most sqrt(H) times the error of one
    tol = np.sqrt(H) * fd_tolerance(np.float64, _loss(cell, activation, case, every, terms=True))
    for t in range(T):
        head = fastrnn.forward(
            cell, case["params"], case["x"][: t + 1], activation=activation, backend="numpy"
        )
        h_t = head.h_n.copy()

        def tail_loss(h_t=h_t, t=t, head=head):
            total = float(np.sum(case["dhs"][t] * h_t))
            if t + 1 < T:
                tail = fastrnn.forward(
                    cell,
                    case["params"],
                    case["x"][t + 1 :],
                    h_t,
                    head.c_n,
                    activation=activation,
                    backend="numpy",
                )
                total += float(np.sum(case["dhs"][t + 1 :] * tail.hs))
                h_n, c_n = tail.h_n, tail.c_n
            else:
                h_n, c_n = h_t, head.c_n
            total += float(np.sum(case["dh_n"] * h_n))
            if cell == "lstm":
                total += float(np.sum(case["dc_n"] * c_n))
            return total

        num = central_differences(tail_loss, h_t)
        assert_matches_central_differences(
            g.step_norms[t], np.linalg.norm(num, axis=1), tol, err_msg=f"step {t}"
        )


@pytest.mark.parametrize(("cell", "activation"), CELL_CASES, ids=CELL_IDS)
def test_padded_batch_equals_each_sequence_alone(backend, cell, activation):
    """lengths follows packed-sequence meaning: a padded batch gives, for every sequence,
    what running that sequence alone gives; padded outputs are zero; dhs there is ignored."""
    case = make_case(cell, T=6, B=4, D=3, H=5, lengths=True, h0=True, seed=11)
    c = case
    res = fastrnn.forward(
        cell,
        c["params"],
        c["x"],
        c["h0"],
        c["c0"],
        activation=activation,
        lengths=c["lengths"],
        backend=backend,
    )
    g = fastrnn.backward(res, c["dhs"], c["dh_n"], c["dc_n"], return_step_norms=True)
    for b, n in enumerate(c["lengths"]):
        sl = slice(b, b + 1)
        alone = fastrnn.forward(
            cell,
            c["params"],
            c["x"][:n, sl],
            c["h0"][sl],
            None if c["c0"] is None else c["c0"][sl],
            activation=activation,
            backend=backend,
        )
        ga = fastrnn.backward(
            alone,
            c["dhs"][:n, sl],
            c["dh_n"][sl],
            None if c["dc_n"] is None else c["dc_n"][sl],
            return_step_norms=True,
        )
        np.testing.assert_allclose(res.hs[:n, b], alone.hs[:, 0], rtol=1e-10, atol=1e-12)
        assert np.all(res.hs[n:, b] == 0)
        np.testing.assert_allclose(res.h_n[b], alone.h_n[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g.dx[:n, b], ga.dx[:, 0], rtol=1e-9, atol=1e-12)
        assert np.all(g.dx[n:, b] == 0)
        np.testing.assert_allclose(g.dh0[b], ga.dh0[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(g.step_norms[:n, b], ga.step_norms[:, 0], rtol=1e-9)
        assert np.all(g.step_norms[n:, b] == 0)
        if cell == "lstm":
            np.testing.assert_allclose(res.c_n[b], alone.c_n[0], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(g.dc0[b], ga.dc0[0], rtol=1e-9, atol=1e-12)
    # the parameter gradient of the batch is the sum over the sequences run alone
    for name in c["params"]:
        total = sum(
            fastrnn.backward(
                fastrnn.forward(
                    cell,
                    c["params"],
                    c["x"][:n, b : b + 1],
                    c["h0"][b : b + 1],
                    None if c["c0"] is None else c["c0"][b : b + 1],
                    activation=activation,
                    backend=backend,
                ),
                c["dhs"][:n, b : b + 1],
                c["dh_n"][b : b + 1],
                None if c["dc_n"] is None else c["dc_n"][b : b + 1],
            ).params[name]
            for b, n in enumerate(c["lengths"])
        )
        np.testing.assert_allclose(g.params[name], total, rtol=1e-9, atol=1e-12)


def test_lengths_all_full_equals_no_lengths():
    case = make_case("lstm", T=4, B=3, seed=1)
    a = fastrnn.forward("lstm", case["params"], case["x"], backend="numpy")
    b = fastrnn.forward("lstm", case["params"], case["x"], lengths=[4, 4, 4], backend="numpy")
    np.testing.assert_array_equal(a.hs, b.hs)
    np.testing.assert_array_equal(a.c_n, b.c_n)
