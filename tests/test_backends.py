"""The backend registry and the primitives: every installed backend equals numpy_ref, and
numpy_ref itself agrees with independent, loop-by-loop definitions of the math."""

import math
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanollm import backends
from nanollm.backends import numpy_ref

FLOAT_TOLERANCE = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}
dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**16)


def rows_and_cols():
    return st.tuples(st.integers(1, 5), st.integers(1, 9))


# ------------------------------------------------------------------------- the registry

def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown backend 'tpu': choose one of numpy.*auto"):
        backends.use("tpu")


def test_auto_picks_a_backend_that_loads_and_numpy_is_always_there():
    assert backends.available()["numpy"] is None
    previous = backends.current_name()
    try:
        assert backends.use("auto") is backends.current()
        assert backends.current_name() in backends.names()
    finally:
        backends.use(previous)


def test_environment_variable_chooses_the_first_backend(monkeypatch):
    monkeypatch.setattr(backends, "_current", None)
    monkeypatch.setenv("NANOLLM_BACKEND", "numpy")
    assert backends.current() is numpy_ref
    monkeypatch.setattr(backends, "_current", None)
    monkeypatch.setenv("NANOLLM_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        backends.current()
    monkeypatch.setattr(backends, "_current", None)


def test_backend_that_cannot_load_gives_its_install_hint(monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "broken", ("nanollm.backends.does_not_exist", "pip install nothing"))
    with pytest.raises(ValueError, match=r"backend 'broken' cannot load .*; pip install nothing"):
        backends.use("broken")
    assert "pip install nothing" in backends.available()["broken"]


def test_backend_missing_a_primitive_is_refused(monkeypatch):
    fake = types.ModuleType("nanollm_fake_backend")
    fake.matmul = np.matmul
    monkeypatch.setitem(__import__("sys").modules, "nanollm_fake_backend", fake)
    monkeypatch.setitem(backends._REGISTRY, "fake", ("nanollm_fake_backend", ""))
    with pytest.raises(ValueError, match="lacks primitives: softmax_forward"):
        backends.get("fake")


def test_array_module_is_numpy_for_numpy_arrays():
    assert backends.array_module(np.zeros(3)) is np
    assert backends.array_module(np.float32(1.0)) is np


def test_every_primitive_is_defined_by_numpy_ref():
    for name in backends.PRIMITIVES:
        assert callable(getattr(numpy_ref, name)), name


# ------------------------------------------------------------------------- backends vs numpy_ref

def assert_matches(got, want, dtype):
    got, want = (got,) if not isinstance(got, tuple) else got, (want,) if not isinstance(want, tuple) else want
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype, f"dtype {g.dtype} != {dtype}"
        np.testing.assert_allclose(g, w, **FLOAT_TOLERANCE[dtype])


@given(rows_and_cols(), st.integers(1, 7), dtypes, seeds)
def test_matmul_and_softmax_match_numpy_ref(backend, shape, k, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=shape).astype(dtype), rng.normal(size=(shape[1], k)).astype(dtype)
    assert_matches(backend.matmul(a, b), numpy_ref.matmul(a, b), dtype)
    p = numpy_ref.softmax_forward(a)
    assert_matches(backend.softmax_forward(a), p, dtype)
    assert_matches(backend.softmax_backward(a, p), numpy_ref.softmax_backward(a, p), dtype)


@given(st.integers(1, 3), st.integers(1, 7), st.integers(0, 3), dtypes, seeds)
def test_causal_softmax_matches_numpy_ref(backend, heads, tq, past, dtype, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(2, heads, tq, tq + past)).astype(dtype)
    probs = numpy_ref.causal_softmax_forward(scores, 0.5)
    assert_matches(backend.causal_softmax_forward(scores, 0.5), probs, dtype)
    dprobs = rng.normal(size=probs.shape).astype(dtype)
    assert_matches(backend.causal_softmax_backward(dprobs, probs, 0.5),
                   numpy_ref.causal_softmax_backward(dprobs, probs, 0.5), dtype)


@given(rows_and_cols(), dtypes, seeds)
def test_layernorm_and_gelu_match_numpy_ref(backend, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(dtype)
    w, b = rng.normal(size=shape[-1]).astype(dtype), rng.normal(size=shape[-1]).astype(dtype)
    out, mean, rstd = numpy_ref.layernorm_forward(x, w, b, 1e-5)
    assert_matches(backend.layernorm_forward(x, w, b, 1e-5), (out, mean, rstd), dtype)
    dout = rng.normal(size=shape).astype(dtype)
    assert_matches(backend.layernorm_backward(dout, x, w, mean, rstd),
                   numpy_ref.layernorm_backward(dout, x, w, mean, rstd), dtype)
    assert_matches(backend.gelu_forward(x), numpy_ref.gelu_forward(x), dtype)
    assert_matches(backend.gelu_backward(dout, x), numpy_ref.gelu_backward(dout, x), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_stays_exact_far_into_both_tails(backend, dtype):
    """Where tanh saturates, GELU is x (or 0) and its slope 1 (or 0); the backward multiplies
    1 - tanh^2 by a factor growing like x^3, so a tanh a hair short of +-1 shows up as a wrong
    gradient for large pre-activations (numba's float32 gave 1.0255 at x=100, -25.5 at x=-1000)."""
    x = np.concatenate([np.linspace(-1000, -5, 401), np.linspace(5, 1000, 401)]).astype(dtype)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(backend.gelu_forward(x), numpy_ref.gelu_forward(x64), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(backend.gelu_backward(np.ones_like(x), x), numpy_ref.gelu_backward(np.ones_like(x64), x64),
                               rtol=2e-5, atol=5e-6)


@given(rows_and_cols(), dtypes, seeds)
def test_cross_entropy_and_embedding_backward_match_numpy_ref(backend, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape).astype(dtype)
    targets = rng.integers(0, shape[1], size=shape[0])
    targets[rng.random(shape[0]) < 0.3] = -100
    losses, lse = numpy_ref.cross_entropy_forward(logits, targets, -100)
    assert_matches(backend.cross_entropy_forward(logits, targets, -100), (losses, lse), dtype)
    dlosses = rng.normal(size=shape[0]).astype(dtype)
    assert_matches(backend.cross_entropy_backward(dlosses, logits, targets, lse, -100),
                   numpy_ref.cross_entropy_backward(dlosses, logits, targets, lse, -100), dtype)
    ids = rng.integers(0, 4, size=shape[0])
    assert_matches(backend.embedding_backward(logits, ids, 4), numpy_ref.embedding_backward(logits, ids, 4), dtype)


# ------------------------------------------------------------------------- numpy_ref vs the plain math

def test_layernorm_normalises_then_scales_and_shifts():
    x = np.random.default_rng(0).normal(3.0, 5.0, size=(4, 16))
    out, mean, rstd = numpy_ref.layernorm_forward(x, np.full(16, 2.0), np.full(16, 0.5), 1e-5)
    np.testing.assert_allclose(mean, x.mean(axis=1))
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(axis=1) + 1e-5))
    np.testing.assert_allclose(out.mean(axis=1), 0.5, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=1), 2.0, rtol=1e-5)


def test_gelu_tanh_form_is_close_to_the_exact_erf_gelu():
    x = np.linspace(-6, 6, 241)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(numpy_ref.gelu_forward(x), exact, atol=1e-3)
    assert numpy_ref.gelu_forward(np.array([0.0]))[0] == 0.0


def test_cross_entropy_is_minus_log_softmax_of_the_target():
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(5, 6)) * 30, np.array([0, 5, -100, 2, 3])  # large logits: no overflow
    losses, _ = numpy_ref.cross_entropy_forward(logits, targets, -100)
    for i, t in enumerate(targets):
        row = logits[i] - logits[i].max()
        want = 0.0 if t == -100 else -(row[t] - np.log(np.exp(row).sum()))
        assert losses[i] == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_causal_softmax_masks_the_future_and_handles_a_kv_offset():
    scores = np.random.default_rng(0).normal(size=(3, 5))  # 3 queries: the last 3 of 5 positions
    probs = numpy_ref.causal_softmax_forward(scores, 1.0)
    for i in range(3):
        visible = 2 + i + 1
        assert (probs[i, visible:] == 0).all()
        np.testing.assert_allclose(probs[i, :visible], np.exp(scores[i, :visible]) / np.exp(scores[i, :visible]).sum())


