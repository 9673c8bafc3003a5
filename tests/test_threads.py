"""Thread safety: the same calls from several Python threads at once give what serial
calls give, on every backend (the kernels release the GIL, so the threads really overlap),
and a backend chosen with use_backend stays in its own thread.

With one kernel thread per call the results must be identical bit for bit. With several
(num_threads > 1) a batch split may sum the weight gradients in another order when a
parallel run is busy elsewhere, so there "the same" is up to a few units in the last
place; a race would show far above that.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastrnn
from conftest import CELL_CASES, make_case, need_backend, run_case, using_threads

THREADS = 4
ROUNDS = 3


def _jobs(dtype) -> list[tuple[str, str, dict]]:
    """One job per cell case, each with its own inputs (several share nothing)."""
    return [
        (cell, act, make_case(cell, dtype=dtype, T=40, B=6, D=8, H=24, lengths=k % 2 == 0,
                              h0=True, seed=k))
        for k, (cell, act) in enumerate(CELL_CASES)
    ]  # fmt: skip


def _concurrently(fn, args: list[tuple]) -> list:
    """fn(*a) for every a, spread over THREADS threads that start together; the results
    in the order of ``args``. An exception in any thread is raised here."""
    n = min(THREADS, len(args))
    barrier = threading.Barrier(n)

    def worker(k: int) -> list:
        barrier.wait(timeout=60)
        return [fn(*a) for a in args[k::n]]

    with ThreadPoolExecutor(max_workers=n) as pool:
        parts = [f.result() for f in [pool.submit(worker, k) for k in range(n)]]
    out = [None] * len(args)
    for k, part in enumerate(parts):
        out[k::n] = part
    return out


@pytest.fixture
def one_kernel_thread():
    """One kernel thread per call (restored after the test): results must be exact."""
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)
    yield
    fastrnn.set_num_threads(before)


def _assert_same(got: dict, want: dict, what: str, exact: bool = True) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what}: {name}"
        if exact:
            np.testing.assert_array_equal(g, w, err_msg=f"{what}: {name}")
            continue
        ulp = float(np.finfo(w.dtype).eps)
        scale = max(float(np.max(np.abs(w))), 1.0) if w.size else 1.0
        err = float(np.max(np.abs(g.astype(np.float64) - w))) / scale if w.size else 0.0
        assert err <= 64 * ulp, f"{what}: {name} differs by {err / ulp:.0f} ulp of its scale"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_different_calls_at_once_equal_serial_calls(backend, dtype, one_kernel_thread):
    jobs = _jobs(dtype)
    serial = [run_case(backend, cell, act, case) for cell, act, case in jobs]
    parallel = _concurrently(
        lambda i: run_case(backend, *jobs[i]), [(i,) for i in range(len(jobs))] * ROUNDS
    )
    for k, got in enumerate(parallel):
        cell, act, _ = jobs[k % len(jobs)]
        _assert_same(got, serial[k % len(jobs)], f"{cell}-{act}, call {k}")


def test_the_same_call_from_every_thread(backend, one_kernel_thread):
    """All threads share the very same input arrays (read-only use by every kernel)."""
    cell, act, case = _jobs(np.float32)[4]  # lstm: the most saved state
    want = run_case(backend, cell, act, case)
    for got in _concurrently(lambda: run_case(backend, cell, act, case), [()] * (THREADS * 2)):
        _assert_same(got, want, "shared input")


def test_internal_threads_and_python_threads_together(backend):
    """Kernels that use their own threads (num_threads > 1) called from several threads."""
    jobs = _jobs(np.float64)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        serial = [run_case(backend, *job) for job in jobs]
        fastrnn.set_num_threads(3)
        parallel = _concurrently(lambda i: run_case(backend, *jobs[i]), [(i,) for i in range(6)])
    finally:
        fastrnn.set_num_threads(before)
    for k, got in enumerate(parallel):
        _assert_same(got, serial[k], f"num_threads=3, call {k}", exact=False)


def test_use_backend_stays_in_its_thread(one_kernel_thread):
    """Each thread picks its own backend with use_backend; results match each backend's
    serial result, and no thread sees another's choice."""
    names = fastrnn.available_backends()
    cell, act, case = _jobs(np.float64)[5]
    want = {name: run_case(name, cell, act, case) for name in names}

    def work(name: str):
        with fastrnn.use_backend(name):
            seen = fastrnn.get_backend()
            out = run_case(None, cell, act, case)
            return seen, out, fastrnn.get_backend()

    results = _concurrently(work, [(n,) for n in names] * THREADS)
    for (name,), (seen, out, after) in zip([(n,) for n in names] * THREADS, results, strict=True):
        assert seen == name and after == name
        _assert_same(out, want[name], f"use_backend({name!r})")


def _forked_run(queue, job) -> None:  # in a forked child
    with using_threads(2):
        queue.put(run_case("cpp", *job))


def test_a_forked_child_makes_its_own_kernel_threads():
    """The C++ kernels' worker threads outlive the calls (parallel.hpp's WorkerPool); a
    forked child has none of them and makes its own: a 2-thread call there finishes and
    gives the parent's bits."""
    need_backend("cpp")
    job = _jobs(np.float64)[4]  # lstm
    with using_threads(2):
        want = run_case("cpp", *job)  # the pool's threads exist from here on
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forked_run, args=(queue, job))
    child.start()
    try:
        got = queue.get(timeout=60)
    finally:
        child.join(timeout=10)
    assert child.exitcode == 0, f"the forked child failed (exit code {child.exitcode})"
    _assert_same(got, want, "forked child")
