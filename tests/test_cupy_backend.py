"""The cupy backend on a GPU: every primitive equals numpy_ref (hypothesis-drawn shapes, float32
and float64 within the CPU backends' tolerances, float16 and bfloat16 within about one rounding
of the result), outputs are CuPy arrays of the documented dtypes, and the extras hold their
contracts: adamw_step_scaled skips on a zero grad_scale, sum_of_squares stays on the device,
CounterGenerator's stream is splitmix64's and its state survives a JSON round trip.

Half-precision inputs are drawn in float32 and rounded to the dtype; numpy_ref then runs in
float32 on exactly those numbers, which is what the kernels do (they compute in float32 and
round once, when they store). Needs CuPy and a CUDA GPU; skips the whole module without them."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

cupy = pytest.importorskip("cupy", reason="CuPy not installed")
if not cupy.cuda.is_available():
    pytest.skip("no CUDA GPU (cupy.cuda.is_available() is False)", allow_module_level=True)

from nanollm import backends
from nanollm.backends import cupy_gpu as gpu  # after the skips: it needs a GPU
from nanollm.backends import numpy_ref

DTYPES = ("float32", "float64", "float16", "bfloat16")
HALVES = ("float16", "bfloat16")
# One rounding of the result is 2^-11 relative for float16 and 2^-8 for bfloat16: allow four.
TOLERANCE = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-12, "atol": 1e-12},
             "float16": {"rtol": 2e-3, "atol": 2e-3}, "bfloat16": {"rtol": 1.6e-2, "atol": 1.6e-2}}
seeds = st.integers(0, 2**16)


def host_dtype(name):
    """The NumPy dtype called name; bfloat16 is ml_dtypes' (skip the test without it)."""
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes", reason="ml_dtypes not installed").bfloat16)
    return np.dtype(name)


def reference_dtype(name):
    """numpy_ref's dtype for a dtype's test: float64 for float64, float32 for the others."""
    return np.dtype(np.float64 if name == "float64" else np.float32)


def is_float(a):
    """A NumPy float array (the inputs that compare() rounds and converts; indices pass as they are)."""
    return isinstance(a, np.ndarray) and a.dtype.name in DTYPES


def draw(rng, shape, dtype, scale=1.0):
    """Normal numbers rounded to dtype: the reference sees exactly what the kernel sees."""
    return (scale * rng.normal(size=shape)).astype(host_dtype(dtype))


def compare(primitive, dtype, args, stats=()):
    """gpu.<primitive> on device copies of args against numpy_ref.<primitive> on the same numbers
    in reference_dtype(dtype). Each output must be a CuPy array, of dtype (float32 for the
    outputs listed in stats when dtype is a half type: layernorm's mean, a logsumexp, ...) and
    close to the reference. Returns the reference outputs (a tuple)."""
    got = getattr(gpu, primitive)(*(cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args))
    want = getattr(numpy_ref, primitive)(*(a.astype(reference_dtype(dtype)) if is_float(a) else a for a in args))
    got, want = (got if isinstance(got, tuple) else (got,)), (want if isinstance(want, tuple) else (want,))
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        is_stat = i in stats and dtype in HALVES
        assert isinstance(g, cupy.ndarray), f"output {i} of {primitive} is a {type(g)}"
        assert g.dtype == (np.float32 if is_stat else host_dtype(dtype)), f"output {i} of {primitive}: {g.dtype}"
        np.testing.assert_allclose(cupy.asnumpy(g).astype(np.float64), np.asarray(w, dtype=np.float64),
                                   **TOLERANCE["float32" if is_stat else dtype], err_msg=f"output {i} of {primitive}")
    return want


def rounded(a, dtype):
    """A reference output fed to a backward, rounded to dtype as the forward's output would be."""
    return np.asarray(a).astype(host_dtype(dtype))


def leading_axes():
    return st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


# ----------------------------------------------------------------------------- the primitives


