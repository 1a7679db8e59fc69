"""Causal multi-head self-attention with grouped-query attention (GQA).

The input is the output of the qkv projection, laid out as llm.c does:
qkv (B, T, (H + 2 * H_kv) * hd) = [queries of H heads | keys of H_kv heads | values of H_kv heads].
Query head h reads key/value head h // G, where G = H / H_kv is the group size
(H_kv == H is plain multi-head attention, H_kv == 1 is multi-query attention).

Instead of copying each key/value head G times, queries are viewed as (B, H_kv, G, T, hd)
and keys as (B, H_kv, 1, T, hd): matmul broadcasts over the group axis, and the backward
sums the group axis back down.
"""

import math

from nanollm import backends
from nanollm.ops.dropout import dropout_backward, dropout_forward


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


def attention_forward(qkv, num_heads, num_kv_heads, dropout=0.0, rng=None, training=True):
    """qkv (B, T, (H + 2 H_kv) hd) -> out (B, T, H hd).

    out = softmax(q k^T / sqrt(hd), masked to the past) v, per head; dropout (when training)
    is applied to the attention probabilities, as in GPT-2.
    """
    prims = backends.current()
    q, k, v = _split_heads(qkv, num_heads, num_kv_heads)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = prims.matmul(q, k.swapaxes(-1, -2))  # (B, H_kv, G, T, T)
    probs = prims.causal_softmax_forward(scores, scale)  # (B, H_kv, G, T, T), zero above the diagonal
    dropped, dropout_cache = dropout_forward(probs, dropout, rng, training)
    y = prims.matmul(dropped, v)  # (B, H_kv, G, T, hd)
    cache = (q, k, v, probs, dropped, dropout_cache, scale, qkv.shape)
    return _merge_heads(y), cache


def attention_backward(dout, cache):
    """dout (B, T, H hd) -> dqkv (B, T, (H + 2 H_kv) hd)."""
    prims = backends.current()
    xp = backends.array_module(dout)
    q, k, v, probs, dropped, dropout_cache, scale, qkv_shape = cache
    batch, time, _ = dout.shape
    _, num_kv_heads, group, _, head_dim = q.shape
    dy = dout.reshape(batch, time, num_kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)  # like q
    ddropped = prims.matmul(dy, v.swapaxes(-1, -2))  # (B, H_kv, G, T, T)
    dv = prims.matmul(dropped.swapaxes(-1, -2), dy).sum(axis=2)  # (B, H_kv, T, hd), summed over the group
    dprobs = dropout_backward(ddropped, dropout_cache)
    dscores = prims.causal_softmax_backward(dprobs, probs, scale)  # (B, H_kv, G, T, T)
    dq = prims.matmul(dscores, k)  # (B, H_kv, G, T, hd)
    dk = prims.matmul(dscores.swapaxes(-1, -2), q).sum(axis=2)  # (B, H_kv, T, hd)
    dqkv = xp.empty(qkv_shape, dtype=dout.dtype)
    q_end, k_end = num_kv_heads * group * head_dim, num_kv_heads * (group + 1) * head_dim
    dqkv[..., :q_end] = _merge_heads(dq)
    dqkv[..., q_end:k_end] = _merge_heads(dk[:, :, None])
    dqkv[..., k_end:] = _merge_heads(dv[:, :, None])
    return dqkv
