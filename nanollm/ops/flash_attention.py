"""Fused causal attention (FlashAttention-2): softmax(q k^T * scale, masked to the past) v
without keeping the (Tq, Tk) attention probabilities.

Why: the unfused path (ops/attention.py: matmul, causal softmax, matmul) keeps the scores'
probabilities (B, H, T, T) for its backward: at T = 1024 that is 4 MiB per head and batch row
in float32, more than the layer's activations themselves, and the softmax passes over it cost
memory bandwidth on every step. The fused primitive (``backends.current().flash_attention_*``)
walks each head one block of query rows at a time over only the key blocks it may see, with an
online softmax (a running max and sum), and keeps just the output and each row's log-sum-exp
lse (B, H_kv, G, Tq). The backward recomputes the probabilities from lse, block by block, and
uses FlashAttention-2's shortcut D = rowsum(dy * y) in place of rowsum(P * dP): recomputing
costs one more q k^T product, and saves the T x T array in both passes.

    y, cache = flash_attention_forward(q, k, v, scale, dropout, rng, training)
    dq, dk, dv = flash_attention_backward(dy, cache)

Shapes are ops/attention.py's _split_heads layout: q (B, H_kv, G, Tq, hd), k and v
(B, H_kv, 1, Tk, hd) (G query heads share a key/value head; dk and dv come back summed over
the group), y (B, H_kv, G, Tq, hd). Query i sits at absolute position Tk - Tq + i.

Dropout on the probabilities (GPT-2's attention dropout) needs the mask the unfused path would
draw: the same rng.random call over (B, H_kv, G, Tq, Tk) as dropout_forward on the
probabilities, so a seed gives the same mask, the same output and the same gradients either
way. That mask is a T x T array (the one exception to the memory saving); without dropout, or
outside training, there is none.
"""

from nanollm import backends
from nanollm.ops.dropout import dropout_mask


def flash_attention_forward(q, k, v, scale, dropout=0.0, rng=None, training=True):
    """q (B, H_kv, G, Tq, hd), k, v (B, H_kv, 1, Tk, hd) -> y (B, H_kv, G, Tq, hd), cache.

    y = dropout(softmax(scale * q k^T, masked to the past)) v, per query head; dropout (when
    training and dropout > 0) zeroes probabilities with the mask dropout_forward would draw from
    rng for the (B, H_kv, G, Tq, Tk) probabilities."""
    mask = None
    if training and dropout != 0.0:
        mask = dropout_mask(q.shape[:-1] + (k.shape[-2],), q.dtype, dropout, rng)  # (B, H_kv, G, Tq, Tk)
    y, lse = backends.current().flash_attention_forward(q, k, v, scale, mask)
    return y, (q, k, v, y, lse, scale, mask)


def flash_attention_backward(dy, cache):
    """dy (B, H_kv, G, Tq, hd) -> dq (B, H_kv, G, Tq, hd), dk, dv (B, H_kv, 1, Tk, hd)."""
    q, k, v, y, lse, scale, mask = cache
    return backends.current().flash_attention_backward(dy, q, k, v, y, lse, scale, mask)
