"""Optimizers against steps computed by hand (and against PyTorch when it is installed),
gradient clipping, the learning-rate schedules at chosen steps, Muon (its Newton-Schulz
orthogonalisation, its steps, which parameters it takes, a model that learns with it) and
Sophia's two rules by hand (its estimator and training: tests/test_sophia.py)."""

import math

import numpy as np
import pytest

from nanollm import CharTokenizer, TransformerLanguageModel, train_with_config
from nanollm.config import resolve
from nanollm.optim import (
    NS_COEFFICIENTS,
    OPTIMIZERS,
    clip_grad_norm,
    global_grad_norm,
    hyperparameters,
    muon_init,
    muon_lr_factor,
    muon_update,
    newton_schulz,
    rule_for,
    sophia_hessian_update,
    sophia_init,
    sophia_update,
    uses_muon,
)
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
    buf1 = G1 + 0.01 * P0
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


def test_sophia_by_hand():
    """Clipped where the curvature is small next to m (first two coordinates), a damped Newton
    step where it is not (the third); decay first, as the authors' SophiaG."""
    p, state = P0.copy(), sophia_init(P0)
    state["h"][...] = [0.01, 0.0, 1.0]
    sophia_update(p, G1, state, lr=0.1, tokens=10, beta1=0.9, rho=0.5, eps=1e-12, weight_decay=0.1)
    m = 0.1 * G1                                                # [0.01, 0.02, -0.03]
    ratio = np.minimum(np.abs(m) / (0.5 * 10 * state["h"] + 1e-12), 1)   # [0.2, 1, 0.006]
    np.testing.assert_allclose(ratio, [0.2, 1.0, 0.006], rtol=1e-10)
    np.testing.assert_allclose(p, P0 * (1 - 0.01) - 0.1 * np.sign(m) * ratio, rtol=1e-15)
    np.testing.assert_allclose(p, [0.97, -2.08, 0.4956], rtol=1e-11)  # eps moves the first by 4e-13
    assert state["step"] == 1 and np.allclose(state["m"], m, rtol=1e-15)


def test_sophia_hessian_update_is_an_average_of_squared_gradients():
    state = sophia_init(P0)
    sophia_hessian_update(state, G1, beta2=0.9)
    sophia_hessian_update(state, G2, beta2=0.9, grad_scale=np.asarray(2.0))
    np.testing.assert_allclose(state["h"], 0.9 * 0.1 * G1**2 + 0.1 * (2 * G2)**2, rtol=1e-15)


def test_sophia_skips_a_step_whose_grad_scale_is_zero_even_with_a_nan_gradient():
    p, state = P0.copy(), sophia_init(P0)
    sophia_update(p, G1, state, lr=0.1, tokens=4, weight_decay=0.1)
    sophia_hessian_update(state, G2)
    before = (p.copy(), state["m"].copy(), state["h"].copy(), state["step"])
    nan = np.full_like(P0, np.nan)
    sophia_update(p, nan, state, lr=0.1, tokens=4, weight_decay=0.1, grad_scale=np.asarray(0.0))
    sophia_hessian_update(state, nan, grad_scale=np.asarray(0.0))
    assert all(np.array_equal(a, b) for a, b in zip(before[:3], (p, state["m"], state["h"])))
    assert state["step"] == before[3] == 1


def test_sophias_first_steps_before_any_hessian_are_sign_steps_of_size_lr():
    """h = 0 until the first estimate: every coordinate with m != 0 moves by exactly lr, as the
    reference's |m| / 1e-15 clipped to 1 does."""
    p, state = P0.copy(), sophia_init(P0)
    sophia_update(p, G1, state, lr=0.01, tokens=100)
    np.testing.assert_allclose(p, P0 - 0.01 * np.sign(G1), rtol=1e-15)


def test_sophias_rule_takes_the_config_keys():
    cfg = resolve({"optimizer": "sophia", "betas": (0.96, 0.98), "eps": 1e-12, "sophia_rho": 0.05})
    rule = rule_for("wte", np.zeros((3, 2)), cfg)
    assert rule.optimizer is OPTIMIZERS["sophia"] and rule.lr_factor == 1.0
    assert rule.hyper == {"beta1": 0.96, "beta2": 0.98, "rho": 0.05, "eps": 1e-12} == hyperparameters(cfg)
    assert rule.optimizer.hessian is sophia_hessian_update and rule.optimizer.scales_on_device


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

NANOGPT = resolve(dict(learning_rate=1e-3, min_learning_rate=1e-4, lr_schedule="cosine", warmup_steps=100,
                       num_steps=2000))


