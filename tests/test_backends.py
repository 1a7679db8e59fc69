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

FLOAT_TOLERANCE = {np.float32: {"rtol": 2e-5, "atol": 2e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}
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
    with pytest.raises(ValueError, match="lacks primitives: causal_softmax_forward"):
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
def test_matmul_matches_numpy_ref(backend, shape, k, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=shape).astype(dtype), rng.normal(size=(shape[1], k)).astype(dtype)
    assert_matches(backend.matmul(a, b), numpy_ref.matmul(a, b), dtype)


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


# Llama's primitives: RMSNorm, RoPE, SwiGLU

def leading_axes():
    return st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


@given(leading_axes(), st.integers(1, 9), dtypes, seeds)
def test_rmsnorm_matches_numpy_ref(backend, lead, channels, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=lead + (channels,)).astype(dtype)
    w = rng.normal(size=channels).astype(dtype)
    out, rstd = numpy_ref.rmsnorm_forward(x, w, 1e-5)
    got = backend.rmsnorm_forward(x, w, 1e-5)
    assert [a.shape for a in got] == [out.shape, rstd.shape]
    assert_matches(got, (out, rstd), dtype)
    dout = rng.normal(size=x.shape).astype(dtype)
    assert_matches(backend.rmsnorm_backward(dout, x, w, rstd), numpy_ref.rmsnorm_backward(dout, x, w, rstd), dtype)


@given(leading_axes(), st.integers(1, 7), st.integers(1, 5), dtypes, seeds)
def test_rope_matches_numpy_ref(backend, lead, positions, half, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=lead + (positions, 2 * half)).astype(dtype)
    angles = rng.uniform(-10, 10, size=(positions, half))
    cos, sin = np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)
    assert_matches(backend.rope_forward(x, cos, sin), numpy_ref.rope_forward(x, cos, sin), dtype)
    assert_matches(backend.rope_backward(x, cos, sin), numpy_ref.rope_backward(x, cos, sin), dtype)


