"""Data-parallel scaling over MPI: the char-LM workload (:class:`fastrnn.CharLanguageModel`,
one-hot input over V characters, LSTM, softmax head, BPTT over windows of T, clipping,
Adam; float32) at a global batch of B windows, on N ranks with 1 kernel thread each.

Under mpiexec, one measurement::

    FASTRNN_NUM_THREADS=1 OMP_NUM_THREADS=1 mpiexec -n 2 python -m mpi4py \\
        benchmarks/mpi_scaling.py

prints (rank 0) the throughput in windows per second and, per optimizer step, the time in
``Allreduce`` (including the wait for the slowest rank) next to the rest (computing), and
the time of one ``Allreduce`` of the gradients' size alone (the ranks in step).
``python benchmarks/mpi_scaling.py --compare`` runs 1 rank and 2 ranks alternately
(``--repeat`` times each, so that the noise of a busy machine hits both alike) and prints
the ratio of the median throughputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


class TimedComm:
    """A communicator that adds up the time spent in ``Allreduce`` (else the real one)."""

    def __init__(self, comm: Any) -> None:
        self._comm = comm
        self.seconds = 0.0
        self.calls = 0

    def Allreduce(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        self._comm.Allreduce(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._comm, name)


def text(n_chars: int, vocab: int, seed: int = 0) -> str:
    """Random text over ``vocab`` printable characters (the speed depends on sizes only)."""
    alphabet = np.array([chr(33 + i) for i in range(vocab)])
    return "".join(alphabet[np.random.default_rng(seed).integers(0, vocab, n_chars)])


def measure(args: argparse.Namespace) -> dict[str, float] | None:
    """Train on every rank of COMM_WORLD; rank 0 returns the numbers (others None)."""
    from mpi4py import MPI

    import fastrnn
    from fastrnn.models import CharLanguageModel

    world = MPI.COMM_WORLD
    ranks = world.Get_size()
    n_windows = args.batch * args.steps  # one epoch = `steps` optimizer steps
    corpus = text((n_windows - 1) * (args.seq // 2) + args.seq + 1, args.vocab)

    def model(epochs: int) -> CharLanguageModel:
        return CharLanguageModel(
            hidden_size=args.hidden,
            seq_len=args.seq,
            batch_size=args.batch,
            epochs=epochs,
            lr=2e-3,
            clip_norm=5.0,
            seed=0,
            dtype="float32",
            progress=False,
        )

    comm = None if ranks == 1 else world
    model(1).fit(corpus[: 4 * args.batch * args.seq], comm=comm)  # warm-up (JIT, caches)
    timed = None if ranks == 1 else TimedComm(world)
    world.Barrier()
    start = time.perf_counter()
    fitted = model(args.epochs).fit(corpus, comm=timed)
    seconds = time.perf_counter() - start
    steps = len(fitted.history_["step_loss"])
    assert steps == args.epochs * args.steps, (steps, args.epochs, args.steps)
    reduce_s = 0.0 if timed is None else timed.seconds
    worst_reduce = world.allreduce(reduce_s, op=MPI.MAX)
    # the Allreduce alone, of a buffer of the gradients' size, with the ranks in step
    n_params = sum(p.size for p in fitted.parameters().values())
    buf = np.ones(n_params + 2, dtype=np.float32)
    alone = []
    for _ in range(20):
        world.Barrier()
        t0 = time.perf_counter()
        world.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        alone.append(time.perf_counter() - t0)
    if world.Get_rank() != 0:
        return None
    return {
        "ranks": ranks,
        "threads_per_rank": fastrnn.get_num_threads(),
        "backend": fastrnn.get_backend(),
        "seconds": seconds,
        "steps": steps,
        "windows_per_s": args.epochs * n_windows / seconds,
        "step_ms": 1e3 * seconds / steps,
        "allreduce_ms": 1e3 * reduce_s / steps,
        "allreduce_ms_worst_rank": 1e3 * worst_reduce / steps,
        "compute_ms": 1e3 * (seconds - reduce_s) / steps,
        "parameters": n_params,
        "allreduce_alone_ms": 1e3 * statistics.median(alone),
        "final_loss": fitted.history_["loss"][-1],
    }


def compare(args: argparse.Namespace) -> None:
    """1 rank and 2 ranks alternately, each ``--repeat`` times; the median ratio."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = {**os.environ, "FASTRNN_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    own = [a for a in sys.argv[1:] if a not in ("--compare",)]
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for _ in range(args.repeat):
        for n in (1, 2):
            cmd = [str(mpiexec), "-n", str(n), sys.executable, "-m", "mpi4py", __file__]
            out = subprocess.run(
                [*cmd, *own, "--json"], env=env, capture_output=True, text=True, check=True
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs[n].append(result)
            print(f"{n} rank(s): {format_result(result)}", flush=True)
    one = statistics.median(r["windows_per_s"] for r in runs[1])
    two = statistics.median(r["windows_per_s"] for r in runs[2])
    print(f"median throughput: 1 rank {one:.1f}, 2 ranks {two:.1f} windows/s: {two / one:.2f}x")


def format_result(r: dict[str, float]) -> str:
    return (
        f"{r['backend']}, {r['threads_per_rank']} thread(s) per rank: "
        f"{r['windows_per_s']:.1f} windows/s, {r['step_ms']:.1f} ms/step = compute "
        f"{r['compute_ms']:.1f} + allreduce {r['allreduce_ms']:.2f} "
        f"(worst rank {r['allreduce_ms_worst_rank']:.2f}; alone, ranks in step: "
        f"{r['allreduce_alone_ms']:.2f} for {r['parameters']} float32), "
        f"loss {r['final_loss']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128, help="H (128)")
    parser.add_argument("--vocab", type=int, default=75, help="V (75)")
    parser.add_argument("--seq", type=int, default=64, help="T, the window (64)")
    parser.add_argument("--batch", type=int, default=64, help="global batch B (64)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="--compare: runs of each")
    parser.add_argument("--compare", action="store_true", help="run 1 and 2 ranks, ratio")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    result = measure(args)
    if result is not None:
        print(json.dumps(result) if args.json else format_result(result), flush=True)


if __name__ == "__main__":
    main()
