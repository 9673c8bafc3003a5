"""``fastrnn gradflow``: tanh, ReLU with a large recurrent gain, IRNN, LSTM and GRU side
by side: the norm of the gradient that a loss at the last step sends back ``k`` steps
(:func:`fastrnn.diagnostics.gradient_norms_by_lag`) and the spectral bound of ``W_hh``
(:func:`fastrnn.diagnostics.recurrent_spectrum`), as a table and a PNG."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from ..diagnostics import gradient_norms_by_lag, recurrent_spectrum
from . import _plot


@dataclass(frozen=True)
class _Row:
    label: str
    cell: str
    activation: str
    init: str
    gain: float
    gate_bias: float  # added to the lstm forget / gru update gate bias


def _rows(args: argparse.Namespace) -> list[_Row]:
    """The five cells of the picture: PyTorch's default init unless the row says otherwise."""
    relu = f"relu (orthogonal W, gain {args.relu_gain:g})"
    bias = args.gate_bias
    return [
        _Row("tanh", "rnn", "tanh", "uniform", 1.0, 0.0),
        _Row(relu, "rnn", "relu", "orthogonal", args.relu_gain, 0.0),
        _Row("irnn (relu, W = I)", "rnn", "relu", "identity", 1.0, 0.0),
        _Row(f"lstm (forget bias +{bias:g})", "lstm", "tanh", "uniform", 1.0, bias),
        _Row(f"gru (update bias +{bias:g})", "gru", "tanh", "uniform", 1.0, bias),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastrnn gradflow``."""
    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.add_argument("--steps", "-T", type=int, default=1000, help="sequence length T")
    parser.add_argument("--hidden", type=int, default=32, help="hidden size H")
    parser.add_argument("--input", type=int, default=4, help="input size D")
    parser.add_argument("--batch", type=int, default=8, help="sequences to average over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--relu-gain", type=float, default=2.0, help="recurrent gain of the relu row"
    )
    parser.add_argument(
        "--gate-bias",
        type=float,
        default=6.0,
        help="added to the lstm forget-gate and gru update-gate biases: they keep memory "
        "open for about 1/(1 - sigmoid(bias)) steps (chrono-style: about ln T)",
    )
    parser.add_argument("--backend", default=None, help="numpy, numba, cpp or auto")
    parser.add_argument(
        "--output", "-o", default="gradflow.png", help="where to write the PNG (matplotlib)"
    )
    parser.add_argument("--no-plot", action="store_true", help="print the table only")


def run(args: argparse.Namespace) -> int:
    """Measure every row, print the table, write the PNG when matplotlib is there.

    Returns 0, or 2 after printing the error when an option is invalid."""
    try:
        curves, bounds = _measure(args)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"fastrnn gradflow: error: {exc}", file=sys.stderr)
        return 2
    return _report(args, curves, bounds)


def _measure(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The norm-against-lag curve and the spectral bound of every row."""
    if args.steps < 1:
        raise ValueError(f"--steps must be a positive int, got {args.steps}")
    curves: dict[str, np.ndarray] = {}
    bounds: dict[str, str] = {}
    for row in _rows(args):
        p = F.init_params(
            row.cell,
            args.input,
            args.hidden,
            init=row.init,
            seed=args.seed,
            gain=row.gain,
            dtype=np.float64,
        )
        H = args.hidden
        p["b_ih"][H : 2 * H] += row.gate_bias  # lstm f, gru z: the second gate block
        spec = recurrent_spectrum(p, row.cell, activation=row.activation)
        bounds[row.label] = "-" if spec.bound is None else f"{spec.bound:.2f}"
        with np.errstate(over="ignore", invalid="ignore"):
            curves[row.label] = gradient_norms_by_lag(
                row.cell,
                p,
                args.steps,
                activation=row.activation,
                batch=args.batch,
                seed=args.seed,
                backend=args.backend,
            )
    return curves, bounds


def _report(args: argparse.Namespace, curves: dict[str, np.ndarray], bounds: dict[str, str]) -> int:
    """Print the table; plot when matplotlib is installed and the plot is wanted."""
    T = args.steps
    lags = [k for k in (1, 10, 100, 1000) if k <= T]
    width = max(len(label) for label in curves)
    print(
        f"||dL/dh_(T-1-k)|| for a loss at the last step, T={T}, H={args.hidden}, "
        f"mean over {args.batch} sequences (lag 0 = 1);\nbound = ||W_hh||_2 * max|act'| "
        "(rnn: below 1 the gradient must vanish, above 1 it can explode)"
    )
    print(f"{'cell':<{width}}  {'bound':>6}  " + "  ".join(f"{'lag ' + str(k):>9}" for k in lags))
    for label, norms in curves.items():
        cells = "  ".join(f"{norms[k]:9.2e}" for k in lags)
        print(f"{label:<{width}}  {bounds[label]:>6}  {cells}")
    if args.no_plot:
        return 0
    if not _plot.available():
        print(f"no plot: matplotlib is not installed; `{_plot.INSTALL_HINT}` to get {args.output}")
        return 0
    _plot.gradient_flow(args.output, curves, T, args.hidden)
    print(f"wrote {args.output}")
    return 0
