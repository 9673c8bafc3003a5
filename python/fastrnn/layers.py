"""Recurrent layers (:class:`RNN`, :class:`LSTM`, :class:`GRU`), the output head :class:`Linear`
and the input layer for token ids :class:`Embedding`.

The layers stack the functional core (:func:`fastrnn.forward` / :func:`fastrnn.backward`)
over ``num_layers`` layers and one or two directions; they never touch a backend, so they
run on whichever backend is configured. Everything is a plain NumPy array:

- ``params``: the parameters under PyTorch's names, in PyTorch's ``state_dict`` order
  (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, then
  ``..._l0_reverse`` when bidirectional, then layer 1, ...), so a PyTorch ``state_dict``
  converted with ``{k: v.numpy() for k, v in sd.items()}`` loads unchanged and gives the
  same outputs;
- ``grads``: the same keys, written (not accumulated) by :meth:`backward`.

Shapes: ``x`` is (T, B, D) time-major, or (B, T, D) with ``batch_first``, or integer
token ids (T, B) / (B, T) in 0..D-1 (D = ``input_size``, the vocabulary), which the first
layer reads as their one-hot rows without the product (and without a ``dx``); the output is
(T, B, dirs*H) (or batch-first), the concatenation of the forward and reverse directions
of the last layer; the state is ``h`` of shape (num_layers*dirs, B, H) for RNN and GRU and
the pair ``(h, c)`` for LSTM, indexed ``layer*dirs + direction`` as in PyTorch.

``lengths`` (B,) gives each sequence's real length (1..T); later steps are padding, their
outputs are 0 and the final state is the state after the last real step. The reverse
direction reads each sequence backwards *within its own length* (PyTorch's packed-sequence
meaning), so padding never leaks into a real step.

Dropout, in training mode only (:meth:`~_Module.train`; evaluation mode is bit for bit the
same as no dropout), inverted (kept units are scaled by 1/(1-p), so nothing changes at
evaluation), each a probability in [0, 1]:

- ``dropout``: PyTorch's ``dropout=`` of ``nn.LSTM``: on the output of every layer but the
  last, a fresh mask for every step, sequence and unit (the input of the next layer);
- ``recurrent_dropout``: Keras' ``recurrent_dropout``, variational (Gal and Ghahramani
  2016): one mask per sequence and layer/direction on the state where it enters the
  recurrent product, ``W_hh (m * h_{t-1})``, the same at every step (inside the backend's
  kernels; for GRU the product of all three gates, while ``z * h_{t-1}`` reads the
  unmasked state);
- ``input_dropout``: Keras' ``dropout``, variational: one mask per sequence and
  layer/direction on the input of every layer, ``x_t * m``, the same at every step.

The three compose (a stacked layer's input can get both ``dropout`` and
``input_dropout``). Masks come from ``numpy.random.Generator`` draws of the layer's
``seed`` (the generator that initialised the parameters, continued; with a Generator as
``seed``, that Generator): the same seed gives the same parameters and the same masks.
A new mask is drawn at every forward (with truncated BPTT: for every chunk, as Keras does
for every call).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _validation as V
from . import functional as F
from . import io as _io

State = np.ndarray | tuple[np.ndarray, np.ndarray]
"""A layer state: ``h`` (num_layers*dirs, B, H), or ``(h, c)`` for LSTM."""
Checkpoint = int | str | Mapping[str, int] | None
"""A ``checkpoint`` setting of :func:`fastrnn.forward`: None, k, "sqrt" or {"max_bytes": N}."""

# functional-core name -> PyTorch name stem
_TORCH_NAMES = {
    "W_ih": "weight_ih",
    "W_hh": "weight_hh",
    "b_ih": "bias_ih",
    "b_hh": "bias_hh",
}


def _reverse_index(T: int, B: int, lengths: np.ndarray | None) -> np.ndarray:
    """idx (T, B): ``a[idx, arange(B)]`` reverses each sequence within its own length.

    Padded steps map to themselves, so the gather is its own inverse.
    """
    t = np.arange(T)[:, None]
    if lengths is None:
        return np.broadcast_to(T - 1 - t, (T, B))
    lens = np.asarray(lengths, dtype=np.int64)[None, :]
    return np.where(t < lens, lens - 1 - t, t)


def _load_arrays(
    owner: str, target: dict[str, np.ndarray], state: Mapping[str, object]
) -> dict[str, np.ndarray]:
    """Check ``state`` against ``target`` (same keys and shapes, float dtypes); return it
    converted to the target dtypes, without touching ``target``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a dict of arrays, got {type(state).__name__}")
    missing = [k for k in target if k not in state]
    extra = [k for k in state if k not in target]
    if missing or extra:
        raise ValueError(
            f"state_dict does not fit this {owner}: missing keys {missing}, unexpected keys {extra}"
        )
    out = {}
    for key, ref in target.items():
        arr = V.as_array(f"state_dict[{key!r}]", state[key])
        if arr.dtype.kind != "f":
            raise TypeError(f"state_dict[{key!r}] must be a float array, got dtype {arr.dtype}")
        if arr.shape != ref.shape:
            raise ValueError(
                f"state_dict[{key!r}] has shape {arr.shape}, expected {ref.shape} for this {owner}"
            )
        out[key] = arr.astype(ref.dtype, copy=False)
    return out


