"""What a benchmark ran on: CPU model and SIMD flags, threads, numpy's BLAS, the extension.

Used by ``fastrnn bench`` (printed before every table and stored in its JSON) and by the
pytest-benchmark suite (stored in the machine info of a saved run), so that a number is
never separated from the machine and the libraries that produced it.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

# The SIMD extensions that matter for the kernels, in the order they appeared.
_SIMD = (
    "sse2",
    "ssse3",
    "sse4_1",
    "sse4_2",
    "avx",
    "fma",
    "avx2",
    "avx512f",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "asimd",  # aarch64 NEON
    "sve",
)

# Environment variables that change how the BLAS libraries behave.
_BLAS_ENV = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "FASTRNN_BACKEND",
    "FASTRNN_NUM_THREADS",
)


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty off Linux)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if out:
                        break
                    continue
                key, _, value = line.partition(":")
                out.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return out


def cpu_model() -> str:
    """The CPU's model name, e.g. ``"AMD EPYC 9R14"``."""
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or "unknown"


def simd_flags() -> list[str]:
    """The SIMD extensions from :data:`_SIMD` that this CPU reports."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in _SIMD if f in flags]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation without swapping, if known.

    ``MemAvailable`` from /proc/meminfo (what the kernel can hand out, page cache
    included), else free physical pages from ``os.sysconf``; ``None`` when neither exists.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def blas_info() -> list[dict[str, Any]]:
    """numpy's BLAS (and any other loaded BLAS) as threadpoolctl sees it.

    Each entry has ``internal_api`` (openblas, mkl, blis), ``version``, ``num_threads``,
    ``architecture`` (OpenBLAS's core type, e.g. ``"Haswell"`` or ``"SkylakeX"``),
    ``threading_layer`` and ``filepath``.
    """
    import numpy  # noqa: F401  (loads numpy's BLAS so that threadpoolctl can see it)
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "num_threads", "architecture", "threading_layer")
    out = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        entry = {k: lib.get(k) for k in keys}
        entry["filepath"] = lib.get("filepath")
        out.append(entry)
    return out


def torch_version() -> str | None:
    """The installed torch version, without importing torch (slow); ``None`` if absent."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def warnings_for(env: dict[str, str]) -> list[str]:
    """Warnings about settings that make the numbers unrepresentative."""
    out = []
    coretype = env.get("OPENBLAS_CORETYPE")
    if coretype:
        out.append(
            f"OPENBLAS_CORETYPE={coretype} is set: OpenBLAS uses the {coretype} kernels "
            "instead of the ones it would pick for this CPU, so numpy's (and the GEMM "
            "reference's) speed may not be what users of this CPU get"
        )
    if env.get("OPENBLAS_L2_SIZE"):
        out.append(
            f"OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE']} is set: OpenBLAS's blocking is tuned "
            "to that cache size, not the detected one"
        )
    return out


def system_info() -> dict[str, Any]:
    """Everything above in one JSON-serialisable dict."""
    import numpy as np

    import fastrnn

    env = {k: os.environ[k] for k in _BLAS_ENV if k in os.environ}
    return {
        "cpu": cpu_model(),
        "simd": simd_flags(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "usable_cores": usable_cores(),
        "memory_available": available_memory(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "fastrnn": fastrnn.__version__,
        "fastrnn_threads": fastrnn.get_num_threads(),
        "backends": fastrnn.available_backends(),
        "unavailable_backends": fastrnn.unavailable_backends(),
        "build_info": fastrnn.build_info(),
        "blas": blas_info(),
        "torch": torch_version(),
        "env": env,
        "warnings": warnings_for(env),
    }


def format_system_info(info: dict[str, Any]) -> str:
    """A few readable lines describing :func:`system_info`'s result."""
    lines = [
        f"CPU:      {info['cpu']} ({info['machine']}), {info['usable_cores']} usable cores",
        f"SIMD:     {' '.join(info['simd']) or 'none detected'}",
    ]
    mem = info.get("memory_available")
    if mem:
        lines.append(f"memory:   {mem / 2**30:.1f} GiB available")
    lines.append(
        f"software: Python {info['python']}, numpy {info['numpy']}, fastrnn {info['fastrnn']}, "
        f"torch {info['torch'] or 'not installed'}"
    )
    for lib in info["blas"] or [{"internal_api": "no BLAS found by threadpoolctl"}]:
        parts = [str(lib.get("internal_api"))]
        if lib.get("version"):
            parts.append(str(lib["version"]))
        if lib.get("architecture"):
            parts.append(f"core type {lib['architecture']}")
        if lib.get("threading_layer"):
            parts.append(f"threading {lib['threading_layer']}")
        if lib.get("num_threads") is not None:
            parts.append(f"{lib['num_threads']} threads by default")
        lines.append(f"BLAS:     {', '.join(parts)}")
    build = info["build_info"]
    if build.get("available"):
        shown = ", ".join(f"{k}={v}" for k, v in build.items() if k != "available")
        lines.append(f"_core:    {shown}")
    else:
        lines.append(f"_core:    not available ({build.get('error')})")
    lines.append(
        f"backends: {', '.join(info['backends'])} available; fastrnn threads setting "
        f"{info['fastrnn_threads']}"
    )
    for name, why in info["unavailable_backends"].items():
        lines.append(f"          {name} unavailable: {why}")
    if info["env"]:
        lines.append("env:      " + " ".join(f"{k}={v}" for k, v in info["env"].items()))
    lines.extend(f"WARNING:  {w}" for w in info["warnings"])
    return "\n".join(lines)