def test_attention_matches_a_loop_over_heads_and_positions():
    from nanollm.ops import attention_forward

    rng = np.random.default_rng(0)
    b, t, h, h_kv, hd = 2, 5, 4, 2, 3
    qkv = rng.normal(size=(b, t, (h + 2 * h_kv) * hd))
    out, _ = attention_forward(qkv, h, h_kv)
    q = qkv[..., : h * hd].reshape(b, t, h, hd)
    k = qkv[..., h * hd:(h + h_kv) * hd].reshape(b, t, h_kv, hd)
    v = qkv[..., (h + h_kv) * hd:].reshape(b, t, h_kv, hd)
    want = np.zeros((b, t, h, hd))
    for bi in range(b):
        for head in range(h):
            kv = head // (h // h_kv)
            for i in range(t):
                s = np.array([q[bi, i, head] @ k[bi, j, kv] / math.sqrt(hd) for j in range(i + 1)])
                w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                want[bi, i, head] = sum(w[j] * v[bi, j, kv] for j in range(i + 1))
    np.testing.assert_allclose(out, want.reshape(b, t, h * hd), rtol=1e-12, atol=1e-12)


@given(rows_and_cols(), dtypes, st.floats(0.0, 0.5), st.integers(1, 50), seeds)
def test_adamw_step_and_sum_of_squares_match_numpy_ref(backend, shape, dtype, weight_decay, step, seed):
    rng = np.random.default_rng(seed)
    param, grad = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
    m, v = rng.normal(size=shape).astype(dtype), rng.random(size=shape).astype(dtype)
    want = [a.copy() for a in (param, m, v)]
    numpy_ref.adamw_step(*want[:1], grad, *want[1:], 1e-2, 0.9, 0.99, 1e-8, weight_decay, step)
    got = [a.copy() for a in (param, m, v)]
    assert backend.adamw_step(*got[:1], grad, *got[1:], 1e-2, 0.9, 0.99, 1e-8, weight_decay, step) is None
    assert_matches(tuple(got), tuple(want), dtype)  # param, m, v updated in place
    rel = 1e-6 if dtype == np.float32 else 1e-12
    assert backend.sum_of_squares(grad) == pytest.approx(numpy_ref.sum_of_squares(grad), rel=rel)