class _Module:
    """Training and evaluation mode, with PyTorch's names.

    In training mode (the default) :meth:`forward` keeps what :meth:`backward` needs; in
    evaluation mode (:meth:`eval`) it runs the functional core with ``training=False``
    and keeps nothing, and :meth:`backward` is refused.
    """

    training: bool = True
    _backward_state: tuple[str, ...] = ()  # attributes that hold what backward needs

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without what :meth:`backward` needs (the activations of the last
        forward): a pickled layer is its configuration and parameters."""
        state = dict(self.__dict__)
        for name in self._backward_state:
            state[name] = None
        return state

    def train(self, mode: bool = True) -> Any:
        """Set training mode (``mode=False``: evaluation mode); return the module."""
        self.training = V.check_bool("mode", mode)
        return self

    def eval(self) -> Any:
        """Set evaluation mode (the same as ``train(False)``); return the module."""
        return self.train(False)

    def _refuse_backward_in_eval(self) -> None:
        raise ValueError(
            f"{type(self).__name__}.backward(): the last forward ran in evaluation mode "
            "(.eval(), training=False), which keeps nothing for backward; call .train() "
            "before the forward to backpropagate"
        )


class _Recurrent(_Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    _backward_state = ("_cache",)

    _cell: str = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        batch_first: bool = False,
        init: str = "uniform",
        gain: float = 1.0,
        seed: int | np.random.Generator | None = None,
        dtype: Any = np.float32,
        activation: str = "tanh",
        negative_slope: float = 0.01,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        checkpoint: Checkpoint = None,
    ) -> None:
        self.input_size = V.check_positive_int("input_size", input_size)
        self.hidden_size = V.check_positive_int("hidden_size", hidden_size)
        self.num_layers = V.check_positive_int("num_layers", num_layers)
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        self.dtype = V.check_float_dtype("dtype", dtype)
        V.check_choice("init", init, F.INITS)
        V.check_choice("activation", activation, F.ACTIVATIONS)
        self.init = init
        self.gain = gain
        self.activation = activation
        self.negative_slope = V.check_non_negative_float("negative_slope", negative_slope)
        self.dropout = V.check_dropout("dropout", dropout)
        self.recurrent_dropout = V.check_dropout("recurrent_dropout", recurrent_dropout)
        self.input_dropout = V.check_dropout("input_dropout", input_dropout)
        F.checkpoint_plan(self._cell, 1, 1, self.hidden_size, self.dtype, checkpoint)  # checks it
        self.checkpoint = checkpoint
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(  # PyTorch's warning, for the same reason
                "dropout acts between stacked layers (on the output of every layer but the "
                f"last), so dropout={self.dropout:g} with num_layers=1 drops nothing; use "
                "input_dropout or recurrent_dropout for a single layer",
                UserWarning,
                stacklevel=3,
            )
        self.training = True
        rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        for layer in range(self.num_layers):
            d_in = self.input_size if layer == 0 else self.hidden_size * self.num_directions
            for direction in range(self.num_directions):
                p = F.init_params(
                    self._cell,
                    d_in,
                    self.hidden_size,
                    init=init,
                    seed=rng,
                    dtype=self.dtype,
                    gain=gain,
                )
                for short, value in p.items():
                    self.params[self._name(short, layer, direction)] = value
        self.grads: dict[str, np.ndarray] = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._cache: dict[str, Any] | None = None
        self._rng = rng  # continues after the initialisation: the dropout masks

    # --- names ---------------------------------------------------------------------------

    @property
    def num_directions(self) -> int:
        """2 if bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @staticmethod
    def _name(short: str, layer: int, direction: int) -> str:
        return f"{_TORCH_NAMES[short]}_l{layer}{'_reverse' if direction else ''}"

    def _layer_params(self, layer: int, direction: int) -> dict[str, np.ndarray]:
        return {short: self.params[self._name(short, layer, direction)] for short in _TORCH_NAMES}

    def __repr__(self) -> str:
        extra = ""
        if self._cell == "rnn" and self.activation != "tanh":
            extra = f", activation={self.activation!r}"
        for name in ("dropout", "recurrent_dropout", "input_dropout"):
            if getattr(self, name):
                extra += f", {name}={getattr(self, name):g}"
        if self.checkpoint is not None:
            extra += f", checkpoint={self.checkpoint!r}"
        return (
            f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
            f"batch_first={self.batch_first}{extra}, dtype={self.dtype.name})"
        )

    # --- state helpers -------------------------------------------------------------------

    def _split_state(
        self, name: str, state: object, B: int
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Validate a state argument; return (h, c) arrays of shape (L*dirs, B, H) or None."""
        if state is None:
            return None, None
        expected = (self.num_layers * self.num_directions, B, self.hidden_size)
        if self._cell == "lstm":
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(
                    f"{name} of an LSTM must be a pair (h, c) of arrays of shape {expected}, "
                    f"got {type(state).__name__}"
                )
            parts = [(f"{name}[0] (h)", state[0]), (f"{name}[1] (c)", state[1])]
        else:
            if isinstance(state, (tuple, list)):
                raise TypeError(
                    f"{name} of a {type(self).__name__} is one array h of shape {expected}, "
                    "got a tuple (only LSTM has a pair (h, c))"
                )
            parts = [(name, state)]
        out = []
        for label, value in parts:
            arr = None
            if value is not None:
                arr = V.as_float_array(
                    label, value, self.dtype, dtype_of=self._of, contiguous=False
                )
                V.check_shape(
                    label, arr, expected, "(num_layers*num_directions, batch, hidden_size)"
                )
            out.append(arr)
        return out[0], (out[1] if len(out) > 1 else None)

    @property
    def _of(self) -> str:
        """Where this layer's dtype comes from, for a dtype message."""
        return f"the {type(self).__name__} parameters"

    def _pack_state(self, h: np.ndarray, c: np.ndarray | None) -> State:
        """``(h, c)`` for LSTM (the only cell with a ``c``), else ``h``."""
        return h if c is None else (h, c)

    # --- forward and backward ------------------------------------------------------------

    def forward(
        self, x: np.ndarray, state: State | None = None, *, lengths: np.ndarray | None = None
    ) -> tuple[np.ndarray, State]:
        """Run the stack over ``x``; return the output and the final state.

        ``x``: (T, B, input_size), or (B, T, input_size) with ``batch_first``; or integer
        token ids (T, B) (or (B, T)) in 0..input_size-1, which the first layer reads as
        their one-hot rows without making them (see :func:`fastrnn.forward`: a gather of
        ``W_ih``'s columns, no ``dx``); deeper layers read the float outputs below.
        ``state``: the initial state, the same structure as the returned final state
        (``None``: zeros). ``lengths`` (B,): real sequence lengths 1..T.
        Returns ``out`` (T, B, dirs*H) (batch-first if ``batch_first``; zero at padded
        steps) and the final state ``h`` (num_layers*dirs, B, H), or ``(h, c)`` for LSTM.
        In evaluation mode (:meth:`eval`) nothing is kept for :meth:`backward`.
        """
        steps = "(B, T" if self.batch_first else "(T, B"
        vocab = f"input_size={self.input_size}, the vocabulary"
        ids = V.as_token_ids("x", x, self.input_size, steps + ")", vocab)
        if ids is not None:  # token ids: the first layer reads their one-hot rows
            x = ids.T if self.batch_first else ids
        else:
            x = V.as_float_array("x", x, self.dtype, dtype_of=self._of, contiguous=False)
            if x.ndim != 3 or x.shape[2] != self.input_size:
                raise ValueError(
                    f"x has shape {x.shape}, expected {steps}, input_size) with input_size="
                    f"{self.input_size}, or integer token ids {steps})"
                )
            if self.batch_first:
                x = x.transpose(1, 0, 2)
        T, B = x.shape[:2]
        h0, c0 = self._split_state("state", state, B)
        lens = V.check_lengths(lengths, T, B)
        rev = _reverse_index(T, B, lens) if self.bidirectional else None
        cols = np.arange(B)
        dirs = self.num_directions
        results = []
        between: list[np.ndarray | None] = []  # the dropout mask after each layer but the last
        h_n, c_n = [], []
        inp = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(dirs):
                k = layer * dirs + direction
                xi = inp if direction == 0 else inp[rev, cols]
                params = self._layer_params(layer, direction)
                res = F.forward(
                    self._cell,
                    params,
                    xi,
                    None if h0 is None else h0[k],
                    None if c0 is None else c0[k],
                    activation=self.activation,
                    negative_slope=self.negative_slope,
                    lengths=lens,
                    training=self.training,
                    input_mask=self._dropout_mask((B, params["W_ih"].shape[1]), self.input_dropout),
                    recurrent_mask=self._dropout_mask(
                        (B, self.hidden_size), self.recurrent_dropout
                    ),
                    checkpoint=self.checkpoint if self.training else None,
                )
                results.append(res)
                outs.append(res.hs if direction == 0 else res.hs[rev, cols])
                h_n.append(res.h_n)
                if res.c_n is not None:
                    c_n.append(res.c_n)
            inp = outs[0] if dirs == 1 else np.concatenate(outs, axis=2)
            if layer < self.num_layers - 1:
                between.append(self._dropout_mask(inp.shape, self.dropout))
                if between[-1] is not None:
                    inp = inp * between[-1]
        out = inp
        h = np.stack(h_n)
        c = np.stack(c_n) if c_n else None
        self._cache = {
            "results": results,
            "between": between,
            "rev": rev,
            "T": T,
            "B": B,
            "dtype": out.dtype,
        }
        if not self.training:
            self._cache = {"training": False}
        if self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, self._pack_state(h, c)

    __call__ = forward

    def backward(
        self,
        dout: np.ndarray | None = None,
        dstate: State | None = None,
        *,
        input_grad: bool = True,
    ) -> tuple[np.ndarray | None, State]:
        """Backpropagate through the last :meth:`forward` call.

        ``dout``: dL/d(out), the shape of the output (``None``: zero); ``dstate``: dL/d
        of the returned final state, same structure (``None``: zero; for LSTM either part
        of the pair may be ``None``). Returns ``dx`` (the shape of ``x``; ``None`` for
        token ids, or with ``input_grad=False``: not computed, for an input that is fixed
        data) and the gradient w.r.t. the initial state; writes the parameter gradients
        into :attr:`grads`.
        """
        dx, dstate0, _ = self._backward(dout, dstate, None, input_grad)
        return dx, dstate0

    def backward_head(
        self,
        head: Linear,
        targets: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        reduction: str = "mean",
        dstate: State | None = None,
        input_grad: bool = True,
    ) -> tuple[float, np.ndarray | None, State]:
        """The output head and its softmax cross-entropy fused into :meth:`backward`: the
        same as ``loss, dout = head.softmax_cross_entropy(out, targets, mask=mask)`` then
        ``backward(dout, dstate)`` (``out`` of the last :meth:`forward`), but the head's
        dL/d(out) is computed block by block of steps inside the top layer's backward
        (:class:`fastrnn.functional.HeadSpec`), so no gradient of all T steps is made: with
        ``checkpoint`` a training step's memory then stays bounded. Writes ``head.grads``
        and this layer's :attr:`grads`; returns ``(loss, dx, dstate0)`` (``dx`` ``None``
        as in :meth:`backward`).

        ``targets`` (and ``mask``) have the output's leading shape: (T, B), or (B, T) with
        ``batch_first``. Unidirectional layers only: a bidirectional top layer's output
        mixes both directions, whose backward passes run separately.
        """
        if self.bidirectional:
            raise ValueError(
                f"{type(self).__name__}.backward_head needs a unidirectional layer "
                "(bidirectional=False): the head reads both directions of a bidirectional "
                "output, each with its own backward; use head.softmax_cross_entropy and "
                "backward(dout)"
            )
        if not isinstance(head, Linear):
            raise TypeError(f"head must be a fastrnn.Linear, got {type(head).__name__}")
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward_head() called before forward()")
        y, live = targets, mask
        if self.batch_first:  # the functional core is time-major
            y = np.asarray(targets).T
            if mask is not None:
                live = np.asarray(mask).T
        spec = F.HeadSpec(head.params["weight"], head.params["bias"], y, live, reduction)
        dx, dstate0, g = self._backward(None, dstate, spec, input_grad)
        assert g is not None  # the top layer's backward reports the head's sums
        head.grads["weight"] = g.dweight
        head.grads["bias"] = g.dbias
        return g.loss, dx, dstate0

    def _backward(
        self,
        dout: np.ndarray | None,
        dstate: State | None,
        head: F.HeadSpec | None,
        input_grad: bool = True,
    ) -> tuple[np.ndarray | None, State, F.FusedHeadGradients | None]:
        """:meth:`backward`; with ``head`` the top layer runs the head in its backward, whose
        gradients are the third element (``None`` without a head); ``input_grad=False``
        (or token ids) skips the first layer's dx."""
        input_grad = V.check_bool("input_grad", input_grad)
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward()")
        cache = self._cache
        if "results" not in cache:
            self._refuse_backward_in_eval()
        T, B, dtype, rev = cache["T"], cache["B"], cache["dtype"], cache["rev"]
        H, dirs = self.hidden_size, self.num_directions
        cols = np.arange(B)
        head_grads: F.FusedHeadGradients | None = None
        d_inp: np.ndarray | None
        if head is not None:
            d_inp = None  # the top layer's dL/dhs comes from the head
        elif dout is None:
            d_inp = np.zeros((T, B, dirs * H), dtype=dtype)
        else:
            d_inp = V.as_array("dout", dout)
            shape = (B, T, dirs * H) if self.batch_first else (T, B, dirs * H)
            if d_inp.shape != shape:
                raise ValueError(
                    f"dout has shape {d_inp.shape}, expected {shape} (the shape of the output)"
                )
            if self.batch_first:
                d_inp = d_inp.transpose(1, 0, 2)
        dh, dc = self._split_state("dstate", dstate, B)
        dh0 = np.zeros((self.num_layers * dirs, B, H), dtype=dtype)
        dc0 = np.zeros_like(dh0) if self._cell == "lstm" else None
        for layer in reversed(range(self.num_layers)):
            dx_total = None
            for direction in range(dirs):
                k = layer * dirs + direction
                res = cache["results"][k]
                dhs = None if d_inp is None else d_inp[:, :, direction * H : (direction + 1) * H]
                if direction == 1 and dhs is not None:
                    dhs = dhs[rev, cols]
                top = layer == self.num_layers - 1
                g = F.backward(
                    res,
                    dhs,
                    None if dh is None else dh[k],
                    None if dc is None else dc[k],
                    head=head if top else None,
                    input_grad=input_grad or layer > 0,
                )
                if top:
                    head_grads = g.head
                if g.dx is not None:  # (None: token ids, or the first layer's not asked for)
                    dx = g.dx if direction == 0 else g.dx[rev, cols]
                    dx_total = dx if dx_total is None else dx_total + dx
                dh0[k] = g.dh0
                if dc0 is not None:
                    dc0[k] = g.dc0
                for short, value in g.params.items():
                    self.grads[self._name(short, layer, direction)] = value
            d_inp = dx_total
            if layer > 0 and cache["between"][layer - 1] is not None:
                d_inp = d_inp * cache["between"][layer - 1]
        dx = d_inp.transpose(1, 0, 2) if self.batch_first and d_inp is not None else d_inp
        return dx, self._pack_state(dh0, dc0), head_grads

    def _dropout_mask(self, shape: tuple[int, ...], p: float) -> np.ndarray | None:
        """An inverted-dropout mask of ``shape`` in the layer's dtype: each entry 0 with
        probability ``p``, else 1/(1-p) (all 0 for p = 1), drawn from the layer's
        generator; ``None`` (no mask, nothing drawn) for p = 0 or in evaluation mode."""
        if p == 0 or not self.training:
            return None
        if p == 1:
            return np.zeros(shape, dtype=self.dtype)
        keep = self._rng.random(shape) >= p
        scale = self.dtype.type(1) / self.dtype.type(1 - p)
        mask: np.ndarray = np.where(keep, scale, self.dtype.type(0))
        return mask

    # --- parameters and persistence ------------------------------------------------------

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameter arrays (the same objects as :attr:`params`, updated in place)."""
        return self.params

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the parameters under PyTorch's names."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Copy ``state_dict`` (PyTorch names and shapes) into the parameters, in place.

        Float arrays of another precision are converted to this layer's dtype.
        """
        arrays = _load_arrays(repr(self), self.params, state_dict)
        for key, value in arrays.items():
            np.copyto(self.params[key], value)

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "batch_first": self.batch_first,
            "dtype": self.dtype.name,
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "input_dropout": self.input_dropout,
        }
        ck = self.checkpoint
        if isinstance(ck, Mapping):  # as JSON: {"max_bytes": N}, "sqrt" or an int k
            config["checkpoint"] = {k: int(v) for k, v in ck.items()}
        elif ck is not None:
            config["checkpoint"] = ck if isinstance(ck, str) else int(ck)
        if self._cell == "rnn":
            config["activation"] = self.activation
            config["negative_slope"] = self.negative_slope
        return config

    def _save_state(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        return type(self).__name__, self._config(), dict(self.params)

    @classmethod
    def _from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> _Recurrent:
        config = dict(config)
        size_args = [config.pop(k) for k in ("input_size", "hidden_size", "num_layers")]
        layer = cls(*size_args, **config)
        layer.load_state_dict(arrays)
        return layer

    def save(self, path: Any) -> None:
        """Save the layer (configuration and parameters) to ``.npz``; see :mod:`fastrnn.io`."""
        _io.save(self, path)


@_io.register("RNN")
class RNN(_Recurrent):
    """An Elman RNN stack: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    ``activation``: ``"tanh"`` (default), ``"relu"``, ``"leaky_relu"`` (with
    ``negative_slope``) or ``"identity"``. ``init``: see :func:`fastrnn.init_params`;
    ``gain`` scales the recurrent weights; ``seed`` makes the initialisation (and the
    dropout masks) reproducible. ``dropout``, ``recurrent_dropout``, ``input_dropout``:
    see the module docstring. ``checkpoint``: checkpointed BPTT in training (see
    :func:`fastrnn.forward`; ``None`` is full BPTT); rnn saves nothing beyond its outputs,
    so it changes nothing here.
    """

    _cell = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        batch_first: bool = False,
        activation: str = "tanh",
        negative_slope: float = 0.01,
        init: str = "uniform",
        gain: float = 1.0,
        seed: int | np.random.Generator | None = None,
        dtype: Any = np.float32,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        checkpoint: Checkpoint = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
            activation=activation,
            negative_slope=negative_slope,
            init=init,
            gain=gain,
            seed=seed,
            dtype=dtype,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
            checkpoint=checkpoint,
        )


