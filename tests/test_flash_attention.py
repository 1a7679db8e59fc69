"""The fused causal attention (FlashAttention-2): every backend's primitives equal the unfused
path (matmul, numpy_ref's causal softmax, matmul, and its backward) in float32 and float64, for
multi-head and grouped-query heads, a KV-cache offset (Tq < Tk) and lengths that are no multiple
of any block size; the op's gradients pass the finite-difference check; with dropout the same
seed gives the unfused path's output and gradients; and the numba forward keeps no (Tq, Tk) array.
"""

import tracemalloc

import numpy as np
import pytest

from nanollm.backends import numba_cpu, numpy_ref
from nanollm.gradcheck import check_op_gradients
from nanollm.ops import dropout_backward, dropout_forward
from nanollm.ops.flash_attention import flash_attention_backward, flash_attention_forward

# relative to the largest entry of the reference: float32 ~1e-5, float64 1e-12
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}

# (B, H_kv, G, Tq, Tk, hd): multi-head (G = 1) and grouped-query (H_kv = 2, G = 2) heads, Tq == Tk
# and a KV-cache offset (Tq < Tk), T = 37 (no multiple of any block size) and T = 200 (several
# query and key blocks, a ragged last one), one query over three keys (a generation step)
SHAPES = [
    (2, 2, 1, 37, 37, 16),
    (2, 2, 2, 37, 37, 32),
    (1, 2, 2, 5, 37, 16),
    (1, 2, 2, 150, 200, 32),
    (1, 1, 1, 200, 200, 16),
    (1, 1, 3, 1, 3, 8),
]