@given(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), st.floats(0.1, 8.0), dtypes, seeds)
def test_swiglu_matches_numpy_ref(backend, shape, gate_scale, dtype, seed):
    rng = np.random.default_rng(seed)
    gate = (gate_scale * rng.normal(size=shape)).astype(dtype)
    up, dout = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
    got = backend.swiglu_forward(gate, up)
    assert np.shape(got) == np.shape(gate)
    assert_matches(got, numpy_ref.swiglu_forward(gate, up), dtype)
    assert_matches(backend.swiglu_backward(dout, gate, up), numpy_ref.swiglu_backward(dout, gate, up), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_swiglu_saturates_without_overflow_and_keeps_nan(backend, dtype):
    """silu(g) = g sigmoid(g): far out the sigmoid is exactly 0 or 1, so silu(-1000) is 0 (not
    -1000 * 1e-7 from a tanh a hair short of -1, nor NaN from exp(1000) = inf) and silu(1000) is
    1000; at 0 the slope is 1/2. NaN in gives NaN out."""
    gate = np.array([-1000, -88, -30, -1, 0, 1, 30, 88, 1000], dtype=dtype)
    up, dout = np.full(gate.shape, 3.0, dtype=dtype), np.full(gate.shape, 2.0, dtype=dtype)
    want_out = [3 * g / (1 + math.exp(-g)) if g > -700 else 0.0 for g in gate.astype(float)]
    want_dgate = [6 * (1 + math.exp(-g) + g * math.exp(-g)) / (1 + math.exp(-g)) ** 2 if g > -700 else 0.0
                  for g in gate.astype(float)]
    out = backend.swiglu_forward(gate, up)
    dgate, dup = backend.swiglu_backward(dout, gate, up)
    for got in (out, dgate, dup):
        assert got.dtype == dtype and np.isfinite(got).all()
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(out, want_out, **tol)
    np.testing.assert_allclose(dgate, want_dgate, **tol)
    np.testing.assert_allclose(dup, 2 * np.array(want_out) / 3, **tol)
    assert out[0] == 0 and dgate[0] == 0 and out[4] == 0 and dgate[4] == 3.0 and out[-1] == 3000 and dgate[-1] == 6
    nan = np.array([np.nan], dtype=dtype)
    assert np.isnan(backend.swiglu_forward(nan, nan * 0 + 1)).all()
    assert all(np.isnan(g).all() for g in backend.swiglu_backward(nan * 0 + 1, nan, nan * 0 + 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_swiglu_matches_float64_math_far_into_both_tails(backend, dtype):
    """Against float64 on a dense grid, and +-inf and NaN as numpy_ref has them. Every backend
    builds the sigmoid from exp(-|g|), which does not cancel in the negative tail (the tanh form
    (1 + tanh(g/2)) / 2 loses every significant digit of a float32 silu below g = -16), so each
    is also within 1e-6 relative of the float64 silu there."""
    gate = np.concatenate([np.linspace(-40, 40, 100_001), [np.inf, -np.inf, np.nan]]).astype(dtype)
    gate64 = gate.astype(np.float64)
    up = np.ones_like(gate)
    tol = {"rtol": 2e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    with np.errstate(invalid="ignore"):  # -inf * 0 and inf * 0 are NaN in numpy_ref too
        out = backend.swiglu_forward(gate, up)
        np.testing.assert_allclose(out, numpy_ref.swiglu_forward(gate64, up), **tol)
        for got, want in zip(backend.swiglu_backward(up, gate, up), numpy_ref.swiglu_backward(up, gate64, up),
                             strict=True):
            np.testing.assert_allclose(got, want, **tol)
    g = gate64[:-3]
    e = np.exp(-np.abs(g))
    silu = g * np.where(g >= 0, 1 / (1 + e), e / (1 + e))
    np.testing.assert_allclose(out[:-3], silu, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=0)


@pytest.mark.parametrize("size", [2047, 2048, 2049, 16 * 2048 + 5, 40_000])
def test_swiglu_arrays_longer_than_a_kernel_chunk(backend, size):
    """numba's float32 SwiGLU works in chunks of 2048 elements: every element on either side of
    a boundary, and of an uneven last chunk, must be there."""
    rng = np.random.default_rng(size)
    gate, up, dout = (rng.normal(size=size).astype(np.float32) for _ in range(3))
    assert_matches(backend.swiglu_forward(gate, up), numpy_ref.swiglu_forward(gate, up), np.float32)
    assert_matches(backend.swiglu_backward(dout, gate, up), numpy_ref.swiglu_backward(dout, gate, up), np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rmsnorm_of_an_all_zero_row_is_zero_with_finite_gradients(backend, dtype):
    """A zero row has rms = sqrt(eps): the output is 0, rstd is 1/sqrt(eps) and the gradient
    is rstd * dout * weight (xhat = 0), never NaN; the other rows are unaffected."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8)).astype(dtype)
    x[1] = 0
    w, dout = rng.normal(size=8).astype(dtype), rng.normal(size=(3, 8)).astype(dtype)
    out, rstd = backend.rmsnorm_forward(x, w, 1e-5)
    assert (out[1] == 0).all() and rstd[1] == pytest.approx(1 / math.sqrt(1e-5), rel=1e-6)
    assert_matches((out, rstd), numpy_ref.rmsnorm_forward(x, w, 1e-5), dtype)
    dx, dweight = backend.rmsnorm_backward(dout, x, w, rstd)
    assert np.isfinite(dx).all() and np.isfinite(dweight).all()
    np.testing.assert_allclose(dx[1], rstd[1] * dout[1] * w, rtol=1e-6)
    assert_matches((dx, dweight), numpy_ref.rmsnorm_backward(dout, x, w, rstd), dtype)


def rope_tables(positions, head_dim, base=10000.0):
    """Llama's cos and sin tables (positions, head_dim / 2), built here, not by nanollm.ops."""
    inverse_frequency = base ** (-np.arange(0, head_dim, 2) / head_dim)
    angles = np.outer(np.arange(positions), inverse_frequency)
    return np.cos(angles), np.sin(angles)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("positions", [1, 2, 300])
def test_rope_at_one_position_and_at_many(backend, dtype, positions):
    """Position 0 is the identity (T=1); every position preserves each pair's length, and the
    backward undoes the forward (a rotation's transpose is its inverse)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, positions, 16)).astype(dtype)
    cos, sin = (table.astype(dtype) for table in rope_tables(positions, 16))
    out = backend.rope_forward(x, cos, sin)
    assert out.dtype == dtype and out.shape == x.shape
    assert_matches(out, numpy_ref.rope_forward(x, cos, sin), dtype)
    np.testing.assert_array_equal(out[..., 0, :], x[..., 0, :])
    tol = FLOAT_TOLERANCE[dtype]
    np.testing.assert_allclose(np.hypot(out[..., :8], out[..., 8:]), np.hypot(x[..., :8], x[..., 8:]), **tol)
    np.testing.assert_allclose(backend.rope_backward(out, cos, sin), x, rtol=tol["rtol"], atol=10 * tol["atol"])


@pytest.mark.parametrize("x_shape, table_shape", [((2, 5, 8), (4, 4)), ((2, 5, 8), (5, 3)), ((2, 5, 7), (5, 3)),
                                                  ((2, 5, 7), (5, 4))])
def test_rope_refuses_tables_that_do_not_fit_x(backend, x_shape, table_shape):
    """cos and sin must be (T, hd / 2) for x (..., T, hd); numpy_ref's broadcasting refuses the
    rest, and the kernels, which trust the shapes, must refuse them too."""
    x, table = np.ones(x_shape), np.ones(table_shape)
    for rope in (backend.rope_forward, backend.rope_backward):
        with pytest.raises(ValueError):
            rope(x, table, table)


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


def test_rmsnorm_matches_a_loop_over_rows_and_its_jacobian():
    """out_j = w_j x_j / rms, rms = sqrt(mean(x^2) + eps); d out_j / d x_k = w_j (delta_jk / rms
    - x_j x_k / (C rms^3)), so dx_k = sum_j dout_j (d out_j / d x_k); dweight_j = sum dout_j x_j / rms."""
    rng = np.random.default_rng(0)
    x, w, dout = rng.normal(size=(2, 3, 5)), rng.normal(size=5), rng.normal(size=(2, 3, 5))
    out, rstd = numpy_ref.rmsnorm_forward(x, w, 1e-5)
    dx, dweight = numpy_ref.rmsnorm_backward(dout, x, w, rstd)
    want_dweight = np.zeros(5)
    for b in range(2):
        for t in range(3):
            row, d = x[b, t], dout[b, t]
            rms = math.sqrt(sum(v * v for v in row) / 5 + 1e-5)
            assert rstd[b, t] == pytest.approx(1 / rms, rel=1e-14)
            for j in range(5):
                assert out[b, t, j] == pytest.approx(w[j] * row[j] / rms, rel=1e-13, abs=1e-15)
                want_dweight[j] += d[j] * row[j] / rms
            for k in range(5):
                want = sum(d[j] * w[j] * ((j == k) / rms - row[j] * row[k] / (5 * rms**3)) for j in range(5))
                assert dx[b, t, k] == pytest.approx(want, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(dweight, want_dweight, rtol=1e-12, atol=1e-14)


def test_rope_is_a_rotation_of_each_half_split_pair_and_its_backward_the_transpose():
    """Build the (hd, hd) rotation of each position from the angles themselves: channel i and
    i + hd/2 turn by angle(t, i). The forward is R x, the backward R^T dout."""
    rng = np.random.default_rng(0)
    t_len, hd = 4, 6
    angles = rng.uniform(-np.pi, np.pi, size=(t_len, hd // 2))
    x, dout = rng.normal(size=(2, t_len, hd)), rng.normal(size=(2, t_len, hd))
    out = numpy_ref.rope_forward(x, np.cos(angles), np.sin(angles))
    dx = numpy_ref.rope_backward(dout, np.cos(angles), np.sin(angles))
    for t in range(t_len):
        rotation = np.zeros((hd, hd))
        for i in range(hd // 2):
            c, s = math.cos(angles[t, i]), math.sin(angles[t, i])
            rotation[i, i], rotation[i, i + hd // 2] = c, -s
            rotation[i + hd // 2, i], rotation[i + hd // 2, i + hd // 2] = s, c
        for b in range(2):
            np.testing.assert_allclose(out[b, t], rotation @ x[b, t], rtol=1e-13, atol=1e-14)
            np.testing.assert_allclose(dx[b, t], rotation.T @ dout[b, t], rtol=1e-13, atol=1e-14)


def test_swiglu_matches_silu_written_with_exp_and_its_derivative():
    """silu(g) = g / (1 + e^-g), silu'(g) = (1 + e^-g + g e^-g) / (1 + e^-g)^2, element by element
    (|g| <= 30, where exp is safe), against numpy_ref's tanh form."""
    rng = np.random.default_rng(0)
    gate = np.concatenate([rng.normal(size=20) * 4, [-30.0, -5.0, 0.0, 5.0, 30.0]])
    up, dout = rng.normal(size=gate.shape), rng.normal(size=gate.shape)
    out = numpy_ref.swiglu_forward(gate, up)
    dgate, dup = numpy_ref.swiglu_backward(dout, gate, up)
    for i, g in enumerate(gate):
        e = math.exp(-g)
        silu = g / (1 + e)
        assert out[i] == pytest.approx(silu * up[i], rel=1e-12, abs=1e-14)
        assert dup[i] == pytest.approx(silu * dout[i], rel=1e-12, abs=1e-14)
        assert dgate[i] == pytest.approx(dout[i] * up[i] * (1 + e + g * e) / (1 + e) ** 2, rel=1e-12, abs=1e-14)


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
