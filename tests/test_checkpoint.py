"""Checkpointed BPTT (``forward(..., checkpoint=...)``): bit-identical gradients on every
backend, the schedule and its memory, clear errors, and the option on layers, models and
``fastrnn train``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from conftest import (
    assert_within_rounding,
    blas_rows_keep_their_bits,
    forward_backward_arrays,
    using_threads,
)
from fastrnn import layers
from fastrnn.cli import main
from fastrnn.functional import _held

PYTHON_DIR = str(Path(fastrnn.__file__).resolve().parents[1])


def _case(cell, dtype, T, B, D, H, lengths, seed=0):
    rng = np.random.default_rng(seed)
    p = fastrnn.init_params(cell, D, H, seed=seed + 1, dtype=dtype)
    arr = lambda *shape: rng.normal(size=shape).astype(dtype)  # noqa: E731
    lstm = cell == "lstm"
    lens = None
    if lengths:
        lens = rng.integers(1, T + 1, size=B)
        lens[0] = T
    inputs = {"x": arr(T, B, D), "h0": arr(B, H), "c0": arr(B, H) if lstm else None}
    grads = {"dhs": arr(T, B, H), "dh_n": arr(B, H), "dc_n": arr(B, H) if lstm else None}
    return p, inputs, grads, lens


def _run(cell, p, inputs, grads, lens, backend, checkpoint):
    res = fastrnn.forward(cell, p, **inputs, lengths=lens, backend=backend, checkpoint=checkpoint)
    return res, fastrnn.backward(res, **grads, return_step_norms=True)


def _assert_identical(a, b):
    (ra, ga), (rb, gb) = a, b
    for name in ("hs", "h_n", "c_n"):
        x, y = getattr(ra, name), getattr(rb, name)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)
    for name in ("dx", "dh0", "dc0", "step_norms"):
        x, y = getattr(ga, name), getattr(gb, name)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)
    for name, value in ga.params.items():
        np.testing.assert_array_equal(value, gb.params[name], err_msg=name)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gradients_are_bit_identical_to_full_bptt(backend, cell, dtype, lengths, threads):
    """Every k (1, not dividing T, T, beyond T, "sqrt") gives the bits of full BPTT: the
    outputs, dx, dh0, dc0, every parameter gradient and the step norms, with lengths,
    h0/c0 and gradients from dhs and the final state."""
    T, B, D, H = 23, 5, 3, 5  # H=5: gate rows that are not whole SIMD packets
    p, inputs, grads, lens = _case(cell, dtype, T, B, D, H, lengths)
    with using_threads(threads):
        full = _run(cell, p, inputs, grads, lens, backend, None)
        for k in (1, 4, 7, T, T + 5, "sqrt"):
            ckpt = _run(cell, p, inputs, grads, lens, backend, k)
            assert ckpt[0].checkpoint == (None if cell == "rnn" else k if k != "sqrt" else 5)
            _assert_identical(full, ckpt)


def test_a_k_far_beyond_T_allocates_one_segment_of_T_steps(backend):
    p, inputs, grads, lens = _case("lstm", np.float32, 9, 2, 3, 4, True)
    full = _run("lstm", p, inputs, grads, lens, backend, None)
    _assert_identical(full, _run("lstm", p, inputs, grads, lens, backend, 10**12))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bit_identical_where_the_products_use_blas(backend, cell):
    """Sizes where the cpp kernels put the input projection, the per-step product and the
    weight-gradient blocks through BLAS (and numpy's blocks span several segments):
    bit-identical where the BLAS gives a row the same bits whatever the row count of the
    product (the recompute projects one segment's rows, the full forward all of them),
    else equal to rounding: each product's terms summed in another order, D terms per dot
    product, so D float32 epsilons of each array's scale."""
    T, B, D, H = 300, 16, 64, 64
    GH = (4 if cell == "lstm" else 3) * H
    segments = (17, math.ceil(math.sqrt(T)))
    stable = blas_rows_keep_their_bits(backend, T * B, D, GH, tuple(k * B for k in segments))
    p, inputs, grads, lens = _case(cell, np.float32, T, B, D, H, True)
    with using_threads(2):
        full = _run(cell, p, inputs, grads, lens, backend, None)
        for k in (17, "sqrt"):
            got = _run(cell, p, inputs, grads, lens, backend, k)
            if stable:
                _assert_identical(full, got)
            else:
                arrays = forward_backward_arrays
                assert_within_rounding(arrays(got), arrays(full), D, f"checkpoint={k!r}")


# --- the schedule ----------------------------------------------------------------------


def test_sqrt_is_ceil_of_the_square_root():
    for T in (1, 2, 4, 5, 99, 100, 101, 10**6):
        plan = fastrnn.checkpoint_plan("lstm", T, 16, 64, np.float32, "sqrt")
        assert plan.every == math.ceil(math.sqrt(T))
        assert plan.recomputed_steps == T


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_max_bytes_picks_full_bptt_if_it_fits_else_the_largest_k_that_does(cell):
    T, B, H = 10_000, 16, 64
    full = fastrnn.checkpoint_plan(cell, T, B, H, np.float32)
    assert full.every is None and full.held_bytes == full.full_bytes == 4 * T * B * H * (
        5 if cell == "lstm" else 4
    )
    fits = fastrnn.checkpoint_plan(cell, T, B, H, np.float32, {"max_bytes": full.full_bytes})
    assert fits.every is None
    for budget in (full.full_bytes - 1, full.full_bytes // 10, 2**22):
        plan = fastrnn.checkpoint_plan(cell, T, B, H, np.float32, {"max_bytes": budget})
        k = plan.every
        assert k is not None and plan.held_bytes <= budget
        assert k == T or _held(cell, T, B, H, 4, k + 1) > budget  # the largest that fits
    sqrt = fastrnn.checkpoint_plan(cell, T, B, H, np.float32, "sqrt")
    assert sqrt.held_bytes < full.full_bytes / 50
    with pytest.raises(MemoryError, match=r"checkpoint=\{'max_bytes': 1000\}: no schedule fits"):
        fastrnn.checkpoint_plan(cell, T, B, H, np.float32, {"max_bytes": 1000})


def test_the_smallest_budget_that_fits_is_found():
    """gru keeps no states: k = 1 (one step of buffer) is its smallest schedule; lstm's
    smallest balances T/k states against k steps near sqrt(T / 6)."""
    T, B, H = 5000, 4, 8
    one_step = 4 * B * (3 + 2) * H
    assert fastrnn.checkpoint_plan("gru", T, B, H, np.float32, {"max_bytes": one_step}).every == 1
    smallest = min(_held("lstm", T, B, H, 4, k) for k in range(1, T + 1))
    plan = fastrnn.checkpoint_plan("lstm", T, B, H, np.float32, {"max_bytes": smallest})
    assert plan.held_bytes == smallest
    with pytest.raises(MemoryError, match="no schedule fits"):
        fastrnn.checkpoint_plan("lstm", T, B, H, np.float32, {"max_bytes": smallest - 1})


def test_rnn_saves_nothing_so_checkpointing_is_a_no_op():
    plan = fastrnn.checkpoint_plan("rnn", 1000, 4, 8, np.float32, {"max_bytes": 0})
    assert plan.every is None and plan.held_bytes == plan.full_bytes == 0


def test_the_forward_memory_refusal_is_for_the_chosen_schedule(monkeypatch):
    """The free-memory check before allocating counts the checkpoints and a segment, not
    every step's activations: a call refused with full BPTT runs checkpointed."""
    from fastrnn import _validation

    T, B, D, H = 40_000, 16, 1, 64
    p = fastrnn.init_params("lstm", D, H, seed=0)
    x = np.zeros((T, B, D), np.float32)
    full = 4 * T * B * (H + D) + _held("lstm", T, B, H, 4, None)
    monkeypatch.setattr(_validation, "_MEMORY_CHECK_FLOOR", 0)
    monkeypatch.setattr(_validation, "available_memory", lambda: full // 2)
    with pytest.raises(MemoryError, match="forward of 'lstm'"):
        fastrnn.forward("lstm", p, x, backend="numpy")
    res = fastrnn.forward("lstm", p, x, backend="numpy", checkpoint="sqrt")
    assert res.checkpoint == 200


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "checkpoint must be a positive int, got 0"),
        (-3, ValueError, "checkpoint must be a positive int, got -3"),
        (2.5, TypeError, r"checkpoint must be None, an int >= 1, 'sqrt' or \{'max_bytes': N\}"),
        (True, TypeError, "checkpoint must be None.*got a bool"),
        ([4], TypeError, "checkpoint must be None.*got a list"),
        ("cube", ValueError, "checkpoint must be None.*got 'cube'"),
        ({"bytes": 10}, ValueError, "exactly one key, 'max_bytes'"),
        ({"max_bytes": -1}, ValueError, r"checkpoint\['max_bytes'\]"),
        ({"max_bytes": "1G"}, TypeError, r"checkpoint\['max_bytes'\]"),
    ],
)
def test_bad_checkpoint_values_are_clear_errors(value, error, match):
    p = fastrnn.init_params("lstm", 2, 3)
    x = np.ones((4, 1, 2), np.float32)
    with pytest.raises(error, match=match):
        fastrnn.forward("lstm", p, x, checkpoint=value)
    with pytest.raises(error, match=match):
        layers.LSTM(2, 3, checkpoint=value)


def test_checkpoint_needs_a_training_forward():
    p = fastrnn.init_params("gru", 2, 3)
    with pytest.raises(ValueError, match="checkpoint=4 applies to a training forward"):
        fastrnn.forward("gru", p, np.ones((4, 1, 2), np.float32), training=False, checkpoint=4)


# --- peak memory ---------------------------------------------------------------------------

_PEAK_SCRIPT = """
import json, resource, sys
import numpy as np
import fastrnn
backend, every = sys.argv[1], json.loads(sys.argv[2])
T, B, D, H = {T}, 16, 4, 64
p = fastrnn.init_params("lstm", D, H, seed=0)
x = np.ones((T, B, D), np.float32)
dhs = np.full((T, B, H), 1e-3, np.float32)
fastrnn.backward(fastrnn.forward("lstm", p, x[:64], backend=backend), dhs[:64])  # warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
res = fastrnn.forward("lstm", p, x, backend=backend, checkpoint=every)
g = fastrnn.backward(res, dhs)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"grown": after - before, "finite": bool(np.isfinite(g.dx).all())}}))
"""


_PEAK_HEAD_SCRIPT = """
import json, resource, sys
import numpy as np
import fastrnn
from fastrnn.functional import HeadSpec
backend, every = sys.argv[1], json.loads(sys.argv[2])
T, B, D, H, K = {T}, 16, 4, 64, 32
p = fastrnn.init_params("lstm", D, H, seed=0)
rng = np.random.default_rng(0)
weight, bias = rng.normal(size=(K, H)).astype(np.float32), np.zeros(K, np.float32)
x = np.ones((T, B, D), np.float32)
targets = rng.integers(0, K, (T, B))
short = fastrnn.forward("lstm", p, x[:64], backend=backend)  # warm up
fastrnn.backward(short, head=HeadSpec(weight, bias, targets[:64]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
res = fastrnn.forward("lstm", p, x, backend=backend, checkpoint=every)
g = fastrnn.backward(res, head=HeadSpec(weight, bias, targets))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
finite = bool(np.isfinite(g.dx).all() and np.isfinite(g.head.loss))
print(json.dumps({{"grown": after - before, "finite": finite}}))
"""


@pytest.mark.parametrize(
    ("backend_name", "head"),
    [("cpp", False), ("numpy", False), ("cpp", True), ("numba", True), ("numpy", True)],
)
def test_peak_memory_of_a_long_checkpointed_run(backend_name, head):
    """In a fresh process, the peak resident memory of forward + backward grows by the
    outputs (hs, dx), what the schedule holds for backward and a fixed allowance, far less
    than full BPTT's saved activations. With ``head`` the softmax head is fused into the
    backward (``head=HeadSpec``, no dhs given): the same bound, below what a dh of all
    steps (the two-step path's) would add."""
    from conftest import need_backend

    need_backend(backend_name)
    # the NumPy reference at half the length (13 s a run at 60,000 steps on a slow CI
    # machine): the bound below still tells full BPTT and a dh of all steps from the schedule
    T, B, D, H = (30_000 if backend_name == "numpy" else 60_000), 16, 4, 64
    script = (_PEAK_HEAD_SCRIPT if head else _PEAK_SCRIPT).format(T=T)
    plan = fastrnn.checkpoint_plan("lstm", T, B, H, np.float32, "sqrt")
    outputs = 4 * T * B * (H + D)  # hs and dx
    allowance = 48 * 2**20  # interpreter, the pool's threads, per-step temporaries, blocks
    bound = outputs + plan.held_bytes + allowance
    assert bound < outputs + plan.full_bytes / 2  # the bound tells full BPTT from this
    assert bound < outputs + plan.held_bytes + 4 * T * B * H  # and a dh of all steps
    proc = subprocess.run(
        [sys.executable, "-c", script, backend_name, json.dumps("sqrt")],
        capture_output=True,
        text=True,
        timeout=240,
        env={"PYTHONPATH": PYTHON_DIR, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["finite"]
    assert out["grown"] <= bound, (out["grown"], bound, plan)


# --- layers, models, the command line, tbptt -------------------------------------------------


@pytest.mark.parametrize("cls", [layers.LSTM, layers.GRU, layers.RNN])
def test_layer_option_gives_the_same_gradients(cls):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 37, 3)).astype(np.float32)
    lens = np.array([37, 20])
    grads = []
    for checkpoint in (None, "sqrt", {"max_bytes": 4096}):
        layer = cls(
            3, 6, num_layers=2, bidirectional=True, batch_first=True, seed=1, checkpoint=checkpoint
        )
        out, _ = layer.forward(x, lengths=lens)
        layer.backward(np.ones_like(out))
        grads.append(layer.grads)
    for g in grads[1:]:
        for name in grads[0]:
            np.testing.assert_array_equal(g[name], grads[0][name], err_msg=name)


def test_models_and_tbptt_compose():
    """A per-step model trained with truncated BPTT and checkpointing inside each window
    ends with the parameters of the one trained without."""
    from fastrnn.models import SequenceTagger

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 40, 3)).astype(np.float32)
    y = (X[..., 0] > 0).astype(np.int64)
    fitted = []
    for checkpoint in (None, 3):
        model = SequenceTagger(
            8,
            cell="lstm",
            epochs=2,
            batch_size=4,
            seed=0,
            tbptt=10,
            checkpoint=checkpoint,
            progress=False,
        )
        assert model.get_params()["checkpoint"] == checkpoint
        fitted.append(model.fit(X, y))
    a, b = (m._parts["rnn"].params for m in fitted)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_train_command_takes_the_option(capsys):
    args = [
        "train",
        "adding",
        "-T",
        "20",
        "--samples",
        "64",
        "--epochs",
        "1",
        "--progress",
        "off",
        "--checkpoint",
        "sqrt",
    ]
    assert main(args) == 0
    with pytest.raises(SystemExit):
        main(["train", "adding", "--checkpoint", "often"])
    assert "expected sqrt, an int k >= 1 or max_bytes=N, got 'often'" in capsys.readouterr().err


def test_train_command_parses_a_budget():
    from fastrnn.cli.train import checkpoint_option

    assert checkpoint_option("max_bytes=1000") == {"max_bytes": 1000}
    assert checkpoint_option("12") == 12
    assert checkpoint_option("sqrt") == "sqrt"


def test_script_is_valid_python():
    compile(textwrap.dedent(_PEAK_SCRIPT.format(T=10)), "<peak>", "exec")
