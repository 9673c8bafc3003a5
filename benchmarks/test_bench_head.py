"""Benchmark of the fused output head alone, ``fastrnn.linear_cross_entropy``: logits of
every step of every sequence (N = T*B rows of H features, K = 32 classes), softmax
cross-entropy, and the gradients dh, dV, dc. Each backend is checked against the NumPy
reference first; 6*N*H*K FLOPs (three products). Sizes: ``benchmarks/conftest.py``."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import bench as lib
from fastrnn.backends import BACKENDS


@pytest.fixture(params=BACKENDS)
def head_backend(request: pytest.FixtureRequest) -> str:
    name = request.param
    if name not in fastrnn.available_backends():
        pytest.skip(f"backend {name!r} unavailable: {fastrnn.unavailable_backends()[name]}")
    return name


def test_head(benchmark, request, head_backend, bench_shape, dtype, threads):
    shape = bench_shape
    rng = np.random.default_rng(0)
    K, N = lib.CLASSES, shape.T * shape.B
    h = rng.standard_normal((shape.T, shape.B, shape.H)).astype(dtype)
    V = (rng.standard_normal((K, shape.H)) / np.sqrt(shape.H)).astype(dtype)
    c = np.zeros(K, dtype=dtype)
    y = rng.integers(0, K, (shape.T, shape.B))
    args = (h[:4], V, c, y[:4])
    want = fastrnn.linear_cross_entropy(*args, backend="numpy")
    got = fastrnn.linear_cross_entropy(*args, backend=head_backend)
    rtol = 1e-4 if dtype == "float32" else 1e-10
    assert got.loss == pytest.approx(want.loss, rel=rtol)
    np.testing.assert_allclose(got.dh, want.dh, rtol=rtol, atol=rtol * np.abs(want.dh).max())

    def run():
        return fastrnn.linear_cross_entropy(h, V, c, y, backend=head_backend)

    benchmark.group = f"head {shape.name} {dtype} {threads}thr"
    with lib.thread_limit(threads):
        run()  # warm-up: JIT compile and first touch are not timed
        rounds = request.config.getoption("--bench-rounds")
        res = benchmark.pedantic(run, rounds=rounds, iterations=1)
    assert res.dh.shape == h.shape and np.isfinite(res.loss)
    flops = 6.0 * N * shape.H * K
    benchmark.extra_info.update(
        backend=head_backend,
        shape=shape.name,
        N=N,
        H=shape.H,
        K=K,
        dtype=dtype,
        threads=threads,
        flops=flops,
    )
    if benchmark.stats is not None:
        benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9
