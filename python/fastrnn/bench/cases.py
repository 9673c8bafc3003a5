"""What ``fastrnn bench`` and the pytest-benchmark suite time: shapes, cases, FLOP counts.

A *case* is one layer's input (cell, D, H, B, T, dtype) plus a linear softmax head with
``K`` classes and a target at every step. The runners (:mod:`fastrnn.bench.runners`) turn
a case into a zero-argument workload for one backend and one of five workloads
(:data:`WHATS`):

- ``forward``: the layer's forward pass (what backward needs is saved, as in training);
- ``inference``: the layer's forward pass with ``training=False`` (nothing saved for
  backward; torch: under ``torch.inference_mode()``), timed together with ``forward``
  (:data:`TIMED_WITH`) so that its speed-up over the training forward is measured in the
  same run;
- ``fwdbwd``: forward and full BPTT of the layer, a random gradient entering at every step;
- ``train``: one training step of the layer and head: layer forward, linear head, softmax
  cross-entropy averaged over all T*B steps, and the backward pass of all three;
- ``charlm``: one training step of a whole model as users train it: a character language
  model (one-hot input over a vocabulary of V = D characters, the head predicting the next
  character, so K = V), Adam and gradient clipping, as :class:`fastrnn.CharLanguageModel`'s
  ``fit`` runs it (its batch holds the character ids, which the layer reads as one-hot
  rows; torch's model reads the one-hot rows, without a gradient); the named shapes
  :data:`LM_SHAPES`;
- ``packed``: the ``train`` step with a ``PackedSequence`` input (lengths spread over 1..T,
  unsorted: :func:`packed_lengths`), the head on the packed output; run by the PyTorch
  rows only (``torch.nn`` against the drop-in ``fastrnn.torch``, :data:`PACKED_BACKENDS`).

FLOP count (multiply-adds count 2; element-wise work is not counted), per step and
sequence, with ``G`` gates (rnn 1, gru 3, lstm 4)::

    layer forward   F = 2*G*H*(D + H)
    forward         T*B*F                      (inference too)
    fwdbwd          T*B*3*F                    (backward = 2 GEMMs per forward GEMM)
    train, charlm   T*B*3*(F + 2*H*K)          (the head: 2*H*K forward; charlm: K = D)
    packed          N*3*(F + 2*H*K)            (N = sum of the lengths, about T*B/2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import fastrnn
from fastrnn.functional import CELLS, GATES

WHATS: tuple[str, ...] = ("forward", "inference", "fwdbwd", "train", "charlm", "packed")
# The rows that run the packed workload: PyTorch's modules and fastrnn's drop-in for them.
PACKED_BACKENDS: tuple[str, ...] = ("torch", "fastrnn.torch")
# The workloads timed alongside a what, in the same rounds, for a ratio against them: the
# inference forward's speed-up over the training forward of the same backend and case.
TIMED_WITH: dict[str, tuple[str, ...]] = {"inference": ("forward",)}
CLASSES = 32  # the head's output size K by default (charlm: K = D, the vocabulary)
VOCAB = 100  # the character LM's vocabulary (about what English text with digits needs)

FLOP_FORMULA = (
    "FLOPs per step and sequence, multiply-add = 2, G gates (rnn 1, gru 3, lstm 4), "
    "K head classes: layer forward F = 2*G*H*(D+H); forward, inference = T*B*F; "
    "forward+backward = T*B*3*F; train step = T*B*3*(F + 2*H*K) (charlm: K = D; packed: "
    "N*3*(F + 2*H*K), N the sum of the lengths)"
)


def check_what(what: str) -> str:
    """``what`` if it is one of :data:`WHATS`, else a ValueError naming the choices."""
    if what not in WHATS:
        raise ValueError(f"what must be one of {WHATS}, got {what!r}")
    return what


def timed_whats(what: str) -> tuple[str, ...]:
    """The workloads a run of ``what`` times: those of :data:`TIMED_WITH`, then ``what``."""
    return (*TIMED_WITH.get(check_what(what), ()), what)


def packed_lengths(B: int, T: int) -> np.ndarray:
    """The sequence lengths of the ``packed`` workload: ``B`` lengths spread evenly over
    T..1 (both ends included; ``B = 1``: T), in a fixed shuffled order (so the packing
    needs ``enforce_sorted=False``)."""
    spread = np.linspace(T, 1, B).round().astype(np.int64)
    return np.random.default_rng(2).permutation(spread)


def head_classes(what: str, D: int, classes: int = CLASSES) -> int:
    """K, the head's output size: ``classes``, or for ``charlm`` the vocabulary ``D``."""
    return D if check_what(what) == "charlm" else classes


