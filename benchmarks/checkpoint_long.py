"""Checkpointed BPTT on a very long sequence: the goal case of issue 15, one training step of
an LSTM (D=32, H=64, B=16, float32, one thread) over T steps, the layer checkpointed (default
``"sqrt"``) and the fused softmax head (K=32), forward and backward, on one backend::

    python benchmarks/checkpoint_long.py cpp                 # T = 10^6
    python benchmarks/checkpoint_long.py numpy --T 100000 --checkpoint full
    python benchmarks/checkpoint_long.py cpp --T 200000 --head two-step

``--head fused`` (the default) runs the head inside the layer's backward
(``layer.backward_head``: its dL/dh block by block of steps, never for all T steps);
``--head two-step`` the head over all steps first (``head.softmax_cross_entropy``, whose dh
of all steps is T*B*H floats) and then ``layer.backward(dh)``, as before the fused path.

prints one JSON line: the wall time (forward, head, backward), microseconds per step, the
peak resident memory of the process (``getrusage``; run it in a fresh process), and the
bytes the schedule holds for backward beyond ``x`` and ``hs`` (:func:`fastrnn.checkpoint_plan`)
next to what full BPTT would hold.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastrnn
from fastrnn import layers

D, H, B, K = 32, 64, 16, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backend", choices=("cpp", "numba", "numpy"))
    parser.add_argument("--T", type=int, default=10**6)
    parser.add_argument("--checkpoint", default="sqrt", help="sqrt, an int k, or full")
    parser.add_argument("--head", choices=("fused", "two-step"), default="fused")
    args = parser.parse_args()
    T = args.T
    checkpoint = None if args.checkpoint == "full" else args.checkpoint
    if checkpoint not in (None, "sqrt"):
        checkpoint = int(checkpoint)
    fastrnn.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D), dtype=np.float32)
    targets = rng.integers(0, K, (T, B))
    layer = layers.LSTM(D, H, seed=0, checkpoint=checkpoint)
    head = layers.Linear(H, K, seed=1)
    # one thread everywhere, NumPy's BLAS too: with two OpenBLAS threads on a busy machine the
    # NumPy head's dweight product (K x N times N x H, a tiny output over N = T*B rows) took
    # 3.7 s instead of 0.2 s at N = 3.2e6 (and the whole head 24 to 57 s instead of 1.2 s)
    with fastrnn.use_backend(args.backend), threadpool_limits(limits=1, user_api="blas"):
        out, _ = layer(x[:64])  # warm up (numba: compile) on a short piece
        layer.backward(head.softmax_cross_entropy(out, targets[:64])[1])
        t0 = time.perf_counter()
        out, _ = layer(x)
        t1 = time.perf_counter()
        if args.head == "fused":  # the head's time is inside the backward's
            t2 = t1
            loss, dx, _ = layer.backward_head(head, targets)
        else:
            loss, dh = head.softmax_cross_entropy(out, targets)
            t2 = time.perf_counter()
            dx, _ = layer.backward(dh)
            del dh
        t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    plan = fastrnn.checkpoint_plan("lstm", T, B, H, np.float32, checkpoint)
    result = {
        "backend": args.backend,
        "T": T,
        "checkpoint": checkpoint,
        "head": args.head,
        "every": plan.every,
        "seconds": t3 - t0,
        "forward_s": t1 - t0,
        "head_s": t2 - t1,
        "backward_s": t3 - t2,
        "us_per_step": (t3 - t0) / T * 1e6,
        "peak_rss_GiB": peak / 2**30,
        "held_beyond_x_hs_MiB": plan.held_bytes / 2**20,
        "full_bptt_held_GiB": plan.full_bytes / 2**30,
        "loss": loss,
        "dx_finite": bool(np.isfinite(dx).all()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
