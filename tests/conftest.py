"""Shared fixtures: the backend parametrization and random test cases."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn.backends import BACKENDS

CELL_CASES = [
    ("rnn", "tanh"),
    ("rnn", "relu"),
    ("rnn", "leaky_relu"),
    ("rnn", "identity"),
    ("lstm", "tanh"),
    ("gru", "tanh"),
]
CELL_IDS = [f"{c}-{a}" for c, a in CELL_CASES]


def _backend_param(name: str):
    return pytest.param(name, id=name)


@pytest.fixture(params=[_backend_param(n) for n in BACKENDS])
def backend(request) -> str:
    """Every backend; an unavailable one is skipped with the reason it does not load."""
    name = request.param
    if name not in fastrnn.available_backends():
        pytest.skip(f"backend {name!r} unavailable: {fastrnn.unavailable_backends()[name]}")
    return name


@pytest.fixture(params=[_backend_param(n) for n in BACKENDS if n != "numpy"])
def fast_backend(request) -> str:
    """Every backend but the reference, for comparisons against it."""
    name = request.param
    if name not in fastrnn.available_backends():
        pytest.skip(f"backend {name!r} unavailable: {fastrnn.unavailable_backends()[name]}")
    return name


def make_case(
    cell: str,
    *,
    dtype=np.float64,
    T: int = 5,
    B: int = 3,
    D: int = 4,
    H: int = 5,
    lengths: bool = False,
    h0: bool = False,
    seed: int = 0,
    scale: float = 1.0,
) -> dict:
    """A random forward input and upstream gradients, for cell ``cell``."""
    rng = np.random.default_rng(seed)
    params = fastrnn.init_params(cell, D, H, seed=seed, dtype=dtype)
    if scale != 1.0:
        params = {k: (v * scale).astype(dtype) for k, v in params.items()}
    case = {
        "params": params,
        "x": rng.normal(size=(T, B, D)).astype(dtype),
        "h0": rng.normal(size=(B, H)).astype(dtype) * 0.5 if h0 else None,
        "c0": rng.normal(size=(B, H)).astype(dtype) * 0.5 if (h0 and cell == "lstm") else None,
        "lengths": None,
        "dhs": rng.normal(size=(T, B, H)).astype(dtype),
        "dh_n": rng.normal(size=(B, H)).astype(dtype),
        "dc_n": rng.normal(size=(B, H)).astype(dtype) if cell == "lstm" else None,
    }
    if lengths:
        lens = rng.integers(1, T + 1, size=B)
        lens[0] = T  # the longest sequence fills the batch, the others are padded
        if B > 1:
            lens[1] = 1
        case["lengths"] = lens
    return case


def run_case(backend: str | None, cell: str, activation: str, case: dict) -> dict:
    """Forward and backward (gradient from every step and the final state) on a
    :func:`make_case` case; every output and gradient, by name."""
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
    g = fastrnn.backward(res, case["dhs"], case["dh_n"], case["dc_n"], return_step_norms=True)
    out = {"hs": res.hs, "h_n": res.h_n, "dx": g.dx, "dh0": g.dh0, "norms": g.step_norms}
    out |= {f"d{k}": v for k, v in g.params.items()}
    if cell == "lstm":
        out |= {"c_n": res.c_n, "dc0": g.dc0}
    return out
