"""Data-parallel training over MPI (mpi4py): the small layer that :func:`fastrnn.training.train`
and every model's ``fit(..., comm=comm)`` use.

Every rank (process) holds the same model. Each global batch (the same samples, in the same
seeded order, as one process with the same ``batch_size``) is split across the ranks; each
rank computes the gradient of its share, one in-place ``Allreduce`` per optimizer step sums
the gradients, and every rank applies the same update. This module is the part that talks
to MPI; it imports :mod:`mpi4py` only when a function here needs it (``import fastrnn``
never does), so ``pip install fastrnn[mpi]`` (mpi4py and MPICH) is needed only to run it.

Run a script on 2 processes of one machine::

    mpiexec -n 2 python -m mpi4py train.py

with, in ``train.py``, ``from mpi4py import MPI`` and ``model.fit(X, y, comm=MPI.COMM_WORLD)``.
``python -m mpi4py`` matters: it aborts the whole job when one rank raises an uncaught
exception (the others would otherwise wait forever in the next ``Allreduce``).

What is here:

- :func:`world`: ``MPI.COMM_WORLD`` (a clear ImportError without mpi4py);
- :func:`rank`, :func:`size`, :func:`is_root` of a communicator (``None``: one process);
- :func:`on_root`: run a function on rank 0 only (optionally sharing its result);
- :func:`data_parallel`: a context in which every model's ``fit`` trains on a
  communicator, as ``fit(..., comm=comm)`` (for code that calls ``fit`` itself);
- :func:`broadcast_parameters`: rank 0's parameter arrays to every rank, in place;
- :func:`check_same`: that every rank called with the same values, else a ValueError on
  every rank;
- :class:`GradientBuffer`: the gradients as views into one flat buffer per dtype, loaded
  from a rank's gradients and summed over the ranks with one ``Allreduce`` per buffer.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np

R = TypeVar("R")

_INSTALL = "data-parallel training needs mpi4py and an MPI library: pip install 'fastrnn[mpi]'"


def _mpi() -> Any:
    """The ``mpi4py.MPI`` module (imported on first use)."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"{_INSTALL} ({exc})") from exc
    return MPI


def world() -> Any:
    """``MPI.COMM_WORLD``: every process the job started (``mpiexec -n N``, ``srun``)."""
    return _mpi().COMM_WORLD


def check_comm(comm: object) -> Any:
    """``comm`` if it is an mpi4py intracommunicator (or None); a TypeError otherwise."""
    if comm is None:
        return None
    if not all(callable(getattr(comm, m, None)) for m in ("Get_rank", "Get_size", "Allreduce")):
        raise TypeError(
            f"comm must be an mpi4py communicator (e.g. mpi4py.MPI.COMM_WORLD) or None, got "
            f"{type(comm).__name__}"
        )
    return comm


def rank(comm: Any) -> int:
    """This process's rank in ``comm`` (0 for ``None``: a single process)."""
    return 0 if comm is None else int(comm.Get_rank())


def size(comm: Any) -> int:
    """The number of processes in ``comm`` (1 for ``None``)."""
    return 1 if comm is None else int(comm.Get_size())


def is_root(comm: Any) -> bool:
    """Whether this process is rank 0 of ``comm`` (True for ``None``): the one that shows
    progress, prints and writes files."""
    return rank(comm) == 0


def on_root(
    comm: Any, fn: Callable[..., R], *args: Any, share: bool = False, **kwargs: Any
) -> R | None:
    """``fn(*args, **kwargs)`` on rank 0 only; returns its result there and None on the other
    ranks. With ``share=True`` every rank returns rank 0's result (it must be picklable),
    and an exception of ``fn`` is raised on every rank (so no rank waits forever): itself
    on rank 0, a RuntimeError with its message on the others."""
    if not share:
        return fn(*args, **kwargs) if is_root(comm) else None
    outcome: tuple[bool, Any] | None = None
    error: Exception | None = None
    if is_root(comm):
        try:
            outcome = (True, fn(*args, **kwargs))
        except Exception as exc:
            error, outcome = exc, (False, f"{type(exc).__name__}: {exc}")
    if comm is not None:
        outcome = comm.bcast(outcome, root=0)
    assert outcome is not None
    ok, value = outcome
    if error is not None:
        raise error
    if not ok:
        raise RuntimeError(f"on rank 0: {value}")
    result: R = value  # rank 0's result of fn, broadcast
    return result


_FIT_COMM: contextvars.ContextVar[Any] = contextvars.ContextVar("fastrnn_fit_comm", default=None)


@contextlib.contextmanager
def data_parallel(comm: Any) -> Iterator[Any]:
    """Within this context every model's ``fit`` trains data-parallel on ``comm``, as if
    called with ``comm=comm`` (for code that calls ``fit`` itself, e.g. the example tasks
    of ``fastrnn train --distributed``); ``fit(..., comm=other)`` still takes ``other``.
    Yields ``comm``."""
    token = _FIT_COMM.set(check_comm(comm))
    try:
        yield comm
    finally:
        _FIT_COMM.reset(token)


def fit_comm() -> Any:
    """The communicator the current ``fit`` trains on (see :func:`data_parallel`), or None."""
    return _FIT_COMM.get()


