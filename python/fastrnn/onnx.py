"""Export to ONNX: recurrent layers and fitted models, for inference outside Python.

:func:`export` writes an ONNX model (opset 17) built from ONNX's own ``RNN``, ``LSTM`` and
``GRU`` operators, one per layer of a stack (both directions in one operator), checked
with ``onnx.checker``. It needs the ``onnx`` package (``pip install 'fastrnn[onnx]'``,
which also installs ``onnxruntime`` to run the result); ``import fastrnn`` never imports
it.

What is exported:

- :class:`fastrnn.layers.RNN` (activation ``tanh``, ``relu``, ``leaky_relu``,
  ``identity``: ONNX's ``Tanh``, ``Relu``, ``LeakyRelu`` with ``alpha=negative_slope`` and
  ``Affine`` with ``alpha=1, beta=0``), :class:`~fastrnn.layers.LSTM` and
  :class:`~fastrnn.layers.GRU`, any ``num_layers``, uni- or bidirectional, time-major or
  ``batch_first``. Inputs: ``x`` (the layer's layout), then, with ``lengths=True``,
  ``lengths`` (B,) int64 in 1..T (ONNX's ``sequence_lens``, which runtimes do not check;
  the reverse direction reads each sequence backwards within its own length, as the
  layer does; outputs at padded steps are 0), then, with
  ``initial_state=True``, ``h0`` (and ``c0`` for LSTM) of shape (num_layers*dirs, B, H).
  Outputs: ``output`` and ``h_n`` (and ``c_n`` for LSTM), as :meth:`forward` returns them.
- A fitted :class:`fastrnn.SequenceClassifier`: input ``X`` (n, T, D) (and ``lengths``
  (n,) int64 with ``lengths=True``), output ``probabilities`` (n, n_classes), the
  :meth:`predict_proba` of the model; the labels are in the metadata ``classes`` (JSON).
- A fitted :class:`fastrnn.SequenceRegressor`: output ``predictions``, (n,) or (n, k) as
  :meth:`predict` returns.
- A fitted :class:`fastrnn.SequenceTagger`: output ``probabilities`` (n, T, n_classes),
  its :meth:`predict_proba` (zero rows at padded steps); labels in the metadata ``classes``.

The gate orders differ: fastrnn (and PyTorch) store LSTM gates as i, f, g, o and GRU gates
as r, z, n; ONNX wants i, o, f, c and z, r, h, and PyTorch's GRU is ONNX's GRU with
``linear_before_reset=1``. The batch and time axes are dynamic (``batch``, ``time``).
The graph has the dtype of the exported object, or ``dtype``; onnxruntime's CPU
operators run float32 only, so export a float64 object with ``dtype="float32"`` to run it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx as onnx_

OPSET = 17
"""The ONNX opset of the exported models."""

# ONNX's gate blocks in terms of fastrnn's: fastrnn's block index for each ONNX block
_GATE_ORDER = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}  # iofc <- ifgo; zrh <- rzn
_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
# fastrnn activation -> (ONNX activation, alpha or None, beta or None)
_RNN_ACTIVATIONS = {
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "leaky_relu": ("LeakyRelu", "negative_slope", None),
    "identity": ("Affine", 1.0, 0.0),
}
_ONNX_TYPES = {np.dtype(np.float32): 1, np.dtype(np.float64): 11}  # TensorProto.FLOAT, DOUBLE


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(
            "fastrnn.onnx.export needs the onnx package: pip install 'fastrnn[onnx]' "
            f"(it installs onnx and onnxruntime); importing it failed: {exc}"
        ) from exc
    return onnx


class _Graph:
    """Nodes, initializers, inputs and outputs of the graph being built."""

    def __init__(self, onnx: Any, dtype: np.dtype) -> None:
        self.onnx = onnx
        self.dtype = dtype
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        """An initializer; float arrays in the graph's dtype."""
        name = self.name(stem)
        if value.dtype.kind == "f":
            value = value.astype(self.dtype, copy=False)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), outs, **attrs))
        return outs

    def one(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.node(op, inputs, **attrs)[0]

    def input(self, name: str, elem: int, shape: Sequence[str | int]) -> str:
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, name: str, source: str, shape: Sequence[str | int]) -> None:
        self.nodes.append(self.onnx.helper.make_node("Identity", [source], [name]))
        elem = _ONNX_TYPES[self.dtype]
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem, list(shape)))

    def float_input(self, name: str, shape: Sequence[str | int]) -> str:
        return self.input(name, _ONNX_TYPES[self.dtype], shape)

    def model(self, graph_name: str, metadata: dict[str, str]) -> Any:
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="fastrnn",
        )
        helper.set_model_props(model, metadata)
        self.onnx.checker.check_model(model, full_check=True)
        return model


