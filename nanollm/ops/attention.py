"""Causal multi-head self-attention with grouped-query attention (GQA).

The input is the output of the qkv projection, laid out as llm.c does:
qkv (B, T, (H + 2 * H_kv) * hd) = [queries of H heads | keys of H_kv heads | values of H_kv heads].
Query head h reads key/value head h // G, where G = H / H_kv is the group size
(H_kv == H is plain multi-head attention, H_kv == 1 is multi-query attention).

Instead of copying each key/value head G times, queries are viewed as (B, H_kv, G, T, hd)
and keys as (B, H_kv, 1, T, hd): matmul broadcasts over the group axis, and the backward
sums the group axis back down.

Llama rotates queries and keys by their positions first (``rope``, see ops/rope.py); GPT-2
has learned positions added to the input instead and passes no rope. QK-norm (the speedrun's,
``qk_norm_eps``) RMS-normalises every query and key vector before that, with no gain: the
scores q.k / sqrt(hd) are then bounded by sqrt(hd), so no logit growth can saturate the softmax.

In generation a KV cache (nanollm.kv_cache) keeps the keys and values of the positions already
seen, so each new token computes its own q, k, v only and attends over the cached keys: the
queries are then the last Tq of Tk positions, which the causal softmax supports.

``fused=True`` computes the same attention with the fused primitive (ops/flash_attention.py,
FlashAttention-2): no (T, T) probabilities are kept, the backward recomputes them from each
row's log-sum-exp. Same results (to rounding), same dropout masks; measured slower than BLAS's
matmuls on this project's 2-core CPU at every T (the unfused path stays the default), far
smaller at long T.
"""

import math
from typing import NamedTuple

from nanollm import backends
from nanollm.ops.dropout import dropout_backward, dropout_forward
from nanollm.ops.flash_attention import flash_attention_backward, flash_attention_forward
from nanollm.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward
from nanollm.ops.rope import rope_backward, rope_forward