@_io.register("LSTM")
class LSTM(_Recurrent):
    """An LSTM stack (PyTorch's gate order i, f, g, o); the state is the pair ``(h, c)``.

    ``init``: see :func:`fastrnn.init_params`; ``gain`` scales the recurrent weights;
    ``seed`` makes the initialisation (and the dropout masks) reproducible. ``dropout``,
    ``recurrent_dropout``, ``input_dropout``: see the module docstring. ``checkpoint``:
    checkpointed BPTT in training, e.g. ``"sqrt"`` or ``{"max_bytes": 2**28}`` (see
    :func:`fastrnn.forward`; ``None`` is full BPTT); the gradients are bit-identical (with
    dropout too: the recompute applies the same masks).
    """

    _cell = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        batch_first: bool = False,
        init: str = "uniform",
        gain: float = 1.0,
        seed: int | np.random.Generator | None = None,
        dtype: Any = np.float32,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        checkpoint: Checkpoint = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
            init=init,
            gain=gain,
            seed=seed,
            dtype=dtype,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
            checkpoint=checkpoint,
        )


@_io.register("GRU")
class GRU(_Recurrent):
    """A GRU stack (PyTorch's gate order r, z, n and its ``n`` formula).

    ``init``: see :func:`fastrnn.init_params`; ``gain`` scales the recurrent weights;
    ``seed`` makes the initialisation (and the dropout masks) reproducible. ``dropout``,
    ``recurrent_dropout``, ``input_dropout``: see the module docstring. ``checkpoint``:
    checkpointed BPTT in training, e.g. ``"sqrt"`` or ``{"max_bytes": 2**28}`` (see
    :func:`fastrnn.forward`; ``None`` is full BPTT); the gradients are bit-identical (with
    dropout too: the recompute applies the same masks).
    """

    _cell = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        batch_first: bool = False,
        init: str = "uniform",
        gain: float = 1.0,
        seed: int | np.random.Generator | None = None,
        dtype: Any = np.float32,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        checkpoint: Checkpoint = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
            init=init,
            gain=gain,
            seed=seed,
            dtype=dtype,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
            checkpoint=checkpoint,
        )


