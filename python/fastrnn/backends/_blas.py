"""The BLAS both compiled backends call for their large products, found at run time.

Neither backend links a BLAS at build time: they call the Fortran-ABI ``sgemm``/``dgemm``
of an OpenBLAS already in the process, NumPy's own (ILP64, 64-bit integer arguments) by
default, SciPy's (``scipy.linalg.cython_blas``, LP64) otherwise, with the thread getter
and setter of that OpenBLAS (the kernels keep it at one thread while they run). Measured
on a Zen 3 EPYC (float32, 1 thread, the Haswell kernels of both, GFLOP/s NumPy's 0.3.31 ->
SciPy's 0.3.30, (m, k, n) of ``out = a @ b``, each called through its function pointer):
(64, 1024, 1024) 77.1 -> 60.9, (32, 256, 64) 64.2 -> 44.0, (64, 256, 64) 74.9 -> 59.1,
(64, 256, 1024) 78.3 -> 63.1, (256, 64, 64) 74.8 -> 69.7, (256, 32, 64) 61.5 -> 59.8: NumPy's
was 1.03 to 1.46x faster on every shape tried, most on the deep products of the weight
gradients. :func:`find_blas` says which one this process uses; the cpp backend hands the
addresses to its kernel module, the numba backend to its kernels (``_numba_kernels``).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from .._sysinfo import blas_width_isa

BlasHandover = tuple[int, int, int, int, str, bool, str]
"""``(sgemm, dgemm, get_num_threads, set_num_threads, name, int64, kernel_isa)``"""


def _capsule_address(capsule: object) -> int:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return int(get_pointer(capsule, get_name(capsule)) or 0)


def _scipy_openblas(threadpool_info: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The OpenBLAS entry of threadpoolctl's list that SciPy's BLAS calls: the one inside
    SciPy's installation (``scipy.libs`` of a wheel), else the only OpenBLAS loaded."""
    import scipy

    root = os.path.dirname(os.path.abspath(scipy.__file__))  # .../scipy (and scipy.libs)
    blas = [i for i in threadpool_info if i.get("user_api") == "blas"]
    openblas = [i for i in blas if i.get("internal_api") == "openblas"]
    inside = [i for i in openblas if os.path.abspath(i["filepath"]).startswith(root)]
    if len(inside) == 1:
        return inside[0]
    return openblas[0] if len(blas) == 1 == len(openblas) else None


def blas_functions(source: str | None = None) -> BlasHandover:
    """The BLAS the cpp kernels take (:func:`find_blas`, without the library's path)."""
    return find_blas(source)[0]


def find_blas(source: str | None = None) -> tuple[BlasHandover, str | None]:
    """``((sgemm, dgemm, get_num_threads, set_num_threads, name, int64, kernel_isa), path)``:
    addresses of the BLAS functions the kernels call and of the thread setters of the
    OpenBLAS behind them and the path of that library, or zeros, ``"none: <why>"`` and
    ``None``; ``kernel_isa`` how wide that OpenBLAS's kernels run on this CPU
    (``fastrnn._sysinfo.blas_width_isa``). ``source``:
    ``"numpy"`` (NumPy's own OpenBLAS, ILP64: ``int64`` is True) or ``"scipy"``
    (``scipy.linalg.cython_blas``, LP64); default the environment variable ``FASTRNN_BLAS``
    or ``"numpy"``, falling back to the other."""
    source = source or os.environ.get("FASTRNN_BLAS", "numpy")
    order = {"numpy": (_numpy_blas, _scipy_blas), "scipy": (_scipy_blas, _numpy_blas)}[source]
    reasons = []
    for find in order:
        try:
            return find()
        except (ImportError, OSError, KeyError, AttributeError, ValueError, LookupError) as exc:
            reasons.append(f"{find.__name__}: {type(exc).__name__}: {exc}")
    return (0, 0, 0, 0, "none: " + "; ".join(reasons), False, "generic"), None


