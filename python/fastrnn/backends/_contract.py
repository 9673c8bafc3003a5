"""The backend contract as code: what every backend module provides.

A backend is a *module* (``numpy_backend``, ``numba_backend``, ``cpp_backend``) that
matches the :class:`Backend` protocol below; a type checker checks each module against
it (``fastrnn.backends``, under ``TYPE_CHECKING``), and ``tests/test_contract.py`` checks
that the three modules' signatures agree with it (names, kinds, defaults). The NumPy
backend is the reference implementation: where the prose here leaves a detail open, its
result is the specification.

What the functional core (:mod:`fastrnn.functional`, the one place that validates) hands
a backend: C-contiguous arrays of one dtype (float32 or float64), ``T >= 1`` and
``B >= 1``, ``h0`` always given (zeros if the caller gave none), ``c0`` given for lstm and
``None`` otherwise, ``lengths`` either ``None`` (every sequence has length T) or a
C-contiguous int64 array of shape (B,) with values in 1..T, ``recurrent_mask`` either
``None`` or a C-contiguous (B, H) array of the dtype (finite values), and
``dh_n``/``dc_n`` always arrays (zeros where the caller gave none; ``dc_n`` is
``None`` unless the cell is lstm), ``dhs`` an array too unless a fused ``head`` is given
(then it may be ``None``). A backend does not check its input again.

Layouts (PyTorch's names, the course's in brackets): ``W_ih`` [U] (G*H, D), ``W_hh`` [W]
(G*H, H), ``b_ih`` and ``b_hh`` [b = b_ih + b_hh] (G*H,), with G gates in the order lstm
i, f, g, o and gru r, z, n (G = 1 for rnn). Arrays are time-major: ``x`` (T, B, D),
states (B, H), ``hs`` (T, B, H). Padded steps (``t >= lengths[b]``) follow PyTorch's
packed sequences: ``hs[t, b] = 0``, the state is carried unchanged, and ``dhs[t, b]`` is
ignored.

Token ids: ``x`` may instead be a C-contiguous int64 array (T, B) of ids in 0..D-1 (D =
``W_ih.shape[1]``), which stands for their one-hot rows: the layer reads
``x_t = onehot(ids_t, D)``, so its input projection ``W_ih x_t`` is column ``ids_t`` of
``W_ih`` (a gather, no product), ``dW_ih`` adds each step's pre-activation gradient into the
column of its id (a scatter-add), and there is no ``dx``. The results equal those of the
one-hot float input up to rounding (the reference gathers; products with zeros add
nothing). ``backward(..., input_grad=False)`` skips ``dx`` for a float ``x`` too (``dx`` is
then ``None``): nothing upstream wants it (the first layer of a model on fixed features).

Variational recurrent dropout (Gal and Ghahramani 2016): with a ``recurrent_mask`` m (B, H),
one per sequence and the same at every step, the state enters the recurrent product as
``W_hh (m * h_{t-1})`` (all G gates at once; gru's ``W_hn h`` inside ``r * (...)`` too),
and nothing else reads the masked state (gru's ``z * h_{t-1}``, the carried state, ``hs``).
Backward is its transpose: ``dh_{t-1} = m * (W_hh^T dA_t) + (the direct paths)`` and
``dW_hh = sum_t dA_t^T (m * h_{t-1})``. ``None`` means no mask and must give the same bits
as before the mask existed (an all-ones mask gives the same values). The masks of the input
(``input_dropout``) never reach a backend: the functional core multiplies ``x`` and ``dx``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Backend",
    "BackwardOutput",
    "Checkpoints",
    "FloatArray",
    "ForwardOutput",
    "FusedHead",
    "HeadOutput",
    "HeadSums",
    "IndexArray",
    "InputArray",
    "Params",
    "Saved",
]

FloatArray: TypeAlias = NDArray[np.floating[Any]]
"""A float32 or float64 array (one dtype per call)."""

IndexArray: TypeAlias = NDArray[np.int64]
"""``lengths`` (B,) and the head's ``targets`` (N,)."""

InputArray: TypeAlias = FloatArray | IndexArray
"""The layer input ``x``: float (T, B, D), or int64 token ids (T, B) (one-hot rows)."""

