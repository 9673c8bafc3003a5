"""Optimizers against hand computations, their saveable state, and gradient clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastrnn
from fastrnn.optim import (
    SGD,
    Adam,
    AdamW,
    CosineAnnealingLR,
    LinearLR,
    Momentum,
    SequentialLR,
    StepLR,
    clip_grad_norm,
    clip_grad_value,
    global_norm,
)


def _params():
    return {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.1, -0.2])}


def _grads(k):
    """A different gradient at every step k."""
    return {
        "w": np.array([[0.5, -1.0], [2.0, 0.0]]) * (k + 1),
        "b": np.array([-0.3, 0.7]) / (k + 1),
    }


def test_sgd_is_the_course_update():
    p = _params()
    w = p["w"]
    SGD(p, lr=0.1).step(_grads(0))
    assert p["w"] is w  # in place
    np.testing.assert_allclose(
        p["w"], [[1.0 - 0.05, -2.0 + 0.1], [0.5 - 0.2, 3.0]], rtol=0, atol=1e-15
    )
    np.testing.assert_allclose(p["b"], [0.1 + 0.03, -0.2 - 0.07], atol=1e-15)


def test_momentum_by_hand():
    p = _params()
    opt = Momentum(p, lr=0.1, momentum=0.9)
    w0 = 1.0  # follow the entry w[0, 0]
    g = [0.5 * (k + 1) for k in range(3)]
    v = 0.0
    for k in range(3):
        opt.step(_grads(k))
        v = 0.9 * v + g[k]
        w0 = w0 - 0.1 * v
        assert p["w"][0, 0] == pytest.approx(w0, rel=1e-14)
    # hand-unrolled: v1 = .5, v2 = .45 + 1 = 1.45, v3 = 1.305 + 1.5 = 2.805
    assert p["w"][0, 0] == pytest.approx(1.0 - 0.1 * (0.5 + 1.45 + 2.805), rel=1e-14)


def test_adam_by_hand():
    p = _params()
    opt = Adam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    # first step: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps) = lr*sign(g)
    opt.step(_grads(0))
    np.testing.assert_allclose(
        p["w"][0], [1.0 - 0.01 * 0.5 / (0.5 + 1e-8), -2.0 + 0.01 * 1.0 / (1.0 + 1e-8)], rtol=1e-12
    )
    assert p["w"][1, 1] == 3.0  # zero gradient, no move
    # second step for entry b[1]: g1 = 0.7, g2 = 0.35
    opt.step(_grads(1))
    m = 0.9 * (0.1 * 0.7) + 0.1 * 0.35
    v = 0.999 * (0.001 * 0.49) + 0.001 * 0.35**2
    step2 = 0.01 * (m / (1 - 0.9**2)) / (math.sqrt(v / (1 - 0.999**2)) + 1e-8)
    step1 = 0.01 * 0.7 / (0.7 + 1e-8)
    assert p["b"][1] == pytest.approx(-0.2 - step1 - step2, rel=1e-13)


def test_adam_matches_pytorch():
    torch = pytest.importorskip("torch")
    p = _params()
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in p.items()}
    opt = Adam(p, lr=0.05)
    topt = torch.optim.Adam(list(tp.values()), lr=0.05)
    for k in range(4):
        g = _grads(k)
        opt.step(g)
        for name, t in tp.items():
            t.grad = torch.tensor(g[name])
        topt.step()
    for name in p:
        np.testing.assert_allclose(p[name], tp[name].detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("cls", [SGD, Momentum, Adam])
def test_state_round_trip_continues_identically(cls, tmp_path):
    p1, p2 = _params(), _params()
    a = cls(p1, lr=0.1)
    for k in range(2):
        a.step(_grads(k))
    a.save(tmp_path / "opt.npz")
    for k in p1:
        p2[k][...] = p1[k]
    b = fastrnn.load(tmp_path / "opt.npz", params=p2)
    assert type(b) is cls and b.step_count == 2
    c = cls(_params(), lr=0.5)
    c.load_state_dict(a.state_dict())
    assert c.lr == 0.1
    for k in range(2, 4):
        a.step(_grads(k))
        b.step(_grads(k))
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])


def test_load_optimizer_without_params_says_what_to_pass(tmp_path):
    Adam(_params()).save(tmp_path / "adam.npz")
    with pytest.raises(ValueError, match=r"params=model\.parameters\(\)"):
        fastrnn.load(tmp_path / "adam.npz")
    with pytest.raises(
        ValueError, match=r"optimizer state m/w has shape \(2, 2\), expected \(3,\)"
    ):
        fastrnn.load(tmp_path / "adam.npz", params={"w": np.zeros(3), "b": np.zeros(2)})


def test_missing_gradient_leaves_parameter_and_unknown_is_an_error():
    p = _params()
    before = p["b"].copy()
    SGD(p, lr=0.1).step({"w": np.ones((2, 2))})
    np.testing.assert_array_equal(p["b"], before)
    with pytest.raises(ValueError, match=r"not parameters of this optimizer: \['u'\]"):
        SGD(p, lr=0.1).step({"u": np.ones(2)})
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(2,\), expected \(2, 2\)"):
        SGD(p, lr=0.1).step({"w": np.ones(2)})


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="lr must be finite and >= 0, got -1"):
        SGD(_params(), lr=-1)
    with pytest.raises(ValueError, match=r"momentum must be finite and >= 0 and < 1, got 1\.0"):
        Momentum(_params(), lr=0.1, momentum=1.0)
    with pytest.raises(TypeError, match="betas must be a pair"):
        Adam(_params(), betas=0.9)
    with pytest.raises(ValueError, match=r"betas must be a pair \(beta1, beta2\), got 3 values"):
        Adam(_params(), betas=(0.9, 0.99, 0.999))
    # one policy: a wrong type is a TypeError, a wrong value a ValueError
    with pytest.raises(TypeError, match=r"lr must be a number, got a str \('0\.1'\)"):
        SGD(_params(), lr="0.1")
    with pytest.raises(TypeError, match="eps must be a number, got a NoneType"):
        Adam(_params(), eps=None)
    with pytest.raises(ValueError, match=r"params must be a non-empty dict.*got an empty dict"):
        SGD({})
    with pytest.raises(TypeError, match="params must be a non-empty dict"):
        Adam([np.zeros(3)])
    with pytest.raises(TypeError, match=r"params\['w'\] must be a float np.ndarray"):
        Adam({"w": [1.0, 2.0]})


# --- clipping --------------------------------------------------------------------------


def test_clip_grad_norm_makes_the_global_norm_equal_the_threshold():
    g = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}
    before = clip_grad_norm(g, 6.5)
    assert before == pytest.approx(13.0)
    assert global_norm(g) == pytest.approx(6.5, rel=1e-14)
    np.testing.assert_allclose(g["a"], [1.5, 2.0])  # direction kept: scaled by 1/2
    small = {"a": np.array([0.3, 0.4])}
    assert clip_grad_norm(small, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(small["a"], [0.3, 0.4])  # below the threshold: untouched


def test_clip_grad_norm_with_a_known_norm_scales_alike():
    """``norm=``: the global norm already computed (training's finite check) is used, not
    computed again; the same scaling and return value as without it."""
    g1 = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}
    g2 = {k: v.copy() for k, v in g1.items()}
    assert clip_grad_norm(g1, 6.5, norm=global_norm(g1)) == clip_grad_norm(g2, 6.5)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
    g3 = {"a": np.array([3.0, 4.0])}
    assert clip_grad_norm(g3, 1.0, norm=10.0) == 10.0  # the norm given is the one used
    np.testing.assert_allclose(g3["a"], [0.3, 0.4])
    with pytest.raises(TypeError, match="norm must be a float"):
        clip_grad_norm(g3, 1.0, norm="5")


def test_clip_grad_norm_float32_in_place():
    g = {"a": np.full(10, 5.0, dtype=np.float32)}
    ref = g["a"]
    clip_grad_norm(g, 1.0)
    assert g["a"] is ref and ref.dtype == np.float32
    assert global_norm(g) == pytest.approx(1.0, rel=1e-6)


def test_global_norm_of_large_float32_gradients_does_not_overflow():
    g = {"a": np.full(4, 1e20, dtype=np.float32)}  # the squares overflow float32
    assert global_norm(g) == pytest.approx(2e20, rel=1e-6)
    clip_grad_norm(g, 1.0)
    assert np.allclose(g["a"], 0.5)


def test_clip_grad_value():
    g = {"a": np.array([-3.0, 0.2, 5.0])}
    clip_grad_value(g, 1.0)
    np.testing.assert_array_equal(g["a"], [-1.0, 0.2, 1.0])
    with pytest.raises(ValueError, match=r"clip_value must be finite and > 0, got -1\.0"):
        clip_grad_value(g, -1.0)
    with pytest.raises(ValueError, match="max_norm must be finite and > 0, got nan"):
        clip_grad_norm(g, float("nan"))


# --- AdamW and the learning-rate schedules against PyTorch -------------------------------

SCHEDULES = {
    "constant": (lambda opt: None, lambda topt, lrs: None),
    "step": (
        lambda opt: StepLR(opt, step_size=7, gamma=0.5),
        lambda topt, lrs: lrs.StepLR(topt, step_size=7, gamma=0.5),
    ),
    "cosine": (  # T_max < 50 steps: down to eta_min and up again
        lambda opt: CosineAnnealingLR(opt, T_max=20, eta_min=1e-3),
        lambda topt, lrs: lrs.CosineAnnealingLR(topt, T_max=20, eta_min=1e-3),
    ),
    "warmup": (
        lambda opt: LinearLR(opt, start_factor=0.1, total_iters=10),
        lambda topt, lrs: lrs.LinearLR(topt, start_factor=0.1, total_iters=10),
    ),
    "warmup_then_cosine": (
        lambda opt: SequentialLR(
            opt,
            [LinearLR(start_factor=0.2, total_iters=5), CosineAnnealingLR(T_max=30)],
            milestones=[5],
        ),
        lambda topt, lrs: lrs.SequentialLR(
            topt,
            [
                lrs.LinearLR(topt, start_factor=0.2, total_iters=5),
                lrs.CosineAnnealingLR(topt, T_max=30),
            ],
            milestones=[5],
        ),
    ),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_adamw_and_schedules_match_pytorch_step_by_step(schedule):
    """50 steps in float64: every learning rate and every parameter within 1e-12."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    p = {"w": rng.normal(size=(6, 5)), "b": rng.normal(size=5)}
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in p.items()}
    opt = AdamW(p, lr=0.05, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1)
    topt = torch.optim.AdamW(
        list(tp.values()), lr=0.05, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1
    )
    make, tmake = SCHEDULES[schedule]
    sched, tsched = make(opt), tmake(topt, torch.optim.lr_scheduler)
    lrs = []
    for _ in range(50):
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-300)
        lrs.append(opt.lr)
        g = {k: rng.normal(size=v.shape) for k, v in p.items()}
        opt.step(g)
        for name, t in tp.items():
            t.grad = torch.tensor(g[name])
        topt.step()
        for name in p:
            # 1e-12 relative; an entry that passes near zero keeps the absolute rounding of
            # the O(1) terms that cancel in it (50 steps * a few ulps of 1 < 1e-14)
            np.testing.assert_allclose(p[name], tp[name].detach().numpy(), rtol=1e-12, atol=1e-14)
        if sched is not None:
            sched.step()
            tsched.step()
    if schedule != "constant":
        assert len(set(lrs)) > 5  # the schedule did change the learning rate
    assert sched is None or sched.get_last_lr() == [opt.lr]


