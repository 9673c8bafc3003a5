"""``fastrnn bench``: every backend (and PyTorch, if installed) side by side.

By default it runs one training step end to end (layer forward, linear softmax head with
K classes, cross-entropy over every step, full backward) on the named shapes S1..S4,
float32, one thread, and prints for each backend the median time, microseconds per time
step, the speed-up over the NumPy reference, the achieved GFLOP/s and their share of the
GEMM throughput numpy reaches on the same machine in the same run, and the memory the
layer holds for the backward pass.

Examples::

    fastrnn bench --quick                      # under a minute
    fastrnn bench                              # S1..S4
    fastrnn bench --threads 1,2 --json out.json
    fastrnn bench --D 64 --H 128 --B 8 --T 500 --cells lstm,gru --dtype both
    fastrnn bench --scaling --plot scaling.png  # T = 1e2 .. 1e6, H=64, B=1 and 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _benchlib as lib

_DTYPES = {"float32": ("float32",), "float64": ("float64",), "both": ("float32", "float64")}
_ALL_BACKENDS = ("numpy", "numba", "cpp", "torch")  # table order: the reference first
_SCALING_TS = (100, 1_000, 10_000, 100_000, 1_000_000)
_SCALING_BATCHES = (1, 16)
_LONG = 10_000  # longer sequences warm up on one of _WARMUP_T steps (warm-up is not timed)
_WARMUP_T = 100
_MEMORY_SHARE = 0.8  # refuse a run whose estimate exceeds this share of available memory
_SETTLE = 0.25  # seconds between runs of different backends (OpenBLAS parks after ~0.1 s)
_SETTLE_QUICK = 0.02


@dataclass
class Row:
    """One measured (or not measured) combination; also the JSON record."""

    shape: str
    D: int
    H: int
    B: int
    T: int
    cell: str
    dtype: str
    threads: int
    backend: str = ""
    what: str = "train"
    status: str = "ok"  # ok | unavailable | skipped | error | wrong
    note: str = ""
    seconds: float | None = None  # median
    times: list[float] = field(default_factory=list)
    us_per_step: float | None = None
    speedup_vs_numpy: float | None = None
    speedup_vs_1_thread: float | None = None
    flops: float = 0.0
    gflops: float | None = None
    gemm_share: float | None = None
    held_bytes: int | None = None
    estimated_bytes: int = 0


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


def _csv(item: Any = str, choices: tuple[str, ...] | None = None):
    """An argparse type: a comma-separated list, each entry parsed by ``item`` and (if
    given) one of ``choices``."""

    def parse(text: str) -> list:
        entries = [s.strip() for s in text.split(",") if s.strip()]
        if not entries:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        for entry in entries:
            if choices is not None and entry not in choices:
                raise argparse.ArgumentTypeError(f"{entry!r} is not one of {', '.join(choices)}")
        return [item(e) for e in entries]

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastrnn bench``."""
    shapes = "\n".join(
        f"  {s.name}  {s.dims:<28} {','.join(s.cells)}" for s in lib.NAMED_SHAPES.values()
    )
    parser.description = f"""\
Benchmark every backend and PyTorch on the same recurrent workloads, checked against
the NumPy reference first; compile and warm-up are not timed.

named shapes (input D, hidden H, batch B, length T):
{shapes}

FLOP count (a multiply-add is 2; G gates: rnn 1, gru 3, lstm 4; K head classes):
  F = 2*G*H*(D+H)      the layer's forward, per step and sequence
  forward:  T*B*F      fwdbwd:  T*B*3*F      train:  T*B*3*(F + 2*H*K)
  (backward costs two GEMMs per forward GEMM; element-wise work is not counted)

%GEMM:   achieved GFLOP/s over numpy's (n x n) @ (n x n) GFLOP/s with the same dtype
         and thread count (--gemm-size n; best of 5 runs, measured before and after
         the benchmark in the same process; the better one counts)
bwd mem: bytes the layer holds for backward: hs and the saved activations (torch:
         its output and the tensors autograd saved in the layer's forward)"""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_argument_group("what to run")
    g.add_argument(
        "--quick", action="store_true", help="small shapes (S1..S4 shortened), 3 repeats"
    )
    g.add_argument(
        "--shapes",
        type=_csv(str, tuple(lib.NAMED_SHAPES)),
        help="named shapes to run (default: all of S1,S2,S3,S4)",
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
            help=f"custom shape: {meaning} (the others default to S1's; replaces --shapes)",
        )
    g.add_argument(
        "--scaling",
        action="store_true",
        help="long sequences: T = 1e2..1e6 (see --T-max) with H=64, D=32, B=1 and 16 "
        "(--H/--D/--B override), cell rnn unless --cells",
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
        type=_csv(str, _ALL_BACKENDS),
        help=f"comma-separated, from {','.join(_ALL_BACKENDS)} (default: all)",
    )
    g.add_argument(
        "--cells",
        type=_csv(str, lib.CELLS),
        help="comma-separated, from rnn,lstm,gru (default: each shape's cells)",
    )
    g.add_argument("--dtype", choices=tuple(_DTYPES), default="float32", help="default float32")
    g.add_argument(
        "--threads",
        type=_csv(_positive_int),
        default=[1],
        help="comma-separated thread counts, e.g. 1,2 (default 1): fastrnn's setting, "
        "numpy's BLAS (threadpoolctl) and torch.set_num_threads all get the same number",
    )
    g.add_argument(
        "--what",
        choices=lib.WHATS,
        default="train",
        help="train: layer + softmax head + loss, forward and backward (default); "
        "fwdbwd: the layer's forward and BPTT with a gradient at every step; "
        "forward: the layer's forward only",
    )
    g.add_argument(
        "--classes",
        type=_positive_int,
        default=lib.CLASSES,
        help=f"K, the head's output size (default {lib.CLASSES})",
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
        return [lib.Shape(f"B={B},T={T}", D, H, B, T) for B in batches for T in Ts]
    if any(getattr(args, d) for d in "DHBT"):
        s1 = lib.NAMED_SHAPES["S1"]
        dims = {d: getattr(args, d) or getattr(s1, d) for d in "DHBT"}
        return [lib.Shape("custom", **dims)]
    table = lib.QUICK_SHAPES if args.quick else lib.NAMED_SHAPES
    names = args.shapes or list(lib.NAMED_SHAPES)
    if args.quick:
        return [s for s in table.values() if s.name.split("/")[0] in names]
    return [table[n] for n in names]


def _repeat(args: argparse.Namespace, T: int) -> int:
    if args.repeat:
        return args.repeat
    if args.scaling:
        return 3 if T <= 10_000 else 1
    return 3 if args.quick else 5


def _plan(args: argparse.Namespace) -> list[Row]:
    """Every row to run, in table order: shape, cell, dtype, threads, backend."""
    backends = args.backends or list(_ALL_BACKENDS)
    rows = []
    for shape in _shapes(args):
        dims = {"D": shape.D, "H": shape.H, "B": shape.B, "T": shape.T}
        cells = args.cells or (("rnn",) if args.scaling else shape.cells)
        for cell, dtype, threads, backend in itertools.product(
            cells, _DTYPES[args.dtype], args.threads, backends
        ):
            row = Row(shape.name, **dims, cell=cell, dtype=dtype, threads=threads)
            row.backend, row.what = backend, args.what
            row.flops = lib.flops(cell, **dims, what=args.what, classes=args.classes)
            row.estimated_bytes = lib.estimate_bytes(
                cell, **dims, dtype=dtype, what=args.what, classes=args.classes, backend=backend
            )
            rows.append(row)
    return rows


def _unavailable(backends: set[str]) -> dict[str, str]:
    """Each requested backend that cannot run, with the reason."""
    import fastrnn

    reasons = {}
    available = set(fastrnn.available_backends())
    for name, why in fastrnn.unavailable_backends().items():
        if name in backends and name not in available:
            reasons[name] = why
    if "torch" in backends:
        why = lib.torch_unavailable_reason()
        if why:
            reasons["torch"] = why
    return reasons


# --- running -----------------------------------------------------------------------------


def _prepare(args: argparse.Namespace, row: Row, case: Any) -> None:
    """Check ``row``'s backend against the reference (once per backend, cell and dtype, in
    ``_checked``) and warm it up (compile, first touch)."""
    key = (row.backend, row.cell, row.dtype)
    with lib.thread_limit(row.threads):
        if key not in _checked:
            _checked[key] = lib.check_against_reference(*key, row.what)
        if _checked[key]:
            raise _Wrong(_checked[key])
        if row.T > _LONG:  # warm up (compile) on a short sequence of the same kind
            short = (row.cell, row.D, row.H, row.B, _WARMUP_T, row.dtype)
            lib.make_runner(lib.make_case(*short, args.classes), row.backend, row.what).run()
        else:
            lib.make_runner(case, row.backend, row.what).run()


class _Wrong(Exception):
    """A backend disagrees with the reference: the row is reported, not timed."""


_checked: dict[tuple[str, str, str], str | None] = {}


def _run_rows(args: argparse.Namespace, rows: list[Row], unavailable: dict[str, str]) -> None:
    """Time every row. The rows of one case (shape, cell, dtype) run in rounds, each round
    timing every backend and thread count once: a slow spell of the machine (a busy
    neighbour on a shared vCPU, lasting seconds) then falls on all of them alike, and the
    ratios (x numpy, x 1thr) compare runs made seconds apart rather than minutes. Each timed
    run follows an untimed run of the same row, so every backend is timed in its steady
    state as in a training loop (NumPy's runs right after another backend's ran up to 1.6x
    slower, two in five, here). Before a run whose backend differs from the previous
    run's, the process sleeps ``_SETTLE`` seconds so that the spinning worker threads of
    OpenBLAS or OpenMP go to sleep instead of taking CPU time from the next backend's. A
    runner lives for one untimed and one timed run only: the layers keep what the last
    forward saved, and one case's rows must not hold that all at once."""
    from tqdm import tqdm

    from ._sysinfo import available_memory

    _checked.clear()
    limit = available_memory()
    repeats = {id(r): _repeat(args, r.T) for r in rows}
    settle = _SETTLE_QUICK if args.quick else _SETTLE
    # disable=None: a progress bar on a terminal, nothing in logs and pipes
    bar = tqdm(
        total=sum(repeats.values()), desc="fastrnn bench", unit="run", file=sys.stderr, disable=None
    )
    with bar:
        for (shape, cell, dtype), group in itertools.groupby(
            rows, key=lambda r: (r.shape, r.cell, r.dtype)
        ):
            bar.set_postfix_str(f"{shape} {cell} {dtype}")
            group = list(group)
            case = None
            ready: list[Row] = []
            for row in group:
                try:
                    if row.backend in unavailable:
                        row.status, row.note = "unavailable", unavailable[row.backend]
                    elif limit is not None and row.estimated_bytes > _MEMORY_SHARE * limit:
                        row.status = "skipped"
                        row.note = (
                            "would not fit in memory: needs about "
                            f"{_fmt_bytes(row.estimated_bytes)}, {_fmt_bytes(limit)} available"
                        )
                    else:
                        if case is None:
                            case = lib.make_case(
                                cell, row.D, row.H, row.B, row.T, dtype, args.classes
                            )
                        _prepare(args, row, case)
                        ready.append(row)
                        continue
                except _Wrong as exc:
                    row.status, row.note = "wrong", str(exc)
                except MemoryError:
                    row.status, row.note = "skipped", "ran out of memory"
                except Exception as exc:  # one failing backend must not lose the other rows
                    row.status, row.note = "error", f"{type(exc).__name__}: {exc}"
                bar.update(repeats[id(row)])
            # a backend's runs next to each other (1 thread, then 2, ...), backends in order
            ready.sort(key=lambda r: (_ALL_BACKENDS.index(r.backend), r.threads))
            previous = ""  # the warm-ups ran last: settle before the first run too
            for _ in range(max((repeats[id(r)] for r in ready), default=0)):
                for row in ready:
                    if row.status != "ok" or len(row.times) >= repeats[id(row)]:
                        continue
                    if previous != row.backend:
                        time.sleep(settle)
                    previous = row.backend
                    try:
                        with lib.thread_limit(row.threads):
                            runner = lib.make_runner(case, row.backend, row.what)
                            runner.run()  # untimed: back in this row's steady state
                        _time_once(row, runner)
                        del runner
                    except MemoryError:
                        row.status, row.note = "skipped", "ran out of memory"
                        bar.update(repeats[id(row)] - len(row.times) - 1)
                    except Exception as exc:
                        row.status, row.note = "error", f"{type(exc).__name__}: {exc}"
                        bar.update(repeats[id(row)] - len(row.times) - 1)
                    bar.update()
            del case
    for row in rows:
        if row.status == "ok":
            row.seconds = statistics.median(row.times)
            row.us_per_step = row.seconds / row.T * 1e6
            row.gflops = row.flops / row.seconds / 1e9


def _time_once(row: Row, runner: lib.Runner) -> None:
    """One timed run of ``runner`` at ``row``'s thread count; on the first, the memory the
    result holds for backward."""
    with lib.thread_limit(row.threads):
        t0 = time.perf_counter()
        raw = runner.run()
        row.times.append(time.perf_counter() - t0)
    if row.held_bytes is None:
        row.held_bytes = runner.held_bytes(raw)


def _derive(rows: list[Row], gemm: dict[tuple[str, int], float]) -> None:
    """Speed-ups against numpy and against the same backend's 1-thread run; GEMM share."""

    def key(r: Row, **kw: Any) -> tuple:
        d = asdict(r) | kw
        return (d["shape"], d["cell"], d["dtype"], d["threads"], d["backend"])

    ok = {key(r): r for r in rows if r.status == "ok"}
    for r in rows:
        if r.status != "ok":
            continue
        ref = ok.get(key(r, backend="numpy"))
        if ref is not None:
            r.speedup_vs_numpy = ref.seconds / r.seconds
        single = ok.get(key(r, threads=1))
        if single is not None and r.threads != 1:
            r.speedup_vs_1_thread = single.seconds / r.seconds
        peak = gemm.get((r.dtype, r.threads))
        if peak:
            r.gemm_share = r.gflops / peak


# --- output ------------------------------------------------------------------------------


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"  # pragma: no cover


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _sig(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits and no exponent (12345.6 -> 12346)."""
    if value is None:
        return "-"
    if value == 0 or not math.isfinite(value):
        return str(value)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_table(rows: list[Row]) -> str:
    """The result table as aligned text."""
    multi_thread = any(r.threads != 1 for r in rows)
    head = ["shape", "dims", "cell", "dtype", "thr", "backend", "seconds", "us/step"]
    head += ["x numpy"] + (["x 1thr"] if multi_thread else []) + ["GFLOP/s", "%GEMM", "bwd mem"]
    table = [head]
    for r in rows:
        line = [r.shape, f"{r.D},{r.H},{r.B},{r.T}", r.cell, r.dtype, str(r.threads), r.backend]
        if r.status == "ok":
            line += [
                _sig(r.seconds),
                _sig(r.us_per_step),
                _fmt(r.speedup_vs_numpy, ".2f"),
            ]
            if multi_thread:
                line.append(_fmt(r.speedup_vs_1_thread, ".2f"))
            share = None if r.gemm_share is None else 100 * r.gemm_share
            line += [_sig(r.gflops, 3), _fmt(share, ".1f"), _fmt_bytes(r.held_bytes)]
        else:
            line.append(f"{r.status} (see below)" if r.status != "unavailable" else "unavailable")
        table.append(line)
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(len(head))]
    out = []
    for i, line in enumerate(table):
        cells = []
        for j, text in enumerate(line):
            last = j == len(line) - 1
            if j < 6:
                cells.append(text if last else text.ljust(widths[j]))
            else:
                cells.append(text if len(line) < len(head) else text.rjust(widths[j]))
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def _notes(rows: list[Row], unavailable: dict[str, str]) -> list[str]:
    """Why rows were not measured: each reason once, with the backends it applies to."""
    notes = [f"{name}: unavailable: {why}" for name, why in unavailable.items()]
    grouped: dict[tuple, list[str]] = {}
    for r in rows:
        if r.status in ("skipped", "error", "wrong"):
            key = (r.shape, r.cell, r.dtype, r.threads, r.status, r.note)
            grouped.setdefault(key, []).append(r.backend)
    for (shape, cell, dtype, threads, status, note), backends in grouped.items():
        where = f"{shape} {cell} {dtype} {threads} thread(s) {', '.join(backends)}"
        notes.append(f"{where}: {status}: {note}")
    return notes


def _plot(path: str, rows: list[Row], title: str) -> None:
    """Time per step and memory held for backward against T, log-log: one colour and
    marker per backend, one line style per remaining configuration (B, H, cell, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple, dict[str, list[Row]]] = {}
    for r in rows:
        if r.status == "ok":
            config = (r.cell, r.dtype, r.threads, r.D, r.H, r.B)
            series.setdefault(config, {}).setdefault(r.backend, []).append(r)
    styles = ("-", "--", ":", "-.")
    markers = {"numpy": "o", "numba": "s", "cpp": "^", "torch": "D"}
    colors = {name: f"C{i}" for i, name in enumerate(_ALL_BACKENDS)}
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5.2))
    for i, (config, by_backend) in enumerate(sorted(series.items())):
        cell, dtype, threads, _D, H, B = config
        for backend, rs in by_backend.items():
            rs = sorted(rs, key=lambda r: r.T)
            style = {
                "color": colors[backend],
                "marker": markers[backend],
                "linestyle": styles[i % len(styles)],
                "markerfacecolor": "none",
                "label": f"{backend} {cell} H={H} B={B} {dtype} {threads}thr",
            }
            ax_t.plot([r.T for r in rs], [r.us_per_step for r in rs], **style)
            mem = [(r.T, r.held_bytes / 2**20) for r in rs if r.held_bytes]
            if mem:
                ax_m.plot(*zip(*mem, strict=True), **style)
    for ax, ylabel in ((ax_t, "microseconds per time step"), (ax_m, "held for backward (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    skipped = sorted({f"{r.shape} {r.cell}" for r in rows if r.status == "skipped"})
    if skipped:
        title += "\nnot run (would not fit in memory): " + ", ".join(skipped)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 4), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the command -------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; print the table; 0 on success."""
    from ._sysinfo import format_system_info, system_info

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "fastrnn bench: --plot needs matplotlib; pip install 'fastrnn[plot]'",
                file=sys.stderr,
            )
            return 2
    if args.scaling and args.quick:
        print("fastrnn bench: choose --scaling or --quick, not both", file=sys.stderr)
        return 2

    info = system_info()
    print(format_system_info(info))
    rows = _plan(args)
    unavailable = _unavailable({r.backend for r in rows})

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
    what = {
        "train": "one training step (layer + linear softmax head, K="
        f"{args.classes}, + cross-entropy, forward and backward)",
        "fwdbwd": "the layer's forward and BPTT, a gradient entering at every step",
        "forward": "the layer's forward pass (saving what backward needs)",
    }[args.what]
    print(f"timing:   {what}; median of the timed runs after one warm-up (compile excluded)")
    print("          rounds: every backend and thread count once per round, each timed run after")
    print("          an untimed one of its own")
    print()

    _run_rows(args, rows, unavailable)
    measure_gemm(gemm)  # again: the machine may have been busier at the start
    _derive(rows, gemm)

    print(format_table(rows))
    print()
    for note in _notes(rows, unavailable):
        print(f"note: {note}")
    print(gemm_line("the better of before and after the runs (used for %GEMM)"))
    print(f"FLOPs:    {lib.FLOP_FORMULA}")

    if args.json:
        doc = {
            "command": "fastrnn bench",
            "arguments": {k: v for k, v in vars(args).items() if k != "func"},
            "system": info,
            "gemm_gflops": [
                {"dtype": d, "threads": t, "n": args.gemm_size, "gflops": g}
                for (d, t), g in gemm.items()
            ],
            "flop_formula": lib.FLOP_FORMULA,
            "unavailable": unavailable,
            "results": [asdict(r) for r in rows],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        title = f"fastrnn bench ({args.what}) on {info['cpu']}"
        _plot(args.plot, rows, title)
        print(f"wrote {args.plot}")
    failed = [r for r in rows if r.status in ("error", "wrong")]
    return 1 if failed else 0