Params: TypeAlias = Mapping[str, FloatArray]
"""The parameters ``{"W_ih", "W_hh", "b_ih", "b_hh"}``, in PyTorch's shapes."""


@dataclass(frozen=True, eq=False)
class Checkpoints:
    """What a checkpointed training forward (``checkpoint=k``, lstm and gru) keeps for
    backward: ``every`` = k and, for lstm, ``states``, the running cell state before steps
    0, k, 2k, ... (ceil(T / k), B, H); ``None`` for gru (h_{t-1} is in hs). Backward
    recomputes each segment's activations from them, newest segment first."""

    every: int
    states: FloatArray | None


Saved: TypeAlias = tuple[FloatArray, FloatArray] | Checkpoints | None
"""What :meth:`Backend.forward` keeps for :meth:`Backend.backward`, beyond x, h0, c0 and hs.

Only the backend that made it reads it. ``None`` for rnn (act' is a function of hs) and
after an inference forward (``training=False``); a :class:`Checkpoints` after a
checkpointed forward (``checkpoint=k``); otherwise ``(gates, extra)``: the gate
activations (T, B, G*H) and, for lstm, the cell states, for gru ``W_hn h + b_hn``
(T, B, H), i.e. (G+1)*H values per step and sequence.
"""

ForwardOutput: TypeAlias = tuple[FloatArray, FloatArray, FloatArray | None, Saved]
"""``(hs, h_n, c_n, saved)``: see :meth:`Backend.forward`."""


@dataclass(frozen=True, eq=False)
class FusedHead:
    """The output head fused into :meth:`Backend.backward`: the arguments of
    :meth:`Backend.linear_cross_entropy` on the rows of ``hs``, row ``t * B + b`` for step t
    of sequence b (N = T*B): ``weight`` (K, H), ``bias`` (K,), ``targets`` (N,) int64 in
    0..K-1, ``row_weights`` (N,) or ``None``, ``scale``. The backward computes the head's
    dL/dh_t block by block of steps (the blocks of its weight gradients, aligned at t = 0)
    as it reaches them, so no dh of all steps is made."""

    weight: FloatArray
    bias: FloatArray
    targets: IndexArray
    row_weights: FloatArray | None
    scale: float


HeadSums: TypeAlias = tuple[float, FloatArray, FloatArray]
"""``(loss, dweight, dbias)`` of a :class:`FusedHead` (no dh: it never leaves the backward)."""

BackwardOutput: TypeAlias = tuple[
    FloatArray | None,
    FloatArray,
    FloatArray | None,
    dict[str, FloatArray],
    FloatArray | None,
    HeadSums | None,
]
"""``(dx, dh0, dc0, dparams, norms, head)``: see :meth:`Backend.backward`."""

HeadOutput: TypeAlias = tuple[float, FloatArray, FloatArray, FloatArray]
"""``(loss, dh, dweight, dbias)``: see :meth:`Backend.linear_cross_entropy`."""


