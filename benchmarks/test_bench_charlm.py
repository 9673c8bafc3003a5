"""Benchmark of the real workload: one training step of a character language model as
:class:`fastrnn.CharLanguageModel`'s ``fit`` runs it (one-hot input, softmax head over the
vocabulary, cross-entropy, BPTT, clipping by global norm, Adam), against the same model
written in PyTorch (``nn.LSTM``/``nn.GRU`` + ``nn.Linear`` + ``nn.CrossEntropyLoss`` +
``clip_grad_norm_`` + ``torch.optim.Adam``), float32. Full size: LM128 and LM512 (V = 100,
T = 64, B = 32); compare with ``pytest-benchmark compare --group-by group``. Without
torch, the fastrnn backends are timed alone. Sizes and options: ``benchmarks/conftest.py``.
"""

from __future__ import annotations

import math

import numpy as np

from fastrnn import bench as lib


def test_charlm_step(run_workload, bench_backend, lm_shape_cell, threads):
    shape, cell = lm_shape_cell
    runner, raw = run_workload(bench_backend, shape, cell, "float32", threads, "charlm")
    loss = float(runner.outputs(raw)["loss"])
    # an untrained model predicts close to uniformly: the loss is near ln(V)
    assert abs(loss - math.log(shape.D)) < 1.0, f"loss {loss} far from ln(V)"
    # the step moved the weights away from the case's
    if bench_backend in lib.PEERS:  # torch, and the same model with fastrnn.torch
        moved = runner.head.weight.detach().numpy()
    else:
        moved = runner.model.parameters()["head.weight"]
    assert np.isfinite(moved).all()
    assert not np.array_equal(moved, runner.case.V)
