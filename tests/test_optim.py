"""Optimizers against steps computed by hand (and against PyTorch when it is installed),
gradient clipping, and the learning-rate schedules at chosen steps."""

import math

import numpy as np
import pytest

from nanollm.optim import OPTIMIZERS, clip_grad_norm, global_grad_norm
from nanollm.schedule import lr_at

P0, G1, G2 = np.array([1.0, -2.0, 0.5]), np.array([0.1, 0.2, -0.3]), np.array([-0.4, 0.05, 0.3])


def two_steps(name, **hyper):
    opt = OPTIMIZERS[name]
    p = P0.copy()
    state = opt.init(p)
    opt.update(p, G1, state, **hyper)
    after_one = p.copy()
    opt.update(p, G2, state, **hyper)
    return after_one, p


def test_sgd_plain_momentum_and_nesterov_by_hand():
    one, two = two_steps("sgd", lr=0.1)
    np.testing.assert_allclose(two, P0 - 0.1 * G1 - 0.1 * G2)
    one, two = two_steps("sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    g1, buf1 = G1 + 0.01 * P0, G1 + 0.01 * P0
    np.testing.assert_allclose(one, P0 - 0.1 * buf1)
    g2 = G2 + 0.01 * one
    np.testing.assert_allclose(two, one - 0.1 * (0.9 * buf1 + g2))
    one, two = two_steps("sgd", lr=0.1, momentum=0.9, nesterov=True)
    buf2 = 0.9 * G1 + G2
    np.testing.assert_allclose(one, P0 - 0.1 * (G1 + 0.9 * G1))
    np.testing.assert_allclose(two, one - 0.1 * (G2 + 0.9 * buf2))
    with pytest.raises(ValueError, match="nesterov momentum needs momentum > 0"):
        two_steps("sgd", lr=0.1, nesterov=True)


def adam_by_hand(p, grads, lr, b1, b2, eps, wd, decoupled):
    m = v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


@pytest.mark.parametrize("name, decoupled", [("adam", False), ("adamw", True)])
def test_adam_and_adamw_by_hand(name, decoupled):
    hyper = dict(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1)
    _, two = two_steps(name, **hyper)
    np.testing.assert_allclose(two, adam_by_hand(P0, [G1, G2], 0.01, 0.8, 0.95, 1e-6, 0.1, decoupled), rtol=1e-14)


def test_adam_first_step_moves_each_weight_by_about_lr():
    one, _ = two_steps("adam", lr=0.01)
    np.testing.assert_allclose(np.abs(one - P0), 0.01, rtol=1e-6)


def test_lion_by_hand():
    one, two = two_steps("lion", lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.5)
    np.testing.assert_allclose(one, P0 * (1 - 0.005) - 0.01 * np.sign(0.1 * G1))
    m1 = 0.01 * G1
    np.testing.assert_allclose(two, one * (1 - 0.005) - 0.01 * np.sign(0.9 * m1 + 0.1 * G2))


@pytest.mark.parametrize("name, torch_name, hyper, torch_hyper", [
    ("sgd", "SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", "Adam", dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1),
     dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)),
    ("adamw", "AdamW", dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1),
     dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)),
])
def test_optimizers_match_pytorch_for_ten_steps(name, torch_name, hyper, torch_hyper):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 to compare")
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4, 3))
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = getattr(torch.optim, torch_name)([tp], **torch_hyper)
    opt = OPTIMIZERS[name]
    state = opt.init(p)
    for _ in range(10):
        g = rng.normal(size=p.shape)
        opt.update(p, g, state, **hyper)
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_clip_grad_norm_scales_all_gradients_together():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0], [4.0]])}
    assert global_grad_norm(grads) == pytest.approx(5.0)
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    assert global_grad_norm(grads) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(grads["a"], [0.6, 0.0], rtol=1e-6)
    untouched = {"a": np.array([0.3, 0.4])}
    assert clip_grad_norm(untouched, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(untouched["a"], [0.3, 0.4])
    assert clip_grad_norm(grads, 0) == pytest.approx(1.0, rel=1e-6)  # 0 turns clipping off


def test_clip_keeps_float32_gradients_float32():
    grads = {"w": np.full(4, 10.0, dtype=np.float32)}
    clip_grad_norm(grads, 1.0)
    assert grads["w"].dtype == np.float32


# ------------------------------------------------------------------------- schedules

NANOGPT = dict(learning_rate=1e-3, min_learning_rate=1e-4, lr_schedule="cosine", warmup_steps=100, num_steps=2000)


def test_warmup_cosine_is_nanogpts_schedule():
    for schedule in ("cosine", "warmup_cosine"):
        cfg = {**NANOGPT, "lr_schedule": schedule}
        assert lr_at(0, cfg) == pytest.approx(1e-3 / 101)
        assert lr_at(99, cfg) == pytest.approx(1e-3 * 100 / 101)
        assert lr_at(100, cfg) == pytest.approx(1e-3)
        assert lr_at(1050, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)
        assert lr_at(2000, cfg) == pytest.approx(1e-4)
        assert lr_at(5000, cfg) == pytest.approx(1e-4)


def test_constant_step_and_polynomial_schedules():
    assert lr_at(0, dict(learning_rate=0.1)) == 0.1 == lr_at(10**6, dict(learning_rate=0.1))
    step = dict(learning_rate=1.0, lr_schedule="step", step_size=10, gamma=0.5)
    assert [lr_at(s, step) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    poly = dict(learning_rate=1.0, lr_schedule="polynomial", decay_steps=100, power=2.0, min_learning_rate=0.0)
    assert lr_at(50, poly) == pytest.approx(0.25)
    assert lr_at(100, poly) == 0.0 == lr_at(150, poly)
    warm = dict(learning_rate=1.0, lr_schedule="polynomial", decay_steps=110, warmup_steps=10, power=1.0)
    assert lr_at(4, warm) == pytest.approx(5 / 11) and lr_at(60, warm) == pytest.approx(0.5)


def test_cosine_is_monotone_after_warmup():
    rates = [lr_at(s, NANOGPT) for s in range(100, 2001)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert math.isclose(max(rates), 1e-3) and math.isclose(min(rates), 1e-4)


@pytest.mark.parametrize("cfg, message", [
    (dict(learning_rate=1.0, lr_schedule="linear"), "lr_schedule='linear' is not one of constant"),
    (dict(learning_rate=1.0, lr_schedule="cosine"), "needs decay_steps"),
    (dict(learning_rate=1.0, lr_schedule="step", step_size=0), "step_size must be >= 1"),
])
def test_schedule_errors_name_the_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        lr_at(5, cfg)