@_io.register("Linear")
class Linear(_Module):
    """The output head, the course's ``V`` and ``c``: ``o = h V^T + c``.

    ``params``: ``{"weight": (out_features, in_features), "bias": (out_features,)}``
    (PyTorch's names and its default initialisation U(-1/sqrt(in), 1/sqrt(in)));
    ``grads`` likewise, written by :meth:`backward`. Applies to any leading dimensions,
    so the same head serves every step ``(T, B, in)`` or the last step ``(B, in)``.
    """

    _backward_state = ("_h",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        seed: int | np.random.Generator | None = None,
        dtype: Any = np.float32,
    ) -> None:
        self.in_features = V.check_positive_int("in_features", in_features)
        self.out_features = V.check_positive_int("out_features", out_features)
        self.dtype = V.check_float_dtype("dtype", dtype)
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(self.in_features)
        self.params: dict[str, np.ndarray] = {
            "weight": rng.uniform(-k, k, (self.out_features, self.in_features)).astype(self.dtype),
            "bias": rng.uniform(-k, k, self.out_features).astype(self.dtype),
        }
        self.grads: dict[str, np.ndarray] = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._h: np.ndarray | None = None
        self._ran_in_eval = False
        self.training = True

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, dtype={self.dtype.name})"

    def forward(self, h: np.ndarray) -> np.ndarray:
        """``h`` (..., in_features) -> ``h @ weight.T + bias`` (..., out_features).

        In evaluation mode (:meth:`eval`) ``h`` is not kept for :meth:`backward`."""
        of = "the Linear parameters"
        h = V.as_float_array("h", h, self.dtype, dtype_of=of, contiguous=False)
        if h.ndim < 1 or h.shape[-1] != self.in_features:
            raise ValueError(
                f"h has shape {h.shape}, expected (..., {self.in_features}) "
                f"(last axis in_features={self.in_features})"
            )
        self._h = h if self.training else None
        self._ran_in_eval = not self.training
        # one 2-D GEMM over all leading dims (a 3-D matmul is T small GEMMs in NumPy)
        out: np.ndarray = h.reshape(-1, self.in_features) @ self.params["weight"].T
        out += self.params["bias"]
        return out.reshape(*h.shape[:-1], self.out_features)

    __call__ = forward

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Given dL/d(out), write the parameter gradients into :attr:`grads`; return dL/dh."""
        if self._h is None:
            if self._ran_in_eval:
                self._refuse_backward_in_eval()
            raise RuntimeError("Linear.backward() called before forward()")
        h = self._h
        dout = V.as_array("dout", dout)
        expected = (*h.shape[:-1], self.out_features)
        if dout.shape != expected:
            raise ValueError(
                f"dout has shape {dout.shape}, expected {expected} (the shape of the output)"
            )
        d2 = dout.reshape(-1, self.out_features)
        h2 = h.reshape(-1, self.in_features)
        self.grads["weight"] = (d2.T @ h2).astype(self.dtype, copy=False)
        self.grads["bias"] = d2.sum(axis=0).astype(self.dtype, copy=False)
        dh: np.ndarray = d2 @ self.params["weight"]
        return dh.reshape(h.shape).astype(self.dtype, copy=False)

    def softmax_cross_entropy(
        self,
        h: np.ndarray,
        targets: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        reduction: str = "mean",
    ) -> tuple[float, np.ndarray]:
        """The head and a softmax cross-entropy on its output, forward and backward in one
        fused call (:func:`fastrnn.functional.linear_cross_entropy`, on the current
        backend): write the parameter gradients into :attr:`grads` and return
        ``(loss, dL/dh)``. The same result as ``softmax_cross_entropy(self(h), targets)``
        followed by :meth:`backward`, without holding all the logits."""
        res = F.linear_cross_entropy(
            h,
            self.params["weight"],
            self.params["bias"],
            targets,
            mask=mask,
            reduction=reduction,
        )
        self.grads["weight"] = res.dweight
        self.grads["bias"] = res.dbias
        return res.loss, res.dh

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameter arrays (the same objects as :attr:`params`, updated in place)."""
        return self.params

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the parameters (``weight``, ``bias``)."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Copy ``state_dict`` into the parameters, in place."""
        arrays = _load_arrays(repr(self), self.params, state_dict)
        for key, value in arrays.items():
            np.copyto(self.params[key], value)

    def _save_state(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        config = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "dtype": self.dtype.name,
        }
        return "Linear", config, dict(self.params)

    @classmethod
    def _from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Linear:
        config = dict(config)
        head = cls(config.pop("in_features"), config.pop("out_features"), **config)
        head.load_state_dict(arrays)
        return head

    def save(self, path: Any) -> None:
        """Save the head to a ``.npz`` file; see :mod:`fastrnn.io`."""
        _io.save(self, path)


