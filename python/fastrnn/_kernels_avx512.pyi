"""Type stub for fastrnn._kernels_avx512: the same functions as _kernels_generic."""

from ._kernels_generic import *  # noqa: F403