def broadcast_parameters(params: Mapping[str, np.ndarray], comm: Any, root: int = 0) -> None:
    """Overwrite every array of ``params`` (in place) with rank ``root``'s, on every rank of
    ``comm``: the same starting point everywhere, whatever each rank's seed gave."""
    if comm is None:
        return
    for name in sorted(params):  # the same order on every rank
        arr = params[name]
        if arr.flags.c_contiguous:
            comm.Bcast(arr, root=root)
        else:
            tmp = np.ascontiguousarray(arr)
            comm.Bcast(tmp, root=root)
            np.copyto(arr, tmp)


def check_same(comm: Any, what: str, **values: Any) -> None:
    """Raise the same ValueError on every rank when the ranks disagree on any of ``values``
    (e.g. the number of samples): ``what`` names the call (``"train"``). The values must
    be picklable and comparable with ``==``."""
    if comm is None or size(comm) == 1:
        return
    everyone = comm.allgather(values)
    for key in values:
        seen = [v[key] for v in everyone]
        if any(s != seen[0] for s in seen[1:]):
            per_rank = ", ".join(f"rank {r}: {s!r}" for r, s in enumerate(seen))
            raise ValueError(
                f"{what} got a different {key} on the ranks of the communicator ({per_rank}); "
                "every rank must call it with the same data, settings and seed"
            )


class GradientBuffer:
    """The gradients of ``params`` as views into one flat, contiguous buffer per dtype, and
    the sum of every rank's buffer with one in-place ``Allreduce`` per dtype.

    ``grads`` maps every parameter name to a view of its buffer, shaped as the parameter;
    ``stats`` is a view of ``n_stats`` more float entries at the end of the widest float
    buffer (float64 if any parameter is float64), summed along with the gradients (training
    sums the weighted loss and the loss weight there, so one ``Allreduce`` per step does).
    The layout is the same on every rank (names sorted), as ``Allreduce`` requires.
    """

    def __init__(self, params: Mapping[str, np.ndarray], comm: Any, *, n_stats: int = 0) -> None:
        self.comm = comm
        by_dtype: dict[np.dtype, list[str]] = {}
        for name in sorted(params):
            by_dtype.setdefault(np.dtype(params[name].dtype), []).append(name)
        floats = [dt for dt in by_dtype if dt.kind == "f"]
        stats_dtype = max(floats, key=lambda dt: dt.itemsize) if floats else np.dtype(np.float64)
        by_dtype.setdefault(stats_dtype, [])
        self.buffers: dict[np.dtype, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        for dt, names in by_dtype.items():
            total = sum(params[n].size for n in names) + (n_stats if dt == stats_dtype else 0)
            buf = np.zeros(total, dtype=dt)
            offset = 0
            for n in names:
                shape, count = params[n].shape, params[n].size
                self.grads[n] = buf[offset : offset + count].reshape(shape)
                offset += count
            self.buffers[dt] = buf
        stats_buf = self.buffers[stats_dtype]
        self.stats = stats_buf[stats_buf.size - n_stats :]

    def zero(self) -> None:
        """Set every gradient and stat to 0 (a rank with no samples in a step adds 0)."""
        for buf in self.buffers.values():
            buf.fill(0)

    def load(self, grads: Mapping[str, np.ndarray], scale: float = 1.0) -> None:
        """Copy ``scale * grads`` into the buffers (a missing gradient counts as 0)."""
        unknown = set(grads) - set(self.grads)
        if unknown:
            raise ValueError(f"gradients of unknown parameters {sorted(unknown)[:5]}")
        for name, view in self.grads.items():
            g = grads.get(name)
            if g is None:
                view.fill(0)
            elif scale == 1.0:
                np.copyto(view, g, casting="same_kind")
            else:
                np.multiply(g, scale, out=view, casting="same_kind")

    def allreduce(self) -> None:
        """Sum the buffers over the ranks, in place: one ``Allreduce`` per dtype (in a fixed
        order). MPI gives every rank the same result, so the ranks stay identical."""
        if self.comm is None:
            return
        MPI = _mpi()
        for dt in sorted(self.buffers, key=str):
            self.comm.Allreduce(MPI.IN_PLACE, self.buffers[dt], op=MPI.SUM)

    def divide(self, divisor: float) -> None:
        """Divide every gradient (not the stats) by ``divisor``, in place."""
        for view in self.grads.values():
            np.divide(view, divisor, out=view, casting="same_kind")


def allreduce_max(comm: Any, value: int) -> int:
    """The largest ``value`` over the ranks (``value`` itself without a communicator)."""
    if comm is None:
        return value
    return int(comm.allreduce(int(value), op=_mpi().MAX))


def allreduce_any(comm: Any, flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (``flag`` itself without a communicator)."""
    if comm is None:
        return bool(flag)
    return bool(comm.allreduce(bool(flag), op=_mpi().LOR))


def allreduce_sum(comm: Any, value: float) -> float:
    """The sum of ``value`` over the ranks (``value`` itself without a communicator)."""
    if comm is None:
        return float(value)
    MPI = _mpi()
    buf = np.array([value], dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)  # the same bits on every rank
    return float(buf[0])


def split(indices: np.ndarray, comm: Any) -> np.ndarray:
    """This rank's share of ``indices``: ``np.array_split`` into ``size(comm)`` parts
    (the first ``len % size`` ranks get one more; a rank may get none)."""
    if comm is None:
        return indices
    return np.array_split(indices, size(comm))[rank(comm)]


__all__ = [
    "GradientBuffer",
    "allreduce_any",
    "allreduce_max",
    "allreduce_sum",
    "broadcast_parameters",
    "check_comm",
    "check_same",
    "data_parallel",
    "fit_comm",
    "is_root",
    "on_root",
    "rank",
    "size",
    "split",
    "world",
]
