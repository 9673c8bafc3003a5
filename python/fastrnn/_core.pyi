"""Type stub for fastrnn._core, the compiled C++/Eigen extension.

The kernels themselves live in the modules ``fastrnn._kernels_<level>`` (one per
instruction-set level, chosen by :func:`kernel_isa`); see ``fastrnn.backends.cpp_backend``.
Their functions are bound here, once: each kernel module calls :func:`_bind_kernels` when it
is imported.
"""

from types import ModuleType

def build_info() -> dict[str, object]:
    """Compiler, flags, Eigen version and SIMD, the kernels' instruction-set level, BLAS."""

def cpu_supports(level: str) -> bool:
    """Whether this CPU can run kernels of level ``"generic"``, ``"avx2"`` or ``"avx512"``."""

def kernel_isa() -> str:
    """The level whose kernels fastrnn uses (best supported, capped by FASTRNN_CPP_ISA)."""

def _bind_kernels(module: ModuleType) -> None:
    """Add the kernel functions to a kernel module, bound to the table in its capsule."""

def output_cache_info() -> dict[str, int]:
    """The output cache: limit, held (bytes), blocks, hits, misses."""

def set_output_cache_limit(max_bytes: int) -> int:
    """Set the most the output cache may hold (bytes); returns the previous limit."""

def _set_output_cache_poison(on: bool) -> None:
    """Tests: fill every block taken from the output cache with 0xff bytes first."""