def kernel_gemm() -> tuple[int, int, bool, str, str | None]:
    """``(sgemm, dgemm, int64, name, path)`` for the numba kernels: :func:`find_blas`'s
    library, or, if it finds none (SciPy built on another BLAS than OpenBLAS), the LP64
    ``sgemm``/``dgemm`` SciPy exports (``path`` None: threadpoolctl then limits whatever
    BLAS SciPy loaded)."""
    (sgemm, dgemm, _, _, name, int64, _), path = find_blas()
    if sgemm and dgemm:
        return sgemm, dgemm, int64, name, path
    sgemm, dgemm = _scipy_gemm()
    return sgemm, dgemm, False, f"scipy.linalg.cython_blas ({name})", None


def _scipy_gemm() -> tuple[int, int]:
    """The addresses of the LP64 ``sgemm``/``dgemm`` SciPy exports (its cython_blas capsules)."""
    from scipy.linalg import cython_blas

    capsules = cython_blas.__pyx_capi__
    return _capsule_address(capsules["sgemm"]), _capsule_address(capsules["dgemm"])


def _thread_setters(dll: ctypes.CDLL, path: str) -> list[int]:
    setters = []
    for verb in ("get", "set"):
        names = [
            f"{prefix}openblas_{verb}_num_threads{suffix}"
            for prefix in ("scipy_", "")
            for suffix in ("", "64_", "_64_")
        ]
        address = next(
            (ctypes.cast(getattr(dll, n), ctypes.c_void_p).value for n in names if hasattr(dll, n)),
            None,
        )
        if not address:
            raise LookupError(f"no openblas_{verb}_num_threads in {path}")
        setters.append(address)
    return setters


def _handover(
    lib: dict[str, Any], sgemm: int, dgemm: int, int64: bool, via: str
) -> tuple[BlasHandover, str]:
    """The handover of ``sgemm``/``dgemm`` of the OpenBLAS threadpoolctl describes as
    ``lib``, with that library's thread setters, its description and its path."""
    path = lib["filepath"]
    get, set_ = _thread_setters(ctypes.CDLL(path), path)
    name = (
        f"openblas {lib.get('version')} ({lib.get('architecture')} kernels) via {via}, "
        f"{os.path.basename(path)}"
    )
    isa = blas_width_isa(lib.get("architecture"))
    return (sgemm, dgemm, get, set_, name, int64, isa), path


def _numpy_blas() -> tuple[BlasHandover, str]:
    import numpy
    from threadpoolctl import threadpool_info

    root = os.path.dirname(os.path.dirname(os.path.abspath(numpy.__file__)))
    inside = [
        i
        for i in threadpool_info()
        if i.get("internal_api") == "openblas"
        and os.path.basename(os.path.dirname(os.path.abspath(i["filepath"])))
        in ("numpy.libs", "numpy")
        and os.path.abspath(i["filepath"]).startswith(root)
    ]
    if len(inside) != 1:
        raise LookupError(f"NumPy's BLAS is not one OpenBLAS (found {len(inside)})")
    lib = inside[0]
    dll = ctypes.CDLL(lib["filepath"])
    gemm: list[int] = []
    for t in "sd":
        names = [f"scipy_{t}gemm_64_", f"{t}gemm_64_"]
        found = next((n for n in names if hasattr(dll, n)), None)
        address = ctypes.cast(getattr(dll, found), ctypes.c_void_p).value if found else None
        if not address:
            raise LookupError(f"no ILP64 {t}gemm in {lib['filepath']}")
        gemm.append(address)
    return _handover(lib, gemm[0], gemm[1], True, "NumPy, ILP64")


def _scipy_blas() -> tuple[BlasHandover, str]:
    from threadpoolctl import threadpool_info

    sgemm, dgemm = _scipy_gemm()
    info = threadpool_info()
    lib = _scipy_openblas(info)
    if lib is None:
        found = sorted({str(i.get("internal_api")) for i in info if i.get("user_api") == "blas"})
        raise LookupError(f"SciPy's BLAS is not one OpenBLAS (found: {found or 'none'})")
    return _handover(lib, sgemm, dgemm, False, "SciPy")
