"""``fastrnn bench``: every backend (and PyTorch, if installed) side by side.

By default it runs one training step end to end (layer forward, linear softmax head with
K classes, cross-entropy over every step, full backward) on the named shapes S1..S4,
float32, one thread, and prints for each backend the median time, microseconds per time
step, the speed-up over the NumPy reference, the achieved GFLOP/s and their share of the
GEMM throughput numpy reaches on the same machine in the same run, and the memory the
layer holds for the backward pass. With ``--what charlm`` it times the real workload
instead: one training step of a character language model (:class:`fastrnn.CharLanguageModel`
as ``fit`` runs it: one-hot input, V = 100, head, Adam, clipping) against the same model in
PyTorch, on LM128 and LM512 (H = 128 and 512, T = 64, B = 32), LSTM and GRU; the column
``x torch`` is torch's time over the row's (above 1: faster than PyTorch). With ``--what
inference`` it times the layer's forward with ``training=False`` (nothing saved for
backward; torch under ``inference_mode``) and, in the same rounds, the training forward
(``--what forward``) of every backend: the column ``x fwd`` is the training forward's time
over the inference forward's, same backend, case and threads. The row ``fastrnn.torch``
is the PyTorch drop-in: the torch row's model with ``fastrnn.torch.RNN/LSTM/GRU`` in place
of ``torch.nn``'s (its ``x torch`` is the speed-up a PyTorch user gets from
``fastrnn.torch.convert``); ``--what packed`` times the training step with a
``PackedSequence`` input (lengths spread over 1..T) for these two rows.

The library behind it (cases, runners, schedule, report) is :mod:`fastrnn.bench`.

Examples::

    fastrnn bench --quick                      # under a minute
    fastrnn bench                              # S1..S4
    fastrnn bench --threads 1,all --json out.json
    fastrnn bench --what charlm --threads 1,all  # the char-LM step against PyTorch
    fastrnn bench --what inference --shapes S2   # inference forward vs training forward
    fastrnn bench --shapes S1,S2 --backends torch,fastrnn.torch --threads 1,all  # drop-in
    fastrnn bench --what packed --threads 1,all  # PackedSequence: torch.nn vs the drop-in
    fastrnn bench --D 64 --H 128 --B 8 --T 500 --cells lstm,gru --dtype both
    fastrnn bench --scaling --plot scaling.png  # T = 1e2 .. 1e6, H=64, B=1 and 16
    fastrnn bench --scaling --cells lstm --checkpoint sqrt --plot ckpt.png  # full vs ckpt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable

from .. import _sysinfo
from .. import bench as lib
from ..bench import report, schedule
from ..functional import CELLS
from . import _plot
from .train import checkpoint_option

_DTYPES = {"float32": ("float32",), "float64": ("float64",), "both": ("float32", "float64")}
_SCALING_TS = (100, 1_000, 10_000, 100_000, 1_000_000)
_SCALING_BATCHES = (1, 16)
_ALL_SHAPES = {**lib.NAMED_SHAPES, **lib.LM_SHAPES}


def _positive_int(text: str) -> int:
    """An argparse type: one whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _csv(
    item: Callable[[str], object] = str, choices: tuple[str, ...] | None = None
) -> Callable[[str], list[object]]:
    """An argparse type: a comma-separated list, each entry parsed by ``item`` and (if
    given) one of ``choices``."""

    def parse(text: str) -> list[object]:
        entries = [s.strip() for s in text.split(",") if s.strip()]
        if not entries:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        for entry in entries:
            if choices is not None and entry not in choices:
                raise argparse.ArgumentTypeError(f"{entry!r} is not one of {', '.join(choices)}")
        return [item(e) for e in entries]

    return parse


def _thread_count(text: str) -> int:
    """An argparse type: a thread count, or ``all`` for every usable core."""
    return _sysinfo.usable_cores() if text == "all" else _positive_int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastrnn bench``."""
    shapes = "\n".join(
        f"  {s.name:<5} {s.dims:<28} {','.join(s.cells)}" for s in _ALL_SHAPES.values()
    )
    parser.description = f"""\
