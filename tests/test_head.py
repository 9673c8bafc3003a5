"""The fused output head, ``fastrnn.linear_cross_entropy``: the NumPy reference against
finite differences and against ``Linear`` + ``softmax_cross_entropy``; every other backend
against the reference; ``Linear.softmax_cross_entropy``; and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from conftest import assert_matches_central_differences, central_differences, fd_tolerance
from fastrnn import layers, losses
from fastrnn.functional import linear_cross_entropy


def make_head(lead=(7, 3), H=5, K=4, *, dtype=np.float64, seed=0, masked=False, scale=1.0):
    rng = np.random.default_rng(seed)
    case = {
        "h": rng.normal(size=(*lead, H)).astype(dtype),
        "weight": (rng.normal(size=(K, H)) * scale).astype(dtype),
        "bias": rng.normal(size=K).astype(dtype),
        "targets": rng.integers(0, K, size=lead),
        "mask": None,
    }
    if masked:
        mask = rng.random(lead[:1]) > 0.3 if len(lead) > 1 else rng.random(lead) > 0.3
        mask[0] = True
        case["mask"] = mask
        case["targets"][
            ~np.broadcast_to(mask.reshape(mask.shape + (1,) * (len(lead) - 1)), lead)
        ] = -1
    return case


def run(case, backend, reduction="mean"):
    return linear_cross_entropy(
        case["h"],
        case["weight"],
        case["bias"],
        case["targets"],
        mask=case["mask"],
        reduction=reduction,
        backend=backend,
    )


# --- the reference ----------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_reference_matches_finite_differences(masked, reduction):
    case = make_head(masked=masked, seed=1)
    got = run(case, "numpy", reduction)
    # the terms summed: the logits (log-sum-exp and the target's) of every counted row
    logits = case["h"] @ case["weight"].T + case["bias"]
    rows = int(np.sum(case["targets"] >= 0)) if reduction == "mean" else 1
    tol = fd_tolerance(np.float64, np.sum(np.abs(logits)) / rows + 2 * abs(got.loss))
    for key, grad in (("h", got.dh), ("weight", got.dweight), ("bias", got.dbias)):
        num = central_differences(lambda: run(case, "numpy", reduction).loss, case[key])
        assert_matches_central_differences(grad, num, tol, err_msg=key)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("lead", [(6,), (4, 3), (2, 3, 2)], ids=["1d", "2d", "3d"])
def test_reference_equals_linear_then_softmax_cross_entropy(lead, masked, reduction):
    case = make_head(lead, masked=masked, seed=2)
    got = run(case, "numpy", reduction)
    head = layers.Linear(5, 4, dtype=np.float64)
    head.load_state_dict({"weight": case["weight"], "bias": case["bias"]})
    loss, dz = losses.softmax_cross_entropy(
        head(case["h"]), case["targets"], mask=case["mask"], reduction=reduction
    )
    dh = head.backward(dz)
    assert got.loss == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(got.dh, dh, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.dweight, head.grads["weight"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.dbias, head.grads["bias"], rtol=1e-12, atol=1e-15)


def test_reference_is_stable_for_huge_logits():
    case = make_head(scale=1e4, seed=3)  # logits of order 1e4: exp would overflow
    got = run(case, "numpy")
    assert np.isfinite(got.loss) and got.loss > 0
    for a in (got.dh, got.dweight, got.dbias):
        assert np.all(np.isfinite(a))


def test_reference_loss_is_log_k_for_zero_weights():
    case = make_head(seed=4)
    case["weight"][:] = 0
    case["bias"][:] = 0
    assert run(case, "numpy").loss == pytest.approx(np.log(4), rel=1e-12)


# --- every backend against the reference --------------------------------------------------

# (lead, H, K): tiny, sizes that are not whole SIMD packets, and enough rows that the fast
# backends block the rows and split them over threads
SHAPES = [
    ((1,), 1, 1),
    ((5, 3), 5, 7),
    ((40, 16), 64, 32),
    ((333, 7), 19, 10),
    ((150, 20), 48, 5),
]
SHAPE_IDS = ["tiny", "small", "packets", "ragged", "many-rows"]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_backend_matches_reference(fast_backend, dtype, shape, masked, reduction, threads):
    lead, H, K = shape
    case = make_head(lead, H, K, dtype=dtype, masked=masked and len(lead) > 0, seed=5)
    want = run(case, "numpy", reduction)
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    try:
        got = run(case, fast_backend, reduction)
    finally:
        fastrnn.set_num_threads(previous)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    assert isinstance(got.loss, float)
    assert got.loss == pytest.approx(want.loss, rel=rtol)
    for name in ("dh", "dweight", "dbias"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape and a.dtype == b.dtype == dtype, name
        scale = max(float(np.abs(b).max()), 1e-30)
        assert float(np.abs(a - b).max()) <= rtol * scale, name


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [64, 67], ids=["packets", "ragged"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_backend_matches_reference_for_a_large_dh(fast_backend, dtype, H, threads):
    # dh past 16 MB: the C++ head writes it with streaming stores (whole packets of H), or
    # through its padded scratch (ragged H)
    case = make_head((4100, 17), H, 10, dtype=dtype, masked=True, seed=11)
    assert case["h"].nbytes >= 16 << 20
    want = run(case, "numpy")
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    try:
        got = run(case, fast_backend)
    finally:
        fastrnn.set_num_threads(previous)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    assert got.loss == pytest.approx(want.loss, rel=rtol)
    for name in ("dh", "dweight", "dbias"):
        a, b = getattr(got, name), getattr(want, name)
        assert float(np.abs(a - b).max()) <= rtol * float(np.abs(b).max()), name


def test_backend_is_stable_for_huge_logits(backend):
    case = make_head((50, 4), 16, 12, dtype=np.float32, scale=1e4, seed=6)
    got = run(case, backend)
    want = run(case, "numpy")
    assert np.isfinite(got.loss) and got.loss == pytest.approx(want.loss, rel=1e-4)
    for name in ("dh", "dweight", "dbias"):
        assert np.all(np.isfinite(getattr(got, name))), name


def test_nan_in_h_propagates(backend):
    case = make_head((6, 2), 8, 3, seed=7)
    case["h"][2, 1, 0] = np.nan
    got = run(case, backend)
    assert np.isnan(got.loss)


def test_same_bits_for_the_same_input(backend):
    case = make_head((300, 5), 32, 16, dtype=np.float32, seed=8)
    a = run(case, backend)
    copy = {k: (None if v is None else np.array(v, copy=True)) for k, v in case.items()}
    b = run(copy, backend)
    assert a.loss == b.loss
    for name in ("dh", "dweight", "dbias"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_a_transposed_h_runs_in_its_memory_order(backend, masked):
    """A batch-first layer's output (a transposed view of time-major memory) goes to the
    head without a copy: the same bits as its time-major twin, and dh comes back as the
    same kind of view (so the layer's backward takes it without a copy either)."""
    case = make_head((9, 4), 16, 7, dtype=np.float32, seed=12)  # time-major (T, B, H)
    mask = np.random.default_rng(12).random((9, 4)) > 0.3 if masked else None
    twin = run({**case, "mask": mask}, backend)
    view = {**case, "h": case["h"].transpose(1, 0, 2), "targets": case["targets"].T}
    got = run({**view, "mask": None if mask is None else mask.T}, backend)
    assert got.loss == twin.loss
    assert got.dh.shape == (4, 9, 16) and got.dh.transpose(1, 0, 2).flags.c_contiguous
    assert np.array_equal(got.dh.transpose(1, 0, 2), twin.dh)
    assert np.array_equal(got.dweight, twin.dweight) and np.array_equal(got.dbias, twin.dbias)


def test_all_masked_gives_zero(backend):
    case = make_head((4, 3), seed=9)
    case["mask"] = np.zeros(4, dtype=bool)
    got = run(case, backend)
    assert got.loss == 0.0
    assert not got.dh.any() and not got.dweight.any() and not got.dbias.any()


def test_empty_rows(backend):
    case = make_head((0, 3), seed=10)
    got = run(case, backend)
    assert got.loss == 0.0 and got.dh.shape == (0, 3, 5) and not got.dweight.any()


# --- Linear.softmax_cross_entropy ---------------------------------------------------------


def test_linear_softmax_cross_entropy_writes_grads(backend):
    case = make_head((6, 2), 5, 4, masked=True, seed=11)
    head = layers.Linear(5, 4, dtype=np.float64)
    head.load_state_dict({"weight": case["weight"], "bias": case["bias"]})
    with fastrnn.use_backend(backend):
        loss, dh = head.softmax_cross_entropy(case["h"], case["targets"], mask=case["mask"])
    want = run(case, "numpy")
    assert loss == pytest.approx(want.loss, rel=1e-10)
    np.testing.assert_allclose(dh, want.dh, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(head.grads["weight"], want.dweight, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(head.grads["bias"], want.dbias, rtol=1e-10, atol=1e-14)


def test_linear_softmax_cross_entropy_checks_dtype():
    head = layers.Linear(5, 4, dtype=np.float32)
    with pytest.raises(TypeError, match="h has dtype float64"):
        head.softmax_cross_entropy(np.zeros((2, 5)), np.zeros(2, dtype=int))


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"h": np.zeros((3, 4))}, ValueError, r"h has shape \(3, 4\), expected \(\.\.\., 5\)"),
        ({"h": np.zeros((3, 5), dtype=np.int64)}, TypeError, "h must have dtype float32"),
        ({"h": np.zeros((3, 5), dtype=np.float32)}, TypeError, "h has dtype float32"),
        ({"weight": np.zeros(5)}, ValueError, r"weight has shape \(5,\), expected"),
        ({"weight": np.zeros((0, 5))}, ValueError, r"weight has shape \(0, 5\)"),
        ({"bias": np.zeros(3)}, ValueError, r"bias has shape \(3,\), expected \(4,\)"),
        ({"bias": np.zeros(4, dtype=np.float32)}, TypeError, "bias has dtype float32"),
        ({"targets": np.zeros((3, 1), dtype=int)}, ValueError, r"targets has shape \(3, 1\)"),
        ({"targets": np.zeros(3)}, TypeError, "targets must be integer"),
        ({"targets": np.array([0, 4, 1])}, ValueError, r"targets must be in 0\.\.3"),
        ({"targets": np.array([0, -1, 1])}, ValueError, r"targets must be in 0\.\.3"),
        ({"mask": np.ones(3)}, TypeError, "mask must be a boolean array"),
        ({"mask": np.ones(2, dtype=bool)}, ValueError, r"mask has shape \(2,\)"),
        ({"reduction": "max"}, ValueError, "reduction must be one of 'mean', 'sum', got 'max'"),
        ({"backend": "fortran"}, ValueError, "fortran"),
    ],
)
def test_bad_input_is_refused(change, error, match):
    args = {
        "h": np.zeros((3, 5)),
        "weight": np.zeros((4, 5)),
        "bias": np.zeros(4),
        "targets": np.array([0, 1, 3]),
        "mask": None,
        "reduction": "mean",
        "backend": "numpy",
    }
    args.update(change)
    h, w, b, y = (args.pop(k) for k in ("h", "weight", "bias", "targets"))
    with pytest.raises(error, match=match):
        linear_cross_entropy(h, w, b, y, **args)


def test_masked_targets_may_be_anything(backend):
    h = np.ones((3, 5))
    got = linear_cross_entropy(
        h,
        np.zeros((4, 5)),
        np.zeros(4),
        np.array([0, 99, 1]),
        mask=np.array([True, False, True]),
        backend=backend,
    )
    assert got.loss == pytest.approx(np.log(4))
    assert not got.dh[1].any()
