"""The command line's plots, in one place: ``fastrnn bench --plot`` (time per step and
memory against T) and ``fastrnn gradflow`` (gradient norm against lag). matplotlib is
optional (``pip install 'fastrnn[plot]'``) and imported only here, with the file-only
Agg backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

INSTALL_HINT = "pip install 'fastrnn[plot]'"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; ImportError when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _save(fig: Any, path: str) -> None:
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def scaling(path: str, rows: list[Any], title: str, backends: tuple[str, ...]) -> None:
    """Time per step and memory held for backward against T, log-log: one colour and
    marker per backend, one line style per remaining configuration (B, H, cell, full or
    checkpointed BPTT, ...). ``rows``: :class:`fastrnn.bench.Row` objects. With
    checkpointed rows among them the memory is what is held beyond ``hs`` (the saved
    activations, or the checkpoints and a segment's buffer), where the O(sqrt(T)) of
    checkpointed BPTT shows; else all of it, ``hs`` included."""
    plt = pyplot()
    beyond_hs = any(r.checkpoint for r in rows)
    series: dict[tuple[Any, ...], dict[str, list[Any]]] = {}
    for r in rows:
        if r.status == "ok":
            config = (r.cell, r.dtype, r.threads, r.D, r.H, r.B, r.checkpoint)
            series.setdefault(config, {}).setdefault(r.backend, []).append(r)
    styles = ("-", "--", ":", "-.")
    markers = dict(zip(backends, "os^Dv", strict=False))
    colors = {name: f"C{i}" for i, name in enumerate(backends)}
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5.2))
    for i, (config, by_backend) in enumerate(sorted(series.items())):
        cell, dtype, threads, _D, H, B, checkpoint = config
        bptt = f"ckpt={checkpoint}" if checkpoint else "full"
        for backend, rs in by_backend.items():
            rs = sorted(rs, key=lambda r: r.T)
            style = {
                "color": colors[backend],
                "marker": markers.get(backend, "x"),
                "linestyle": styles[i % len(styles)],
                "markerfacecolor": "none",
                "label": f"{backend} {cell} {bptt} H={H} B={B} {dtype} {threads}thr",
            }
            ax_t.plot([r.T for r in rs], [r.us_per_step for r in rs], **style)
            mem = [(r.T, _held_mib(r, beyond_hs)) for r in rs if r.held_bytes]
            mem = [(T, m) for T, m in mem if m > 0]
            if mem:
                ax_m.plot(*zip(*mem, strict=True), **style)
    held = "held for backward beyond hs (MiB)" if beyond_hs else "held for backward (MiB)"
    for ax, ylabel in ((ax_t, "microseconds per time step"), (ax_m, held)):
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
    _save(fig, path)


def _held_mib(row: Any, beyond_hs: bool) -> float:
    """MiB the row held for backward, without ``hs`` (T*B*H of its dtype) if asked."""
    hs = row.T * row.B * row.H * np.dtype(row.dtype).itemsize if beyond_hs else 0
    return float(row.held_bytes - hs) / 2**20


def gradient_flow(path: str, curves: Mapping[str, np.ndarray], T: int, H: int) -> None:
    """``||dL/dh_(T-1-k)||`` against the lag ``k``, log scale, one curve per row."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lag = np.arange(T + 1)
    styles = ["-", "-", "--", "-", ":"]
    for i, (label, norms) in enumerate(curves.items()):
        shown = np.where((norms > 0) & np.isfinite(norms), norms, np.nan)
        ax.plot(lag, shown, styles[i % len(styles)], label=label, linewidth=1.6)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_ylim(1e-20, 1e20)  # beyond this, vanished or exploded: the curve leaves the frame
    ax.set_yscale("log")
    ax.set_xlabel("lag k (steps back from the loss)")
    ax.set_ylabel(r"$\|\partial L / \partial h_{T-1-k}\|$")
    ax.set_title(f"Gradient norm against lag (T={T}, H={H})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
