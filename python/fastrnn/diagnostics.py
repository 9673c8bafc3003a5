"""Gradient-flow diagnostics: how much a loss at the last step still depends on step k.

The course's central question: BPTT multiplies one Jacobian ``dh_t/dh_{t-1}`` per step,
``diag(act'(a_t)) W_hh`` for the vanilla RNN, so the gradient reaching a step ``k`` steps
back from the loss shrinks or grows roughly like ``(||W_hh||_2 * max|act'|)^k``. This
module measures that and predicts it:

- :func:`gradient_norms_by_lag`: ``||dL/dh_{T-1-k}||`` against the lag ``k`` for a loss at
  the last step, for a set of params or a layer (any backend);
- :func:`recurrent_spectrum`: the spectral radius and largest singular value of each gate
  block of ``W_hh`` and the bound ``||W_hh||_2 * max|act'|`` (below 1 the gradient of a
  vanilla RNN must vanish; above 1 it can explode);
- :func:`gradcheck`: a finite-difference check of ``backward`` that users can run on their
  own params and inputs.

The ``fastrnn gradflow`` command, which draws these for five cells side by side, is
:mod:`fastrnn.cli.gradflow`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validation as V
from . import functional as F
from ._moved import moved_names

__all__ = [
    "GradcheckError",
    "GradcheckReport",
    "RecurrentSpectrum",
    "gradcheck",
    "gradient_norms_by_lag",
    "recurrent_spectrum",
]

GATE_NAMES: dict[str, tuple[str, ...]] = {
    "rnn": ("h",),
    "lstm": ("i", "f", "g", "o"),
    "gru": ("r", "z", "n"),
}


# --- helpers -----------------------------------------------------------------------------


def _resolve(
    cell: object, params: object, activation: str, negative_slope: float, layer: int
) -> tuple[str, dict[str, np.ndarray], str, float]:
    """``(cell, params, activation, slope)`` from a cell name and params, or from a layer.

    A layer is a :class:`fastrnn.RNN`, :class:`fastrnn.LSTM` or :class:`fastrnn.GRU`; its
    parameters are read through the public PyTorch names (``weight_hh_l{layer}`` ...). A
    model (anything else) stands for the first such layer among its attributes.
    """
    if isinstance(cell, str):
        V.check_choice("cell", cell, F.CELLS)
        p, _, _ = V.check_params(cell, params)
        return cell, p, activation, negative_slope
    from . import layers  # only when a layer or model is given: layers are optional here

    kinds = {layers.RNN: "rnn", layers.LSTM: "lstm", layers.GRU: "gru"}

    def recurrent(obj: object) -> layers.RNN | layers.LSTM | layers.GRU | None:
        return obj if isinstance(obj, (layers.RNN, layers.LSTM, layers.GRU)) else None

    found = recurrent(cell)
    if found is None and hasattr(cell, "__dict__"):  # a model: its first recurrent layer
        values = list(vars(cell).values())
        values += [v for d in vars(cell).values() if isinstance(d, dict) for v in d.values()]
        held = [r for r in map(recurrent, values) if r is not None]
        if not held and not isinstance(cell, type):
            raise TypeError(
                f"{type(cell).__name__} has no RNN/LSTM/GRU layer (yet: fit a model first); "
                "cell must be 'rnn', 'lstm', 'gru', a fastrnn.RNN/LSTM/GRU layer or a model "
                "that holds one"
            )
        if held:
            found = held[0]
    if found is None:
        raise TypeError(
            "cell must be 'rnn', 'lstm', 'gru', a fastrnn.RNN/LSTM/GRU layer or a model "
            f"that holds one, got {type(cell).__name__}"
        )
    name = next(kinds[k] for k in kinds if isinstance(found, k))
    if params is not None:
        raise TypeError("params must be None when a layer is given (its own params are used)")
    if V.check_non_negative_int("layer", layer) >= found.num_layers:
        raise ValueError(f"layer must be an int in 0..{found.num_layers - 1}, got {layer!r}")
    torch_names = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
    raw = {k: found.params[f"{v}_l{layer}"] for k, v in torch_names.items()}
    p, _, _ = V.check_params(name, raw)
    act = found.activation if name == "rnn" else "tanh"
    return name, p, act, found.negative_slope


# --- gradient norm against lag -------------------------------------------------------------


def gradient_norms_by_lag(
    cell: Any,
    params: Mapping[str, np.ndarray] | None = None,
    T: int = 100,
    *,
    activation: str = "tanh",
    negative_slope: float = 0.01,
    batch: int = 8,
    seed: int | None = 0,
    input_scale: float = 1.0,
    layer: int = 0,
    backend: str | None = None,
    reduce: str = "mean",
) -> np.ndarray:
    """The norm of the gradient that a loss at the last step sends back ``k`` steps.

    Runs ``batch`` random sequences of ``T`` steps (inputs ~ N(0, input_scale^2), drawn
    with ``seed``) through the layer and takes the loss ``L = <u_b, h_{T-1}>`` with a random
    unit vector ``u_b`` per sequence, so that the gradient at lag 0 has norm 1. Returns
    ``norms[k] = ||dL/dh_{T-1-k}||`` for ``k = 0..T`` (lag ``T`` is the initial state
    ``h0``): the mean over the batch (``reduce="mean"``, shape (T+1,)) or every sequence
    (``reduce="none"``, shape (T+1, batch)). Computed in the params' dtype with
    ``backward(..., return_step_norms=True)`` on ``backend``.

    ``cell`` is ``"rnn"``, ``"lstm"`` or ``"gru"`` with ``params`` (and ``activation``
    for rnn), or a :class:`fastrnn.RNN`/``LSTM``/``GRU`` layer or a fitted model with
    ``params=None`` (layer ``layer`` of its first recurrent stack, forward direction, is
    measured).
    """
    cell, p, activation, negative_slope = _resolve(cell, params, activation, negative_slope, layer)
    T = V.check_positive_int("T", T)
    batch = V.check_positive_int("batch", batch)
    input_scale = V.check_non_negative_float("input_scale", input_scale)
    V.check_choice("reduce", reduce, ("mean", "none"))
    dtype = p["W_hh"].dtype
    D, H = p["W_ih"].shape[1], p["W_hh"].shape[1]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, batch, D)) * input_scale).astype(dtype)
    u = rng.standard_normal((batch, H))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    res = F.forward(
        cell, p, x, activation=activation, negative_slope=negative_slope, backend=backend
    )
    g = F.backward(res, dh_n=u.astype(dtype), return_step_norms=True)
    norms = np.empty((T + 1, batch), dtype=np.float64)
    assert g.step_norms is not None  # asked for with return_step_norms=True
    norms[:T] = g.step_norms[::-1]
    norms[T] = np.linalg.norm(g.dh0.astype(np.float64), axis=1)
    return norms.mean(axis=1) if reduce == "mean" else norms


# --- the spectrum of W_hh ---------------------------------------------------------------------


@dataclass(frozen=True)
class RecurrentSpectrum:
    """What :func:`recurrent_spectrum` returns.

    ``spectral_radius`` and ``largest_singular_value``: per gate block of ``W_hh``
    (``"h"`` for rnn; ``"i", "f", "g", "o"`` for lstm; ``"r", "z", "n"`` for gru).
    ``activation_derivative_max``: ``max |act'|`` of the rnn activation (1 for tanh, relu
    and identity, ``max(1, slope)`` for leaky relu); ``bound`` = ``||W_hh||_2 *
    max|act'|`` bounds the norm of every step's Jacobian ``dh_t/dh_{t-1}``. Both are
    ``None`` for lstm and gru, whose gates (the forget gate's additive cell path, the
    update gate's carry) rather than ``W_hh`` alone decide the flow.
    """

    cell: str
    spectral_radius: dict[str, float]
    largest_singular_value: dict[str, float]
    activation_derivative_max: float | None
    bound: float | None

    @property
    def prediction(self) -> str:
        """``"vanishing"`` (bound < 1: guaranteed for a vanilla RNN), ``"may explode"``
        (bound > 1: necessary, not sufficient, for exploding), ``"neutral"`` (bound 1),
        or ``"gated"`` (lstm/gru: measure with :func:`gradient_norms_by_lag`)."""
        if self.bound is None:
            return "gated"
        if self.bound < 1 - 1e-9:
            return "vanishing"
        if self.bound > 1 + 1e-9:
            return "may explode"
        return "neutral"


def recurrent_spectrum(
    params: Any,
    cell: str | None = None,
    *,
    activation: str = "tanh",
    negative_slope: float = 0.01,
    layer: int = 0,
) -> RecurrentSpectrum:
    """Spectral radius and largest singular value of each gate block of ``W_hh``, and
    the bound ``||W_hh||_2 * max|act'|`` that predicts vanishing (< 1) or exploding (> 1)
    gradients of a vanilla RNN (Pascanu et al., 2013).

    ``params`` is a params dict (``cell`` is then inferred from the shape of ``W_hh``
    unless given) or a :class:`fastrnn.RNN`/``LSTM``/``GRU`` layer.
    """
    if isinstance(params, Mapping):
        if cell is None:
            W = np.asarray(params.get("W_hh"))
            ratio = W.shape[0] // W.shape[1] if W.ndim == 2 and W.shape[1] else 0
            cell = {1: "rnn", 4: "lstm", 3: "gru"}.get(ratio)
            if cell is None:
                raise ValueError(
                    f"params['W_hh'] has shape {W.shape}, expected (G*H, H) with G = 1 (rnn), "
                    "4 (lstm) or 3 (gru); pass cell= to say which"
                )
        V.check_choice("activation", activation, F.ACTIVATIONS)
        slope = V.check_non_negative_float("negative_slope", negative_slope)
        cell, p, activation, slope = _resolve(cell, params, activation, slope, layer)
    else:
        if cell is not None:
            raise TypeError("cell must be None when a layer is given")
        cell, p, activation, slope = _resolve(params, None, activation, negative_slope, layer)
    W = p["W_hh"].astype(np.float64)
    H = W.shape[1]
    radius, sigma = {}, {}
    for k, gate in enumerate(GATE_NAMES[cell]):
        block = W[k * H : (k + 1) * H]
        radius[gate] = float(np.max(np.abs(np.linalg.eigvals(block))))
        sigma[gate] = float(np.linalg.norm(block, 2))
    if cell != "rnn":
        return RecurrentSpectrum(cell, radius, sigma, None, None)
    gamma = max(1.0, slope) if activation == "leaky_relu" else 1.0
    return RecurrentSpectrum(cell, radius, sigma, gamma, sigma["h"] * gamma)


# --- finite-difference gradient check -------------------------------------------------------


@dataclass(frozen=True)
class GradcheckReport:
    """What :func:`gradcheck` returns.

    ``ok``: every checked entry passed ``|analytic - numeric| <= atol + rtol * |numeric|``.
    ``checked``: how many entries were compared; ``max_ratio[name]``: the largest
    ``|analytic - numeric| / (atol + rtol * |numeric|)`` for each argument (<= 1 passes);
    ``worst``: ``(name, index, analytic, numeric)`` of the entry with the largest ratio.
    """

    ok: bool
    checked: int
    max_ratio: dict[str, float]
    worst: tuple[str, tuple[int, ...], float, float] | None
    rtol: float
    atol: float

    def __str__(self) -> str:
        head = f"gradcheck {'passed' if self.ok else 'FAILED'}: {self.checked} entries"
        if self.worst is None:
            return head
        name, idx, a, n = self.worst
        return (
            f"{head}; worst {name}[{', '.join(map(str, idx))}]: analytic {a:.10g}, "
            f"finite differences {n:.10g} (|diff| {abs(a - n):.3g}, allowed "
            f"{self.atol + self.rtol * abs(n):.3g})"
        )


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when an entry disagrees; ``.report`` has the details."""

    def __init__(self, report: GradcheckReport) -> None:
        super().__init__(str(report))
        self.report = report


def gradcheck(
    cell: str,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
    *,
    activation: str = "tanh",
    negative_slope: float = 0.01,
    lengths: np.ndarray | None = None,
    backend: str | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    max_entries: int | None = 64,
    seed: int | None = 0,
    raise_on_failure: bool = True,
) -> GradcheckReport:
    """Check :func:`fastrnn.backward` against central finite differences at your input.

    The loss is ``L = <dhs, hs> + <dh_n, h_n> (+ <dc_n, c_n>)`` with random upstream
    gradients (drawn with ``seed``). Every array (``x``, ``h0``, ``c0`` for lstm, and each
    param) is checked at up to ``max_entries`` random entries (all if ``None``); each
    entry costs two forward passes on ``backend``. As with ``torch.autograd.gradcheck``,
    the check runs in float64 (float32 inputs are cast), because finite differences in
    float32 are too coarse to judge. Note that a ReLU kink within ``eps`` of an entry can
    fail an entry whose gradient is right.

    Returns a :class:`GradcheckReport`; with ``raise_on_failure`` (default), a failed
    check raises :class:`GradcheckError` naming the worst entry instead.
    """
    eps = V.check_positive_float("eps", eps)
    rtol = V.check_non_negative_float("rtol", rtol)
    atol = V.check_non_negative_float("atol", atol)
    if max_entries is not None:
        max_entries = V.check_positive_int("max_entries", max_entries)
    # one validating call with the caller's arguments: every error names the argument
    first = F.forward(
        cell,
        params,
        x,
        h0,
        c0,
        activation=activation,
        negative_slope=negative_slope,
        lengths=lengths,
        backend=backend,
    )
    # token ids (no gradient) stay as they are, every other input is checked
    ids = first.x if first.token_ids else None
    arrays = {} if first.token_ids else {"x": first.x}
    arrays |= {"h0": first.h0, **first.params}
    if first.c0 is not None:  # lstm
        arrays["c0"] = first.c0
    arrays = {k: np.array(v, dtype=np.float64) for k, v in arrays.items()}
    p = {k: arrays[k] for k in F.PARAM_NAMES}
    lens = first.lengths
    T, B, H = first.hs.shape
    rng = np.random.default_rng(seed)
    up = {
        "dhs": rng.standard_normal((T, B, H)),
        "dh_n": rng.standard_normal((B, H)),
        "dc_n": rng.standard_normal((B, H)) if cell == "lstm" else None,
    }

    def run() -> F.ForwardResult:
        return F.forward(
            cell,
            p,
            arrays["x"] if ids is None else ids,
            arrays["h0"],
            arrays.get("c0"),
            activation=activation,
            negative_slope=negative_slope,
            lengths=lens,
            backend=first.backend,
        )

    def loss() -> float:
        r = run()
        total = float(np.sum(up["dhs"] * r.hs)) + float(np.sum(up["dh_n"] * r.h_n))
        if r.c_n is not None:
            total += float(np.sum(up["dc_n"] * r.c_n))
        return total

    g = F.backward(run(), up["dhs"], up["dh_n"], up["dc_n"])
    analytic = {"h0": g.dh0, **g.params}
    if g.dx is not None:
        analytic["x"] = g.dx
    if g.dc0 is not None:  # lstm
        analytic["c0"] = g.dc0
    checked, max_ratio, worst, worst_ratio = 0, {}, None, -1.0
    for name, arr in arrays.items():
        flat = arr.reshape(-1)  # a view: perturbing it perturbs arr
        n = flat.size
        picks = (
            np.arange(n)
            if max_entries is None or n <= max_entries
            else (rng.choice(n, size=max_entries, replace=False))
        )
        max_ratio[name] = 0.0
        for i in picks:
            old = flat[i]
            flat[i] = old + eps
            up_loss = loss()
            flat[i] = old - eps
            down_loss = loss()
            flat[i] = old
            numeric = (up_loss - down_loss) / (2 * eps)
            idx = tuple(int(j) for j in np.unravel_index(int(i), arr.shape))
            a = float(analytic[name][idx])
            ratio = (
                abs(a - numeric) / (atol + rtol * abs(numeric))
                if atol or rtol
                else (0.0 if a == numeric else math.inf)
            )
            if not math.isfinite(a) or not math.isfinite(numeric):
                ratio = math.inf
            checked += 1
            max_ratio[name] = max(max_ratio[name], ratio)
            if ratio > worst_ratio:
                worst, worst_ratio = (name, idx, a, numeric), ratio
    report = GradcheckReport(
        ok=worst_ratio <= 1.0,
        checked=checked,
        max_ratio=max_ratio,
        worst=worst,
        rtol=rtol,
        atol=atol,
    )
    if not report.ok and raise_on_failure:
        raise GradcheckError(report)
    return report


# --- moved to fastrnn.cli.gradflow -----------------------------------------------------------

# add_arguments and run (the `fastrnn gradflow` command) still work, with a DeprecationWarning
__getattr__ = moved_names(__name__, dict.fromkeys(("add_arguments", "run"), "fastrnn.cli.gradflow"))