def test_warmup_cosine_is_nanogpts_schedule():
    for schedule in ("cosine", "warmup_cosine"):
        cfg = resolve(NANOGPT, {"lr_schedule": schedule})
        assert lr_at(0, cfg) == pytest.approx(1e-3 / 101)
        assert lr_at(99, cfg) == pytest.approx(1e-3 * 100 / 101)
        assert lr_at(100, cfg) == pytest.approx(1e-3)
        assert lr_at(1050, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)
        assert lr_at(2000, cfg) == pytest.approx(1e-4)
        assert lr_at(5000, cfg) == pytest.approx(1e-4)


def test_constant_step_and_polynomial_schedules():
    constant = resolve(dict(learning_rate=0.1))
    assert lr_at(0, constant) == 0.1 == lr_at(10**6, constant)
    step = resolve(dict(learning_rate=1.0, lr_schedule="step", step_size=10, gamma=0.5))
    assert [lr_at(s, step) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    poly = resolve(dict(learning_rate=1.0, lr_schedule="polynomial", decay_steps=100, power=2.0, min_learning_rate=0.0))
    assert lr_at(50, poly) == pytest.approx(0.25)
    assert lr_at(100, poly) == 0.0 == lr_at(150, poly)
    warm = resolve(dict(learning_rate=1.0, lr_schedule="polynomial", decay_steps=110, warmup_steps=10, power=1.0))
    assert lr_at(4, warm) == pytest.approx(5 / 11) and lr_at(60, warm) == pytest.approx(0.5)


def test_cosine_is_monotone_after_warmup():
    rates = [lr_at(s, NANOGPT) for s in range(100, 2001)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert math.isclose(max(rates), 1e-3) and math.isclose(min(rates), 1e-4)


@pytest.mark.parametrize("change, message", [
    (dict(lr_schedule="linear"), "lr_schedule='linear' is not one of constant"),
    (dict(lr_schedule="step", step_size=0), "step_size must be >= 1"),
])
def test_schedule_errors_name_the_key(change, message):
    """resolve() refuses these values; lr_at still names the key when a config is edited after it."""
    with pytest.raises(ValueError, match=message):
        lr_at(5, {**resolve(), **change})


# ------------------------------------------------------------------------- Muon

def matrix_with_singular_values(shape, singular_values, rng, dtype="float64"):
    """U diag(s) V^T of ``shape`` with random orthonormal U, V: a matrix whose spectrum is known."""
    m, n = shape
    u, _ = np.linalg.qr(rng.normal(size=(m, len(singular_values))))   # (m, r)
    v, _ = np.linalg.qr(rng.normal(size=(n, len(singular_values))))   # (n, r)
    return ((u * singular_values) @ v.T).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_newton_schulz_is_near_orthogonal_with_the_same_singular_vectors(shape, dtype):
    rng = np.random.default_rng(0)
    r = min(shape)
    s = np.geomspace(1.0, 0.05, r) * 7.0   # condition number 20, any overall scale
    g = matrix_with_singular_values(shape, s, rng, dtype)
    o = newton_schulz(g)
    assert o.shape == g.shape and o.dtype == g.dtype
    singular = np.linalg.svd(o.astype(np.float64), compute_uv=False)
    assert singular.min() > 0.67 and singular.max() < 1.15   # [0.68, 1.14]: the quintic's band after 5 steps
    # exactly U p(p(p(p(p(S / ||g||_F))))) V^T: the iteration acts on each singular value alone
    u, sv, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
    x = sv / np.linalg.norm(sv)
    a, b, c = NS_COEFFICIENTS
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    tolerance = 1e-10 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(o, (u * x) @ vt, atol=tolerance)


def test_newton_schulz_of_the_transpose_is_the_transpose():
    g = np.random.default_rng(1).normal(size=(12, 40))
    assert np.array_equal(newton_schulz(g.T), newton_schulz(g).T)   # both iterate on the wide one
    square = np.random.default_rng(2).normal(size=(20, 20))
    np.testing.assert_allclose(newton_schulz(square.T), newton_schulz(square).T, atol=1e-12)
    assert np.array_equal(newton_schulz(np.zeros((3, 5))), np.zeros((3, 5)))   # eps guards the division


def test_muon_lr_factor_reads_nanollms_in_out_layout_as_torchs_out_in():
    # a (in=8, out=24) weight here is torch's (out=24, in=8) Linear weight: A=24, B=8
    assert muon_lr_factor((8, 24)) == math.sqrt(3.0) and muon_lr_factor((24, 8)) == 1.0 == muon_lr_factor((9, 9))
    assert muon_lr_factor((8, 24), "match_rms_adamw") == 0.2 * math.sqrt(24) == muon_lr_factor((24, 8), "match_rms_adamw")
    with pytest.raises(ValueError, match="adjust_lr='sqrt' is not one of original, match_rms_adamw"):
        muon_lr_factor((8, 24), "sqrt")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_steps_by_hand(dtype, nesterov):
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=(6, 10)).astype(dtype)   # (in, out): a widening layer, lr factor sqrt(10/6)
    g1, g2 = (rng.normal(size=p0.shape).astype(dtype) for _ in range(2))
    p, state = p0.copy(), muon_init(p0)
    hyper = {"lr": 0.02, "momentum": 0.9, "nesterov": nesterov, "weight_decay": 0.1}
    muon_update(p, g1, state, **hyper)
    assert p.dtype == p0.dtype and p.shape == p0.shape and state["step"] == 1
    scale = 0.02 * math.sqrt(10 / 6)
    one = p0 * (1 - 0.002) - scale * newton_schulz(g1)   # buffer (and Nesterov mix) a multiple of g1
    tolerance = {"rtol": 1e-12, "atol": 1e-14} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(p, one, **tolerance)
    muon_update(p, g2, state, **hyper)
    buf = 0.9 * (0.1 * g1) + 0.1 * g2
    direction = 0.1 * g2 + 0.9 * buf if nesterov else buf
    np.testing.assert_allclose(state["momentum_buffer"], buf, **tolerance)
    np.testing.assert_allclose(p, one * (1 - 0.002) - scale * newton_schulz(direction), **tolerance)
    assert state["momentum_buffer"].dtype == p0.dtype


def test_muon_takes_matrices_only():
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        muon_init(np.zeros(4))
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        muon_update(np.zeros(4), np.ones(4), {"momentum_buffer": np.zeros(4), "step": 0}, lr=0.1)


def test_muon_routes_the_hidden_matrices_and_leaves_the_rest_to_adamw():
    model = TransformerLanguageModel(vocab_size=11, embedding_dim=8, num_layers=2, num_heads=2, ffn_hidden_dim=16,
                                     max_seq_len=8, seed=0)
    chosen = {name for name, p in model.params.items() if uses_muon(name, p)}
    assert chosen == {f"blocks.{i}.{w}.weight" for i in range(2) for w in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    assert not uses_muon("lm_head.weight", (8, 11)) and uses_muon("blocks.0.mlp.fc.weight", (8, 16))

    cfg = resolve({"optimizer": "muon", "learning_rate": 1e-3, "muon_learning_rate": 0.03, "muon_momentum": 0.9,
                   "betas": (0.8, 0.95), "eps": 1e-7})
    muon = rule_for("blocks.1.attn.proj.weight", model.params["blocks.1.attn.proj.weight"], cfg)
    assert muon.optimizer is OPTIMIZERS["muon"] and muon.lr_factor == pytest.approx(30.0)
    assert muon.hyper == {"momentum": 0.9, "nesterov": True, "ns_steps": 5, "adjust_lr": "original"} \
        == hyperparameters(cfg)
    for name in ("wte", "wpe", "blocks.0.ln1.weight", "blocks.0.mlp.fc.bias"):
        rule = rule_for(name, model.params[name], cfg)
        assert rule.optimizer is OPTIMIZERS["adamw"] and rule.lr_factor == 1.0
        assert rule.hyper == {"beta1": 0.8, "beta2": 0.95, "eps": 1e-7} == hyperparameters(cfg, "adamw")
    plain = resolve({"optimizer": "lion"})
    assert rule_for("blocks.0.mlp.fc.weight", model.params["blocks.0.mlp.fc.weight"], plain) == \
        (OPTIMIZERS["lion"], hyperparameters(plain), 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_small_model_learns_with_muon(dtype):
    with open("data/raw/sample.txt", encoding="utf-8") as f:
        text = f.read()[:20_000]
    tokenizer = CharTokenizer().build_vocab(text)
    ids = np.array(tokenizer.encode(text))
    model = TransformerLanguageModel(tokenizer.vocab_size, embedding_dim=32, num_layers=2, num_heads=4,
                                     ffn_hidden_dim=64, max_seq_len=32, dtype=dtype, seed=0)
    before = {name: p.copy() for name, p in model.params.items()}
    results = train_with_config(model, ids, {"optimizer": "muon", "num_steps": 60, "batch_size": 8,
                                             "learning_rate": 3e-3, "log_interval": 0, "eval_interval": 0,
                                             "eval_steps": 4})
    history = results["history"]
    assert results["final_loss"] < 0.75 * history[0]["loss"] and math.isfinite(results["final_val_loss"])
    assert all(p.dtype == np.dtype(dtype) and not np.array_equal(p, before[name]) for name, p in model.params.items())