@_io.register("Embedding")
class Embedding(_Module):
    """A lookup table from token ids to vectors: the input layer for token sequences.

    PyTorch's ``torch.nn.Embedding`` with its names: ``params = {"weight":
    (num_embeddings, embedding_dim)}``, initialised from N(0, 1) as PyTorch does, so a
    PyTorch ``state_dict`` (``{"weight": ...}``) loads unchanged and gives the same
    vectors. ``grads["weight"]`` is written (not accumulated) by :meth:`backward`.

    Parameters
    ----------
    num_embeddings : int
        The size of the vocabulary (ids 0..num_embeddings-1).
    embedding_dim : int
        The size of each vector.
    padding_idx : int or None
        An id whose vector gets no gradient (it stays what it is: zero at
        initialisation), as in PyTorch; negative values count from the end
        (``-1`` is ``num_embeddings - 1``) and are stored normalised. None: no such id.
    seed : int, numpy.random.Generator or None
        Makes the initialisation reproducible.
    dtype : {"float32", "float64"}
        The dtype of the vectors.

    Raises
    ------
    TypeError
        A size that is not an int, a dtype other than float32/float64.
    ValueError
        A size < 1, ``padding_idx`` outside -num_embeddings..num_embeddings-1.
    """

    _backward_state = ("_ids",)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        seed: int | np.random.Generator | None = None,
        dtype: Any = np.float32,
    ) -> None:
        self.num_embeddings = V.check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = V.check_positive_int("embedding_dim", embedding_dim)
        self.dtype = V.check_float_dtype("dtype", dtype)
        if padding_idx is not None:
            n = self.num_embeddings
            padding_idx = V.check_int("padding_idx", padding_idx)
            if not -n <= padding_idx < n:
                raise ValueError(
                    f"padding_idx must be in {-n}..{n - 1} (num_embeddings={n}) or None, "
                    f"got {padding_idx}"
                )
            padding_idx %= n
        self.padding_idx: int | None = padding_idx
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((self.num_embeddings, self.embedding_dim))
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.params: dict[str, np.ndarray] = {"weight": weight.astype(self.dtype)}
        self.grads: dict[str, np.ndarray] = {"weight": np.zeros_like(self.params["weight"])}
        self._ids: np.ndarray | None = None
        self._ran_in_eval = False
        self.training = True

    def __repr__(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return (
            f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad}, dtype={self.dtype.name})"
        )

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of the token ids: ``ids`` of any shape -> ``ids.shape + (embedding_dim,)``.

        Parameters
        ----------
        ids : array of int
            Token ids in 0..num_embeddings-1, any shape.

        Returns
        -------
        numpy.ndarray
            ``weight[ids]``, a new array of the layer's dtype.

        Raises
        ------
        TypeError
            ``ids`` is not an integer array (floats, even integral ones, are refused).
        ValueError
            An id out of range, naming its position and value.

        Notes
        -----
        In evaluation mode (:meth:`eval`) the ids are not kept for :meth:`backward`.
        """
        ids = V.as_int_array("ids", ids, expected="an integer array of token ids")
        V.check_index_range("ids", ids, self.num_embeddings, "token id")
        self._ids = ids if self.training else None
        self._ran_in_eval = not self.training
        return self.params["weight"].take(ids, axis=0)

    __call__ = forward

    def backward(self, dout: np.ndarray) -> None:
        """Given dL/d(out) (``ids.shape + (embedding_dim,)``), write dL/d(weight) into
        :attr:`grads`: the rows of ``dout`` summed into the rows of their ids (ids that
        occur several times add up), zero for ids that did not occur and for
        ``padding_idx``. Returns None: token ids have no gradient.

        Raises
        ------
        RuntimeError
            No forward before.
        ValueError
            ``dout`` of the wrong shape, or the last forward ran in evaluation mode.
        """
        if self._ids is None:
            if self._ran_in_eval:
                self._refuse_backward_in_eval()
            raise RuntimeError("Embedding.backward() called before forward()")
        ids = self._ids
        dout = V.as_array("dout", dout)
        expected = (*ids.shape, self.embedding_dim)
        if dout.shape != expected:
            raise ValueError(
                f"dout has shape {dout.shape}, expected {expected} (the shape of the output)"
            )
        grad = np.zeros_like(self.params["weight"])
        rows = dout.reshape(-1, self.embedding_dim).astype(self.dtype, copy=False)
        flat = ids.ravel()
        if flat.size:
            # sparse: the rows of dout sorted by id, each run of one id summed into its row
            # (about twice as fast as np.add.at(grad, flat, rows), the same sums)
            order = np.argsort(flat, kind="stable")
            sorted_ids = flat[order]
            starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
            grad[sorted_ids[starts]] = np.add.reduceat(rows[order], starts, axis=0)
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0
        self.grads["weight"] = grad

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameter arrays (the same objects as :attr:`params`, updated in place)."""
        return self.params

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the parameters (``weight``), PyTorch's key."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Copy ``state_dict`` (``{"weight": (num_embeddings, embedding_dim)}``) into the
        parameters, in place; float arrays of another precision are converted."""
        arrays = _load_arrays(repr(self), self.params, state_dict)
        for key, value in arrays.items():
            np.copyto(self.params[key], value)

    def _save_state(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        config = {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "dtype": self.dtype.name,
        }
        return "Embedding", config, dict(self.params)

    @classmethod
    def _from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Embedding:
        config = dict(config)
        layer = cls(config.pop("num_embeddings"), config.pop("embedding_dim"), **config)
        layer.load_state_dict(arrays)
        return layer

    def save(self, path: Any) -> None:
        """Save the layer to a ``.npz`` file; see :mod:`fastrnn.io`."""
        _io.save(self, path)


def _last_index(lengths: object, T: int, B: int) -> np.ndarray:
    if lengths is None:
        return np.full(B, T - 1, dtype=np.int64)
    lens = V.check_lengths(lengths, T, B)
    return np.full(B, T - 1, dtype=np.int64) if lens is None else lens - 1


def last_step(
    out: np.ndarray, lengths: np.ndarray | None = None, *, batch_first: bool = False
) -> np.ndarray:
    """The output at each sequence's last real step: (T, B, F) -> (B, F).

    ``out`` is time-major (or (B, T, F) with ``batch_first``); ``lengths`` (B,) as for
    the layers (``None``: every sequence has T steps). For a many-to-one head apply
    :class:`Linear` to the result; :func:`last_step_backward` is its gradient. (For a
    bidirectional layer the reverse direction has seen only one step there; its summary
    of the whole sequence is in the final state instead.)
    """
    out = V.as_array("out", out)
    if out.ndim != 3:
        layout = "(B, T, F)" if batch_first else "(T, B, F)"
        raise ValueError(f"out has shape {out.shape}, expected {layout}")
    T, B = (out.shape[1], out.shape[0]) if batch_first else out.shape[:2]
    idx = _last_index(lengths, T, B)
    cols = np.arange(B)
    last: np.ndarray = out[cols, idx] if batch_first else out[idx, cols]
    return last


def last_step_backward(
    dlast: np.ndarray, lengths: np.ndarray | None, T: int, *, batch_first: bool = False
) -> np.ndarray:
    """The gradient of :func:`last_step`: ``dlast`` (B, F) placed at each sequence's last
    real step of a zero (T, B, F) array (or (B, T, F) with ``batch_first``)."""
    dlast = V.as_array("dlast", dlast)
    if dlast.ndim != 2:
        raise ValueError(f"dlast has shape {dlast.shape}, expected (B, F)")
    T = V.check_positive_int("T", T)
    B, feat = dlast.shape
    idx = _last_index(lengths, T, B)
    cols = np.arange(B)
    shape = (B, T, feat) if batch_first else (T, B, feat)
    dout = np.zeros(shape, dtype=dlast.dtype)
    if batch_first:
        dout[cols, idx] = dlast
    else:
        dout[idx, cols] = dlast
    return dout


__all__ = ["GRU", "LSTM", "RNN", "Embedding", "Linear", "State", "last_step", "last_step_backward"]
