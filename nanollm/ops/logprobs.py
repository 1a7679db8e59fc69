"""Per-token log-probabilities of chosen tokens, and the entropy, straight from the logits:
what every post-training loss (GRPO, PPO, DPO) is written in.

    lp, cache = token_logprobs_forward(logits, tokens)   # logits (B, T, V), tokens (B, T) -> lp (B, T)
    dlogits = token_logprobs_backward(dlp, cache)        # dlp (B, T) -> (B, T, V)

    lp[b, t] = z[tok] - logsumexp(z)                     z = logits[b, t]
    d lp / d z_j = onehot(tok)_j - softmax(z)_j          (a softmax minus a one-hot, as in cross-entropy)

    H, cache = entropy_forward(logits)                   # (B, T): -sum_j p_j log p_j
    dlogits = entropy_backward(dH, cache)                # d H / d z_j = -p_j (z_j - sum_i p_i z_i)

The caches keep the logits and their log-sum-exp; the softmax is recomputed in the backward
rather than stored (one (B, T, V) array less between the two passes).
"""

from nanollm import backends


def _log_sum_exp(logits):
    """logsumexp over the last axis, (..., V) -> (...), computed stably (the max subtracted)."""
    xp = backends.array_module(logits)
    top = logits.max(axis=-1, keepdims=True)
    return (top + xp.log(xp.exp(logits - top).sum(axis=-1, keepdims=True)))[..., 0]


def token_logprobs_forward(logits, tokens):
    """logits (..., V), tokens (...) int -> lp (...): log softmax(logits)[token], cache."""
    xp = backends.array_module(logits)
    tokens = xp.asarray(tokens)
    lse = _log_sum_exp(logits)  # (...)
    chosen = xp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]  # (...)
    return chosen - lse, (logits, tokens, lse)


def token_logprobs_backward(dlp, cache):
    """dlp (...) -> dlogits (..., V) = dlp * (onehot(token) - softmax(logits))."""
    logits, tokens, lse = cache
    xp = backends.array_module(logits)
    dlogits = -xp.exp(logits - lse[..., None]) * dlp[..., None]  # -softmax * dlp
    xp.put_along_axis(dlogits, tokens[..., None],
                      xp.take_along_axis(dlogits, tokens[..., None], axis=-1) + dlp[..., None], axis=-1)
    return dlogits


def entropy_forward(logits):
    """logits (..., V) -> H (...) = -sum_j p_j log p_j = lse - sum_j p_j z_j, cache."""
    xp = backends.array_module(logits)
    lse = _log_sum_exp(logits)
    probs = xp.exp(logits - lse[..., None])  # (..., V), not kept: recomputed in the backward
    expected = (probs * logits).sum(axis=-1)  # E_p[z]
    return lse - expected, (logits, lse, expected)


def entropy_backward(dH, cache):
    """dH (...) -> dlogits (..., V) = -dH * p_j (z_j - E_p[z])."""
    logits, lse, expected = cache
    xp = backends.array_module(logits)
    probs = xp.exp(logits - lse[..., None])
    return -dH[..., None] * probs * (logits - expected[..., None])
