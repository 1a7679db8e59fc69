"""Every op's backward against central differences in float64, on hypothesis-drawn shapes.

The bar is the design's: relative error (nanollm.gradcheck.relative_error) below 1e-6.
Shapes include B = 1, T = 1 and odd sizes; attention includes num_kv_heads < num_heads and
rotary embeddings; cross-entropy includes ignored targets.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from nanollm.gradcheck import check_op_gradients
from nanollm.ops import (
    attention_backward, attention_forward,
    cross_entropy_backward, cross_entropy_forward,
    dropout_backward, dropout_forward,
    embedding_backward, embedding_forward,
    gelu_backward, gelu_forward,
    layernorm_backward, layernorm_forward,
    linear_backward, linear_forward,
    mlp_backward, mlp_forward,
    residual_backward, residual_forward,
    rmsnorm_backward, rmsnorm_forward,
    rope_backward, rope_forward, rope_tables,
    swiglu_backward, swiglu_forward, swiglu_mlp_backward, swiglu_mlp_forward,
)

TOLERANCE = 1e-6
batch = st.integers(1, 3)
time = st.integers(1, 6)
channels = st.integers(1, 7)
seeds = st.integers(0, 2**16)


def normal(rng, *shape, scale=1.0):
    return rng.normal(0.0, scale, size=shape)


def assert_close(errors):
    worst = max(errors.values())
    assert worst < TOLERANCE, f"relative errors {errors}"


@given(batch, time, channels, channels, st.booleans(), seeds)
def test_linear(backend, b, t, c_in, c_out, with_bias, seed):
    rng = np.random.default_rng(seed)
    inputs = dict(x=normal(rng, b, t, c_in), weight=normal(rng, c_in, c_out),
                  bias=normal(rng, c_out) if with_bias else None)
    names = ("x", "weight", "bias" if with_bias else None)
    assert_close(check_op_gradients(linear_forward, linear_backward, inputs, names, seed))
    if not with_bias:
        assert linear_backward(np.ones((b, t, c_out)), linear_forward(**inputs)[1])[2] is None


@given(batch, time, st.integers(3, 9), seeds)
def test_layernorm(backend, b, t, c, seed):
    """C >= 3: with C = 2 the normalised output is +-1 whatever x is, its gradient is of the
    order of eps (1e-5) and drowns in finite-difference rounding; C = 1 is all zeros."""
    rng = np.random.default_rng(seed)
    inputs = dict(x=normal(rng, b, t, c, scale=2.0) + 1.0, weight=1.0 + normal(rng, c, scale=0.5),
                  bias=normal(rng, c))
    assert_close(check_op_gradients(layernorm_forward, layernorm_backward, inputs, ("x", "weight", "bias"), seed))


@given(batch, time, channels, seeds)
def test_gelu(backend, b, t, c, seed):
    """x in [-4, 4]: further into the negative tail, 1 + tanh(.) cancels to ~1e-9 and the
    tanh-form GELU itself (here and in PyTorch) keeps too few digits for finite differences."""
    inputs = dict(x=np.random.default_rng(seed).uniform(-4.0, 4.0, size=(b, t, c)))
    assert_close(check_op_gradients(gelu_forward, gelu_backward, inputs, ("x",), seed))


@given(batch, time, channels, st.integers(1, 9), seeds)
def test_mlp(backend, b, t, c, f, seed):
    rng = np.random.default_rng(seed)
    inputs = dict(x=normal(rng, b, t, c), fc_weight=normal(rng, c, f), fc_bias=normal(rng, f),
                  proj_weight=normal(rng, f, c), proj_bias=normal(rng, c))
    names = ("x", "fc_weight", "fc_bias", "proj_weight", "proj_bias")
    assert_close(check_op_gradients(mlp_forward, mlp_backward, inputs, names, seed))


@given(batch, time, st.integers(1, 9), channels, seeds)
def test_embedding_with_repeated_ids(backend, b, t, vocab, c, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(b, t))  # small vocabularies repeat ids: gradients must add up
    inputs = dict(ids=ids, table=normal(rng, vocab, c))
    assert_close(check_op_gradients(embedding_forward, embedding_backward, inputs, ("table",), seed))


@given(time, st.integers(1, 8), channels, seeds)
def test_positional_embedding(backend, t, extra, c, seed):
    """Learned positions: rows 0..T-1 of a (max_seq_len, C) table; rows past T get no gradient."""
    rng = np.random.default_rng(seed)
    inputs = dict(ids=np.arange(t), table=normal(rng, t + extra, c))
    assert_close(check_op_gradients(embedding_forward, embedding_backward, inputs, ("table",), seed))
    _, cache = embedding_forward(**inputs)
    assert not embedding_backward(np.ones((t, c)), cache)[t:].any()


@given(batch, time, channels, st.booleans(), seeds)
def test_residual_add_with_broadcast(backend, b, t, c, broadcast, seed):
    rng = np.random.default_rng(seed)
    inputs = dict(a=normal(rng, b, t, c), b=normal(rng, t, c) if broadcast else normal(rng, b, t, c))
    assert_close(check_op_gradients(residual_forward, residual_backward, inputs, ("a", "b"), seed))


@given(batch, time, channels, st.sampled_from([0.0, 0.1, 0.5, 0.9]), seeds)
def test_dropout(backend, b, t, c, p, seed):
    def forward(x):  # a fresh generator with the same seed: the same mask every call
        return dropout_forward(x, p, np.random.default_rng(seed))

    inputs = dict(x=normal(np.random.default_rng(seed), b, t, c))
    assert_close(check_op_gradients(forward, dropout_backward, inputs, ("x",), seed))


@given(batch, time, st.sampled_from([(1, 1), (2, 2), (2, 1), (4, 2), (4, 1), (3, 3), (6, 2)]),
       st.integers(1, 4), st.floats(0.0, 0.5), seeds)
def test_attention_with_grouped_query_heads(backend, b, t, heads, head_dim, dropout, seed):
    num_heads, num_kv_heads = heads
    rng = np.random.default_rng(seed)

    def forward(qkv):
        return attention_forward(qkv, num_heads, num_kv_heads, dropout, np.random.default_rng(seed))

    inputs = dict(qkv=normal(rng, b, t, (num_heads + 2 * num_kv_heads) * head_dim, scale=1.5))
    assert_close(check_op_gradients(forward, attention_backward, inputs, ("qkv",), seed))


@given(batch, time, st.sampled_from([(1, 1), (2, 2), (2, 1), (4, 2), (4, 1), (6, 2)]),
       st.sampled_from([2, 4, 6]), st.integers(0, 5), seeds)
def test_attention_with_rotary_embeddings(backend, b, t, heads, head_dim, offset, seed):
    """Llama's attention: q and k rotated by the angles of positions offset .. offset + T."""
    num_heads, num_kv_heads = heads
    rng = np.random.default_rng(seed)
    cos, sin = rope_tables(offset + t, head_dim, base=100.0, dtype="float64")

    def forward(qkv):
        return attention_forward(qkv, num_heads, num_kv_heads, rope=(cos[offset:], sin[offset:]))

    inputs = dict(qkv=normal(rng, b, t, (num_heads + 2 * num_kv_heads) * head_dim, scale=1.5))
    assert_close(check_op_gradients(forward, attention_backward, inputs, ("qkv",), seed))


