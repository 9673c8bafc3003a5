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
padded input), unbatched 2-D input, ``hx`` / ``(h_0, c_0)`` given or ``None``,
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
``torch.func`` transforms (vmap,   PyTorch's error for an operator without that rule
jvp), forward-mode AD, TorchScript
=================================  =======================================================

The mechanism is PyTorch's for foreign kernels: two custom operators,
``fastrnn::layer_forward`` (one direction of one layer: ``hs, h_n, c_n`` and the
activations the backend saves for backward, as tensors) and ``fastrnn::layer_backward``
(the gradients), with fake (meta) implementations and the autograd formula registered
through ``torch.library``. Layers, directions, the reversal of each sequence within its
length, dropout and the packing of ``PackedSequence`` are torch operations around them.
Tensors and arrays share memory where they are contiguous. ``torch.compile`` traces the
operators as opaque nodes (no graph break in the padded path).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

try:
    import torch
except ImportError as exc:  # torch is optional for fastrnn
    raise ImportError(
        "fastrnn.torch needs PyTorch, which is not installed: `pip install torch` (for a "
        "CPU-only build without the CUDA download: `pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu`)"
    ) from exc

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

import fastrnn
from fastrnn import _config
from fastrnn.functional import GATES, ForwardResult

__all__ = ["GRU", "LSTM", "RNN", "convert"]

_DTYPES = (torch.float32, torch.float64)
_CELLS = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "LSTM": ("lstm", "tanh")}
_CELLS["GRU"] = ("gru", "tanh")


# --- tensors <-> arrays --------------------------------------------------------------------


def _array(t: Tensor | None) -> np.ndarray | None:
    """The tensor's memory as an array (no copy; fastrnn copies what is not contiguous)."""
    return None if t is None else t.detach().numpy()