def test_every_primitive_and_the_counter_generator_are_defined():
    for name in backends.PRIMITIVES + ("CounterGenerator",):
        assert callable(getattr(gpu, name)), name


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(1, 3), st.integers(1, 7), st.integers(0, 3), seeds)
def test_causal_softmax_matches_numpy_ref(dtype, heads, queries, past, seed):
    rng = np.random.default_rng(seed)
    scores = draw(rng, (2, heads, queries, queries + past), dtype)
    (probs,) = compare("causal_softmax_forward", dtype, (scores, 0.5))
    dprobs = draw(rng, scores.shape, dtype)
    compare("causal_softmax_backward", dtype, (dprobs, rounded(probs, dtype), 0.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_softmax_never_reads_the_masked_half(dtype):
    """NaN in every masked (future) score and its dprob: the kernels never load them, so the
    probabilities and gradients stay finite, and the masked ones are exactly 0."""
    rng = np.random.default_rng(0)
    queries, keys = 5, 8
    masked = np.triu(np.ones((queries, keys), dtype=bool), k=1 + keys - queries)
    scores = np.where(masked, np.nan, rng.normal(size=(3, queries, keys))).astype(host_dtype(dtype))
    probs = gpu.causal_softmax_forward(cupy.asarray(scores), 0.25)
    dprobs = np.where(masked, np.nan, rng.normal(size=scores.shape)).astype(host_dtype(dtype))
    dscores = gpu.causal_softmax_backward(cupy.asarray(dprobs), probs, 0.25)
    for out in (cupy.asnumpy(probs).astype(np.float64), cupy.asnumpy(dscores).astype(np.float64)):
        assert np.isfinite(out).all() and (out[:, masked] == 0).all()
    clean = np.where(masked, 0, scores.astype(reference_dtype(dtype)))
    np.testing.assert_allclose(cupy.asnumpy(probs).astype(np.float64),
                               numpy_ref.causal_softmax_forward(clean, 0.25), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@given(leading_axes(), st.integers(1, 9), seeds)
def test_layernorm_matches_numpy_ref(dtype, lead, channels, seed):
    rng = np.random.default_rng(seed)
    x, dout = draw(rng, lead + (channels,), dtype, 2.0), draw(rng, lead + (channels,), dtype)
    weight, bias = draw(rng, channels, dtype), draw(rng, channels, dtype)
    _, mean, rstd = compare("layernorm_forward", dtype, (x, weight, bias, 1e-5), stats=(1, 2))
    compare("layernorm_backward", dtype, (dout, x, weight, mean, rstd))


@pytest.mark.parametrize("dtype", DTYPES)
@given(leading_axes(), st.integers(1, 9), seeds)
def test_rmsnorm_matches_numpy_ref(dtype, lead, channels, seed):
    rng = np.random.default_rng(seed)
    x, dout = draw(rng, lead + (channels,), dtype), draw(rng, lead + (channels,), dtype)
    weight = draw(rng, channels, dtype)
    _, rstd = compare("rmsnorm_forward", dtype, (x, weight, 1e-5), stats=(1,))
    compare("rmsnorm_backward", dtype, (dout, x, weight, rstd))


def assert_close_to_largest(got, want, dtype):
    """Each output within the dtype's rtol, with an atol of rtol times its largest entry: the
    measure for sums over many rows, whose rounding grows with the terms, not with the result."""
    for g, w in zip(got, want, strict=True):
        rtol = TOLERANCE[dtype]["rtol"]
        np.testing.assert_allclose(cupy.asnumpy(g).astype(np.float64), w, rtol=rtol, atol=rtol * np.abs(w).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, channels", [(3, 1000), (1100, 7), (1500, 300)])
def test_norms_and_softmax_on_long_rows_and_many_rows(dtype, rows, channels):
    """Rows longer than a block (each thread strides over several columns), and more rows than
    one strip of the weight-gradient kernels (partial sums per strip, then CuPy's sum). The
    weight gradients are checked against float64 sums: summed in float32 and rounded once,
    half-precision ones stay within a rounding, where a sum in the half type would drift off."""
    rng = np.random.default_rng(rows)
    x, dout = draw(rng, (rows, channels), dtype), draw(rng, (rows, channels), dtype)
    weight, bias = draw(rng, channels, dtype), draw(rng, channels, dtype)
    compare("causal_softmax_forward", dtype, (x[:, None], 1.0))  # one query per row, seeing all its keys
    compare("layernorm_forward", dtype, (x, weight, bias, 1e-5), stats=(1, 2))
    compare("rmsnorm_forward", dtype, (x, weight, 1e-5), stats=(1,))
    dout64, x64, w64 = (a.astype(np.float64) for a in (dout, x, weight))
    stat = np.float64 if dtype == "float64" else np.float32
    device = [cupy.asarray(a) for a in (dout, x, weight)]
    _, mean, rstd = numpy_ref.layernorm_forward(x64, w64, bias.astype(np.float64))
    got = gpu.layernorm_backward(*device, cupy.asarray(mean.astype(stat)), cupy.asarray(rstd.astype(stat)))
    assert_close_to_largest(got, numpy_ref.layernorm_backward(dout64, x64, w64, mean, rstd), dtype)
    _, rstd = numpy_ref.rmsnorm_forward(x64, w64)
    assert_close_to_largest(gpu.rmsnorm_backward(*device, cupy.asarray(rstd.astype(stat))),
                            numpy_ref.rmsnorm_backward(dout64, x64, w64, rstd), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), seeds)
def test_gelu_matches_numpy_ref(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    x, dout = draw(rng, shape, dtype, 3.0), draw(rng, shape, dtype)
    compare("gelu_forward", dtype, (x,))
    compare("gelu_backward", dtype, (dout, x))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gelu_stays_exact_far_into_both_tails(dtype):
    """Where tanh saturates GELU is x (or 0) and its slope 1 (or 0) (as in test_backends.py)."""
    x = np.concatenate([np.linspace(-1000, -5, 401), np.linspace(5, 1000, 401)]).astype(dtype)
    x64 = x.astype(np.float64)
    out = cupy.asnumpy(gpu.gelu_forward(cupy.asarray(x)))
    slope = cupy.asnumpy(gpu.gelu_backward(cupy.ones(x.shape, dtype=dtype), cupy.asarray(x)))
    np.testing.assert_allclose(out, numpy_ref.gelu_forward(x64), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(slope, numpy_ref.gelu_backward(np.ones_like(x64), x64), rtol=2e-5, atol=5e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), st.floats(0.1, 8.0), seeds)
def test_swiglu_matches_numpy_ref(dtype, shape, gate_scale, seed):
    rng = np.random.default_rng(seed)
    gate, up, dout = draw(rng, shape, dtype, gate_scale), draw(rng, shape, dtype), draw(rng, shape, dtype)
    compare("swiglu_forward", dtype, (gate, up))
    compare("swiglu_backward", dtype, (dout, gate, up))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_swiglu_saturates_without_overflow_and_keeps_nan(dtype):
    """silu(-1000) is 0 and silu(1000) is 1000 (the sigmoid from exp(-|g|) never overflows); the
    slope at 0 is 1/2; NaN stays NaN (as in test_backends.py)."""
    gate = cupy.asarray(np.array([-1000, -88, -30, 0, 30, 1000, np.nan], dtype=dtype))
    ones = cupy.ones(gate.shape, dtype=dtype)
    out = cupy.asnumpy(gpu.swiglu_forward(gate, ones))
    dgate, dup = (cupy.asnumpy(g) for g in gpu.swiglu_backward(ones, gate, ones))
    assert out[0] == 0 and out[3] == 0 and out[5] == 1000 and dgate[0] == 0 and dgate[3] == 0.5 and dgate[5] == 1
    assert np.isfinite(out[:-1]).all() and np.isfinite(dgate[:-1]).all() and np.isfinite(dup[:-1]).all()
    assert np.isnan(out[-1]) and np.isnan(dgate[-1]) and np.isnan(dup[-1])


@pytest.mark.parametrize("dtype", DTYPES)
@given(leading_axes(), st.integers(1, 7), st.integers(1, 5), seeds)
def test_rope_matches_numpy_ref(dtype, lead, positions, half, seed):
    rng = np.random.default_rng(seed)
    x = draw(rng, lead + (positions, 2 * half), dtype)
    angles = rng.uniform(-10, 10, size=(positions, half))
    cos, sin = np.cos(angles).astype(host_dtype(dtype)), np.sin(angles).astype(host_dtype(dtype))
    compare("rope_forward", dtype, (x, cos, sin))
    compare("rope_backward", dtype, (x, cos, sin))


@pytest.mark.parametrize("x_shape, table_shape", [((2, 5, 8), (4, 4)), ((2, 5, 8), (5, 3)), ((2, 5, 7), (5, 3))])
def test_rope_refuses_tables_that_do_not_fit_x(x_shape, table_shape):
    """The kernel trusts its shapes, so the wrapper checks them: cos and sin must be (T, hd/2)."""
    x, table = cupy.ones(x_shape), cupy.ones(table_shape)
    for rope in (gpu.rope_forward, gpu.rope_backward):
        with pytest.raises(ValueError):
            rope(x, table, table)


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(1, 6), st.integers(1, 9), seeds)
def test_cross_entropy_and_embedding_backward_match_numpy_ref(dtype, rows, vocab, seed):
    rng = np.random.default_rng(seed)
    logits, dlosses, dout = draw(rng, (rows, vocab), dtype, 3.0), draw(rng, rows, dtype), draw(rng, (rows, 5), dtype)
    targets = rng.integers(0, vocab, size=rows)
    targets[rng.random(rows) < 0.3] = -100
    _, lse = compare("cross_entropy_forward", dtype, (logits, targets, -100), stats=(1,))
    compare("cross_entropy_backward", dtype, (dlosses, logits, targets, lse, -100))
    ids = rng.integers(0, 4, size=rows)  # repeats: a row collects several occurrences
    compare("embedding_backward", dtype, (dout, ids, 4))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cross_entropy_over_a_gpt2_sized_vocabulary(dtype):
    rng = np.random.default_rng(0)
    logits, targets = draw(rng, (6, 50257), dtype, 4.0), np.array([0, 50256, -100, 7, 25000, 3])
    _, lse = compare("cross_entropy_forward", dtype, (logits, targets, -100), stats=(1,))
    dlogits = compare("cross_entropy_backward", dtype, (draw(rng, 6, dtype), logits, targets, lse, -100))[0]
    assert (dlogits[2] == 0).all()


def test_out_of_range_targets_give_nan_and_out_of_range_ids_are_skipped():
    """A kernel cannot raise NumPy's IndexError: a bad target's loss is NaN (training stops on
    it), an embedding id outside the table adds nothing."""
    logits = cupy.zeros((3, 4), dtype=cupy.float32)
    losses, _ = gpu.cross_entropy_forward(logits, cupy.asarray([1, 4, -100]), -100)
    losses = cupy.asnumpy(losses)
    assert losses[0] == pytest.approx(np.log(4)) and np.isnan(losses[1]) and losses[2] == 0
    table = cupy.asnumpy(gpu.embedding_backward(cupy.ones((3, 2), dtype=cupy.float32), cupy.asarray([0, 5, -1]), 2))
    np.testing.assert_array_equal(table, [[1, 1], [0, 0]])


def test_embedding_backward_adds_in_row_order_so_its_bits_repeat():
    """Many rows onto few ids (where atomicAdd's order would vary): the same bits every call, and
    those of a sequential float32 sum in row order."""
    rng = np.random.default_rng(0)
    dout = rng.normal(size=(4096, 3)).astype(np.float32)
    ids = rng.integers(0, 5, 4096)
    tables = [cupy.asnumpy(gpu.embedding_backward(cupy.asarray(dout), cupy.asarray(ids), 5)) for _ in range(3)]
    sequential = np.zeros((5, 3), dtype=np.float32)
    for row, token in zip(dout, ids):
        sequential[token] += row
    for table in tables:
        np.testing.assert_array_equal(table, sequential)


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(1, 6), st.integers(1, 7), st.integers(1, 7), seeds)
def test_matmul_matches_numpy_ref(dtype, m, k, n, seed):
    rng = np.random.default_rng(seed)
    a, b = draw(rng, (2, m, k), dtype), draw(rng, (k, n), dtype)
    got = cupy.asnumpy(gpu.matmul(cupy.asarray(a), cupy.asarray(b)))
    want = numpy_ref.matmul(a.astype(reference_dtype(dtype)), b.astype(reference_dtype(dtype)))
    tolerance = {name: 4 * value for name, value in TOLERANCE[dtype].items()}  # cuBLAS may sum in the half type
    np.testing.assert_allclose(got.astype(np.float64), want, **tolerance)


def test_non_contiguous_inputs_are_made_contiguous_first():
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.normal(size=(9, 6)).astype(np.float32)).T  # (6, 9), a transposed view
    weight, bias = cupy.ones(9, dtype=cupy.float32), cupy.zeros(9, dtype=cupy.float32)
    host = cupy.asnumpy(x)
    np.testing.assert_allclose(cupy.asnumpy(gpu.causal_softmax_forward(x, 0.5)),
                               numpy_ref.causal_softmax_forward(host, 0.5), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(cupy.asnumpy(gpu.layernorm_forward(x, weight, bias)[0]),
                               numpy_ref.layernorm_forward(host, np.ones(9), np.zeros(9))[0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(cupy.asnumpy(gpu.gelu_forward(x[:, ::2])), numpy_ref.gelu_forward(host[:, ::2]),
                               rtol=2e-5, atol=2e-6)


def test_results_repeat_bit_for_bit():
    rng = np.random.default_rng(0)
    x, dout = (cupy.asarray(rng.normal(size=(700, 96)).astype(np.float32)) for _ in range(2))
    weight, bias = cupy.ones(96, dtype=cupy.float32), cupy.zeros(96, dtype=cupy.float32)
    _, mean, rstd = gpu.layernorm_forward(x, weight, bias)
    first, again = (gpu.layernorm_backward(dout, x, weight, mean, rstd) for _ in range(2))
    for a, b in zip(first, again):
        assert bool((a == b).all())
    assert float(gpu.sum_of_squares(x)) == float(gpu.sum_of_squares(x))


# ----------------------------------------------------------------------------- optimizer and norm


@pytest.mark.parametrize("param_dtype", ["float32", "float64"])
@pytest.mark.parametrize("grad_dtype", DTYPES)
@given(st.integers(1, 300), st.floats(0.0, 0.5), st.integers(1, 50), seeds)
def test_adamw_step_matches_numpy_ref(param_dtype, grad_dtype, size, weight_decay, step, seed):
    """In place on param, m and v; a half-precision gradient is used in the parameters' dtype."""
    rng = np.random.default_rng(seed)
    param, m = draw(rng, size, param_dtype), draw(rng, size, param_dtype)
    v, grad = rng.random(size).astype(param_dtype), draw(rng, size, grad_dtype)
    want = [a.copy() for a in (param, m, v)]
    numpy_ref.adamw_step(want[0], grad.astype(param_dtype), want[1], want[2], 1e-2, 0.9, 0.99, 1e-8, weight_decay, step)
    got = [cupy.asarray(a) for a in (param, m, v)]
    assert gpu.adamw_step(got[0], cupy.asarray(grad), got[1], got[2], 1e-2, 0.9, 0.99, 1e-8, weight_decay, step) is None
    for g, w in zip(got, want):
        assert g.dtype == param_dtype
        np.testing.assert_allclose(cupy.asnumpy(g), w, **TOLERANCE[param_dtype])


@pytest.mark.parametrize("param_dtype", ["float32", "float64"])
@pytest.mark.parametrize("grad_dtype", ["float32", "bfloat16"])
def test_adamw_step_scaled_reads_its_step_and_scale_on_the_device(param_dtype, grad_dtype):
    rng = np.random.default_rng(0)
    param, m = draw(rng, 1000, param_dtype), draw(rng, 1000, param_dtype)
    v, grad = rng.random(1000).astype(param_dtype), draw(rng, 1000, grad_dtype)
    want = [a.copy() for a in (param, m, v)]
    numpy_ref.adamw_step_scaled(want[0], grad, want[1], want[2], 1e-2, 0.9, 0.99, 1e-8, 0.1, np.int64(7),
                                np.asarray(0.25, dtype=param_dtype))
    got = [cupy.asarray(a) for a in (param, m, v)]
    gpu.adamw_step_scaled(got[0], cupy.asarray(grad), got[1], got[2], 1e-2, 0.9, 0.99, 1e-8, 0.1,
                          cupy.asarray(7, dtype=cupy.int64), cupy.asarray(0.25, dtype=param_dtype))
    for g, w in zip(got, want):
        np.testing.assert_allclose(cupy.asnumpy(g), w, **TOLERANCE[param_dtype])


def test_adamw_step_scaled_with_a_zero_scale_changes_nothing():
    """A skipped step (the gradient was not finite, so the caller set grad_scale to 0): param, m
    and v keep every bit, even with NaN and inf in the gradient."""
    rng = np.random.default_rng(0)
    param, m, v = (cupy.asarray(rng.random(500).astype(np.float32)) for _ in range(3))
    before = [a.copy() for a in (param, m, v)]
    grad = cupy.asarray(np.where(rng.random(500) < 0.1, np.nan, np.inf).astype(np.float16))
    gpu.adamw_step_scaled(param, grad, m, v, 1e-2, 0.9, 0.99, 1e-8, 0.1, cupy.asarray(3, dtype=cupy.int64),
                          cupy.zeros((), dtype=cupy.float32))
    for a, b in zip((param, m, v), before):
        assert bool((a == b).all())


def test_adamw_refuses_what_it_cannot_update_in_place():
    param, grad = cupy.zeros(4, dtype=cupy.float32), cupy.zeros(4, dtype=cupy.float32)
    with pytest.raises(ValueError, match="C-contiguous CuPy array"):
        gpu.adamw_step(np.zeros(4, np.float32), grad, param.copy(), param.copy(), 1e-3, 0.9, 0.99, 1e-8, 0, 1)
    with pytest.raises(ValueError, match="float32 or float64 parameters"):
        half = cupy.zeros(4, dtype=cupy.float16)
        gpu.adamw_step(half, grad, half.copy(), half.copy(), 1e-3, 0.9, 0.99, 1e-8, 0, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 255, 256, 257, 100_000, 1_000_003])
def test_sum_of_squares_is_a_float64_device_scalar(dtype, size):
    """Not a Python float: a 0-d float64 CuPy array, so summing the gradients' norms never waits
    for the host. Sizes around one block and past the limit of partial sums."""
    x = draw(np.random.default_rng(size), size, dtype)
    got = gpu.sum_of_squares(cupy.asarray(x))
    assert isinstance(got, cupy.ndarray) and got.shape == () and got.dtype == np.float64
    assert float(got) == pytest.approx(numpy_ref.sum_of_squares(x.astype(np.float64)), rel=1e-12)


# ----------------------------------------------------------------------------- CounterGenerator


def splitmix64(seed, k):
    """Element k of the stream, in plain Python (kernels.cu's splitmix64)."""
    mask = 2**64 - 1
    z = (seed + (k + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@pytest.mark.parametrize("dtype, bits", [("float64", 53), ("float32", 24), ("float16", 11), ("bfloat16", 8)])
def test_counter_generator_draws_splitmix64_top_bits(dtype, bits):
    """Element k is (top `bits` bits of splitmix64(seed, k)) / 2^bits, exact in the dtype; a
    second draw continues where the first stopped."""
    generator = gpu.CounterGenerator(42)
    first, second = generator.random((2, 3), dtype=host_dtype(dtype)), generator.random(4, dtype=host_dtype(dtype))
    assert first.shape == (2, 3) and first.dtype == host_dtype(dtype) and generator.bit_generator.state["counter"] == 10
    drawn = np.concatenate([cupy.asnumpy(first).ravel(), cupy.asnumpy(second)]).astype(np.float64)
    want = [(splitmix64(generator.seed, k) >> (64 - bits)) / 2.0**bits for k in range(10)]
    np.testing.assert_array_equal(drawn, want)


@pytest.mark.parametrize("dtype, bits", [("float64", 53), ("float32", 24), ("float16", 11), ("bfloat16", 8)])
def test_counter_generator_is_uniform_on_zero_to_one(dtype, bits):
    """Uniform over the 2^bits multiples of 2^-bits in [0, 1): mean (1 - 2^-bits) / 2 and
    variance (1 - 4^-bits) / 12; eight equal bins get an eighth each."""
    u = cupy.asnumpy(gpu.CounterGenerator([3, 1]).random(1_000_000, dtype=host_dtype(dtype))).astype(np.float64)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - (1 - 2.0**-bits) / 2) < 2e-3 and abs(u.var() - (1 - 4.0**-bits) / 12) < 2e-3
    counts, _ = np.histogram(u, bins=8, range=(0, 1))
    np.testing.assert_allclose(counts, 125_000, rtol=0.02)


def test_counter_generator_state_survives_a_json_round_trip():
    generator = gpu.CounterGenerator([7, 2])
    generator.random(1000)
    state = json.loads(json.dumps(generator.bit_generator.state))
    assert state == {"bit_generator": "nanollm.CounterGenerator", "seed": generator.seed, "counter": 1000}
    expected = cupy.asnumpy(generator.random((5, 5)))
    restored = gpu.CounterGenerator(0)
    restored.bit_generator.state = state
    np.testing.assert_array_equal(cupy.asnumpy(restored.random((5, 5))), expected)
    with pytest.raises(ValueError, match="not a nanollm.CounterGenerator state"):
        restored.bit_generator.state = np.random.default_rng(0).bit_generator.state


def test_counter_generator_seeds():
    """Equal seeds give equal streams; different seeds (an int or a sequence) different ones."""
    def draw_from(seed):
        return cupy.asnumpy(gpu.CounterGenerator(seed).random(64))

    np.testing.assert_array_equal(draw_from([1, 2]), draw_from([1, 2]))
    streams = [draw_from(seed) for seed in (0, 1, [1], [1, 2], [2, 1])]
    assert len({s.tobytes() for s in streams}) == 5 - 1  # 1 and [1] are one seed, as in NumPy
    assert 0 <= gpu.CounterGenerator(5).seed < 2**64


def test_dropout_masks_from_the_counter_generator():
    from nanollm.ops import dropout_backward, dropout_forward

    x = cupy.ones((64, 1000), dtype=cupy.float32)
    out, mask = dropout_forward(x, 0.25, gpu.CounterGenerator(0))
    kept = float((out != 0).mean())
    assert isinstance(out, cupy.ndarray) and abs(kept - 0.75) < 0.01
    assert bool(((out == 0) | (out == np.float32(1 / 0.75))).all())
    assert bool((dropout_backward(x, mask) == out).all())