def split_heads(rng, batch, kv_heads, group, num_queries, num_keys, head_dim, dtype):
    """Random q (B, H_kv, G, Tq, hd), k, v (B, H_kv, 1, Tk, hd) as ops/attention.py's _split_heads
    makes them: non-contiguous views (transposes) of (B, T, heads * hd) projections."""
    q = rng.normal(size=(batch, num_queries, kv_heads * group * head_dim)).astype(dtype)
    kv = rng.normal(size=(batch, num_keys, 2 * kv_heads * head_dim)).astype(dtype)
    q = q.reshape(batch, num_queries, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    k, v = (kv[..., s].reshape(batch, num_keys, kv_heads, 1, head_dim).transpose(0, 2, 3, 1, 4)
            for s in (slice(0, kv_heads * head_dim), slice(kv_heads * head_dim, None)))
    return q, k, v


def unfused_forward(q, k, v, scale, mask=None):
    """ops/attention.py's path: probabilities (B, H_kv, G, Tq, Tk), then (dropped) probabilities @ v."""
    probs = numpy_ref.causal_softmax_forward(numpy_ref.matmul(q, k.swapaxes(-1, -2)), scale)
    dropped = probs if mask is None else probs * mask
    return numpy_ref.matmul(dropped, v), probs, dropped


def unfused_backward(dy, q, k, v, probs, dropped, scale, mask=None):
    """ops/attention.py's backward: dq, dk, dv (dk and dv summed over the group axis)."""
    ddropped = numpy_ref.matmul(dy, v.swapaxes(-1, -2))
    dv = numpy_ref.matmul(dropped.swapaxes(-1, -2), dy).sum(axis=2, keepdims=True)
    dprobs = ddropped if mask is None else ddropped * mask
    dscores = numpy_ref.causal_softmax_backward(dprobs, probs, scale)
    dq = numpy_ref.matmul(dscores, k)
    dk = numpy_ref.matmul(dscores.swapaxes(-1, -2), q).sum(axis=2, keepdims=True)
    return dq, dk, dv


def assert_close(got, want, dtype, what):
    assert got.dtype == dtype, f"{what}: dtype {got.dtype} != {dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    error = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    assert error < TOLERANCE[dtype], f"{what}: error {error:.1e} relative to the largest entry"


def reference_lse(q, k, scale):
    """log-sum-exp of the scaled, masked scores, in float64."""
    q, k = q.astype(np.float64), k.astype(np.float64)
    scores = (q @ k.swapaxes(-1, -2)) * scale
    scores = np.where(numpy_ref._causal_mask(np, *scores.shape[-2:]), -np.inf, scores)
    top = scores.max(axis=-1)
    return top + np.log(np.exp(scores - top[..., None]).sum(axis=-1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_Hkv{}_G{}_Tq{}_Tk{}_hd{}".format(*s))
@pytest.mark.parametrize("with_mask", [False, True], ids=["no_dropout", "dropout_mask"])
def test_primitives_equal_the_unfused_path(backend, shape, dtype, with_mask):
    rng = np.random.default_rng(sum(shape))
    q, k, v = split_heads(rng, *shape, dtype)
    scale = 1.0 / np.sqrt(shape[-1])
    mask = None
    if with_mask:  # dropout_forward's multiplier: 0 or 1 / (1 - p)
        mask = ((rng.random(q.shape[:-1] + (k.shape[-2],)) >= 0.25) / 0.75).astype(dtype)
    y, lse = backend.flash_attention_forward(q, k, v, scale, mask)
    y_want, probs, dropped = unfused_forward(q, k, v, scale, mask)
    assert_close(y, y_want, dtype, "out")
    assert_close(lse, reference_lse(q, k, scale), dtype, "lse")
    dy = rng.normal(size=y.shape).astype(dtype)
    grads = backend.flash_attention_backward(dy, q, k, v, y, lse, scale, mask)
    for name, got, want in zip(("dq", "dk", "dv"), grads, unfused_backward(dy, q, k, v, probs, dropped, scale, mask),
                               strict=True):
        assert_close(got, want, dtype, name)


@pytest.mark.parametrize("shape", [(1, 2, 2, 5, 5, 4), (2, 1, 1, 3, 6, 3)], ids=["gqa", "kv_offset"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_op_gradients_by_finite_differences(backend, shape, dropout):
    rng = np.random.default_rng(7)
    q, k, v = (np.ascontiguousarray(x) for x in split_heads(rng, *shape, np.float64))

    def forward(q, k, v):  # the same dropout mask on every call: a fresh generator of one seed
        return flash_attention_forward(q, k, v, 0.7, dropout, np.random.default_rng(3))

    errors = check_op_gradients(forward, flash_attention_backward, dict(q=q, k=k, v=v), ("q", "k", "v"), seed=1)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_matches_the_unfused_path_seed_for_seed(backend, dtype):
    rng = np.random.default_rng(11)
    q, k, v = split_heads(rng, 2, 2, 2, 37, 37, 16, dtype)
    scale, p = 0.25, 0.2
    y, cache = flash_attention_forward(q, k, v, scale, p, np.random.default_rng(5))
    probs = numpy_ref.causal_softmax_forward(numpy_ref.matmul(q, k.swapaxes(-1, -2)), scale)
    dropped, dropout_cache = dropout_forward(probs, p, np.random.default_rng(5))
    np.testing.assert_array_equal(cache[-1], dropout_cache)  # the same mask from the same seed
    dy = rng.normal(size=y.shape).astype(dtype)
    tolerance = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    want_y = numpy_ref.matmul(dropped, v)
    np.testing.assert_allclose(y, want_y, rtol=0, atol=tolerance * np.abs(want_y).max())
    dprobs = dropout_backward(numpy_ref.matmul(dy, v.swapaxes(-1, -2)), dropout_cache)
    dscores = numpy_ref.causal_softmax_backward(dprobs, probs, scale)
    want = (numpy_ref.matmul(dscores, k), numpy_ref.matmul(dscores.swapaxes(-1, -2), q).sum(axis=2, keepdims=True),
            numpy_ref.matmul(dropped.swapaxes(-1, -2), dy).sum(axis=2, keepdims=True))
    for got, w in zip(flash_attention_backward(dy, cache), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=0, atol=tolerance * np.abs(w).max())


def test_no_dropout_outside_training_or_at_zero(backend):
    q, k, v = split_heads(np.random.default_rng(0), 1, 1, 2, 9, 9, 8, np.float64)
    plain, cache = flash_attention_forward(q, k, v, 0.5)
    assert cache[-1] is None
    for kwargs in (dict(dropout=0.5, rng=np.random.default_rng(0), training=False), dict(dropout=0.0, rng=None)):
        y, cache = flash_attention_forward(q, k, v, 0.5, **kwargs)
        assert cache[-1] is None
        np.testing.assert_array_equal(y, plain)
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\)"):
        flash_attention_forward(q, k, v, 0.5, 1.0, np.random.default_rng(0))


@pytest.mark.parametrize("name", ["numba", "cython"])
def test_kernels_refuse_more_queries_than_keys(name):
    from nanollm import backends

    if backends.available()[name] is not None:
        pytest.skip(backends.available()[name])
    q, k, v = split_heads(np.random.default_rng(0), 1, 1, 1, 6, 4, 8, np.float64)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        backends.get(name).flash_attention_forward(q, k, v, 0.5)


def test_numba_forward_keeps_no_tq_by_tk_array():
    """Every array the numba kernels use comes from their wrapper (scratch included: the kernels
    allocate nothing), so tracemalloc sees all of it: at T = 2048 the forward's peak is the
    output, lse and a few blocks, far below the 16 MiB of one float32 (T, T) array, which the
    same measurement does see in the unfused softmax."""
    length, head_dim = 2048, 16
    q, k, v = (np.random.default_rng(i).normal(size=(1, 1, 1, length, head_dim)).astype(np.float32) for i in range(3))
    square = length * length * 4
    small = [x[..., :8, :] for x in (q, k, v)]  # compile (or load) the kernels before measuring
    numba_cpu.flash_attention_backward(small[0], *small, *numba_cpu.flash_attention_forward(*small, 0.25), 0.25)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y, lse = numba_cpu.flash_attention_forward(q, k, v, 0.25)
        forward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        numba_cpu.flash_attention_backward(q, q, k, v, y, lse, 0.25)
        backward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        numpy_ref.causal_softmax_forward(q[0, 0, 0] @ k[0, 0, 0].T, 0.25)
        unfused_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert unfused_peak >= square  # the measurement sees a (T, T) array when there is one
    assert forward_peak < square / 50, f"forward peak {forward_peak} bytes"
    assert backward_peak < square / 20, f"backward peak {backward_peak} bytes"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "B{}_Hkv{}_G{}_Tq{}_Tk{}_hd{}".format(*s))
def test_cupy_primitives_equal_the_unfused_path(shape, dtype):
    """The cupy backend (numpy_ref's blocks on device arrays) on a GPU; skipped without one."""
    cupy = pytest.importorskip("cupy", reason="CuPy not installed")
    if not cupy.cuda.is_available():
        pytest.skip("no CUDA GPU (cupy.cuda.is_available() is False)")
    from nanollm.backends import cupy_gpu

    rng = np.random.default_rng(sum(shape))
    q, k, v = split_heads(rng, *shape, dtype)
    mask = ((rng.random(q.shape[:-1] + (k.shape[-2],)) >= 0.25) / 0.75).astype(dtype)
    scale = 1.0 / np.sqrt(shape[-1])
    y, lse = cupy_gpu.flash_attention_forward(*(cupy.asarray(x) for x in (q, k, v)), scale, cupy.asarray(mask))
    y_want, probs, dropped = unfused_forward(q, k, v, scale, mask)
    assert_close(cupy.asnumpy(y), y_want, dtype, "out")
    assert_close(cupy.asnumpy(lse), reference_lse(q, k, scale), dtype, "lse")
    dy = rng.normal(size=y.shape).astype(dtype)
    grads = cupy_gpu.flash_attention_backward(*(cupy.asarray(x) for x in (dy, q, k, v)), y, lse, scale,
                                              cupy.asarray(mask))
    for name, got, want in zip(("dq", "dk", "dv"), grads, unfused_backward(dy, q, k, v, probs, dropped, scale, mask),
                               strict=True):
        assert_close(cupy.asnumpy(got), want, dtype, name)


def test_attention_bench_prints_both_engines(capsys):
    from nanollm.tools import attention_bench

    attention_bench.main(["--lengths", "16", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert "fused ms" in lines[1] and "unfused ms" in lines[1]
    assert lines[2].split()[:2] == ["16", "12"] and "KiB" in lines[2]


# ----------------------------------------------------------------------------- in the model


@pytest.mark.parametrize("settings", [
    dict(architecture="gpt2", dropout=0.2, num_kv_heads=2),
    dict(architecture="llama", qk_norm=True, tie_embeddings=False),
    dict(architecture="llama", num_kv_heads=1, mlp_activation="relu2"),
])
def test_the_model_with_fused_attention_equals_the_unfused_path(backend, settings):
    from nanollm import GPT
    from nanollm.gradcheck import check_gradients

    model = GPT(vocab_size=11, embedding_dim=16, num_layers=2, num_heads=4, max_seq_len=8, dtype="float64", seed=0,
                rope_base=50.0, **settings)
    rng = np.random.default_rng(0)
    for p in model.params.values():  # away from the init: every path carries a gradient worth checking
        p += rng.normal(0.0, 0.3, size=p.shape)
    idx, targets = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))

    def loss(fused, checkpointing=False):
        model.fused_attention, model.activation_checkpointing = fused, checkpointing
        model.dropout_rng = np.random.default_rng(5)  # the same dropout masks each time
        return model.forward(idx, targets)[1]

    unfused_loss = loss(False)
    unfused = model.backward()
    for checkpointing in (False, True):
        assert loss(True, checkpointing) == pytest.approx(unfused_loss, rel=1e-13)
        grads = model.backward()
        for name in unfused:
            np.testing.assert_allclose(grads[name], unfused[name], rtol=1e-10, atol=1e-13, err_msg=name)
    errors = check_gradients(lambda: loss(True), model.params, grads)
    assert max(errors.values()) < 1e-6, errors


def test_generation_with_fused_attention_and_the_kv_cache_matches():
    from nanollm import GPT
    from nanollm.generate import generate_ids

    model = GPT(vocab_size=11, embedding_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=12,
                architecture="llama", seed=0)
    plain = generate_ids(model, [1, 2, 3], 6, temperature=0)
    model.fused_attention = True
    assert generate_ids(model, [1, 2, 3], 6, temperature=0) == plain
    assert generate_ids(model, [1, 2, 3], 6, temperature=0, use_cache=False) == plain