def _contiguous(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else np.ascontiguousarray(t.detach().numpy())


def _tensor(a: np.ndarray | None, *others: np.ndarray | None) -> Tensor:
    """An array as a tensor without a copy, unless it shares memory with one of ``others``
    (an operator's outputs may alias neither its inputs nor each other)."""
    if any(o is not None and np.shares_memory(a, o) for o in others):
        a = a.copy()
    return torch.from_numpy(np.ascontiguousarray(a))


def _empty_like(x: Tensor) -> Tensor:
    return x.new_empty((0,))


# --- the operators --------------------------------------------------------------------------


def _params(W_ih, W_hh, b_ih, b_hh) -> dict[str, np.ndarray]:
    p = {"W_ih": _array(W_ih), "W_hh": _array(W_hh)}
    zeros = np.zeros(p["W_hh"].shape[0], dtype=p["W_hh"].dtype)
    p["b_ih"] = zeros if b_ih is None else _array(b_ih)
    p["b_hh"] = zeros if b_hh is None else _array(b_hh)
    return p


@torch.library.custom_op("fastrnn::layer_forward", mutates_args=())
def layer_forward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    W_ih: Tensor,
    W_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    cell: str,
    activation: str,
    backend: str,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One direction of one layer, time-major: ``(hs, h_n, c_n, saved_gates, saved_extra)``.

    ``c_n`` is empty unless the cell is lstm; ``saved_gates`` (T, B, G*H) and
    ``saved_extra`` (T, B, H) are what the backend keeps for backward (empty for rnn, and
    when not ``training``)."""
    res = fastrnn.forward(
        cell,
        _params(W_ih, W_hh, b_ih, b_hh),
        _array(x),
        _array(h0),
        _array(c0),
        activation=activation,
        lengths=_array(lengths),
        backend=backend,
        training=training,
    )
    ins = (res.x, res.h0, res.c0)
    hs = _tensor(res.hs, *ins)
    h_n = _tensor(res.h_n, res.hs, *ins)
    c_n = _empty_like(hs) if res.c_n is None else _tensor(res.c_n, res.hs, *ins)
    if res.saved is None:
        return hs, h_n, c_n, _empty_like(hs), _empty_like(hs)
    gates, extra = res.saved
    return hs, h_n, c_n, _tensor(gates, *ins), _tensor(extra, *ins)


@layer_forward.register_fake
def _(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, cell, activation, backend, training):
    T, B, _ = x.shape
    H = W_hh.shape[1]
    hs = x.new_empty((T, B, H))
    c_n = x.new_empty((B, H)) if cell == "lstm" else _empty_like(x)
    if training and cell != "rnn":  # the backends' common contract, see fastrnn.backends
        return hs, x.new_empty((B, H)), c_n, x.new_empty((T, B, GATES[cell] * H)), hs.clone()
    return hs, x.new_empty((B, H)), c_n, _empty_like(x), _empty_like(x)


@torch.library.custom_op("fastrnn::layer_backward", mutates_args=())
def layer_backward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    W_ih: Tensor,
    W_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    hs: Tensor,
    saved_gates: Tensor,
    saved_extra: Tensor,
    dhs: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    cell: str,
    activation: str,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients of :func:`layer_forward`: ``(dx, dh0, dc0, dW_ih, dW_hh, db_ih,
    db_hh)`` (``dc0`` empty unless the cell is lstm); missing output gradients are zero."""
    res = _rebuild(
        cell, activation, backend, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, hs, saved_gates,
        saved_extra,
    )  # fmt: skip
    g = fastrnn.backward(res, dhs=_array(dhs), dh_n=_array(dh_n), dc_n=_array(dc_n))
    grads = (g.dx, g.dh0, g.params["W_ih"], g.params["W_hh"], g.params["b_ih"], g.params["b_hh"])
    ins = (res.x, res.hs, res.h0, *res.params.values())
    dx, dh0, dW_ih, dW_hh, db_ih, db_hh = (_tensor(a, *ins) for a in grads)
    dc0 = _empty_like(dx) if g.dc0 is None else _tensor(g.dc0, *ins)
    return dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh


def _rebuild(
    cell, activation, backend, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, hs, gates, extra
) -> ForwardResult:
    """The :class:`fastrnn.ForwardResult` that :func:`layer_forward` made, rebuilt from the
    tensors it took and returned, as :func:`fastrnn.forward` normalises them (C-contiguous
    arrays of one dtype, int64 lengths); ``h_n``/``c_n``, which backward does not read, are
    left as the initial states."""
    h0_a, c0_a = _contiguous(h0), _contiguous(c0)
    return ForwardResult(
        hs=_contiguous(hs),
        h_n=h0_a,
        c_n=c0_a,
        cell=cell,
        activation=activation,
        negative_slope=0.01,  # leaky_relu is not a PyTorch nonlinearity
        backend=backend,
        params={k: np.ascontiguousarray(v) for k, v in _params(W_ih, W_hh, b_ih, b_hh).items()},
        x=_contiguous(x),
        h0=h0_a,
        c0=c0_a,
        lengths=None if lengths is None else _contiguous(lengths.to(torch.int64)),
        saved=None if gates.numel() == 0 else (_contiguous(gates), _contiguous(extra)),
        training=True,
    )


@layer_backward.register_fake
def _(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, hs, gates, extra, dhs, dh_n, dc_n, *args):
    dc0 = torch.empty_like(h0) if c0 is not None else _empty_like(x)
    GH = W_hh.shape[0]
    return (
        torch.empty_like(x),
        torch.empty_like(h0),
        dc0,
        torch.empty_like(W_ih),
        torch.empty_like(W_hh),
        x.new_empty((GH,)),
        x.new_empty((GH,)),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, cell, activation, backend, training = inputs
    hs, _, c_n, gates, extra = output
    ctx.mark_non_differentiable(gates, extra)
    if cell != "lstm":
        ctx.mark_non_differentiable(c_n)
    ctx.set_materialize_grads(False)  # gradients of unused outputs arrive as None
    ctx.save_for_backward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, hs, gates, extra)
    ctx.args = (cell, activation, backend, training)


class _NoSecondDerivative(torch.autograd.Function):
    """The gradients of ``layer_forward`` (the first ``n`` arguments) as functions of the
    tensors they depend on (the rest) whose backward raises: what a ``create_graph=True``
    pass returns, so that asking for a second derivative is a clear error."""

    @staticmethod
    def forward(ctx, n, *tensors):
        return tuple(g.view_as(g) for g in tensors[:n])

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(
            "fastrnn.torch computes first derivatives only: a second derivative (double "
            "backward) through its RNN/LSTM/GRU is not supported; use torch.nn's module there"
        )


def _backward(ctx, dhs, dh_n, dc_n, _gates, _extra):
    cell, activation, backend, training = ctx.args
    if not training:
        raise RuntimeError(
            "fastrnn::layer_forward ran with training=False, which saves nothing for "
            "backward; the drop-in modules pass training=True whenever a gradient is needed"
        )
    saved = ctx.saved_tensors
    c0, b_ih = saved[2], saved[5]
    with torch.no_grad():
        grads = layer_backward(
            *saved, dhs, dh_n, dc_n if cell == "lstm" else None, cell, activation, backend
        )
    depends = [t for t in (*saved, dhs, dh_n, dc_n) if t is not None]
    if _needs_grad(*depends):  # create_graph=True
        grads = _NoSecondDerivative.apply(len(grads), *grads, *depends)
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh = grads
    no_bias = b_ih is None
    return (
        dx,
        dh0,
        None if c0 is None else dc0,
        dW_ih,
        dW_hh,
        None if no_bias else db_ih,
        None if no_bias else db_hh,
        *(None,) * 5,  # lengths, cell, activation, backend, training
    )


layer_forward.register_autograd(_backward, setup_context=_setup_context)


# --- the modules ----------------------------------------------------------------------------

_warned: set[str] = set()
_backend_at_import = _config.resolve_backend(None)  # loads the backends outside torch.compile


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"fastrnn.torch: {reason}; running PyTorch's own implementation instead",
            RuntimeWarning,
            stacklevel=4,
        )


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@torch.compiler.assume_constant_result
def _backend() -> str:
    """The backend of the next call: a constant for ``torch.compile`` (a compiled model
    keeps the backend configured when it was compiled)."""
    return _config.resolve_backend(None)


