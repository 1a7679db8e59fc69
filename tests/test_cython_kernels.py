"""The compiled Cython kernels beyond the shared backend-equivalence tests (test_backends.py):
the blocked matmul reference against BLAS, the wrapper's dtype checks, and the properties the
kernels promise (masked half never read, NaN propagates, bad targets are caught)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanollm import backends
from nanollm.backends import numpy_ref

_reason = backends.available()["cython"]
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

cython_cpu = backends.get("cython")

# blocked_matmul accumulates in the data dtype, in another order than BLAS: float32 sums of K
# products of N(0, 1) numbers differ by a few ulps of sqrt(K), well inside these bounds.
MATMUL_TOLERANCE = {np.float32: {"rtol": 1e-4, "atol": 1e-4}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}

# Sizes around the block sizes (64 rows, 128 of K, 256 columns) and the k-unroll of 4.
sizes = st.one_of(st.integers(1, 9), st.sampled_from([63, 64, 65, 127, 128, 129, 131, 255, 256, 257, 300]))


@given(sizes, sizes, sizes, st.sampled_from([np.float32, np.float64]), st.integers(0, 2**16))
def test_blocked_matmul_equals_np_matmul(m, k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)
    c = cython_cpu.blocked_matmul(a, b)
    assert c.dtype == dtype and c.shape == (m, n)
    np.testing.assert_allclose(c, np.matmul(a, b), **MATMUL_TOLERANCE[dtype])


def test_blocked_matmul_single_rows_columns_empty_and_strided_inputs():
    rng = np.random.default_rng(0)
    for m, k, n in [(1, 300, 1), (1, 1, 1), (300, 1, 1), (1, 1, 300), (5, 0, 3), (0, 4, 3)]:
        a, b = rng.normal(size=(m, k)), rng.normal(size=(k, n))
        np.testing.assert_allclose(cython_cpu.blocked_matmul(a, b), a @ b, rtol=1e-12, atol=1e-12)
    a, b = rng.normal(size=(70, 130)), rng.normal(size=(70, 260))  # transposed views: not contiguous
    np.testing.assert_allclose(cython_cpu.blocked_matmul(a.T, b), a.T @ b, rtol=1e-12, atol=1e-12)


def test_blocked_matmul_rejects_bad_input():
    with pytest.raises(ValueError, match="float32 and float64.*int64"):
        cython_cpu.blocked_matmul(np.ones((2, 3), dtype=np.int64), np.ones((3, 2)))
    with pytest.raises(ValueError, match="inner dimensions"):
        cython_cpu.blocked_matmul(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        cython_cpu.blocked_matmul(np.ones((2, 2, 3)), np.ones((3, 2)))


def test_matmul_primitive_stays_on_blas():
    a, b = np.ones((2, 3, 4)), np.ones((4, 5))  # broadcasting leading axes, as np.matmul
    np.testing.assert_array_equal(cython_cpu.matmul(a, b), np.matmul(a, b))


def test_wrapper_rejects_int_arrays_with_a_clear_error():
    ints = np.arange(12).reshape(3, 4)
    with pytest.raises(ValueError, match="cython backend supports float32 and float64 arrays; scores is int64"):
        cython_cpu.causal_softmax_forward(ints, 1.0)
    with pytest.raises(ValueError, match="weight is int64"):
        cython_cpu.layernorm_forward(np.ones((3, 4)), np.ones(4, dtype=np.int64), np.zeros(4))
    with pytest.raises(ValueError, match="float16"):
        cython_cpu.gelu_forward(np.ones(3, dtype=np.float16))
    with pytest.raises(ValueError, match="targets must be an integer array"):
        cython_cpu.cross_entropy_forward(np.ones((2, 3)), np.array([0.0, 1.0]), -100)
    with pytest.raises(ValueError, match="x is int64"):
        cython_cpu.rmsnorm_forward(ints, np.ones(4))
    with pytest.raises(ValueError, match="rstd is int64"):
        cython_cpu.rmsnorm_backward(np.ones((3, 4)), np.ones((3, 4)), np.ones(4), np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="cos is int64"):
        cython_cpu.rope_forward(np.ones((2, 4)), np.ones((2, 2), dtype=np.int64), np.ones((2, 2)))
    with pytest.raises(ValueError, match="float16"):
        cython_cpu.rope_backward(np.ones((2, 4), dtype=np.float16), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="up is int64"):
        cython_cpu.swiglu_forward(np.ones(3), np.arange(3))
    with pytest.raises(ValueError, match="dout is int64"):
        cython_cpu.swiglu_backward(np.arange(3), np.ones(3), np.ones(3))


def test_llama_kernels_check_the_shapes_their_loops_trust():
    with pytest.raises(ValueError, match=r"rope_forward: x \(M, T, hd\) with an even hd needs cos and sin \(T, hd/2\)"):
        cython_cpu.rope_forward(np.ones((2, 5, 8)), np.ones((4, 4)), np.ones((4, 4)))  # T = 5, table for 4
    with pytest.raises(ValueError, match="rope_backward: .*even hd"):
        cython_cpu.rope_backward(np.ones((5, 7)), np.ones((5, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"rope: x must be \(\.\.\., T, hd\)"):
        cython_cpu.rope_forward(np.ones(8), np.ones((1, 4)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="weight has 3 channels, x has C=4"):
        cython_cpu.rmsnorm_forward(np.ones((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match="rstd must have N=2"):
        cython_cpu.rmsnorm_backward(np.ones((2, 4)), np.ones((2, 4)), np.ones(4), np.ones(3))
    with pytest.raises(ValueError, match="swiglu_forward: up"):
        cython_cpu.swiglu_forward(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="swiglu_backward: dout, up"):
        cython_cpu.swiglu_backward(np.ones(4), np.ones(3), np.ones(3))


def test_targets_out_of_range_are_an_index_error_not_a_wild_read():
    logits = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(IndexError, match="target 4 of row 1 is outside 0..3"):
        cython_cpu.cross_entropy_forward(logits, np.array([0, 4, 1]), -100)
    with pytest.raises(IndexError, match="target -1 of row 2"):
        cython_cpu.cross_entropy_backward(np.ones(3, np.float32), logits, np.array([0, 1, -1]),
                                          np.zeros(3, np.float32), -100)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_causal_softmax_never_reads_the_masked_half(dtype):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 4, 6)).astype(dtype)  # Tq=4 queries, the last 4 of Tk=6 keys
    future = numpy_ref._causal_mask(np, 4, 6)
    poisoned = np.where(future, np.nan, scores)
    probs = cython_cpu.causal_softmax_forward(poisoned, 0.3)
    np.testing.assert_allclose(probs, numpy_ref.causal_softmax_forward(scores, 0.3), rtol=2e-5, atol=2e-6)
    assert (probs[..., future] == 0).all()
    dprobs = np.where(future, np.nan, rng.normal(size=scores.shape).astype(dtype))
    dscores = cython_cpu.causal_softmax_backward(dprobs, probs, 0.3)
    assert (dscores[..., future] == 0).all() and np.isfinite(dscores).all()


def test_nan_propagates_and_large_logits_do_not_overflow():
    x = np.array([[1.0, np.nan, 2.0], [1000.0, 999.0, -1000.0]], dtype=np.float32)
    p = cython_cpu.causal_softmax_forward(x[:, None], 1.0)[:, 0]  # one query per row, seeing all 3 keys
    assert np.isnan(p[0]).all()
    np.testing.assert_allclose(p[1], numpy_ref.causal_softmax_forward(x[1:, None], 1.0)[0, 0], rtol=1e-6)
    losses, lse = cython_cpu.cross_entropy_forward(x, np.array([0, 1]), -100)
    assert np.isnan(losses[0]) and np.isfinite(losses[1]) and lse[1] == pytest.approx(1000.3133, rel=1e-6)
    assert np.isnan(cython_cpu.gelu_forward(np.array([np.nan]))).all()
    assert np.isnan(cython_cpu.layernorm_forward(x[:1], np.ones(3, np.float32), np.zeros(3, np.float32))[0]).all()
    assert np.isnan(cython_cpu.rmsnorm_forward(x[:1], np.ones(3, np.float32))[0]).all()
    assert np.isnan(cython_cpu.swiglu_forward(x[0], x[0])[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_matches_float64_math_far_into_both_tails(dtype):
    """float32 GELU uses a clamped rational tanh: check it where tanh saturates, not only near 0,
    against numpy_ref in float64. float32 bounds: the rational tanh is exactly -1 from u = -7.9
    on, where 1 + tanh(u) is still 2.7e-7; that costs up to 1.1e-6 in the forward and 4.2e-6 in
    the backward near x = -5 (NumPy's own float32 is off by 0.5e-6 and 1.2e-6 there)."""
    x = np.concatenate([np.linspace(-12, 12, 100_001), [np.inf, -np.inf, np.nan]]).astype(dtype)
    x64 = x.astype(np.float64)
    forward_tol = {"rtol": 2e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    backward_tol = {"rtol": 2e-5, "atol": 5e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN in numpy_ref too
        np.testing.assert_allclose(cython_cpu.gelu_forward(x), numpy_ref.gelu_forward(x64), **forward_tol)
        np.testing.assert_allclose(cython_cpu.gelu_backward(np.ones_like(x), x),
                                   numpy_ref.gelu_backward(np.ones_like(x64), x64), **backward_tol)


def test_leading_axes_and_non_contiguous_inputs_are_handled():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 2, 3)).transpose(1, 2, 0)  # (2, 3, 5), not C-contiguous
    w, b = rng.normal(size=5), rng.normal(size=5)
    for got, want in zip(cython_cpu.layernorm_forward(x, w, b), numpy_ref.layernorm_forward(x, w, b), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cython_cpu.causal_softmax_forward(x, 0.5), numpy_ref.causal_softmax_forward(x, 0.5),
                               rtol=1e-12)
    np.testing.assert_allclose(cython_cpu.gelu_backward(x, x), numpy_ref.gelu_backward(x, x), rtol=1e-12)
    for got, want in zip(cython_cpu.rmsnorm_forward(x, w), numpy_ref.rmsnorm_forward(x, w), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    rstd = numpy_ref.rmsnorm_forward(x, w)[1]
    for got, want in zip(cython_cpu.rmsnorm_backward(x, x, w, rstd), numpy_ref.rmsnorm_backward(x, x, w, rstd),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cython_cpu.swiglu_forward(x, x), numpy_ref.swiglu_forward(x, x), rtol=1e-12)
    for got, want in zip(cython_cpu.swiglu_backward(x, x, x), numpy_ref.swiglu_backward(x, x, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    q = rng.normal(size=(2, 3, 4, 6)).transpose(0, 2, 1, 3)  # (B, H, T, hd) as a view of (B, T, H, hd)
    angles = rng.normal(size=(3, 3))
    cos, sin = np.cos(angles)[:, ::-1], np.sin(angles)[:, ::-1]  # strided tables too
    np.testing.assert_allclose(cython_cpu.rope_forward(q, cos, sin), numpy_ref.rope_forward(q, cos, sin), rtol=1e-12)
    np.testing.assert_allclose(cython_cpu.rope_backward(q, cos, sin), numpy_ref.rope_backward(q, cos, sin), rtol=1e-12)
    assert not x.flags.c_contiguous and not q.flags.c_contiguous  # inputs are never modified or re-laid out in place


def test_causal_softmax_refuses_more_queries_than_keys():
    with pytest.raises(ValueError, match="Tq <= Tk"):
        cython_cpu.causal_softmax_forward(np.zeros((1, 3, 2)), 1.0)
