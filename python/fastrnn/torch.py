"""Drop-in replacements for ``torch.nn.RNN``, ``torch.nn.LSTM`` and ``torch.nn.GRU`` on CPU.

``fastrnn.torch.RNN``, ``LSTM`` and ``GRU`` subclass the PyTorch modules and override only
``forward``: the constructor, the parameters, ``state_dict`` keys, ``extra_repr``,
pickling and ``isinstance`` are PyTorch's. Forward and backpropagation through time run
fastrnn's kernels (the configured backend, :func:`fastrnn.set_backend`; the threads of
:func:`fastrnn.set_num_threads`, not ``torch.set_num_threads``). :func:`convert` switches
every ``nn.RNN``/``nn.LSTM``/``nn.GRU`` inside an existing model in place::

    import fastrnn.torch
    model = fastrnn.torch.convert(model)   # same parameters, same optimizer

What works as in ``nn.RNNBase.forward``: ``num_layers``, ``bidirectional``,
``batch_first``, ``bias=False``, ``nonlinearity`` ("tanh", "relu"), ``dropout`` between
layers (training mode only, inverted, with PyTorch's RNG: the same masks as PyTorch for
padded and packed input), unbatched 2-D input, ``hx`` / ``(h_0, c_0)`` given or ``None``,
``PackedSequence`` input and output (sorted or not), float32 and float64.

What fastrnn does not run, and what happens then:

=================================  =======================================================
case                               behaviour
=================================  =======================================================
``proj_size > 0`` (LSTM)           PyTorch's own forward, with a one-time warning
a tensor not on the CPU            PyTorch's own forward, with a one-time warning
dtype not float32/float64          PyTorch's own forward, with a one-time warning
autocast enabled                   PyTorch's own forward, with a one-time warning
double backward                    RuntimeError when the second derivative is asked for
(``create_graph=True``)            (first derivatives with ``create_graph=True`` work)
``torch.func`` transforms          PyTorch's error for an operator without that rule
(vmap, jvp), forward-mode AD,
TorchScript
=================================  =======================================================

Threads: importing this module hands PyTorch's OpenMP runtime to the C++ kernels, whose
workers then run on the threads PyTorch's own parallel ops use (``fastrnn.build_info()
["threads"]`` says so). PyTorch's threads spin for milliseconds after each torch op; threads
of fastrnn's own beside them shared the cores with them, and the drop-in ran no faster on
2 threads than on 1.

The mechanism is PyTorch's for foreign kernels: two custom operators,
``fastrnn::layer_forward`` (one direction of one layer: its output, ``h_n``, ``c_n``, the
activations the backend saves for backward and which backend ran, all as tensors) and
``fastrnn::layer_backward`` (the gradients), with fake (meta) implementations and the
autograd formula registered through ``torch.library``. The operators take padded
(time-major) input or the data of a ``PackedSequence`` as it is, and run either direction
(each sequence reversed within its length, in NumPy inside the operator); layers, dropout
and the states are torch operations around them. Tensors and arrays share memory where
they are contiguous.

``torch.compile``: Dynamo does not trace into RNN modules (``torch.nn``'s or these) unless
``torch._dynamo.config.allow_rnn = True``: by default a model compiles with a graph break
around the drop-in, which runs eagerly at full speed. With ``allow_rnn = True`` a padded
input traces into one graph (``fullgraph=True`` works) with the two operators as opaque
nodes; a ``PackedSequence`` graph-breaks where its batch size is read from
``batch_sizes``. The operators run on the backend configured when they run (also compiled).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NoReturn, cast

import numpy as np

import fastrnn
from fastrnn.backends import BACKENDS
from fastrnn.functional import GATES, ForwardResult

try:
    import torch
    from torch import Tensor
    from torch.nn.utils.rnn import PackedSequence
except ImportError as exc:  # torch is optional for fastrnn
    raise ImportError(
        "fastrnn.torch needs PyTorch, which is not installed: `pip install torch` (a CPU-only "
        "build without the CUDA download: `pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu`)"
    ) from exc

if not hasattr(torch.library, "custom_op"):
    raise ImportError(
        f"fastrnn.torch needs PyTorch >= 2.4 (torch.library.custom_op), found "
        f"{torch.__version__}: `pip install 'torch>=2.4'`"
    )

__all__ = ["GRU", "LSTM", "RNN", "convert"]


def _torch_openmp() -> str | None:
    """The path of the OpenMP runtime PyTorch's intra-op threads run on (loaded with torch:
    the one inside torch's installation, else the only one loaded), or None when PyTorch's
    parallel backend is not OpenMP or the runtime cannot be told apart."""
    import os

    from threadpoolctl import threadpool_info

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    root = os.path.dirname(os.path.abspath(torch.__file__))
    found = [i["filepath"] for i in threadpool_info() if i.get("user_api") == "openmp"]
    inside = [f for f in found if os.path.abspath(f).startswith(root + os.sep)]
    if len(inside) == 1:
        return str(inside[0])
    return str(found[0]) if len(found) == 1 else None


def _share_torch_threads() -> str:
    """Make the C++ kernels' workers PyTorch's own OpenMP threads (see
    ``fastrnn.backends.cpp_backend.set_thread_team``), so that fastrnn's threads and
    PyTorch's never compete for the cores; returns what the workers run on."""
    from fastrnn.backends import cpp_backend

    library = _torch_openmp()
    if cpp_backend.UNAVAILABLE_REASON is not None or library is None:
        return "own threads"
    try:
        return cpp_backend.set_thread_team(library)
    except (OSError, LookupError) as exc:
        warnings.warn(
            f"fastrnn.torch: the C++ kernels keep threads of their own, beside PyTorch's ({exc})",
            RuntimeWarning,
            stacklevel=2,
        )
        return "own threads"


