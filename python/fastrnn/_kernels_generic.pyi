"""Type stub for the compiled kernel modules ``fastrnn._kernels_generic``,
``_kernels_avx2`` and ``_kernels_avx512``: the same kernels compiled once per
instruction-set level, with the same functions. The functions are the bindings of
``src/cpp/kernel_bindings.cpp`` (compiled once, into ``fastrnn._core``), which the module
adds to itself at import, bound to its table of kernels (the capsule ``_table``). Every
buffer is checked (dtype, C order, shape, ranges) before the GIL is released; bad input
raises ``TypeError``/``ValueError``. Called through ``fastrnn.backends.cpp_backend``.
"""

from typing import Any

import numpy as np

ISA: str
EIGEN_SIMD: str
FLAGS: str

def forward(
    cell: str,
    activation: str,
    negative_slope: float,
    W_ih: np.ndarray,
    W_hh: np.ndarray,
    b_ih: np.ndarray,
    b_hh: np.ndarray,
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    num_threads: int = 1,
    flush_denormals: bool = True,
    training: bool = True,
    recurrent_mask: np.ndarray | None = None,
    checkpoint: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Forward pass; returns (hs, h_n, c_n, gates, extra); c_n may be None, and gates, extra
    are None for rnn and with training=False (nothing saved for backward). recurrent_mask
    (B, H): recurrent dropout, W_hh (m * h_{t-1}) at every step. With checkpoint=k > 0
    (checkpointed BPTT) gates is None and extra, for lstm, the cell states before steps
    0, k, 2k, ... (ceil(T / k), B, H). x may be int64 token ids (T, B) in 0..D-1 (D from
    W_ih), standing for their one-hot rows: the projection gathers W_ih's columns."""

def set_blas(
    sgemm: int,
    dgemm: int,
    get_num_threads: int,
    set_num_threads: int,
    name: str,
    int64: bool = False,
    kernel_isa: str = "generic",
) -> None:
    """Hand over the Fortran-ABI sgemm/dgemm and OpenBLAS's thread getter/setter (raw
    addresses, 0 for none) that the large products use; ``int64``: the gemm functions take
    64-bit integers (ILP64); ``kernel_isa``: how wide the BLAS's own kernels run
    (``"generic"`` if unknown; ``fastrnn._sysinfo.blas_width_isa``), which decides whether
    every product goes to BLAS and the per-step product's thresholds. With any one missing,
    none does."""

def blas() -> str:
    """What the large products use: the name given to set_blas, or 'none: <why>'."""

def blas_calls() -> int:
    """How many products this module has run through BLAS so far."""

def blas_takes_all() -> bool:
    """Whether every product goes to BLAS (the generic module beside AVX2 or wider BLAS
    kernels), not only the large ones (but the per-step products of fewer than 4 columns
    beside AVX2 kernels: step_uses_blas)."""

def step_uses_blas(GH: int, H: int, nb: int) -> bool:
    """Whether a worker's per-step recurrent product (GH x H weights times nb columns)
    goes to BLAS, by blas.hpp's rules for this module and the BLAS handed over now."""

def blas_width() -> str:
    """How wide the BLAS's kernels run, as set_blas's kernel_isa said: "generic", "avx2"
    or "avx512"."""

def backward(
    cell: str,
    activation: str,
    negative_slope: float,
    W_ih: np.ndarray,
    W_hh: np.ndarray,
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    hs: np.ndarray,
    gates: np.ndarray | None,
    extra: np.ndarray | None,
    dhs: np.ndarray | None,
    dh_n: np.ndarray,
    dc_n: np.ndarray | None,
    lengths: np.ndarray | None = None,
    num_threads: int = 1,
    step_norms: bool = False,
    flush_denormals: bool = True,
    recurrent_mask: np.ndarray | None = None,
    b_ih: np.ndarray | None = None,
    b_hh: np.ndarray | None = None,
    checkpoint: int = 0,
    head_weight: np.ndarray | None = None,
    head_bias: np.ndarray | None = None,
    head_targets: np.ndarray | None = None,
    head_row_weights: np.ndarray | None = None,
    head_scale: float = 1.0,
    input_grad: bool = True,
) -> tuple[Any, ...]:
    """BPTT; returns (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, step_norms).
    recurrent_mask: the forward's. Checkpointed (checkpoint=k > 0, the forward's k): gates
    is None, extra the forward's checkpoints (lstm; None for gru), and b_ih, b_hh are
    needed (each segment's activations are recomputed). The fused head (head_weight (K, H),
    head_bias (K,), head_targets (T*B,) int64, head_row_weights (T*B,) or None,
    head_scale): dL/dh_t is the head's gradient plus dhs (which may then be None), and a
    9th element (loss, dweight, dbias) is returned. dx is None with input_grad=False or
    token ids x (not computed; dW_ih is then a scatter-add into the ids' columns)."""

def linear_cross_entropy(
    h: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    targets: np.ndarray,
    row_weights: np.ndarray | None = None,
    scale: float = 1.0,
    num_threads: int = 1,
    flush_denormals: bool = True,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Linear softmax head + cross-entropy, forward and backward; returns
    (loss, dh, dweight, dbias)."""