def test_schedules_closed_forms():
    p = _params()
    opt = SGD(p, lr=1.0)
    s = StepLR(opt, step_size=3, gamma=0.5)
    assert [opt.lr] + [s.step() for _ in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    opt = SGD(_params(), lr=2.0)
    w = LinearLR(opt, start_factor=0.25, total_iters=3)
    assert [opt.lr] + [w.step() for _ in range(4)] == [0.5, 1.0, 1.5, 2.0, 2.0]
    opt = SGD(_params(), lr=1.0)
    c = CosineAnnealingLR(opt, T_max=4, eta_min=0.1)
    got = [opt.lr] + [c.step() for _ in range(8)]
    want = [0.1 + 0.9 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(9)]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert got[4] == pytest.approx(0.1) and got[8] == pytest.approx(1.0)
    # the base lr is the optimizer's lr when its first schedule attached (initial_lr)
    again = StepLR(opt, step_size=1, gamma=0.5)
    assert again.base_lr == 1.0 and opt.lr == 1.0


def test_schedule_state_and_bad_arguments():
    opt = SGD(_params(), lr=1.0)
    s = StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(3):
        s.step()
    state = s.state_dict()
    opt2 = SGD(_params(), lr=1.0)
    s2 = StepLR(opt2, step_size=2, gamma=0.1)
    s2.load_state_dict(state)
    assert s2.last_epoch == 3 and opt2.lr == opt.lr == pytest.approx(0.1)
    assert s.step() == s2.step()
    with pytest.raises(TypeError, match=r"StepLR\(\) missing the required argument 'step_size'"):
        StepLR(opt)
    with pytest.raises(ValueError, match="T_max must be a positive int, got 0"):
        CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="start_factor must be finite and > 0 and <= 1"):
        LinearLR(opt, start_factor=0.0)
    with pytest.raises(TypeError, match=r"optimizer must be a fastrnn Optimizer .*, got dict"):
        StepLR(_params(), step_size=1)
    with pytest.raises(ValueError, match="already drives another optimizer"):
        s.attach(SGD(_params()))
    with pytest.raises(RuntimeError, match="drives no optimizer yet"):
        StepLR(step_size=1).step()
    with pytest.raises(ValueError, match="one milestone fewer than schedulers"):
        SequentialLR(opt, [StepLR(step_size=1)], milestones=[2])
    with pytest.raises(ValueError, match=r"schedulers\[0\] drives another optimizer"):
        SequentialLR(SGD(_params()), [s, StepLR(step_size=1)], milestones=[2])


def test_adamw_state_round_trip_and_weight_decay_by_hand(tmp_path):
    p = {"w": np.array([2.0, -4.0])}
    opt = AdamW(p, lr=0.1, weight_decay=0.5)
    opt.step({"w": np.array([1.0, -1.0])})
    # decay first: w * (1 - 0.1 * 0.5); then the first Adam step moves by lr * sign(g)
    np.testing.assert_allclose(p["w"], [2.0 * 0.95 - 0.1, -4.0 * 0.95 + 0.1], rtol=1e-7)
    opt.save(tmp_path / "adamw.npz")
    back = fastrnn.load(tmp_path / "adamw.npz", params={"w": p["w"].copy()})
    assert type(back) is AdamW and back.weight_decay == 0.5 and back.step_count == 1
    assert opt.kind == "optim.AdamW"
    with pytest.raises(ValueError, match="weight_decay must be finite and >= 0"):
        AdamW(_params(), weight_decay=-0.1)
