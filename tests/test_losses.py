"""Losses: values against direct formulas, gradients against finite differences, masking."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_matches_central_differences, central_differences, fd_tolerance
from fastrnn.losses import bce_with_logits, mask_from_lengths, mse, softmax_cross_entropy

T, B, K = 4, 3, 5
LENGTHS = np.array([4, 1, 2])


def _case(name, rng):
    """(first argument, targets) for the named loss, with shapes (T, B, ...)."""
    if name == "ce":
        return rng.normal(size=(T, B, K)) * 3, rng.integers(0, K, size=(T, B))
    if name == "bce":
        return rng.normal(size=(T, B, 2)) * 3, rng.uniform(size=(T, B, 2))
    return rng.normal(size=(T, B, 2)), rng.normal(size=(T, B, 2))


LOSSES = {"ce": softmax_cross_entropy, "bce": bce_with_logits, "mse": mse}


def _direct(name, z, y):
    """The elementwise loss written naively (fine for moderate values)."""
    if name == "ce":
        p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        return -np.log(np.take_along_axis(p, y[..., None], -1)[..., 0])
    if name == "bce":
        s = 1 / (1 + np.exp(-z))
        return -(y * np.log(s) + (1 - y) * np.log(1 - s))
    return (z - y) ** 2


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("masked", [False, True])
def test_value_and_gradient_against_finite_differences(name, reduction, masked):
    rng = np.random.default_rng(0)
    z, y = _case(name, rng)
    mask = mask_from_lengths(LENGTHS, T) if masked else None
    loss, grad = LOSSES[name](z, y, mask=mask, reduction=reduction)
    elem = _direct(name, z, y)
    w = (
        np.ones(elem.shape)
        if mask is None
        else np.broadcast_to(mask.reshape(mask.shape + (1,) * (elem.ndim - 2)), elem.shape)
    )
    want = np.sum(elem * w) / (np.sum(w) if reduction == "mean" else 1)
    assert loss == pytest.approx(want, rel=1e-12)
    assert grad.shape == z.shape and grad.dtype == z.dtype
    num = central_differences(lambda: LOSSES[name](z, y, mask=mask, reduction=reduction)[0], z)
    # the terms summed: each element's loss and the logits it is computed from
    scale = (np.sum(np.abs(elem) * w) + np.sum(np.abs(z))) / (
        np.sum(w) if reduction == "mean" else 1
    )
    assert_matches_central_differences(grad, num, fd_tolerance(z.dtype, scale))


@pytest.mark.parametrize("name", list(LOSSES))
def test_masked_steps_are_ignored(name):
    """Padding: changing anything at masked steps changes neither loss nor gradient, and
    the masked mean equals the plain mean over the real steps only."""
    rng = np.random.default_rng(1)
    z, y = _case(name, rng)
    mask = mask_from_lengths(LENGTHS, T)
    loss, grad = LOSSES[name](z, y, mask=mask)
    z2, y2 = z.copy(), y.copy()
    z2[~mask] = 1e6
    y2[~mask] = -1 if name == "ce" else 7.0  # even invalid targets are fine when masked
    loss2, grad2 = LOSSES[name](z2, y2, mask=mask)
    assert loss2 == loss
    np.testing.assert_array_equal(grad2[mask], grad[mask])
    assert np.all(grad2[~mask] == 0)
    real_loss, _ = LOSSES[name](z[mask], y[mask])  # only the real steps, no mask
    assert loss == pytest.approx(real_loss, rel=1e-12)


def test_mask_from_lengths():
    m = mask_from_lengths(np.array([3, 1]), 4)
    np.testing.assert_array_equal(m, [[1, 1], [1, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(mask_from_lengths(np.array([3, 1]), 4, batch_first=True), m.T)
    with pytest.raises(ValueError, match=r"lengths must be in 0\.\.T"):
        mask_from_lengths(np.array([5]), 4)
    with pytest.raises(TypeError, match="integer"):
        mask_from_lengths(np.array([1.5]), 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_extreme_logits(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-800.0, 800.0, 3.0]], dtype=dtype)
    loss, grad = softmax_cross_entropy(z, np.array([1, 0]), reduction="sum")
    assert loss == pytest.approx(2e4 + 1600, rel=1e-6)
    np.testing.assert_allclose(grad, [[1, -1, 0], [-1, 1, 0]], atol=1e-6)
    zb = np.array([1e4, -1e4, 800.0, -800.0], dtype=dtype)
    loss, grad = bce_with_logits(zb, np.array([0.0, 1.0, 1.0, 0.0]), reduction="sum")
    assert loss == pytest.approx(2e4, rel=1e-6)
    np.testing.assert_allclose(grad, [1, -1, 0, 0], atol=1e-6)
    assert grad.dtype == dtype


def test_all_masked_gives_zero_not_nan():
    z = np.ones((2, 3, 4))
    loss, grad = softmax_cross_entropy(z, np.zeros((2, 3), int), mask=np.zeros((2, 3), bool))
    assert loss == 0.0 and not np.any(grad)


def test_mask_of_leading_dims_broadcasts_over_features():
    rng = np.random.default_rng(2)
    p, y = rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 2, 4))
    m_lead = np.array([[True, False], [True, True], [False, True]])
    full = np.broadcast_to(m_lead[..., None], p.shape)
    a = mse(p, y, mask=m_lead)
    b = mse(p, y, mask=full)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    z = rng.normal(size=(6, 5)) * 4
    y = rng.integers(0, 5, size=6)
    want = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(y)).item()
    assert softmax_cross_entropy(z, y)[0] == pytest.approx(want, rel=1e-12)
    zb, yb = rng.normal(size=(6, 2)) * 30, rng.uniform(size=(6, 2))
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(zb), torch.tensor(yb)
    ).item()
    assert bce_with_logits(zb, yb)[0] == pytest.approx(want, rel=1e-12)


def test_bad_input_messages():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"targets has shape \(4,\), expected \(3,\)"):
        softmax_cross_entropy(z, np.zeros(4, int))
    with pytest.raises(TypeError, match="integer class indices"):
        softmax_cross_entropy(z, np.zeros(3))
    with pytest.raises(ValueError, match=r"targets must be in 0..3"):
        softmax_cross_entropy(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', got 'max'"):
        mse(z, z, reduction="max")
    with pytest.raises(ValueError, match=r"mask has shape \(4,\)"):
        mse(z, z, mask=np.ones(4, bool))
    with pytest.raises(TypeError, match="mask must be a boolean"):
        mse(z, z, mask=np.ones(3))
    with pytest.raises(TypeError, match="logits must have dtype float32 or float64"):
        bce_with_logits(np.zeros(3, int), np.zeros(3))
    with pytest.raises(TypeError, match=r"T must be an int, got a float \(4\.0\)"):
        mask_from_lengths(np.array([1, 2]), 4.0)
    with pytest.raises(TypeError, match="lengths must be an integer array, got dtype float64"):
        mask_from_lengths(np.array([1.0, 2.0]), 4)
    with pytest.raises(ValueError, match=r"lengths must be a 1-d integer array \(B,\), got shape"):
        mask_from_lengths(np.ones((2, 2), int), 4)
    with pytest.raises(ValueError, match=r"targets has shape \(3,\), expected \(2,\) \(pred's"):
        mse(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"targets has shape \(2,\), expected \(3,\)"):
        bce_with_logits(np.zeros(3), np.zeros(2))
