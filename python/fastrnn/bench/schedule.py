"""Planning and running the rows of ``fastrnn bench``: which combinations, in which
order, checked against the reference and warmed up first, timed in rounds."""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence

from .. import _sysinfo
from . import cases, runners
from .report import BACKENDS, Row, fmt_bytes

# untimed runs of a fresh runner before each timed one: its first step allocates the
# optimizer's state, and its second still pays first touches of memory (a char-LM GRU step,
# H = 128: 11.6 ms as a fresh runner's second run, 10.3 ms as its third, cpp, 1 thread)
WARM_RUNS = 2
LONG = 10_000  # longer sequences warm up on one of WARMUP_T steps (warm-up is not timed)
WARMUP_T = 100
MEMORY_SHARE = 0.8  # refuse a run whose estimate exceeds this share of available memory
SETTLE = 0.25  # seconds between runs of different backends (OpenBLAS parks after ~0.1 s)
SETTLE_QUICK = 0.02


def plan(
    shapes: Iterable[cases.Shape],
    *,
    cells: Sequence[str] | None,
    dtypes: Sequence[str],
    threads: Sequence[int],
    backends: Sequence[str],
    what: str,
    classes: int = cases.CLASSES,
) -> list[Row]:
    """Every row to run, in table order: shape, cell, dtype, threads, backend, workload
    (``what`` and the workloads timed with it, :func:`fastrnn.bench.cases.timed_whats`).
    ``cells`` None means each shape's own cells. The ``packed`` workload has rows for
    :data:`~fastrnn.bench.cases.PACKED_BACKENDS` only."""
    rows = []
    if what == "packed":
        backends = [b for b in backends if b in cases.PACKED_BACKENDS]
    for shape in shapes:
        dims = {"D": shape.D, "H": shape.H, "B": shape.B, "T": shape.T}
        for cell, dtype, n, backend, workload in itertools.product(
            cells or shape.cells, dtypes, threads, backends, cases.timed_whats(what)
        ):
            row = Row(shape.name, shape.D, shape.H, shape.B, shape.T, cell, dtype, n)
            row.backend, row.what = backend, workload
            row.checkpoint = "" if shape.checkpoint is None else str(shape.checkpoint)
            row.flops = cases.flops(cell, **dims, what=workload, classes=classes)
            row.estimated_bytes = cases.estimate_bytes(
                cell,
                **dims,
                dtype=dtype,
                what=workload,
                classes=classes,
                backend=backend,
                checkpoint=shape.checkpoint,
            )
            rows.append(row)
    return rows


def unavailable(backends: set[str]) -> dict[str, str]:
    """Each requested backend that cannot run, with the reason."""
    import fastrnn

    reasons = {}
    available = set(fastrnn.available_backends())
    for name, why in fastrnn.unavailable_backends().items():
        if name in backends and name not in available:
            reasons[name] = why
    for peer in runners.PEERS:
        if peer in backends:
            torch_why = runners.torch_unavailable_reason(peer)
            if torch_why:
                reasons[peer] = torch_why
    return reasons


def too_big(estimated: int, available: int | None) -> str | None:
    """Why a run needing about ``estimated`` bytes must not start when ``available`` bytes
    are free (more than :data:`MEMORY_SHARE` of them), or ``None`` if it may."""
    if available is None or estimated <= MEMORY_SHARE * available:
        return None
    return (
        f"would not fit in memory: needs about {fmt_bytes(estimated)}, "
        f"{fmt_bytes(available)} available"
    )


def _checkpoint(row: Row) -> int | str | None:
    """The row's ``checkpoint`` setting as :func:`fastrnn.forward` takes it."""
    if not row.checkpoint:
        return None
    return int(row.checkpoint) if row.checkpoint.isdigit() else row.checkpoint


class Wrong(Exception):
    """A backend disagrees with the reference: the row is reported, not timed."""


_checked: dict[tuple[str, str, str, str], str | None] = {}


def _prepare(row: Row, case: cases.Case, classes: int) -> None:
    """Check ``row``'s backend against the reference (once per backend, cell, dtype and
    workload, in ``_checked``) and warm it up (compile, first touch)."""
    key = (row.backend, row.cell, row.dtype, row.what)
    with runners.thread_limit(row.threads):
        if key not in _checked:
            _checked[key] = runners.check_against_reference(*key)
        if _checked[key]:
            raise Wrong(_checked[key])
        if row.T > LONG:  # warm up (compile) on a short sequence of the same kind
            short = (row.cell, row.D, row.H, row.B, WARMUP_T, row.dtype, classes)
            case = cases.make_case(*short, what=row.what)
        runners.make_runner(case, row.backend, row.what).run()


