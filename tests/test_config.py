"""The backend switch: env var, setter, context manager, per-call override, threads, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _config
from fastrnn.backends import BACKENDS


@pytest.fixture(autouse=True)
def _restore_global_backend():
    saved = _config._global_backend
    threads = fastrnn.get_num_threads()
    yield
    _config._global_backend = saved
    fastrnn.set_num_threads(threads)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_numpy_is_always_available_and_order_is_fastest_first():
    avail = fastrnn.available_backends()
    assert "numpy" in avail
    assert avail == [b for b in BACKENDS if b in avail]


def test_unavailable_backends_say_why():
    reasons = fastrnn.unavailable_backends()
    assert set(reasons) | set(fastrnn.available_backends()) == set(BACKENDS)
    for name, why in reasons.items():
        assert isinstance(why, str) and why
        with pytest.raises(RuntimeError, match=f"backend '{name}' is not available") as e:
            fastrnn.set_backend(name)
        assert "to fix it" in str(e.value)


def test_auto_is_the_fastest_available():
    fastrnn.set_backend("auto")
    assert fastrnn.get_backend() == fastrnn.available_backends()[0]


def test_set_backend_and_get_backend():
    fastrnn.set_backend("numpy")
    assert fastrnn.get_backend() == "numpy"


@pytest.mark.parametrize("bad", ["torch", "", "NUMPY", None, 3])
def test_unknown_backend_names_list_the_valid_ones(bad):
    with pytest.raises(ValueError, match="valid names are 'cpp', 'numba', 'numpy'"):
        fastrnn.set_backend(bad)
    with pytest.raises(ValueError, match="valid names"):
        with fastrnn.use_backend(bad):
            pass
    if bad is None:  # backend=None in a call means "the configured backend"
        return
    x = np.zeros((2, 1, 3))
    with pytest.raises(ValueError, match="valid names"):
        fastrnn.forward("rnn", fastrnn.init_params("rnn", 3, 2, dtype=np.float64), x, backend=bad)


def test_use_backend_restores_after_exception():
    fastrnn.set_backend("auto")
    before = fastrnn.get_backend()
    with pytest.raises(KeyError):
        with fastrnn.use_backend("numpy") as name:
            assert name == "numpy" and fastrnn.get_backend() == "numpy"
            raise KeyError("boom")
    assert fastrnn.get_backend() == before


def test_use_backend_nests():
    with fastrnn.use_backend("numpy"):
        with fastrnn.use_backend("auto"):
            assert fastrnn.get_backend() == fastrnn.available_backends()[0]
        assert fastrnn.get_backend() == "numpy"


def test_use_backend_is_thread_local():
    fastrnn.set_backend("auto")
    seen = {}
    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait(10)
        seen["other"] = fastrnn.get_backend()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with fastrnn.use_backend("numpy"):
        inside.set()
        done.wait(10)
        seen["main"] = fastrnn.get_backend()
    t.join()
    assert seen["main"] == "numpy"
    assert seen["other"] == fastrnn.available_backends()[0]


def test_per_call_backend_and_result_remembers_it():
    params = fastrnn.init_params("gru", 3, 4, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).normal(size=(3, 2, 3))
    for name in fastrnn.available_backends():
        res = fastrnn.forward("gru", params, x, backend=name)
        assert res.backend == name
        with fastrnn.use_backend("numpy"):  # backward runs where forward ran
            g = fastrnn.backward(res, dh_n=np.ones((2, 4)))
        assert g.dx.shape == x.shape


def test_env_var_sets_the_start_value():
    out = _run_python("import fastrnn; print(fastrnn.get_backend())", FASTRNN_BACKEND="numpy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numpy"


def test_env_var_with_unknown_name_fails_clearly():
    out = _run_python("import fastrnn", FASTRNN_BACKEND="cuda")
    assert out.returncode != 0
    assert "FASTRNN_BACKEND='cuda'" in out.stderr and "valid names" in out.stderr


def test_num_threads_setting():
    fastrnn.set_num_threads(1)
    assert fastrnn.get_num_threads() == 1
    with pytest.raises(ValueError, match="num_threads must be a positive int, got 0"):
        fastrnn.set_num_threads(0)
    with pytest.raises(TypeError, match="num_threads must be an int"):
        fastrnn.set_num_threads(2.0)
    out = _run_python("import fastrnn; print(fastrnn.get_num_threads())", FASTRNN_NUM_THREADS="3")
    assert out.stdout.strip() == "3", out.stderr
    out = _run_python("import fastrnn", FASTRNN_NUM_THREADS="many")
    assert out.returncode != 0 and "FASTRNN_NUM_THREADS" in out.stderr


def test_info_command_prints_backends_and_build_info():
    out = subprocess.run(
        [sys.executable, "-m", "fastrnn", "info"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "available backends:" in out.stdout and "numpy" in out.stdout
    assert "build_info:" in out.stdout


def test_build_info_reports_the_extension():
    info = fastrnn.build_info()
    assert info["available"] is True, info
    for key in ("compiler", "flags", "eigen_version", "eigen_simd", "openmp"):
        assert key in info
    assert info["eigen_version"].startswith("3.4")


# --- what "auto" picks: the measured order per cpp kernel level ---------------------------


def test_auto_follows_the_measured_order_of_the_cpp_level(monkeypatch):
    from fastrnn import backends as registry

    monkeypatch.setattr(
        _config,
        "AUTO_ORDER",
        {"avx2": ("numba", "cpp", "numpy"), "avx512": ("cpp", "numba", "numpy")},
    )
    monkeypatch.setattr(registry, "available", lambda: ["cpp", "numba", "numpy"])
    monkeypatch.setattr(_config, "_global_backend", "auto")
    for level, want in (("avx2", "numba"), ("avx512", "cpp")):
        monkeypatch.setattr(_config, "_cpp_level", lambda level=level: level)
        assert fastrnn.get_backend() == want
        with fastrnn.use_backend("auto") as resolved:
            assert resolved == want
        chosen, why = _config.explain_auto()
        assert chosen == want and f"level {level}" in why and "measured" in why
    # the first of the order that loads: numba does not, so cpp at avx2
    monkeypatch.setattr(_config, "_cpp_level", lambda: "avx2")
    monkeypatch.setattr(registry, "available", lambda: ["cpp", "numpy"])
    monkeypatch.setattr(registry, "unavailable_reasons", lambda: {"numba": "not installed"})
    chosen, why = _config.explain_auto()
    assert chosen == "cpp" and "passed over: numba (unavailable: not installed)" in why


def test_auto_without_cpp_kernels_or_a_measured_level_uses_the_registry_order(monkeypatch):
    from fastrnn import backends as registry

    monkeypatch.setattr(registry, "available", lambda: ["numba", "numpy"])
    monkeypatch.setattr(registry, "unavailable_reasons", lambda: {"cpp": "no compiler"})
    for level in (None, "sve512"):
        monkeypatch.setattr(_config, "_cpp_level", lambda level=level: level)
        assert _config.auto_order(level) == BACKENDS
        chosen, why = _config.explain_auto()
        assert chosen == "numba"
        assert "fixed order " + " > ".join(BACKENDS) in why and "no measured order" in why
        assert "passed over: cpp (unavailable: no compiler)" in why


def test_every_measured_order_names_each_backend_once():
    for level, order in _config.AUTO_ORDER.items():
        assert sorted(order) == sorted(BACKENDS), level
        assert order[-1] == "numpy", level  # the reference, always available, comes last


def test_cpp_level_follows_fastrnn_cpp_isa():
    if "cpp" not in fastrnn.available_backends():
        pytest.skip("the cpp backend is not available")
    from fastrnn import _core

    code = "from fastrnn import _config; print(_config._cpp_level())"
    levels = [lv for lv in ("generic", "avx2", "avx512") if _core.cpu_supports(lv)]
    for level in levels:
        out = _run_python(code, FASTRNN_CPP_ISA=level)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == level
    out = _run_python(code, FASTRNN_CPP_ISA="avx9000")  # a bad value: no cpp kernels
    assert out.stdout.strip() == "None"
