"""Benchmarks of the kernels alone: one layer's forward (saving what backward needs, as in
training), the same forward for inference (``training=False``: nothing saved; its group
sits beside the training forward's for the ratio), and forward + full BPTT with a
gradient entering at every step; plus numpy's GEMM, the throughput they are measured
against. Sizes and options: see ``benchmarks/conftest.py``."""

from __future__ import annotations

import numpy as np
import pytest

from fastrnn import bench as lib


def test_forward(run_workload, bench_backend, shape_cell, dtype, threads):
    shape, cell = shape_cell
    runner, raw = run_workload(bench_backend, shape, cell, dtype, threads, "forward")
    out = runner.outputs(raw)
    assert out["hs"].shape == (shape.T, shape.B, shape.H)
    assert out["hs"].dtype == np.dtype(dtype)
    assert np.isfinite(out["h_n"]).all()


def test_inference(run_workload, bench_backend, shape_cell, dtype, threads):
    shape, cell = shape_cell
    runner, raw = run_workload(bench_backend, shape, cell, dtype, threads, "inference")
    out = runner.outputs(raw)
    assert out["hs"].shape == (shape.T, shape.B, shape.H)
    assert np.isfinite(out["h_n"]).all()
    assert runner.held_bytes(raw) == 0  # nothing kept for backward


def test_forward_backward(run_workload, bench_backend, shape_cell, dtype, threads):
    shape, cell = shape_cell
    runner, raw = run_workload(bench_backend, shape, cell, dtype, threads, "fwdbwd")
    out = runner.outputs(raw)
    assert out["dx"].shape == (shape.T, shape.B, shape.D)
    assert np.isfinite(out["dW_hh"]).all()


@pytest.mark.parametrize("gemm_dtype", ["float32", "float64"], ids=["sgemm", "dgemm"])
def test_gemm_reference(benchmark, bench_size, gemm_dtype):
    """numpy's (n x n) @ (n x n) with one BLAS thread: 2 n^3 FLOPs (n=1024; 64 in ci)."""
    from threadpoolctl import threadpool_limits

    dtype = gemm_dtype
    n = 64 if bench_size == "ci" else 1024
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    out = np.empty((n, n), dtype=dtype)
    benchmark.group = "gemm reference"
    with threadpool_limits(limits=1, user_api="blas"):
        np.matmul(a, b, out=out)
        benchmark.pedantic(np.matmul, args=(a, b), kwargs={"out": out}, rounds=5, iterations=1)
    np.testing.assert_allclose(out[:2], a[:2].astype(np.float64) @ b, rtol=1e-3, atol=1e-3)
    benchmark.extra_info.update(n=n, dtype=dtype, threads=1, flops=2.0 * n**3)
    if benchmark.stats is not None:
        benchmark.extra_info["gflops"] = 2.0 * n**3 / benchmark.stats.stats.median / 1e9
    assert lib.gemm_gflops(dtype, n=32, repeat=1) > 0