class Backend(Protocol):
    """A backend module: the recurrence forward and backward, and the fused output head.

    ``cell`` is one of ``"rnn"``, ``"lstm"``, ``"gru"``; ``activation`` (the vanilla rnn's
    nonlinearity; lstm and gru ignore it) one of ``"tanh"``, ``"relu"``, ``"leaky_relu"``,
    ``"identity"``, with ``negative_slope >= 0`` the slope of ``leaky_relu``;
    ``num_threads >= 1`` the threads the call may use (a backend whose library picks its
    own threading may ignore it).
    """

    @property
    def UNAVAILABLE_REASON(self) -> str | None:
        """Why the backend cannot run on this machine (a missing dependency or extension),
        or ``None`` when it can; the registry does not offer a backend with a reason."""
        ...

    def forward(
        self,
        cell: str,
        params: Params,
        x: InputArray,
        h0: FloatArray,
        c0: FloatArray | None,
        *,
        activation: str,
        negative_slope: float,
        lengths: IndexArray | None,
        num_threads: int,
        training: bool = True,
        recurrent_mask: FloatArray | None = None,
        checkpoint: int | None = None,
    ) -> ForwardOutput:
        """Run the recurrence; return ``(hs, h_n, c_n, saved)``.

        ``hs`` (T, B, H): the hidden state at every step (0 at padded steps); ``h_n``
        (B, H): the state after each sequence's last real step; ``c_n`` (B, H): the lstm
        cell state likewise, ``None`` for rnn and gru; ``saved``: see :data:`Saved`. With
        ``training=False`` (inference) ``saved`` is ``None`` and nothing is kept for
        :meth:`backward`, so that the memory beyond ``hs`` does not grow with T. With
        ``checkpoint=k >= 1`` (training only; the functional core resolves ``"sqrt"`` and
        memory budgets to k) lstm and gru keep a :class:`Checkpoints` instead of every
        step's activations, and :meth:`backward` recomputes them segment by segment; the
        outputs and gradients are bit-identical to those without it (same thread count).
        rnn saves nothing either way and ignores it. ``recurrent_mask``: see the module
        docstring (applied in inference too, and by a checkpointed backward's recompute).
        """
        ...

    def backward(
        self,
        cell: str,
        params: Params,
        x: InputArray,
        h0: FloatArray,
        c0: FloatArray | None,
        hs: FloatArray,
        saved: Saved,
        dhs: FloatArray | None,
        dh_n: FloatArray,
        dc_n: FloatArray | None,
        *,
        activation: str,
        negative_slope: float,
        lengths: IndexArray | None,
        num_threads: int,
        step_norms: bool,
        recurrent_mask: FloatArray | None = None,
        head: FusedHead | None = None,
        input_grad: bool = True,
    ) -> BackwardOutput:
        """Backpropagation through time; return ``(dx, dh0, dc0, dparams, norms, head)``.

        The arguments up to ``hs`` and ``saved`` are those of (and from) the
        :meth:`forward` call with ``training=True`` being differentiated; ``dhs`` (T, B, H),
        ``dh_n`` and ``dc_n`` (B, H) the gradients of the loss with respect to its outputs.
        ``dx`` (T, B, D) (``None`` when ``input_grad`` is False or ``x`` is token ids:
        not computed), ``dh0`` (B, H), ``dc0`` (B, H) for lstm and ``None`` otherwise,
        ``dparams`` the gradients of the four parameters (the keys and shapes of
        ``params``). ``norms`` is ``None`` unless ``step_norms``; then it is a (T, B) array
        of ``||dL/dh_t||`` (the whole gradient reaching hidden state t of sequence b, from
        the loss at step t and from every later step), 0 at padded steps.
        ``recurrent_mask``: the one the :meth:`forward` call ran with (a checkpointed
        backward recomputes each segment with it, so the gradients stay bit-identical).

        ``head``: a :class:`FusedHead`; dL/dh_t is then its gradient plus ``dhs`` (which
        may be ``None`` only with a head), and the last element is its ``(loss, dweight,
        dbias)`` (``None`` without a head). Its results do not depend on the checkpoint
        schedule (bit-identical with and without, same thread count).
        """
        ...

    def linear_cross_entropy(
        self,
        h: FloatArray,
        weight: FloatArray,
        bias: FloatArray,
        targets: IndexArray,
        row_weights: FloatArray | None,
        *,
        scale: float,
        num_threads: int,
    ) -> HeadOutput:
        """A linear softmax head and its cross-entropy, forward and backward; return
        ``(loss, dh, dweight, dbias)``.

        ``h`` (N, H), ``weight`` (K, H) [V], ``bias`` (K,) [c], ``targets`` (N,) in
        0..K-1, ``row_weights`` (N,) or ``None`` (all 1), ``scale`` a float. With
        ``z = h @ weight.T + bias`` and ``w = scale * row_weights``::

            loss  = sum_n w_n (logsumexp(z_n) - z_n[targets_n])
            dz_n  = w_n (softmax(z_n) - onehot(targets_n))
            dh = dz @ weight,   dweight = dz^T h,   dbias = sum_n dz_n

        ``loss`` is a Python float (summed in float64); the arrays have the dtype of ``h``.
        """
        ...