# ------------------------------------------------------------------------- auto

def test_auto_names_a_backend_and_a_reason_for_every_primitive():
    from nanollm.backends import auto

    assert set(auto.CHOICES) == set(backends.PRIMITIVES)
    for primitive, (preference, why) in auto.CHOICES.items():
        assert preference and set(preference) <= set(backends._REGISTRY) and why, primitive
    assert set(backends.get("auto").picked) == set(backends.PRIMITIVES)


def test_auto_is_the_default_and_falls_back_saying_so(monkeypatch):
    monkeypatch.setattr(backends, "_current", None)
    monkeypatch.delenv("NANOLLM_BACKEND", raising=False)
    assert backends.current_name() == "auto"
    monkeypatch.setitem(backends._REGISTRY, "numba", ("nanollm.backends.does_not_exist", "pip install numba"))
    monkeypatch.delitem(backends._loaded, "numba", raising=False)
    monkeypatch.delitem(backends._loaded, "auto", raising=False)
    with pytest.warns(UserWarning, match=r"backend 'auto' skipped backend 'numba' cannot load .*pip install numba"):
        fallback = backends.get("auto")
    assert fallback.picked["gelu_forward"] in ("cython", "numpy") and fallback.picked["adamw_step"] == "numpy"
    monkeypatch.delitem(backends._loaded, "auto")  # the next test builds the real one again
    monkeypatch.setattr(backends, "_current", None)


def test_asking_for_a_backend_that_cannot_load_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "numba", ("nanollm.backends.does_not_exist", "pip install numba"))
    monkeypatch.delitem(backends._loaded, "numba", raising=False)
    with pytest.raises(ValueError, match=r"backend 'numba' cannot load .*; pip install numba"):
        backends.use("numba")