def _split_heads(qkv, num_heads, num_kv_heads):
    """qkv (B, T, (H + 2 H_kv) hd) -> q (B, H_kv, G, T, hd), k and v (B, H_kv, 1, T, hd)."""
    batch, time, width = qkv.shape
    head_dim = width // (num_heads + 2 * num_kv_heads)
    group = num_heads // num_kv_heads
    q_end, k_end = num_heads * head_dim, (num_heads + num_kv_heads) * head_dim
    q = qkv[..., :q_end].reshape(batch, time, num_kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    k = qkv[..., q_end:k_end].reshape(batch, time, num_kv_heads, 1, head_dim).transpose(0, 2, 3, 1, 4)
    v = qkv[..., k_end:].reshape(batch, time, num_kv_heads, 1, head_dim).transpose(0, 2, 3, 1, 4)
    return q, k, v


def _merge_heads(y):
    """y (B, H_kv, G, T, hd) -> (B, T, H_kv * G * hd), head h = kv_head * G + g."""
    batch, num_kv_heads, group, time, head_dim = y.shape
    return y.transpose(0, 3, 1, 2, 4).reshape(batch, time, num_kv_heads * group * head_dim)


class AttentionCache(NamedTuple):
    """What attention_backward needs (probs and dropped are None on the fused path, flash its cache)."""
    q: object              # (B, H_kv, G, T, hd), after QK-norm and rope
    k: object              # (B, H_kv, 1, T, hd)
    v: object              # (B, H_kv, 1, T, hd)
    probs: object          # (B, H_kv, G, T, T) or None
    dropped: object        # probs after dropout, or None
    dropout_cache: object
    scale: float
    qkv_shape: tuple
    rope: tuple            # (cos, sin) or None
    qk_norm_caches: tuple  # (q's, k's) RMSNorm caches or None
    flash: tuple           # flash_attention_forward's cache, or None


def _unit_rmsnorm_forward(x, eps):
    """x (..., hd) -> x / rms(x) over each vector (RMSNorm with a unit gain, no parameter)."""
    return rmsnorm_forward(x, backends.array_module(x).ones(x.shape[-1], dtype=x.dtype), eps)


def _unit_rmsnorm_backward(dout, cache):
    """dout (..., hd) -> dx (..., hd); the unit gain's gradient is dropped (it is no parameter)."""
    return rmsnorm_backward(dout, cache)[0]


def attention_forward(qkv, num_heads, num_kv_heads, dropout=0.0, rng=None, training=True, rope=None,
                      past=None, qk_norm_eps=None, fused=False):
    """qkv (B, T, (H + 2 H_kv) hd) -> out (B, T, H hd).

    out = softmax(q k^T / sqrt(hd), masked to the past) v, per head; dropout (when training)
    is applied to the attention probabilities, as in GPT-2.
    rope: (cos, sin) tables (T, hd/2) of these T positions, or None (no rotary embeddings).
    past: (keys, values, start) of one layer of a KV cache, buffers (B, H_kv, 1, T_max, hd):
    these T positions' keys and values are written at start, and the queries attend over
    every key up to start + T. Inference only: the returned cache is None.
    qk_norm_eps: QK-norm's epsilon (None: no QK-norm). fused: the fused primitive (see above).
    """
    prims = backends.current()
    q, k, v = _split_heads(qkv, num_heads, num_kv_heads)
    qk_norm_caches = None
    if qk_norm_eps is not None:
        (q, q_norm_cache), (k, k_norm_cache) = _unit_rmsnorm_forward(q, qk_norm_eps), _unit_rmsnorm_forward(k, qk_norm_eps)
        qk_norm_caches = (q_norm_cache, k_norm_cache)
    if rope is not None:
        q, rope = rope_forward(q, *rope)  # rope_forward's cache is the (cos, sin) pair itself
        k, _ = rope_forward(k, *rope)
    if past is not None:
        keys, values, start = past
        end = start + qkv.shape[1]
        keys[:, :, :, start:end], values[:, :, :, start:end] = k, v
        k, v = keys[:, :, :, :end], values[:, :, :, :end]  # (B, H_kv, 1, start + T, hd)
    scale = 1.0 / math.sqrt(q.shape[-1])
    if fused:
        y, flash = flash_attention_forward(q, k, v, scale, dropout if past is None else 0.0, rng, training)
        cache = None if past is not None else AttentionCache(q, k, v, None, None, None, scale, qkv.shape, rope,
                                                              qk_norm_caches, flash)
        return _merge_heads(y), cache  # y (B, H_kv, G, Tq, hd)
    scores = prims.matmul(q, k.swapaxes(-1, -2))  # (B, H_kv, G, Tq, Tk)
    probs = prims.causal_softmax_forward(scores, scale)  # (B, H_kv, G, Tq, Tk), zero above the diagonal
    if past is not None:
        return _merge_heads(prims.matmul(probs, v)), None
    dropped, dropout_cache = dropout_forward(probs, dropout, rng, training)
    y = prims.matmul(dropped, v)  # (B, H_kv, G, T, hd)
    cache = AttentionCache(q, k, v, probs, dropped, dropout_cache, scale, qkv.shape, rope, qk_norm_caches, None)
    return _merge_heads(y), cache


def attention_backward(dout, cache):
    """dout (B, T, H hd) -> dqkv (B, T, (H + 2 H_kv) hd)."""
    prims = backends.current()
    xp = backends.array_module(dout)
    if cache is None:
        raise RuntimeError("attention_backward needs the cache of a training forward (not one with a KV cache)")
    q, k, v, probs, dropped, dropout_cache, scale, qkv_shape, rope, qk_norm_caches, flash = cache
    batch, time, _ = dout.shape
    _, num_kv_heads, group, _, head_dim = q.shape
    dy = dout.reshape(batch, time, num_kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)  # like q
    if flash is not None:
        dq, dk, dv = flash_attention_backward(dy, flash)
        dk, dv = dk[:, :, 0], dv[:, :, 0]  # (B, H_kv, T, hd): the group axis is summed already
    else:
        ddropped = prims.matmul(dy, v.swapaxes(-1, -2))  # (B, H_kv, G, T, T)
        dv = prims.matmul(dropped.swapaxes(-1, -2), dy).sum(axis=2)  # (B, H_kv, T, hd), summed over the group
        dprobs = dropout_backward(ddropped, dropout_cache)
        dscores = prims.causal_softmax_backward(dprobs, probs, scale)  # (B, H_kv, G, T, T)
        dq = prims.matmul(dscores, k)  # (B, H_kv, G, T, hd)
        dk = prims.matmul(dscores.swapaxes(-1, -2), q).sum(axis=2)  # (B, H_kv, T, hd)
    if rope is not None:  # back through the rotations: rotate by minus the angle
        dq = rope_backward(dq, rope)
        dk = rope_backward(dk, rope)
    if qk_norm_caches is not None:
        dq = _unit_rmsnorm_backward(dq, qk_norm_caches[0])
        dk = _unit_rmsnorm_backward(dk[:, :, None], qk_norm_caches[1])[:, :, 0]
    dqkv = xp.empty(qkv_shape, dtype=dout.dtype)
    q_end, k_end = num_kv_heads * group * head_dim, num_kv_heads * (group + 1) * head_dim
    dqkv[..., :q_end] = _merge_heads(dq)
    dqkv[..., q_end:k_end] = _merge_heads(dk[:, :, None])
    dqkv[..., k_end:] = _merge_heads(dv[:, :, None])
    return dqkv
