"""What a benchmark ran on: CPU model and SIMD flags, threads, the BLAS libraries of NumPy
and SciPy (version, the OpenBLAS kernel they run, threads), the extension and the kernel
instruction-set level in use.

Used by ``fastrnn bench`` (printed before every table and stored in its JSON) and by the
pytest-benchmark suite (stored in the machine info of a saved run), so that a number is
never separated from the machine and the libraries that produced it.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from ._validation import available_memory as available_memory  # reported here too

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

# Environment variables that change how OpenBLAS picks its kernels and blocking: printed
# set or unset, since a benchmark of NumPy on its real kernels needs both unset.
OPENBLAS_KERNEL_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# Environment variables that change how the BLAS libraries and the kernels behave.
_BLAS_ENV = (
    *OPENBLAS_KERNEL_ENV,
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "FASTRNN_BACKEND",
    "FASTRNN_NUM_THREADS",
    "FASTRNN_CPP_ISA",
    *("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"),
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


def _owner(filepath: str | None) -> str:
    """The package that ships the library at ``filepath`` (``numpy`` for
    ``.../site-packages/numpy.libs/libscipy_openblas64_...so``), else ``"other"``."""
    parts = os.path.normpath(filepath or "").split(os.sep)
    for part in reversed(parts[:-1]):
        name = part.split(".")[0].split("-")[0].lower()
        if name in ("numpy", "scipy", "torch", "scipy_openblas32", "scipy_openblas64"):
            return name
    return "other"


# OpenBLAS's core names (``openblas_get_corename``, threadpoolctl's "architecture") whose
# kernels use AVX-512 or AVX2 with FMA, by the cpp kernel modules' level names; any other
# core (or an unknown one) counts as "generic".
_OPENBLAS_CORE_LEVELS = {
    "skylakex": "avx512",
    "cooperlake": "avx512",
    "sapphirerapids": "avx512",
    "haswell": "avx2",
    "zen": "avx2",
}


def openblas_kernel_isa(architecture: object) -> str:
    """The level of an OpenBLAS core's kernels in the cpp kernel modules' terms:
    ``"avx512"``, ``"avx2"`` or ``"generic"`` (any other core, or ``None``)."""
    return _OPENBLAS_CORE_LEVELS.get(str(architecture).lower(), "generic")


def splits_512bit_vectors() -> bool:
    """Whether this CPU runs AVX-512 instructions as two 256-bit halves, so that AVX-512
    kernels do no more multiply-adds a cycle than AVX2 ones: AMD's Zen 4 (family 25 with
    AVX-512; Zen 5, family 26, has full-width units in its server and desktop parts)."""
    info = _cpuinfo()
    flags = (info.get("flags") or "").split()
    return (
        info.get("vendor_id") == "AuthenticAMD"
        and info.get("cpu family") == "25"
        and "avx512f" in flags
    )


def blas_width_isa(architecture: object) -> str:
    """How wide an OpenBLAS core's kernels run on this CPU, in the cpp kernel modules'
    terms: :func:`openblas_kernel_isa`, but ``"avx2"`` for AVX-512 kernels on a CPU that
    :func:`splits_512bit_vectors`. The cpp kernels choose by it which per-step products go
    to BLAS (``src/cpp/fastrnn/blas.hpp``)."""
    isa = openblas_kernel_isa(architecture)
    return "avx2" if isa == "avx512" and splits_512bit_vectors() else isa


def blas_info() -> list[dict[str, Any]]:
    """Every BLAS library loaded once NumPy and SciPy's linear algebra are imported (NumPy's
    and SciPy's OpenBLAS, torch's if torch was imported), as threadpoolctl sees it.

    Each entry has ``owner`` (the package that ships it: numpy, scipy, torch, other),
    ``internal_api`` (openblas, mkl, blis), ``version``, ``architecture`` (the kernel
    OpenBLAS runs, e.g. ``"SkylakeX"``, ``"Haswell"`` or ``"Zen"``), ``num_threads``,
    ``threading_layer`` and ``filepath``.
    """
    import numpy  # noqa: F401  (loads numpy's BLAS so that threadpoolctl can see it)
    from threadpoolctl import threadpool_info

    try:
        import scipy.linalg  # noqa: F401  (SciPy's BLAS, the kernels' other choice)
    except ImportError:
        pass
    keys = ("internal_api", "version", "num_threads", "architecture", "threading_layer")
    out = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        entry = {"owner": _owner(lib.get("filepath"))} | {k: lib.get(k) for k in keys}
        entry["filepath"] = lib.get("filepath")
        out.append(entry)
    return out


def cpp_isa() -> dict[str, Any]:
    """The cpp kernels' instruction-set level: ``in_use`` (what
    ``fastrnn._core.kernel_isa()`` reports: the best level this CPU runs, or the one the
    environment variable ``FASTRNN_CPP_ISA`` asks for), ``requested`` (that variable, or
    ``None``) and ``built`` (the levels compiled into the wheel); ``in_use`` is ``None``
    when the extension is not available."""
    import fastrnn

    build = fastrnn.build_info()
    built = build.get("kernel_isas_built")  # a list of level names (src/cpp/module.cpp)
    return {
        "in_use": build.get("kernel_isa") if build.get("available") else None,
        "requested": os.environ.get("FASTRNN_CPP_ISA"),
        "built": list(built) if isinstance(built, list) else [],
    }


def numba_target() -> dict[str, Any] | None:
    """The CPU numba compiles for: ``cpu`` (the LLVM CPU name), ``features`` (``"host"``
    when numba uses the host CPU's own features, else the LLVM feature string; empty means
    the named CPU's defaults), ``forced`` (whether ``NUMBA_CPU_NAME`` or
    ``NUMBA_CPU_FEATURES`` set them) and ``version``; ``None`` without numba. (The caller
    may add ``blas``, the library the kernels call, which :func:`format_system_info` shows:
    ``fastrnn.backends.numba_backend.blas_name()``, a module that imports this one.)

    To compile numba's kernels for the same level as ``FASTRNN_CPP_ISA``, set both, e.g.
    ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=`` for avx2 (``NUMBA_CPU_NAME`` alone keeps
    the host's features, AVX-512 included)."""
    try:
        import numba
        from llvmlite import binding as llvm
    except ImportError:
        return None
    name, features = numba.config.CPU_NAME, numba.config.CPU_FEATURES
    return {
        "version": numba.__version__,
        "cpu": name or llvm.get_host_cpu_name(),
        "features": "host" if features is None else features,
        "forced": name is not None or features is not None,
    }


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
        "cpp_isa": cpp_isa(),
        "numba_target": numba_target(),
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
        parts = [f"{lib['owner']}'s {lib.get('internal_api')}" if "owner" in lib else "?"]
        parts[0] += f" {lib['version']}" if lib.get("version") else ""
        parts.append(f"kernel {lib.get('architecture') or 'unknown'}")
        if lib.get("num_threads") is not None:
            parts.append(f"{lib['num_threads']} threads by default")
        if lib.get("threading_layer"):
            parts.append(f"threading {lib['threading_layer']}")
        lines.append(f"BLAS:     {', '.join(parts)}")
    openblas_env = (
        f"{k}={info['env'][k]}" if k in info["env"] else f"{k} unset" for k in OPENBLAS_KERNEL_ENV
    )
    lines.append(f"OpenBLAS: {', '.join(openblas_env)}")
    isa = info.get("cpp_isa") or {}
    if isa.get("in_use"):
        asked = isa.get("requested")
        why = (
            f"FASTRNN_CPP_ISA={asked}" if asked else "the best this CPU runs; FASTRNN_CPP_ISA unset"
        )
        built = ", ".join(isa.get("built") or []) or "?"
        lines.append(f"cpp ISA:  {isa['in_use']} ({why}; built: {built})")
    target = info.get("numba_target")
    if target:
        features = target["features"]
        if features == "host":
            shown = "the host CPU's own features"
        else:
            shown = f"features {features!r}" if features else "that CPU's default features"
        how = "set by NUMBA_CPU_NAME/NUMBA_CPU_FEATURES" if target["forced"] else "the host"
        blas = f", BLAS: {target['blas']}" if target.get("blas") else ""
        lines.append(
            f"numba:    {target['version']}, compiles for {target['cpu']}, {shown} ({how}){blas}"
        )
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
