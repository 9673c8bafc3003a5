"""Benchmark of one training step end to end: layer forward, linear softmax head,
cross-entropy over every step, and the backward pass of all three. Sizes and options:
see ``benchmarks/conftest.py``."""

from __future__ import annotations

import math

import numpy as np


def test_train_step(run_workload, bench_backend, shape_cell, dtype, threads):
    shape, cell = shape_cell
    runner, raw = run_workload(bench_backend, shape, cell, dtype, threads, "train")
    out = runner.outputs(raw)
    loss = float(out["loss"])
    classes = out["dV"].shape[0]
    # an untrained head is close to uniform: the loss is near log(K)
    assert abs(loss - math.log(classes)) < 1.0, f"loss {loss} far from log(K)"
    assert out["dx"].shape == (shape.T, shape.B, shape.D)
    assert np.isfinite(out["dW_ih"]).all()
