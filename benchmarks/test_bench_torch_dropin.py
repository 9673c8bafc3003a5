"""Benchmark of the PyTorch drop-in: one training step of the same model in PyTorch with
``torch.nn.RNN/LSTM/GRU`` and with ``fastrnn.torch.RNN/LSTM/GRU`` (the layer, a linear
head on every step and cross-entropy, forward and backward through autograd), padded
input and, for lstm and gru, a ``PackedSequence`` with lengths spread over 1..T. Each
benchmark first checks that the two give the same loss and gradients. Sizes and options:
``benchmarks/conftest.py``; compare the two rows of a group::

    pytest benchmarks/test_bench_torch_dropin.py --benchmark-enable --bench-size full \\
        --benchmark-group-by group --benchmark-columns median
"""

from __future__ import annotations

import numpy as np
import pytest

from fastrnn import bench as lib

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import fastrnn.torch as ft  # noqa: E402

MODULES = {"torch.nn": {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}}
MODULES["fastrnn.torch"] = {"rnn": ft.RNN, "lstm": ft.LSTM, "gru": ft.GRU}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Step:
    """One training step of rnn + linear head + cross-entropy on fixed data."""

    def __init__(self, impl: str, cell: str, shape: lib.Shape, dtype: str, packed: bool):
        dt = DTYPES[dtype]
        torch.manual_seed(0)
        self.rnn = MODULES[impl][cell](shape.D, shape.H, dtype=dt)
        self.head = torch.nn.Linear(shape.H, lib.CLASSES, dtype=dt)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(shape.T, shape.B, shape.D, generator=gen, dtype=dt)
        self.lengths = None
        if packed:  # spread over 1..T, unsorted
            spread = np.linspace(1, shape.T, shape.B).round().astype(np.int64)
            self.lengths = torch.from_numpy(np.random.default_rng(2).permutation(spread))
        rows = shape.T * shape.B if self.lengths is None else int(self.lengths.sum())
        self.targets = torch.randint(0, lib.CLASSES, (rows,), generator=gen)
        self.params = [*self.rnn.parameters(), *self.head.parameters()]

    def run(self) -> tuple[float, list]:
        for p in self.params:
            p.grad = None
        x = self.x
        if self.lengths is not None:
            x = pack_padded_sequence(x, self.lengths, enforce_sorted=False)
        out = self.rnn(x)[0]
        out = out.data if self.lengths is not None else out.reshape(-1, out.shape[-1])
        loss = torch.nn.functional.cross_entropy(self.head(out), self.targets)
        loss.backward()
        return loss.item(), [p.grad for p in self.params]


CASES = [(c, False) for c in ("rnn", "gru", "lstm")] + [(c, True) for c in ("gru", "lstm")]


@pytest.mark.parametrize("impl", list(MODULES))
@pytest.mark.parametrize(
    ("cell", "packed"), CASES, ids=[f"{c}-{'packed' if p else 'padded'}" for c, p in CASES]
)
def test_torch_dropin_train_step(
    benchmark, request, impl, cell, packed, bench_shape, dtype, threads
):
    shape = bench_shape
    if packed and shape.B == 1:
        pytest.skip("a PackedSequence of one sequence has no spread of lengths")
    if cell not in shape.cells:
        pytest.skip(f"shape {shape.name} is not defined for {cell}")
    step = Step(impl, cell, shape, dtype, packed)
    small = lib.Shape("check", shape.D, shape.H, min(shape.B, 4), min(shape.T, 20))
    with lib.thread_limit(threads):
        want = Step("torch.nn", cell, small, dtype, packed).run()
        got = Step(impl, cell, small, dtype, packed).run()
    rtol = 1e-4 if dtype == "float32" else 1e-10
    assert got[0] == pytest.approx(want[0], rel=rtol)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(w.abs().max()))
    benchmark.group = (
        f"torch drop-in {shape.name} {cell}{' packed' if packed else ''} {dtype} {threads}thr"
    )
    with lib.thread_limit(threads):
        step.run()  # warm-up: first touch is not timed
        rounds = request.config.getoption("--bench-rounds")
        loss, grads = benchmark.pedantic(step.run, rounds=rounds, iterations=1)
    assert np.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)
    benchmark.extra_info.update(
        impl=impl,
        cell=cell,
        packed=packed,
        shape=shape.name,
        D=shape.D,
        H=shape.H,
        B=shape.B,
        T=shape.T,
        dtype=dtype,
        threads=threads,
    )