@given(batch, time, channels, seeds)
def test_rmsnorm(backend, b, t, c, seed):
    rng = np.random.default_rng(seed)
    inputs = dict(x=normal(rng, b, t, c, scale=2.0) + 0.5, weight=normal(rng, c) + 1.0)
    assert_close(check_op_gradients(rmsnorm_forward, rmsnorm_backward, inputs, ("x", "weight"), seed))


@given(batch, st.integers(1, 3), time, st.sampled_from([2, 4, 8]), seeds)
def test_rope(backend, b, h, t, head_dim, seed):
    rng = np.random.default_rng(seed)
    cos, sin = rope_tables(t, head_dim, dtype="float64")
    inputs = dict(x=normal(rng, b, h, t, head_dim))
    assert_close(check_op_gradients(lambda x: rope_forward(x, cos, sin), rope_backward, inputs, ("x",), seed))


@given(batch, time, channels, seeds)
def test_swiglu_gate(backend, b, t, f, seed):
    rng = np.random.default_rng(seed)
    inputs = dict(gate=normal(rng, b, t, f, scale=3.0), up=normal(rng, b, t, f))
    assert_close(check_op_gradients(swiglu_forward, swiglu_backward, inputs, ("gate", "up"), seed))


@given(batch, time, channels, channels, seeds)
def test_swiglu_mlp(backend, b, t, c, f, seed):
    rng = np.random.default_rng(seed)
    inputs = dict(x=normal(rng, b, t, c), gate_weight=normal(rng, c, f), up_weight=normal(rng, c, f),
                  down_weight=normal(rng, f, c))
    assert_close(check_op_gradients(swiglu_mlp_forward, swiglu_mlp_backward, inputs,
                                    ("x", "gate_weight", "up_weight", "down_weight"), seed))


@given(batch, time, st.integers(1, 11), st.floats(0.0, 0.7), seeds)
def test_cross_entropy_with_ignored_targets(backend, b, t, vocab, ignore_share, seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, vocab, size=(b, t))
    targets[rng.random((b, t)) < ignore_share] = -100
    inputs = dict(logits=normal(rng, b, t, vocab, scale=3.0), targets=targets)
    assert_close(check_op_gradients(cross_entropy_forward, cross_entropy_backward, inputs, ("logits",), seed))
    dlogits = cross_entropy_backward(1.0, cross_entropy_forward(**inputs)[1])
    assert not dlogits[targets == -100].any(), "ignored targets must get exactly zero gradient"