_share_torch_threads()

_DTYPES = (torch.float32, torch.float64)
_CELLS = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "LSTM": ("lstm", "tanh")}
_CELLS["GRU"] = ("gru", "tanh")


# --- tensors <-> arrays --------------------------------------------------------------------


def _array(t: Tensor) -> np.ndarray:
    """The tensor's memory as an array (no copy; fastrnn copies what is not contiguous)."""
    return cast(np.ndarray, t.detach().numpy())


def _optional_array(t: Tensor | None) -> np.ndarray | None:
    """:func:`_array` of an optional tensor (``None`` stays ``None``)."""
    return None if t is None else _array(t)


def _contiguous(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(_array(t))


def _tensor(a: np.ndarray, *others: np.ndarray | None) -> Tensor:
    """An array as a tensor without a copy, unless it shares memory with one of ``others``
    (an operator's outputs may alias neither its inputs nor each other)."""
    if any(o is not None and np.may_share_memory(a, o) for o in others):
        a = a.copy()
    return torch.from_numpy(np.ascontiguousarray(a))


def _empty_like(x: Tensor) -> Tensor:
    return x.new_empty((0,))


class _Grid:
    """Where the rows of a layer's input sit in the time-major (T, B) grid that the kernels
    run on: a padded (T, B, F) input is the grid itself; a packed (N, F) input (PyTorch's
    ``PackedSequence.data`` with its ``batch_sizes``) fills row-major the cells t < length
    of each sequence, zeros elsewhere. ``reverse``: the grid holds every sequence reversed
    within its length (the backward direction of a bidirectional layer)."""

    def __init__(self, batch_sizes: np.ndarray | None, T: int, B: int, reverse: bool) -> None:
        self.T, self.B = T, B
        self.rows = self.lengths = self.swap = None
        if batch_sizes is not None:
            filled = np.arange(B)[None, :] < batch_sizes[:, None]  # (T, B)
            self.rows = np.flatnonzero(filled)  # the grid cell of each packed row, in order
            self.lengths = filled.sum(axis=0).astype(np.int64)
        self.flip = reverse and self.lengths is None  # every sequence has length T
        if reverse and self.lengths is not None:  # step t swaps with length-1-t (an involution)
            t, lens = np.arange(T)[:, None], self.lengths[None, :]
            self.swap = (np.where(t < lens, lens - 1 - t, t) * B + np.arange(B)).ravel()

    def to_grid(self, a: np.ndarray) -> np.ndarray:
        """(N, F) packed or (T, B, F) padded -> the (T, B, F) grid, C-contiguous."""
        F = a.shape[-1]
        if self.rows is not None:
            grid = np.zeros((self.T * self.B, F), dtype=a.dtype)
            grid[self.rows] = a
            a = grid
        return np.ascontiguousarray(self._reorder(a.reshape(self.T, self.B, F)))

    def from_grid(self, grid: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_grid`."""
        grid = self._reorder(grid)
        if self.rows is None:
            return grid
        return grid.reshape(self.T * self.B, grid.shape[2])[self.rows]

    def _reorder(self, grid: np.ndarray) -> np.ndarray:
        if self.flip:
            return grid[::-1]
        if self.swap is not None:
            return grid.reshape(self.T * self.B, -1)[self.swap].reshape(grid.shape)
        return grid


def _grid(x: Tensor, h0: Tensor, batch_sizes: Tensor | None, reverse: bool) -> _Grid:
    T = x.shape[0] if batch_sizes is None else batch_sizes.shape[0]
    return _Grid(_optional_array(batch_sizes), T, h0.shape[0], reverse)


def _params(
    W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> dict[str, np.ndarray]:
    p = {"W_ih": _contiguous(W_ih), "W_hh": _contiguous(W_hh)}
    zeros = np.zeros(p["W_hh"].shape[0], dtype=p["W_hh"].dtype)
    p["b_ih"] = zeros if b_ih is None else _contiguous(b_ih)
    p["b_hh"] = zeros if b_hh is None else _contiguous(b_hh)
    return p


# --- the operators --------------------------------------------------------------------------


@torch.library.custom_op("fastrnn::layer_forward", mutates_args=())
def layer_forward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    W_ih: Tensor,
    W_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    batch_sizes: Tensor | None,
    cell: str,
    activation: str,
    reverse: bool,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One direction of one layer on the configured backend: ``(out, h_n, c_n, gates,
    extra, backend, ids)``.

    ``x`` is time-major (T, B, D), or PyTorch's packed data (N, D) with its
    ``batch_sizes``; ``out`` has the layout of ``x`` with H features. ``reverse`` runs each
    sequence backwards from its last step. ``c_n`` is empty unless the cell is lstm;
    ``gates`` (T, B, G*H) and ``extra`` (T, B, H) are what the backend keeps for backward
    (empty for rnn, and when not ``training``), ``backend`` the index of the backend in
    ``fastrnn.backends.BACKENDS`` (a 0-d int64 tensor), so that backward runs on it too,
    and ``ids`` (T, B) int64 the token ids of a one-hot ``x`` in the grid's order, as
    ``fastrnn.forward`` found them (-1 everywhere if ``x`` is not one-hot), so that backward
    does not look for them again."""
    grid = _grid(x, h0, batch_sizes, reverse)
    res = fastrnn.forward(
        cell,
        _params(W_ih, W_hh, b_ih, b_hh),
        grid.to_grid(_array(x)),
        _array(h0),
        _optional_array(c0),
        activation=activation,
        lengths=grid.lengths,
        training=training,
    )
    ins = (res.x, res.h0, res.c0)
    out = _tensor(grid.from_grid(res.hs), *ins)
    h_n = _tensor(res.h_n, res.hs, *ins)
    c_n = _empty_like(out) if res.c_n is None else _tensor(res.c_n, res.hs, *ins)
    gates, extra = (_empty_like(out), _empty_like(out))
    if isinstance(res.saved, tuple):  # (never checkpointed here)
        gates, extra = (_tensor(a, *ins) for a in res.saved)
    backend = torch.tensor(BACKENDS.index(res.backend))
    if res.one_hot_ids is None:
        return out, h_n, c_n, gates, extra, backend, torch.full((grid.T, grid.B), -1)
    return out, h_n, c_n, gates, extra, backend, torch.from_numpy(res.one_hot_ids)


@layer_forward.register_fake
def _(
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    W_ih: Tensor,
    W_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    batch_sizes: Tensor | None,
    cell: str,
    activation: str,
    reverse: bool,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T = x.shape[0] if batch_sizes is None else batch_sizes.shape[0]
    B, H = h0.shape
    c_n = h0.new_empty((B, H)) if cell == "lstm" else _empty_like(x)
    gates, extra = _empty_like(x), _empty_like(x)
    if training and cell != "rnn":  # the backends' common contract, see fastrnn.backends
        gates, extra = x.new_empty((T, B, GATES[cell] * H)), x.new_empty((T, B, H))
    backend = x.new_empty((), dtype=torch.int64)
    ids = x.new_empty((T, B), dtype=torch.int64)
    out = x.new_empty((*x.shape[:-1], H))
    return out, h0.new_empty((B, H)), c_n, gates, extra, backend, ids


@torch.library.custom_op("fastrnn::layer_backward", mutates_args=())
def layer_backward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    W_ih: Tensor,
    W_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    batch_sizes: Tensor | None,
    out: Tensor,
    gates: Tensor,
    extra: Tensor,
    backend: Tensor,
    ids: Tensor,
    d_out: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    cell: str,
    activation: str,
    reverse: bool,
    input_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients of :func:`layer_forward` from those of its outputs (zero where None):
    ``(dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh)``, ``dc0`` empty unless the cell is lstm,
    ``dx`` empty with ``input_grad=False`` (not computed: an input that does not require
    grad, such as a PyTorch user's one-hot batch)."""
    grid = _grid(x, h0, batch_sizes, reverse)
    h0_a = _contiguous(h0)
    c0_a = None if c0 is None else _contiguous(c0)
    res = ForwardResult(  # the result layer_forward had, rebuilt as fastrnn.forward made it
        hs=grid.to_grid(_array(out)),
        h_n=h0_a,  # (backward reads neither h_n nor c_n)
        c_n=c0_a,
        cell=cell,
        activation=activation,
        negative_slope=0.01,  # (leaky_relu is not a PyTorch nonlinearity)
        backend=BACKENDS[int(backend)],
        params=_params(W_ih, W_hh, b_ih, b_hh),
        x=grid.to_grid(_array(x)),
        h0=h0_a,
        c0=c0_a,
        lengths=grid.lengths,
        saved=None if gates.numel() == 0 else (_contiguous(gates), _contiguous(extra)),
        one_hot_ids=None if ids.numel() == 0 or int(ids[0, 0]) < 0 else _array(ids),
    )
    d_grid = None if d_out is None else grid.to_grid(_array(d_out))
    g = fastrnn.backward(
        res,
        dhs=d_grid,
        dh_n=_optional_array(dh_n),
        dc_n=_optional_array(dc_n),
        input_grad=input_grad,
    )
    ins = (res.x, res.hs, res.h0, *res.params.values())
    grads = (g.dh0, g.params["W_ih"], g.params["W_hh"], g.params["b_ih"], g.params["b_hh"])
    dh0, dW_ih, dW_hh, db_ih, db_hh = (_tensor(a, *ins) for a in grads)
    dx = _empty_like(x) if g.dx is None else _tensor(grid.from_grid(g.dx), *ins)
    dc0 = _empty_like(dx) if g.dc0 is None else _tensor(g.dc0, *ins)
    return dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh


@layer_backward.register_fake
def _(
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    W_ih: Tensor,
    W_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    batch_sizes: Tensor | None,
    out: Tensor,
    gates: Tensor,
    extra: Tensor,
    backend: Tensor,
    ids: Tensor,
    d_out: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    cell: str,
    activation: str,
    reverse: bool,
    input_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dc0 = torch.empty_like(h0) if c0 is not None else _empty_like(x)
    GH = W_hh.shape[0]
    dW = (torch.empty_like(W_ih), torch.empty_like(W_hh), x.new_empty(GH), x.new_empty(GH))
    dx = torch.empty_like(x) if input_grad else _empty_like(x)
    return (dx, torch.empty_like(h0), dc0, *dW)


def _setup_context(
    ctx: torch.autograd.function.FunctionCtx, inputs: tuple[Any, ...], output: tuple[Tensor, ...]
) -> None:
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, batch_sizes, cell, activation, reverse, training = inputs
    out, _, c_n, gates, extra, backend, ids = output
    ctx.mark_non_differentiable(gates, extra, backend, ids)
    if cell != "lstm":
        ctx.mark_non_differentiable(c_n)
    ctx.set_materialize_grads(False)  # gradients of unused outputs arrive as None
    saved = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, batch_sizes, out, gates, extra, backend, ids)
    ctx.save_for_backward(*saved)
    ctx.args = (cell, activation, reverse, training)


class _NoSecondDerivative(torch.autograd.Function):
    """The gradients of ``layer_forward`` (the first ``n`` arguments) as functions of the
    tensors they depend on (the rest) whose backward raises: what a ``create_graph=True``
    pass returns, so that asking for a second derivative is a clear error."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, n: int, *tensors: Tensor
    ) -> tuple[Tensor, ...]:
        return tuple(g.view_as(g) for g in tensors[:n])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *_: Tensor | None) -> NoReturn:
        raise RuntimeError(
            "fastrnn.torch computes first derivatives only: a second derivative (double "
            "backward) through its RNN/LSTM/GRU is not supported; use torch.nn's module there"
        )


def _backward(
    ctx: torch.autograd.function.FunctionCtx,
    d_out: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    *_: Tensor | None,
) -> tuple[Tensor | None, ...]:
    cell, activation, reverse, training = ctx.args
    if not training:
        raise RuntimeError(
            "fastrnn::layer_forward ran with training=False, which saves nothing for "
            "backward; the drop-in modules pass training=True whenever a gradient is needed"
        )
    saved = ctx.saved_tensors
    dc_n = dc_n if cell == "lstm" else None
    input_grad = ctx.needs_input_grad[0]  # False for an input without grad (one-hot data)
    with torch.no_grad():
        grads = layer_backward(*saved, d_out, dh_n, dc_n, cell, activation, reverse, input_grad)
    depends = [t for t in (*saved, d_out, dh_n, dc_n) if t is not None]
    if _needs_grad(*depends):  # create_graph=True
        grads = _NoSecondDerivative.apply(len(grads), *grads, *depends)
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh = grads
    c0, no_bias = saved[2], saved[5] is None
    return (
        dx if input_grad else None,
        dh0,
        None if c0 is None else dc0,
        dW_ih,
        dW_hh,
        None if no_bias else db_ih,
        None if no_bias else db_hh,
        *(None,) * 5,  # batch_sizes, cell, activation, reverse, training
    )


layer_forward.register_autograd(_backward, setup_context=_setup_context)


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --- the modules ----------------------------------------------------------------------------

_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"fastrnn.torch: {reason}; running PyTorch's own implementation instead",
            RuntimeWarning,
            stacklevel=5,  # the caller of the module
        )


class _DropIn:
    """The forward shared by the three drop-in modules (a mixin before ``nn.RNNBase``)."""

    # What the mixin uses of ``nn.RNNBase`` (and ``nn.Module``), declared for the type
    # checker only (annotations without values: the attributes stay PyTorch's).
    mode: str
    num_layers: int
    hidden_size: int
    proj_size: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    training: bool
    _flat_weights: list[Tensor | None]
    _update_flat_weights: Callable[[], None]
    check_forward_args: Callable[[Tensor, Any, Tensor | None], None]
    permute_hidden: Callable[[Any, Tensor | None], Any]

    def _fallback_reason(self, input: Any, hx: Any) -> str | None:
        if self.proj_size > 0:
            return "an LSTM with proj_size > 0 is not supported by fastrnn"
        data = input.data if isinstance(input, PackedSequence) else input
        weights = [w for w in self._flat_weights if w is not None]
        states = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
        tensors = [data, *weights, *states]
        elsewhere = sorted({t.device.type for t in tensors} - {"cpu"})
        if elsewhere:
            return f"fastrnn runs on the CPU only, and a tensor is on {elsewhere[0]}"
        if weights[0].dtype not in _DTYPES:
            return f"fastrnn runs float32 and float64 only, and the weights are {weights[0].dtype}"
        if torch._C._is_any_autocast_enabled():
            return "fastrnn does not run under autocast"
        return None

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor | tuple[Tensor, Tensor]]:
        reason = self._fallback_reason(input, hx)
        if reason is not None:
            _warn_once(reason)
            # the PyTorch class after the mixin (nn.RNN, nn.LSTM or nn.GRU): Any to mypy
            pytorch = cast(Any, super())
            return cast(tuple[Any, Any], pytorch.forward(input, hx))
        self._update_flat_weights()
        cell, activation = _CELLS[self.mode]
        lstm = cell == "lstm"
        name = type(self).__name__
        num_dir = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        sorted_indices = unsorted_indices = None
        is_batched = True
        if packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            checked: Tensor = x
            B = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                got = f"{input.dim()}D" if lstm else f"{input.dim()}D tensor"
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {got} instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                want = 3 if is_batched else 2
                # the cell decides: (h_0, c_0) for lstm, h_0 alone otherwise
                states = cast(tuple[Tensor, ...], hx) if lstm else (cast(Tensor, hx),)
                dims = tuple(h.dim() for h in states)
                if any(d != want for d in dims):
                    what = "hx and cx" if lstm else "hx"
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    raise RuntimeError(
                        f"For {kind} input, {what} should also be {want}-D but got "
                        f"{', '.join(f'{d}-D' for d in dims)} tensor(s)"
                    )
                if not is_batched:
                    unsqueezed = tuple(h.unsqueeze(1) for h in states)
                    hx = unsqueezed if lstm else unsqueezed[0]
            batch_sizes = None
            checked = input
            x = input.transpose(0, 1) if self.batch_first else input
            B = x.shape[1]
        if hx is None:
            zeros = checked.new_zeros((self.num_layers * num_dir, B, self.hidden_size))
            hx = (zeros, zeros) if lstm else zeros
        self.check_forward_args(checked, hx, batch_sizes)
        hx = self.permute_hidden(hx, sorted_indices)
        h0, c0 = hx if lstm else (hx, None)
        layer_in = x.contiguous()  # (T, B, D) time-major, or the packed (N, D)
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for k in range(self.num_layers):
            outs = []
            for d in range(num_dir):
                i = k * num_dir + d
                sfx = f"_l{k}" + ("_reverse" if d else "")
                W_ih, W_hh = getattr(self, "weight_ih" + sfx), getattr(self, "weight_hh" + sfx)
                b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
                b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
                c0_i = None if c0 is None else c0[i]
                training = _needs_grad(layer_in, h0, c0, W_ih, W_hh, b_ih, b_hh)
                out, hn, cn, *_ = layer_forward(
                    layer_in, h0[i], c0_i, W_ih, W_hh, b_ih, b_hh, batch_sizes, cell,
                    activation, d == 1, training,
                )  # fmt: skip
                outs.append(out)
                h_n.append(hn)
                c_n.append(cn)
            layer_in = outs[0] if num_dir == 1 else torch.cat(outs, -1)
            if self.dropout and self.training and k < self.num_layers - 1:
                layer_in = torch.nn.functional.dropout(layer_in, self.dropout, True)
        hidden: Any = torch.stack(h_n)
        if lstm:
            hidden = (hidden, torch.stack(c_n))
        if packed:
            out = PackedSequence(layer_in, batch_sizes, sorted_indices, unsorted_indices)
            return out, self.permute_hidden(hidden, unsorted_indices)
        out = layer_in.transpose(0, 1) if self.batch_first else layer_in
        if not is_batched:
            out = out.squeeze(batch_dim)
            hidden = tuple(h.squeeze(1) for h in hidden) if lstm else hidden.squeeze(1)
        return out, self.permute_hidden(hidden, unsorted_indices)


class RNN(_DropIn, torch.nn.RNN):
    """``torch.nn.RNN`` whose forward and backward run fastrnn's kernels (see the module)."""


class LSTM(_DropIn, torch.nn.LSTM):
    """``torch.nn.LSTM`` whose forward and backward run fastrnn's kernels (see the module)."""


class GRU(_DropIn, torch.nn.GRU):
    """``torch.nn.GRU`` whose forward and backward run fastrnn's kernels (see the module)."""


_DROP_INS: dict[type, type] = {torch.nn.RNN: RNN, torch.nn.LSTM: LSTM, torch.nn.GRU: GRU}


def convert(module: torch.nn.Module) -> torch.nn.Module:
    """Make every ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` inside ``module`` (``module``
    itself included) run on fastrnn, in place, and return ``module``.

    The modules keep their parameters (the same tensors: an optimizer built before the
    call keeps working), buffers, hooks and mode; only their class changes to the
    drop-in. Subclasses of the PyTorch modules are left alone (their forward is their
    own), as are modules already converted.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    for m in module.modules():
        drop_in = _DROP_INS.get(type(m))
        if drop_in is not None:
            m.__class__ = drop_in
    return module