@dataclass(frozen=True)
class Shape:
    """A benchmark shape: input size D, hidden size H, batch B, length T, and the cells
    it is defined for."""

    name: str
    D: int
    H: int
    B: int
    T: int
    cells: tuple[str, ...] = CELLS
    # checkpointed BPTT (fastrnn.forward's checkpoint=): None is full BPTT
    checkpoint: int | str | None = None

    @property
    def dims(self) -> str:
        return f"D={self.D} H={self.H} B={self.B} T={self.T}"


# The named shapes of the C++ and Numba backend issues (S4 is defined for rnn).
NAMED_SHAPES: dict[str, Shape] = {
    "S1": Shape("S1", 32, 64, 1, 10_000),
    "S2": Shape("S2", 32, 64, 16, 10_000),
    "S3": Shape("S3", 128, 256, 32, 2_000),
    "S4": Shape("S4", 256, 1024, 64, 200, cells=("rnn",)),
}
# --quick: the same shapes, shorter (S1, S2 a tenth; S3 a twentieth, S4 a tenth), so that
# `fastrnn bench --quick` stays under a minute on 2 busy cores, numba's first compile included.
QUICK_SHAPES: dict[str, Shape] = {
    "S1/10": Shape("S1/10", 32, 64, 1, 1_000),
    "S2/10": Shape("S2/10", 32, 64, 16, 1_000),
    "S3/20": Shape("S3/20", 128, 256, 32, 100),
    "S4/10": Shape("S4/10", 256, 1024, 64, 20, cells=("rnn",)),
}
# The real workload (--what charlm): a character LM, vocabulary D = K = 100, one-hot input,
# T = 64 characters per window, B = 32 windows per step, LSTM and GRU; --quick: T = 16.
LM_SHAPES: dict[str, Shape] = {
    f"LM{H}": Shape(f"LM{H}", VOCAB, H, 32, 64, cells=("lstm", "gru")) for H in (128, 512)
}
QUICK_LM_SHAPES: dict[str, Shape] = {
    f"{name}/4": Shape(f"{name}/4", s.D, s.H, s.B, s.T // 4, s.cells)
    for name, s in LM_SHAPES.items()
}


def flops(cell: str, D: int, H: int, B: int, T: int, what: str, classes: int = CLASSES) -> float:
    """The FLOP count of :data:`FLOP_FORMULA`."""
    layer = 2.0 * GATES[cell] * H * (D + H)
    if what in ("forward", "inference"):
        return T * B * layer
    if what == "fwdbwd":
        return T * B * 3 * layer
    steps = int(packed_lengths(B, T).sum()) if what == "packed" else T * B
    return steps * 3 * (layer + 2.0 * H * head_classes(what, D, classes))


def estimate_bytes(
    cell: str,
    D: int,
    H: int,
    B: int,
    T: int,
    dtype: Any,
    what: str,
    classes: int = CLASSES,
    backend: str = "numpy",
    checkpoint: int | str | None = None,
) -> int:
    """An upper estimate of the peak memory of one run, to refuse runs that cannot fit.

    Per step and sequence: x and dx (2D; charlm: no dx, and on the fastrnn backends x is
    the character ids, one int64), hs and dhs (2H; the fastrnn train and charlm steps fuse
    the head into the backward, which makes no dhs of all steps: H), what backward saves
    (lstm and gru at most (G+1)H, rnn nothing beyond hs), the input projection and the
    pre-activation gradients (2GH), and for the train step the logits and their gradient
    (2K); a quarter more for temporaries. torch's autograd keeps a few small tensors and
    graph nodes for every time step: 8 KiB more per step (measured: about 7 KB per step
    at B=1, H=64 with torch 2.13). Checkpointed (fastrnn backends): the saved activations
    and the all-steps projection and gradients give way to what the schedule holds
    (:func:`fastrnn.checkpoint_plan`), and the head's logits are held by blocks of rows.
    """
    G = GATES[cell]
    itemsize = np.dtype(dtype).itemsize
    trains = check_what(what) in ("train", "charlm", "packed")
    head = 2 * head_classes(what, D, classes) if trains else 0
    ours = backend not in PACKED_BACKENDS  # a fastrnn backend, not a torch row
    if what == "charlm":  # no dx: ids on ours, one-hot without grad on torch's
        inputs = 8 / itemsize if ours else D
    else:
        inputs = 2 * D
    outputs = H if ours and what in ("train", "charlm") else 2 * H
    if checkpoint is not None and ours and cell != "rnn":
        plan = fastrnn.checkpoint_plan(cell, T, B, H, dtype, checkpoint)
        values = inputs + outputs + (head if backend == "numpy" else 0)
        return int(1.25 * values * T * B * itemsize + plan.held_bytes)
    values = inputs + outputs + (0 if G == 1 else (G + 1) * H) + 2 * G * H + head
    total = 1.25 * values * T * B * itemsize
    if backend == "torch":
        total += 8192 * T
    return int(total)


@dataclass
class Case:
    """One layer's input, a linear head (V: (K, H), c: (K,)) and the targets/gradients."""

    cell: str
    dtype: np.dtype
    params: dict[str, np.ndarray]
    V: np.ndarray
    c: np.ndarray
    x: np.ndarray  # (T, B, D)
    targets: np.ndarray  # (T, B) class indices
    dhs: np.ndarray  # (T, B, H), for "fwdbwd"
    lengths: np.ndarray | None = None  # (B,), for "packed": packed_lengths(B, T)
    checkpoint: int | str | None = None  # fastrnn's checkpointed BPTT (torch: ignored)
    ids: np.ndarray | None = None  # (T, B) int64, for "charlm": the characters x is one-hot of

    @property
    def T(self) -> int:
        return int(self.x.shape[0])

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(D, H, K)``: input, hidden and head sizes."""
        return self.x.shape[2], self.params["W_hh"].shape[1], self.V.shape[0]


def make_case(
    cell: str,
    D: int,
    H: int,
    B: int,
    T: int,
    dtype: Any,
    classes: int = CLASSES,
    seed: int = 0,
    *,
    what: str = "train",
    checkpoint: int | str | None = None,
) -> Case:
    """A reproducible random :class:`Case`: normal inputs and uniform targets; for
    ``what="charlm"`` a text case instead: random character ids over a vocabulary of ``D``
    characters, ``ids`` (T, B) the input characters, ``x`` their one-hot encoding and
    ``targets`` the next character (so the head has ``K = D`` classes and ``classes`` is
    not used); for ``what="packed"`` the case's ``lengths`` are :func:`packed_lengths`."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    params = fastrnn.init_params(cell, D, H, seed=seed, dtype=dt)
    K = head_classes(what, D, classes)
    k = 1 / math.sqrt(H)
    V = rng.uniform(-k, k, (K, H)).astype(dt)
    c = rng.uniform(-k, k, K).astype(dt)
    ids = None
    if what == "charlm":
        text = rng.integers(0, D, (T + 1, B))
        ids = np.ascontiguousarray(text[:-1])
        x = np.eye(D, dtype=dt)[ids]
        targets = text[1:]
    else:
        x = rng.standard_normal((T, B, D), dtype=np.float32).astype(dt, copy=False)
        targets = rng.integers(0, K, (T, B))
    dhs = rng.standard_normal((T, B, H), dtype=np.float32).astype(dt, copy=False)
    lengths = packed_lengths(B, T) if what == "packed" else None
    return Case(
        cell, dt, params, V, c, x, targets, dhs, lengths=lengths, checkpoint=checkpoint, ids=ids
    )