Benchmark every backend and PyTorch on the same recurrent workloads, checked against
the NumPy reference first; compile and warm-up are not timed.

named shapes (input D, hidden H, batch B, length T):
{shapes}

FLOP count (a multiply-add is 2; G gates: rnn 1, gru 3, lstm 4; K head classes):
  F = 2*G*H*(D+H)      the layer's forward, per step and sequence
  forward, inference:  T*B*F      fwdbwd:  T*B*3*F      train, charlm:  T*B*3*(F + 2*H*K)
  (backward costs two GEMMs per forward GEMM; element-wise work is not counted;
  charlm: K = D, the vocabulary; Adam and clipping are element-wise)

x numpy, x torch: numpy's (torch's) median time over this row's, same case and threads
x fwd:   (--what inference) the same backend's training forward's median time over this
         inference row's, same case and threads, timed in the same rounds

%GEMM:   achieved GFLOP/s over numpy's (n x n) @ (n x n) GFLOP/s with the same dtype
         and thread count (--gemm-size n; best of 5 runs, measured before and after
         the benchmark in the same process; the better one counts)
bwd mem: bytes the layer holds for backward: hs and the saved activations (torch:
         its output and the tensors autograd saved in the layer's forward); inference:
         what is saved beyond the output, which should be 0 B"""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_argument_group("what to run")
    g.add_argument(
        "--quick",
        action="store_true",
        help="small shapes (S1..S4 shortened; charlm: T=16), 3 repeats",
    )
    g.add_argument(
        "--shapes",
        type=_csv(str, tuple(_ALL_SHAPES)),
        help="named shapes to run (default: S1,S2,S3,S4; with --what charlm LM128,LM512; "
        "with --what packed S2)",
    )
    for dim, meaning in (
        ("D", "input size"),
        ("H", "hidden size"),
        ("B", "batch"),
        ("T", "length"),
    ):
        g.add_argument(
            f"--{dim}",
            type=_positive_int,
            help=f"custom shape: {meaning} (the others default to S1's, with --what charlm "
            "to LM128's; replaces --shapes)",
        )
    g.add_argument(
        "--scaling",
        action="store_true",
        help="long sequences: T = 1e2..1e6 (see --T-max) with H=64, D=32, B=1 and 16 "
        "(--H/--D/--B override), cell rnn unless --cells",
    )
    g.add_argument(
        "--checkpoint",
        type=checkpoint_option,
        metavar="{sqrt,K,max_bytes=N}",
        help="--scaling: each shape also with checkpointed BPTT (fastrnn backends), side "
        "by side with full BPTT (e.g. --cells lstm --checkpoint sqrt)",
    )
    g.add_argument(
        "--T-max",
        dest="T_max",
        type=_positive_int,
        default=_SCALING_TS[-1],
        help="--scaling: the longest sequence (default 1000000)",
    )
    g.add_argument(
        "--backends",
        type=_csv(str, lib.BACKENDS),
        help=f"comma-separated, from {','.join(lib.BACKENDS)} (default: all)",
    )
    g.add_argument(
        "--cells",
        type=_csv(str, CELLS),
        help="comma-separated, from rnn,lstm,gru (default: each shape's cells)",
    )
    g.add_argument("--dtype", choices=tuple(_DTYPES), default="float32", help="default float32")
    g.add_argument(
        "--threads",
        type=_csv(_thread_count),
        default=[1],
        help="comma-separated thread counts, e.g. 1,2 or 1,all (all: every usable core; "
        "default 1): fastrnn's setting, numpy's BLAS (threadpoolctl) and "
        "torch.set_num_threads all get the same number",
    )
    g.add_argument(
        "--what",
        choices=lib.WHATS,
        default="train",
        help="train: layer + softmax head + loss, forward and backward (default); "
        "fwdbwd: the layer's forward and BPTT with a gradient at every step; "
        "forward: the layer's forward only; inference: the layer's forward with "
        "training=False (nothing saved for backward; torch: inference_mode), timed with "
        "the training forward for the ratio x fwd; charlm: one training step of a character "
        "language model (one-hot input of D characters, softmax head, Adam, clipping) "
        "as CharLanguageModel.fit runs it, against the same model in PyTorch "
        "(default shapes LM128,LM512); packed: the train step with a PackedSequence input "
        "(lengths spread over 1..T), torch.nn against the drop-in fastrnn.torch only "
        "(default shape S2)",
    )
    g.add_argument(
        "--classes",
        type=_positive_int,
        default=lib.CLASSES,
        help=f"K, the head's output size (default {lib.CLASSES}; charlm: K = D)",
    )
    g.add_argument(
        "--repeat",
        type=_positive_int,
        help="timed runs per row after one warm-up; the median is reported "
        "(default 5, --quick 3, --scaling 3 up to T=1e4 and 1 above)",
    )
    g.add_argument(
        "--gemm-size",
        type=_positive_int,
        default=1024,
        help="n of the reference GEMM (default 1024)",
    )
    o = parser.add_argument_group("output")
    o.add_argument("--json", metavar="PATH", help="also write every row and the machine to PATH")
    o.add_argument(
        "--plot",
        metavar="PATH",
        help="draw time per step and memory against T (log axes) to a PNG; "
        "needs matplotlib (pip install 'fastrnn[plot]')",
    )


# --- planning ----------------------------------------------------------------------------


def _shapes(args: argparse.Namespace) -> list[lib.Shape]:
    if args.scaling:
        D = args.D or 32
        H = args.H or 64
        batches = (args.B,) if args.B else _SCALING_BATCHES
        Ts = [T for T in _SCALING_TS if T <= args.T_max] or [args.T_max]
        cells = ("rnn",)
        settings = [None] if args.checkpoint is None else [None, args.checkpoint]
        return [
            lib.Shape(
                f"B={B},T={T}" + ("" if c is None else f",ckpt={_label(c)}"), D, H, B, T, cells, c
            )
            for B in batches
            for T in Ts
            for c in settings
        ]
    lm = args.what == "charlm"
    if any(getattr(args, d) for d in "DHBT"):
        base = _ALL_SHAPES["LM128" if lm else "S1"]
        dims = {d: getattr(args, d) or getattr(base, d) for d in "DHBT"}
        return [lib.Shape("custom", **dims, cells=base.cells)]
    default = ["S2"] if args.what == "packed" else list(lib.NAMED_SHAPES)
    names = args.shapes or (list(lib.LM_SHAPES) if lm else default)
    if args.quick:
        quick = {**lib.QUICK_SHAPES, **lib.QUICK_LM_SHAPES}
        return [s for s in quick.values() if s.name.split("/")[0] in names]
    return [_ALL_SHAPES[n] for n in names]


def _label(checkpoint: object) -> str:
    if isinstance(checkpoint, dict):
        return f"max_bytes={checkpoint['max_bytes']}"
    return str(checkpoint)


def _repeat(args: argparse.Namespace, T: int) -> int:
    if args.repeat:
        return int(args.repeat)
    if args.scaling:
        return 3 if T <= 10_000 else 1
    return 3 if args.quick else 5


# --- the command -------------------------------------------------------------------------


_WHAT = {
    "train": "one training step (layer + linear softmax head, K={classes}, + cross-entropy, "
    "forward and backward)",
    "fwdbwd": "the layer's forward and BPTT, a gradient entering at every step",
    "forward": "the layer's forward pass (saving what backward needs)",
    "inference": "the layer's forward pass with training=False (saving nothing for backward; "
    "torch: under inference_mode), and in the same rounds the training forward "
    "(--what forward) for x fwd",
    "charlm": "one training step of a character LM as CharLanguageModel.fit runs it "
    "(one-hot input, V = K = D, softmax head, cross-entropy, backward, clip_norm 5, Adam "
    "lr 0.01) against the same model in PyTorch (nn.LSTM/GRU + nn.Linear + "
    "CrossEntropyLoss + clip_grad_norm_ + Adam)",
    "packed": "one training step (layer + linear softmax head, K={classes}, + cross-entropy, "
    "forward and backward) on a PackedSequence (lengths spread over T..1, unsorted; packing "
    "timed), torch.nn against the drop-in fastrnn.torch",
}


def _dropin_backend() -> str:
    """The fastrnn backend the drop-in rows run on (the configured one), or why none."""
    import fastrnn

    try:
        return fastrnn.get_backend()
    except (RuntimeError, ValueError) as exc:
        return f"(none: {exc})"


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; print the table; 0 on success."""
    if args.plot and not _plot.available():
        print(f"fastrnn bench: --plot needs matplotlib; {_plot.INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.scaling and args.quick:
        print("fastrnn bench: choose --scaling or --quick, not both", file=sys.stderr)
        return 2
    if args.checkpoint is not None and not args.scaling:
        print("fastrnn bench: --checkpoint goes with --scaling", file=sys.stderr)
        return 2

    if "fastrnn.torch" in (args.backends or lib.BACKENDS):
        # before any row: the import hands PyTorch's OpenMP team to the cpp kernels' workers,
        # for every row of the run (the header's `threads=` says where they run)
        with contextlib.suppress(ImportError):  # no torch: the rows say it is unavailable
            import fastrnn.torch  # noqa: F401
    info = _sysinfo.system_info()
    if info["numba_target"] and "numba" in info["backends"]:
        from fastrnn.backends import numba_backend

        info["numba_target"]["blas"] = numba_backend.blas_name()
    print(_sysinfo.format_system_info(info))
    rows = schedule.plan(
        _shapes(args),
        cells=args.cells,
        dtypes=_DTYPES[args.dtype],
        threads=args.threads,
        backends=args.backends or lib.BACKENDS,
        what=args.what,
        classes=args.classes,
    )
    unavailable = schedule.unavailable({r.backend for r in rows})

    def measure_gemm(gemm: dict[tuple[str, int], float]) -> None:
        for dtype in _DTYPES[args.dtype]:
            for threads in sorted(set(args.threads) | {1}):
                g = lib.gemm_gflops(dtype, args.gemm_size, threads)
                gemm[(dtype, threads)] = max(g, gemm.get((dtype, threads), 0.0))

    def gemm_line(when: str) -> str:
        done = ", ".join(
            f"{'s' if d == 'float32' else 'd'}gemm {t} thread(s) {g:.1f} GFLOP/s"
            for (d, t), g in gemm.items()
        )
        return f"GEMM:     numpy, n={args.gemm_size}, best of 5, {when}: {done}"

    gemm: dict[tuple[str, int], float] = {}
    measure_gemm(gemm)
    print(gemm_line("before the runs"))
    what = _WHAT[args.what].format(classes=args.classes)
    print(f"timing:   {what}; median of the timed runs after one warm-up (compile excluded)")
    print("          rounds: every backend, thread count and workload once per round, each timed")
    print(f"          run after {schedule.WARM_RUNS} untimed ones of its own")
    if any(r.backend == "fastrnn.torch" for r in rows):
        print(
            f"drop-in:  fastrnn.torch = the torch row's model with fastrnn.torch's modules, "
            f"running fastrnn's {_dropin_backend()} backend"
        )
    print()

    schedule.run_rows(
        rows,
        repeats=lambda r: _repeat(args, r.T),
        unavailable=unavailable,
        classes=args.classes,
        settle=schedule.SETTLE_QUICK if args.quick else schedule.SETTLE,
    )
    measure_gemm(gemm)  # again: the machine may have been busier at the start
    report.derive(rows, gemm)

    print(report.format_table(rows))
    print()
    for note in report.notes(rows, unavailable):
        print(f"note: {note}")
    print(gemm_line("the better of before and after the runs (used for %GEMM)"))
    print(f"FLOPs:    {lib.FLOP_FORMULA}")

    if args.json:
        doc = report.document(
            rows,
            arguments={k: v for k, v in vars(args).items() if k != "func"},
            system=info,
            gemm=gemm,
            gemm_size=args.gemm_size,
            unavailable=unavailable,
        )
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        title = f"fastrnn bench ({args.what}) on {info['cpu']}"
        # one workload per plot: the one asked for (not the training forward beside it)
        plotted = [r for r in rows if r.what == args.what]
        _plot.scaling(args.plot, plotted, title, lib.BACKENDS)
        print(f"wrote {args.plot}")
    failed = [r for r in rows if r.status in ("error", "wrong")]
    return 1 if failed else 0