def _check_layer(layer: Any) -> None:
    from . import layers

    if not isinstance(layer, (layers.RNN, layers.LSTM, layers.GRU)):
        raise TypeError(
            "export() takes a fastrnn.layers.RNN, LSTM or GRU, or a fitted "
            f"SequenceClassifier, SequenceRegressor or SequenceTagger; got {type(layer).__name__}"
        )


def _direction_weights(layer: Any, index: int, direction: int) -> tuple[np.ndarray, ...]:
    """W (G*H, D), R (G*H, H), B (2*G*H,) of one layer and direction in ONNX's gate order."""
    H = layer.hidden_size
    blocks = _GATE_ORDER[_cell(layer)]
    suffix = f"_l{index}{'_reverse' if direction else ''}"  # PyTorch's names (layers.py)

    def reordered(stem: str) -> np.ndarray:
        a = layer.params[stem + suffix]
        return np.concatenate([a[g * H : (g + 1) * H] for g in blocks], axis=0)

    B = np.concatenate([reordered("bias_ih"), reordered("bias_hh")])
    return reordered("weight_ih"), reordered("weight_hh"), B


def _cell(layer: Any) -> str:
    """``"rnn"``, ``"lstm"`` or ``"gru"`` for a checked layer."""
    return str(type(layer).__name__).lower()


def _activation_attrs(layer: Any) -> dict[str, Any]:
    if _cell(layer) != "rnn":
        return {}
    op, alpha, beta = _RNN_ACTIVATIONS[layer.activation]
    dirs = layer.num_directions
    attrs: dict[str, Any] = {"activations": [op] * dirs}
    if alpha == "negative_slope":
        alpha = float(layer.negative_slope)
    if alpha is not None:
        attrs["activation_alpha"] = [float(alpha)] * dirs
    if beta is not None:
        attrs["activation_beta"] = [float(beta)] * dirs
    return attrs


def _stack(
    g: _Graph,
    layer: Any,
    x: str,
    seq_lens: str,
    h0: str | None,
    c0: str | None,
) -> tuple[str, str, str | None]:
    """The ONNX nodes of a layer stack on time-major ``x`` (T, B, D): return the names of
    its output (T, B, dirs*H), h_n (L*dirs, B, H) and c_n (LSTM) or None."""
    cell, H, dirs = _cell(layer), layer.hidden_size, layer.num_directions
    op = _OPS[cell]
    attrs: dict[str, Any] = {
        "hidden_size": H,
        "direction": "bidirectional" if dirs == 2 else "forward",
        **_activation_attrs(layer),
    }
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    h_parts, c_parts = [], []
    inp = x
    for index in range(layer.num_layers):
        Ws, Rs, Bs = zip(*(_direction_weights(layer, index, d) for d in range(dirs)), strict=True)
        W = g.const(f"W_l{index}", np.stack(Ws))
        R = g.const(f"R_l{index}", np.stack(Rs))
        B = g.const(f"B_l{index}", np.stack(Bs))
        rows = slice(index * dirs, (index + 1) * dirs)
        init_h = "" if h0 is None else _slice0(g, h0, rows)
        inputs = [inp, W, R, B, seq_lens, init_h]
        if cell == "lstm":
            inputs.append("" if c0 is None else _slice0(g, c0, rows))
        n_out = 3 if cell == "lstm" else 2
        outs = g.node(op, inputs, n_out=n_out, **attrs)
        # Y (T, dirs, B, H) -> (T, B, dirs*H)
        y = g.one("Transpose", [outs[0]], perm=[0, 2, 1, 3])
        inp = g.one("Reshape", [y, g.const("shape", np.array([0, 0, -1], dtype=np.int64))])
        h_parts.append(outs[1])
        if cell == "lstm":
            c_parts.append(outs[2])
    h_n = h_parts[0] if len(h_parts) == 1 else g.one("Concat", h_parts, axis=0)
    c_n = None
    if c_parts:
        c_n = c_parts[0] if len(c_parts) == 1 else g.one("Concat", c_parts, axis=0)
    return inp, h_n, c_n


