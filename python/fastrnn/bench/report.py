"""The results of ``fastrnn bench``: one :class:`Row` per measured combination, the ratios
derived from them, and the table, the notes and the JSON document that report them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .cases import FLOP_FORMULA

# table order: the reference first; "fastrnn.torch" is the PyTorch drop-in (fastrnn.torch)
BACKENDS: tuple[str, ...] = ("numpy", "numba", "cpp", "torch", "fastrnn.torch")


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
    checkpoint: str = ""  # checkpointed BPTT: the setting, "" for full BPTT
    status: str = "ok"  # ok | unavailable | skipped | error | wrong
    note: str = ""
    seconds: float | None = None  # median
    times: list[float] = field(default_factory=list)
    us_per_step: float | None = None
    speedup_vs_numpy: float | None = None
    speedup_vs_torch: float | None = None  # torch's time / this row's: above 1 is faster
    speedup_vs_1_thread: float | None = None
    # inference rows: the training forward's time / this row's (same backend, case, threads)
    speedup_vs_forward: float | None = None
    flops: float = 0.0
    gflops: float | None = None
    gemm_share: float | None = None
    held_bytes: int | None = None
    estimated_bytes: int = 0


def derive(rows: list[Row], gemm: dict[tuple[str, int], float]) -> None:
    """Speed-ups against numpy, against torch, against the same backend's 1-thread run
    and (inference rows) against the same backend's training forward, each a ratio of times
    measured in the same run; the share of the GEMM throughput ``gemm[(dtype, threads)]``."""

    def key(r: Row, **kw: Any) -> tuple[str, str, str, int, str, str]:
        d = asdict(r) | kw
        return (d["shape"], d["cell"], d["dtype"], d["threads"], d["backend"], d["what"])

    # a measured row: status "ok", its median time and throughput set
    seconds = {key(r): r.seconds for r in rows if r.status == "ok" and r.seconds is not None}
    for r in rows:
        if r.status != "ok" or r.seconds is None:
            continue
        for peer, attr in (("numpy", "speedup_vs_numpy"), ("torch", "speedup_vs_torch")):
            ref = seconds.get(key(r, backend=peer))
            if ref is not None:
                setattr(r, attr, ref / r.seconds)
        single = seconds.get(key(r, threads=1))
        if single is not None and r.threads != 1:
            r.speedup_vs_1_thread = single / r.seconds
        training = seconds.get(key(r, what="forward"))
        if training is not None and r.what == "inference":
            r.speedup_vs_forward = training / r.seconds
        peak = gemm.get((r.dtype, r.threads))
        if peak and r.gflops is not None:
            r.gemm_share = r.gflops / peak


def fmt_bytes(n: float | None) -> str:
    """``n`` bytes in B, KiB, MiB, GiB or TiB; ``-`` for None."""
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
    """The result table as aligned text. ``what`` appears when the rows time more than one
    workload, ``x torch`` when a torch row was measured, ``x 1thr`` when more than one
    thread count was, ``x fwd`` when inference rows were."""
    multi_what = len({r.what for r in rows}) > 1
    multi_thread = any(r.threads != 1 for r in rows)
    vs_torch = any(r.backend == "torch" and r.status == "ok" for r in rows)
    vs_forward = any(r.what == "inference" for r in rows)
    text_columns = 6 + multi_what  # left-aligned; the numbers after them right-aligned
    head = ["shape", "dims", "cell", "dtype", "thr", "backend"] + ["what"] * multi_what
    head += ["seconds", "us/step", "x numpy"] + ["x torch"] * vs_torch
    head += ["x 1thr"] * multi_thread + ["x fwd"] * vs_forward + ["GFLOP/s", "%GEMM", "bwd mem"]
    table = [head]
    for r in rows:
        line = [r.shape, f"{r.D},{r.H},{r.B},{r.T}", r.cell, r.dtype, str(r.threads), r.backend]
        line += [r.what] * multi_what
        if r.status == "ok":
            line += [_sig(r.seconds), _sig(r.us_per_step), _fmt(r.speedup_vs_numpy, ".2f")]
            if vs_torch:
                line.append(_fmt(r.speedup_vs_torch, ".2f"))
            if multi_thread:
                line.append(_fmt(r.speedup_vs_1_thread, ".2f"))
            if vs_forward:
                line.append(_fmt(r.speedup_vs_forward, ".2f"))
            share = None if r.gemm_share is None else 100 * r.gemm_share
            line += [_sig(r.gflops, 3), _fmt(share, ".1f"), fmt_bytes(r.held_bytes)]
        else:
            line.append(f"{r.status} (see below)" if r.status != "unavailable" else "unavailable")
        table.append(line)
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(len(head))]
    out = []
    for i, line in enumerate(table):
        cells = []
        for j, text in enumerate(line):
            last = j == len(line) - 1
            if j < text_columns:
                cells.append(text if last else text.ljust(widths[j]))
            else:
                cells.append(text if len(line) < len(head) else text.rjust(widths[j]))
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def notes(rows: list[Row], unavailable: dict[str, str]) -> list[str]:
    """Why rows were not measured: each reason once, with the backends it applies to (and
    their workload, when the rows time more than one)."""
    multi_what = len({r.what for r in rows}) > 1
    out = [f"{name}: unavailable: {why}" for name, why in unavailable.items()]
    grouped: dict[tuple[str, str, str, int, str, str], list[str]] = {}
    for r in rows:
        if r.status in ("skipped", "error", "wrong"):
            key = (r.shape, r.cell, r.dtype, r.threads, r.status, r.note)
            name = f"{r.backend} ({r.what})" if multi_what else r.backend
            grouped.setdefault(key, []).append(name)
    for (shape, cell, dtype, threads, status, note), backends in grouped.items():
        where = f"{shape} {cell} {dtype} {threads} thread(s) {', '.join(backends)}"
        out.append(f"{where}: {status}: {note}")
    return out


def document(
    rows: list[Row],
    *,
    arguments: dict[str, Any],
    system: dict[str, Any],
    gemm: dict[tuple[str, int], float],
    gemm_size: int,
    unavailable: dict[str, str],
) -> dict[str, Any]:
    """The JSON document of a run: the arguments, the machine, the GEMM reference, every
    row."""
    return {
        "command": "fastrnn bench",
        "arguments": arguments,
        "system": system,
        "gemm_gflops": [
            {"dtype": d, "threads": t, "n": gemm_size, "gflops": g} for (d, t), g in gemm.items()
        ],
        "flop_formula": FLOP_FORMULA,
        "unavailable": unavailable,
        "results": [asdict(r) for r in rows],
    }