def run_rows(
    rows: list[Row],
    *,
    repeats: Callable[[Row], int],
    unavailable: dict[str, str],
    classes: int = cases.CLASSES,
    settle: float = SETTLE,
) -> None:
    """Time every row (``repeats(row)`` timed runs each); fill in status, times, median.

    The rows of one case (shape, cell, dtype) run in rounds, each round timing every
    backend, thread count and workload once: a slow spell of the machine (a busy neighbour
    on a shared vCPU, lasting seconds) then falls on all of them alike, and the ratios
    (x numpy, x torch, x 1thr, x fwd) compare runs made seconds apart rather than minutes.
    Each timed run follows :data:`WARM_RUNS` untimed runs of the same row, so every backend
    is timed in its steady state as in a training loop (NumPy's runs right after another
    backend's ran up to 1.6x slower, two in five, here). Before a run whose backend differs
    from the previous run's, the process sleeps ``settle`` seconds so that the spinning
    worker threads of OpenBLAS or OpenMP go to sleep instead of taking CPU time from the next
    backend's. A runner lives for its untimed runs and one timed run only: the layers keep
    what the last forward saved, and one case's rows must not hold that all at once."""
    from tqdm import tqdm

    _checked.clear()
    limit = _sysinfo.available_memory()
    counts = {id(r): repeats(r) for r in rows}
    # disable=None: a progress bar on a terminal, nothing in logs and pipes
    bar = tqdm(
        total=sum(counts.values()), desc="fastrnn bench", unit="run", file=sys.stderr, disable=None
    )
    with bar:
        for (shape, cell, dtype), group in itertools.groupby(
            rows, key=lambda r: (r.shape, r.cell, r.dtype)
        ):
            bar.set_postfix_str(f"{shape} {cell} {dtype}")
            case = None
            ready: list[Row] = []
            for row in group:
                try:
                    if row.backend in unavailable:
                        row.status, row.note = "unavailable", unavailable[row.backend]
                    elif (big := too_big(row.estimated_bytes, limit)) is not None:
                        row.status, row.note = "skipped", big
                    else:
                        if case is None:
                            dims = (row.D, row.H, row.B, row.T)
                            case = cases.make_case(
                                cell,
                                *dims,
                                dtype,
                                classes,
                                what=row.what,
                                checkpoint=_checkpoint(row),
                            )
                        _prepare(row, case, classes)
                        ready.append(row)
                        continue
                except Wrong as exc:
                    row.status, row.note = "wrong", str(exc)
                except MemoryError:
                    row.status, row.note = "skipped", "ran out of memory"
                except Exception as exc:  # one failing backend must not lose the other rows
                    row.status, row.note = "error", f"{type(exc).__name__}: {exc}"
                bar.update(counts[id(row)])
            # a backend's runs next to each other (1 thread, then 2, ...; at each thread
            # count its workloads, e.g. the training forward, then the inference forward),
            # backends in order
            ready.sort(
                key=lambda r: (BACKENDS.index(r.backend), r.threads, cases.WHATS.index(r.what))
            )
            previous = ""  # the warm-ups ran last: settle before the first run too
            for _ in range(max((counts[id(r)] for r in ready), default=0)):
                for row in ready:
                    if row.status != "ok" or len(row.times) >= counts[id(row)]:
                        continue
                    if previous != row.backend:
                        time.sleep(settle)
                    previous = row.backend
                    try:
                        with runners.thread_limit(row.threads):
                            assert case is not None  # made for the first ready row
                            runner = runners.make_runner(case, row.backend, row.what)
                            for _ in range(WARM_RUNS):  # untimed: this row's steady state
                                runner.run()
                        time_once(row, runner)
                        del runner
                    except MemoryError:
                        row.status, row.note = "skipped", "ran out of memory"
                        bar.update(counts[id(row)] - len(row.times) - 1)
                    except Exception as exc:
                        row.status, row.note = "error", f"{type(exc).__name__}: {exc}"
                        bar.update(counts[id(row)] - len(row.times) - 1)
                    bar.update()
            del case
    for row in rows:
        if row.status == "ok":
            row.seconds = statistics.median(row.times)
            row.us_per_step = row.seconds / row.T * 1e6
            row.gflops = row.flops / row.seconds / 1e9


def time_once(row: Row, runner: runners.Runner) -> None:
    """One timed run of ``runner`` at ``row``'s thread count; on the first, the memory the
    result holds for backward."""
    with runners.thread_limit(row.threads):
        t0 = time.perf_counter()
        raw = runner.run()
        row.times.append(time.perf_counter() - t0)
    if row.held_bytes is None:
        row.held_bytes = runner.held_bytes(raw)