def _slice0(g: _Graph, source: str, rows: slice) -> str:
    starts = g.const("starts", np.array([rows.start], dtype=np.int64))
    ends = g.const("ends", np.array([rows.stop], dtype=np.int64))
    axes = g.const("axes", np.array([0], dtype=np.int64))
    return g.one("Slice", [source, starts, ends, axes])


def _lengths_input(g: _Graph, lengths: bool, batch: str) -> str:
    """The ``sequence_lens`` operand: the int64 input ``lengths`` cast to int32, or ""."""
    if not lengths:
        return ""
    name = g.input("lengths", g.onnx.TensorProto.INT64, [batch])
    return g.one("Cast", [name], to=g.onnx.TensorProto.INT32)


def _export_layer(
    onnx: Any, layer: Any, lengths: bool, initial_state: bool, dtype: np.dtype | None
) -> Any:
    _check_layer(layer)
    g = _Graph(onnx, layer.dtype if dtype is None else dtype)
    layout = ["batch", "time"] if layer.batch_first else ["time", "batch"]
    x = g.float_input("x", [*layout, layer.input_size])
    if layer.batch_first:
        x = g.one("Transpose", [x], perm=[1, 0, 2])
    seq_lens = _lengths_input(g, lengths, "batch")
    h0 = c0 = None
    state_shape = [layer.num_layers * layer.num_directions, "batch", layer.hidden_size]
    if initial_state:
        h0 = g.float_input("h0", state_shape)
        if _cell(layer) == "lstm":
            c0 = g.float_input("c0", state_shape)
    out, h_n, c_n = _stack(g, layer, x, seq_lens, h0, c0)
    if layer.batch_first:
        out = g.one("Transpose", [out], perm=[1, 0, 2])
    g.output("output", out, [*layout, layer.num_directions * layer.hidden_size])
    g.output("h_n", h_n, state_shape)
    if c_n is not None:
        g.output("c_n", c_n, state_shape)
    return g.model(f"fastrnn_{type(layer).__name__}", {"fastrnn_object": repr(layer)})


def _export_model(onnx: Any, model: Any, lengths: bool, dtype: np.dtype | None) -> Any:
    """A fitted model: input ``X`` (n, T, D) through its recurrent stack and linear head to
    the output of ``predict_proba`` (classifiers, tagger) or ``predict`` (regressor)."""
    from .models import SequenceClassifier, SequenceTagger

    model._check_fitted()
    rnn, head = model._parts["rnn"], model._parts["head"]  # every exported model's parts
    g = _Graph(onnx, rnn.dtype if dtype is None else dtype)
    X = g.float_input("X", ["batch", "time", rnn.input_size])
    x = g.one("Transpose", [X], perm=[1, 0, 2])
    seq_lens = _lengths_input(g, lengths, "batch")
    out, h_n, _ = _stack(g, rnn, x, seq_lens, None, None)
    weight = g.const("head_weight", head.params["weight"].T)
    bias = g.const("head_bias", head.params["bias"])
    n_out = head.out_features
    metadata = {"fastrnn_object": repr(model)}
    if hasattr(model, "classes_"):
        metadata["classes"] = json.dumps(model.classes_.tolist())
    if isinstance(model, SequenceTagger):
        # every step: (T, B, dirs*H) -> (B, T, dirs*H) -> softmax of the head, zero at
        # padded steps as predict_proba gives them
        z = g.one(
            "Add", [g.one("MatMul", [g.one("Transpose", [out], perm=[1, 0, 2]), weight]), bias]
        )
        probs = g.one("Softmax", [z], axis=-1)
        if lengths:
            probs = g.one("Mul", [probs, _step_mask(g, X, "lengths")])
        g.output("probabilities", probs, ["batch", "time", n_out])
        return g.model(f"fastrnn_{type(model).__name__}", metadata)
    # many-to-one: the top layer's rows of h_n (dirs, B, H) -> (B, dirs*H), forward then
    # reverse (the reverse direction's final state has read each whole sequence)
    dirs, L = rnn.num_directions, rnn.num_layers
    top = _slice0(g, h_n, slice((L - 1) * dirs, L * dirs))
    feat = g.one("Transpose", [top], perm=[1, 0, 2])
    feat = g.one("Reshape", [feat, g.const("shape", np.array([0, -1], dtype=np.int64))])
    z = g.one("Add", [g.one("MatMul", [feat, weight]), bias])
    if isinstance(model, SequenceClassifier):
        if n_out == 1:  # the two-class model's one logit is z1 - z0
            zero = g.one("Mul", [z, g.const("zero", np.zeros((), dtype=g.dtype))])
            z = g.one("Concat", [zero, z], axis=1)
        probs = g.one("Softmax", [z], axis=1)
        g.output("probabilities", probs, ["batch", len(model.classes_)])
    elif model._meta["vector"]:  # a regressor fitted on y (n, k)
        g.output("predictions", z, ["batch", n_out])
    else:
        flat = g.one("Reshape", [z, g.const("shape", np.array([-1], dtype=np.int64))])
        g.output("predictions", flat, ["batch"])
    return g.model(f"fastrnn_{type(model).__name__}", metadata)


