"""Benchmark of the PyTorch drop-in with a ``PackedSequence`` input: one training step of
the same model (the layer, a linear head on every packed step and cross-entropy, forward
and backward through autograd) with ``torch.nn.RNN/LSTM/GRU`` and with
``fastrnn.torch.RNN/LSTM/GRU``, lengths spread over 1..T (unsorted). Each benchmark first
checks the row against ``torch.nn`` in float64 on a small case.

The padded training step and the char-LM step of the drop-in are the ``fastrnn.torch``
rows of ``test_bench_train.py`` and ``test_bench_charlm.py`` (and ``fastrnn bench``'s
``fastrnn.torch`` row). Sizes and options: ``benchmarks/conftest.py``; compare the two rows
of a group::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest benchmarks/test_bench_torch_dropin.py \\
        benchmarks/test_bench_train.py -k "torch" --benchmark-enable --bench-size full \\
        --bench-threads 1,2 --benchmark-group-by group --benchmark-columns median
"""

from __future__ import annotations

import numpy as np
import pytest

from fastrnn import bench as lib


@pytest.mark.parametrize("peer", lib.PACKED_BACKENDS)
def test_packed_train_step(run_workload, peer, shape_cell, dtype, threads):
    shape, cell = shape_cell
    why = lib.torch_unavailable_reason(peer)
    if why:
        pytest.skip(f"peer {peer!r} unavailable: {why}")
    if shape.B == 1:
        pytest.skip("a PackedSequence of one sequence has no spread of lengths")
    runner, raw = run_workload(peer, shape, cell, dtype, threads, "packed")
    out = runner.outputs(raw)
    lengths = lib.packed_lengths(shape.B, shape.T)
    assert out["hs"].shape == (lengths.sum(), shape.H)  # the packed rows
    assert np.isfinite(out["dW_hh"]).all()
    # the padded input's gradient is zero past each sequence's end
    assert all(not out["dx"][n:, b].any() for b, n in enumerate(lengths))