def _reverse_index(lengths: Tensor | None, T: int, B: int, device: Any) -> Tensor | None:
    """For each step and sequence, the step it swaps with when every sequence is reversed
    within its length (padded steps stay); None when every length is T (a plain flip)."""
    if lengths is None:
        return None
    t = torch.arange(T, device=device).unsqueeze(1)
    lens = lengths.to(device).unsqueeze(0)
    return torch.where(t < lens, lens - 1 - t, t)


def _reverse(x: Tensor, index: Tensor | None) -> Tensor:
    if index is None:
        return x.flip(0)
    return x.gather(0, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


# The packed data <-> padded (T, B, .) in the packing's order (sorted by length), with the ops
# torch.nn.utils.rnn uses. Their shapes depend on batch_sizes' values, which torch.compile
# does not trace: it runs them eagerly (a graph break for PackedSequence input).
@torch.compiler.disable
def _pad(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    return torch._pad_packed_sequence(data, batch_sizes, False, 0.0, batch_sizes.shape[0])


@torch.compiler.disable
def _pack(padded: Tensor, lengths: Tensor) -> Tensor:
    return torch._pack_padded_sequence(padded, lengths, False)[0]


class _DropIn:
    """The forward shared by the three drop-in modules (a mixin before ``nn.RNNBase``)."""

    def _fallback_reason(self, input: Any, hx: Any) -> str | None:
        if self.proj_size > 0:
            return "an LSTM with proj_size > 0 is not supported by fastrnn"
        data = input.data if isinstance(input, PackedSequence) else input
        weights = [w for w in self._flat_weights if w is not None]
        states = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
        tensors = [data, *weights, *states]
        if any(t.device.type != "cpu" for t in tensors):
            return "fastrnn runs on the CPU only, and a tensor is on another device"
        if weights[0].dtype not in _DTYPES:
            return f"fastrnn runs float32 and float64 only, and the weights are {weights[0].dtype}"
        if torch._C._is_any_autocast_enabled():
            return "fastrnn does not run under autocast"
        return None

    def forward(self, input, hx=None):
        reason = self._fallback_reason(input, hx)
        if reason is not None:
            _warn_once(reason)
            return super().forward(input, hx)
        self._update_flat_weights()
        cell, activation = _CELLS[self.mode]
        lstm = cell == "lstm"
        name = type(self).__name__
        num_dir = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        lengths = sorted_indices = unsorted_indices = None
        is_batched = True
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            checked: Tensor = data
            T, B = batch_sizes.shape[0], int(batch_sizes[0])
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
                got = tuple(h.dim() for h in hx) if lstm else (hx.dim(),)
                if any(d != want for d in got):
                    what = "hx and cx" if lstm else "hx"
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    raise RuntimeError(
                        f"For {kind} input, {what} should also be {want}-D but got "
                        f"{', '.join(f'{d}-D' for d in got)} tensor(s)"
                    )
                if not is_batched:
                    hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
            batch_sizes = None
            checked = input
            x = input.transpose(0, 1) if self.batch_first else input
            T, B = x.shape[0], x.shape[1]
        if hx is None:
            zeros = checked.new_zeros((self.num_layers * num_dir, B, self.hidden_size))
            hx = (zeros, zeros) if lstm else zeros
        self.check_forward_args(checked, hx, batch_sizes)
        hx = self.permute_hidden(hx, sorted_indices)
        if packed:  # padded, time-major, in the order of the packing (sorted by length)
            x, lengths = _pad(data, batch_sizes)
        h0, c0 = hx if lstm else (hx, None)
        backend = _backend()
        rev = _reverse_index(lengths, T, B, x.device) if num_dir == 2 else None
        layer_in = x.contiguous()
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
                xin = layer_in if d == 0 else _reverse(layer_in, rev).contiguous()
                c0_i = None if c0 is None else c0[i]
                training = _needs_grad(xin, h0, c0, W_ih, W_hh, b_ih, b_hh)
                hs, hn, cn, _, _ = layer_forward(
                    xin, h0[i], c0_i, W_ih, W_hh, b_ih, b_hh, lengths, cell, activation, backend,
                    training,
                )  # fmt: skip
                outs.append(hs if d == 0 else _reverse(hs, rev))
                h_n.append(hn)
                c_n.append(cn)
            layer_in = outs[0] if num_dir == 1 else torch.cat(outs, 2)
            if self.dropout and self.training and k < self.num_layers - 1:
                layer_in = torch.nn.functional.dropout(layer_in, self.dropout, True)
        hidden: Any = torch.stack(h_n)
        if lstm:
            hidden = (hidden, torch.stack(c_n))
        if packed:
            out_data = _pack(layer_in, lengths)
            out = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
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