def _step_mask(g: _Graph, X: str, lengths: str) -> str:
    """(B, T, 1) of the graph's dtype: 1 at real steps (t < lengths[b]), 0 at padding
    (``X`` (B, T, D), ``lengths`` (B,) int64)."""
    T = g.one("Gather", [g.one("Shape", [X]), g.const("axis", np.array(1, dtype=np.int64))])
    zero, one = (g.const(stem, np.array(v, dtype=np.int64)) for stem, v in (("0", 0), ("1", 1)))
    steps = g.one(
        "Unsqueeze", [g.one("Range", [zero, T, one]), g.const("ax", np.array([0], dtype=np.int64))]
    )
    lens = g.one("Unsqueeze", [lengths, g.const("ax", np.array([1], dtype=np.int64))])
    real = g.one("Cast", [g.one("Less", [steps, lens])], to=_ONNX_TYPES[g.dtype])
    return g.one("Unsqueeze", [real, g.const("ax", np.array([2], dtype=np.int64))])


def export(
    obj: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    lengths: bool = False,
    initial_state: bool = False,
    dtype: Any = None,
) -> onnx_.ModelProto:
    """Export a layer or a fitted model to ONNX (opset 17); return the ``onnx.ModelProto``.

    Parameters
    ----------
    obj : fastrnn.layers.RNN, fastrnn.layers.LSTM, fastrnn.layers.GRU or a fitted model
        What to export: a layer, or a fitted SequenceClassifier, SequenceRegressor or
        SequenceTagger (see the module's documentation for inputs and outputs).
    path : str or os.PathLike, optional
        Where to write the ``.onnx`` file (None: only return the model).
    lengths : bool
        Add the input ``lengths`` (batch,) int64, each sequence's real length 1..T,
        ONNX's ``sequence_lens`` (without it every sequence has T steps).
    initial_state : bool
        Layers only: add the inputs ``h0`` (and ``c0`` for LSTM), (num_layers*dirs, B, H);
        without them the initial state is zero.
    dtype : {None, "float32", "float64"}
        The graph's float type (None: the dtype of ``obj``). onnxruntime's CPU ``RNN``,
        ``LSTM`` and ``GRU`` run float32 only: export a float64 object with
        ``dtype="float32"`` to run it there.

    Returns
    -------
    onnx.ModelProto
        The model, checked with ``onnx.checker.check_model``.

    Raises
    ------
    ImportError
        The ``onnx`` package is missing (``pip install 'fastrnn[onnx]'``).
    TypeError
        ``obj`` is not an exportable object, or ``initial_state`` with a model.
    NotFittedError
        A model before ``fit``.
    """
    from . import _validation as V
    from .models import SequenceClassifier, SequenceRegressor, SequenceTagger

    lengths = V.check_bool("lengths", lengths)
    initial_state = V.check_bool("initial_state", initial_state)
    if dtype is not None:
        dtype = V.check_float_dtype("dtype", dtype)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike or None, got {type(path).__name__}")
    onnx = _require_onnx()
    model: onnx_.ModelProto
    if isinstance(obj, (SequenceClassifier, SequenceRegressor, SequenceTagger)):
        if initial_state:
            raise TypeError(
                f"initial_state=True applies to layers only; a {type(obj).__name__} starts "
                "from a zero state"
            )
        model = _export_model(onnx, obj, lengths, dtype)
    else:
        model = _export_layer(onnx, obj, lengths, initial_state, dtype)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


__all__ = ["OPSET", "export"]
