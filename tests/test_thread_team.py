"""The C++ kernels' workers on a host's OpenMP thread team (parallel.hpp's ThreadTeam,
``cpp_backend.set_thread_team``), as ``import fastrnn.torch`` hands over PyTorch's: the
same bits as the kernels' own threads, every cell, both dtypes, more workers than cores;
the hand-off counted; a forked child that runs on its own threads instead of the team it
cannot use; clear errors for a library that is not a loaded OpenMP runtime.
"""

from __future__ import annotations

import multiprocessing
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from conftest import CELL_CASES, make_case, need_backend  # noqa: E402

need_backend("cpp", allow_module_level=True)

from test_cpp_backend import raw_forward_backward  # noqa: E402

from fastrnn.backends import cpp_backend  # noqa: E402

TORCH_OPENMP = ft._torch_openmp()
OWN = "own threads"


@pytest.fixture
def team():
    """PyTorch's OpenMP runtime (its path), handed over for the test; own threads after."""
    assert TORCH_OPENMP is not None, (
        "PyTorch runs its intra-op threads on OpenMP in the test environment (CPU wheels "
        f"do), but no runtime was found: {torch.__config__.parallel_info()}"
    )
    cpp_backend.set_thread_team(TORCH_OPENMP)
    yield TORCH_OPENMP
    cpp_backend.set_thread_team(None)


def test_fastrnn_torch_hands_over_pytorchs_team():
    """What import fastrnn.torch does (the suite's conftest gives the kernels their own
    threads back after collection), and what build_info reports then."""
    try:
        assert ft._share_torch_threads() == f"OpenMP team of {TORCH_OPENMP}"
        assert fastrnn.build_info()["threads"] == f"OpenMP team of {TORCH_OPENMP}"
        assert os.path.basename(TORCH_OPENMP).startswith(("libgomp", "libomp", "libiomp"))
    finally:
        cpp_backend.set_thread_team(None)
    assert fastrnn.build_info()["threads"] == OWN


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,act", [c for c in CELL_CASES if c[1] == "tanh"])
def test_team_gives_the_bits_of_own_threads(team, cell, act, dtype, threads):
    """Worker i does the same work on the team as on a thread of its own, so every output
    and gradient has the same bits; 3 workers on a 2-thread team as well."""
    kernels = cpp_backend._loaded()
    case = make_case(cell, dtype=dtype, T=12, B=7, D=5, H=9, lengths=True, h0=True, seed=3)
    before = kernels.team_calls()
    on_team = raw_forward_backward(kernels, cell, case, threads)
    assert kernels.team_calls() > before, "the workers did not run on the team"
    cpp_backend.set_thread_team(None)
    own = raw_forward_backward(kernels, cell, case, threads)
    assert on_team.keys() == own.keys()
    for name in own:
        np.testing.assert_array_equal(on_team[name], own[name], err_msg=name)


def test_one_worker_needs_no_team(team):
    kernels = cpp_backend._loaded()
    case = make_case("gru", dtype=np.float32, T=5, B=3, D=4, H=6, lengths=True, h0=True, seed=1)
    before = kernels.team_calls()
    raw_forward_backward(kernels, "gru", case, 1)
    assert kernels.team_calls() == before


def _child_run(queue) -> None:  # in a forked child
    kernels = cpp_backend._loaded()
    case = make_case("lstm", dtype=np.float64, T=10, B=6, D=4, H=5, lengths=True, h0=True, seed=2)
    before = kernels.team_calls()
    out = raw_forward_backward(kernels, "lstm", case, 2)
    queue.put((kernels.thread_team(), kernels.team_calls() - before, out["W_hh"]))


def test_a_forked_child_runs_its_own_threads(team):
    """GNU OpenMP's pool does not survive fork (the child would wait for threads it does
    not have): a child of a process that handed a team over runs threads of its own."""
    kernels = cpp_backend._loaded()
    case = make_case("lstm", dtype=np.float64, T=10, B=6, D=4, H=5, lengths=True, h0=True, seed=2)
    want = raw_forward_backward(kernels, "lstm", case, 2)["W_hh"]  # the team is in use
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_run, args=(queue,))
    child.start()
    try:
        name, calls, got = queue.get(timeout=60)  # (a hung child: queue.Empty here)
    finally:
        child.join(timeout=10)
    assert child.exitcode == 0, f"the forked child failed (exit code {child.exitcode})"
    assert name.startswith("own threads (a forked child"), name
    assert calls == 0
    np.testing.assert_array_equal(got, want)


def test_a_library_that_is_not_loaded_is_refused():
    missing = "/nonexistent/libgomp.so.1"
    with pytest.raises(OSError, match=re.escape(f"the OpenMP runtime {missing!r} is not loaded")):
        cpp_backend.set_thread_team(missing)
    assert cpp_backend._loaded().thread_team() == OWN


def test_a_library_that_is_not_openmp_is_refused():
    from threadpoolctl import threadpool_info

    blas = next(i["filepath"] for i in threadpool_info() if i["user_api"] == "blas")
    with pytest.raises(LookupError, match="has no GOMP_parallel: not an OpenMP runtime"):
        cpp_backend.set_thread_team(blas)
    assert cpp_backend._loaded().thread_team() == OWN


def test_dropin_trains_on_the_team(team):
    """The drop-in's forward and backward at 2 threads run on PyTorch's team and agree with
    torch.nn (float64)."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 6, batch_first=True, dtype=torch.float64)
    mod = ft.GRU(4, 6, batch_first=True, dtype=torch.float64)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(8, 11, 4, dtype=torch.float64)
    kernels = cpp_backend._loaded()
    before = kernels.team_calls()
    with_threads = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    try:
        mod(x)[0].square().sum().backward()
    finally:
        fastrnn.set_num_threads(with_threads)
    ref(x)[0].square().sum().backward()
    assert kernels.team_calls() >= before + 2  # the forward's recurrence and the backward
    for (name, p), q in zip(mod.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
