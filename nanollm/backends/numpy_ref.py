"""numpy_ref: the specification of every primitive, in plain readable NumPy.

Every other backend is tested against these functions, so they favour clarity over speed.
They keep the input dtype (float32 stays float32, float64 stays float64) and never modify
their inputs. Shapes: ``...`` is any number of leading axes, N rows, V classes, C channels.

Every function reaches its array library through ``xp = array_module(x)``, so the same code
runs on NumPy arrays and on CuPy arrays on a GPU: the cupy backend falls back on these where a
fused kernel would not pay, and they are the CPU definition of what its kernels compute.
"""

import numpy as np

from nanollm.backends import array_module

GELU_SCALE = np.sqrt(2.0 / np.pi)  # the tanh approximation of GELU used by GPT-2
GELU_CUBIC = 0.044715


def matmul(a, b):
    """a (..., M, K) @ b (..., K, N) -> (..., M, N), broadcasting leading axes (BLAS; cuBLAS on a GPU)."""
    return array_module(a).matmul(a, b)


def _causal_mask(xp, num_queries, num_keys):
    """(Tq, Tk) bool, True where query i may NOT see key j (j is in its future).

    Queries are the last Tq positions of the Tk keys, so with a KV cache (Tq < Tk) query i
    sits at absolute position Tk - Tq + i.
    """
    return xp.triu(xp.ones((num_queries, num_keys), dtype=bool), k=1 + num_keys - num_queries)


def causal_softmax_forward(scores, scale):
    """Attention probabilities from raw scores (..., Tq, Tk): softmax(scale * scores) over
    the keys each query may see; future keys get probability exactly 0.

    Each row is shifted by its max so exp never overflows; exp(-inf) = 0 gives the masked keys
    their exact 0 (every query sees at least its own key, so no row is all -inf)."""
    xp = array_module(scores)
    masked = xp.where(_causal_mask(xp, *scores.shape[-2:]), -np.inf, scores * scores.dtype.type(scale))
    e = xp.exp(masked - masked.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_softmax_backward(dprobs, probs, scale):
    """d scores (..., Tq, Tk) from d probs: the softmax backward times the scale,
    dscores = scale * p * (dp - sum(dp * p)) row by row (the Jacobian-vector product of the softmax).
    Masked entries have probs == 0, so their gradient is 0 without a mask."""
    return probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True)) * probs.dtype.type(scale)


FLASH_QUERY_BLOCK = 128  # query rows per block of the fused attention below


def _flash_blocks(num_queries, num_keys):
    """(start, stop, visible) per block of query rows: rows start .. stop-1 see at most keys
    0 .. visible-1 (the last row of the block sees exactly those), so keys from visible on are
    never touched. The block's rows are the last stop - start of those visible keys' positions,
    which is what _causal_mask(stop - start, visible) masks."""
    for start in range(0, num_queries, FLASH_QUERY_BLOCK):
        stop = min(start + FLASH_QUERY_BLOCK, num_queries)
        yield start, stop, num_keys - num_queries + stop


def _flash_scores(q_block, k, visible, scale):
    """Scaled, causally masked scores of a block of query rows against keys 0 .. visible-1:
    q_block (..., Tb, hd) @ k (..., visible, hd)^T * scale, -inf where a key is in a row's future."""
    xp = array_module(q_block)
    scores = matmul(q_block, k[..., :visible, :].swapaxes(-1, -2)) * q_block.dtype.type(scale)
    return xp.where(_causal_mask(xp, q_block.shape[-2], visible), -np.inf, scores)


def flash_attention_forward(q, k, v, scale, mask=None):
    """Fused causal attention (FlashAttention-2's contract), without the (Tq, Tk) probabilities.

    q (B, H_kv, G, Tq, hd), k and v (B, H_kv, 1, Tk, hd): G query heads share each key/value
    head (GQA; ops/attention.py's _split_heads layout), and query i sits at absolute position
    Tk - Tq + i (Tq < Tk: a KV cache). mask: None, or the dropout multiplier (B, H_kv, G, Tq, Tk)
    (0 or 1 / (1 - p)) applied to the probabilities before they weigh the values.
    Returns out (B, H_kv, G, Tq, hd) and lse (B, H_kv, G, Tq):

        S = scale * q k^T, masked to the past;  lse = log(sum_j exp(S_ij));  P = exp(S - lse)
        out = (P * mask) v

    lse is that of the undropped softmax: with it the backward rebuilds P exactly, so nothing
    of size Tq x Tk is kept between the two passes. This specification goes a block of query
    rows at a time: a block sees every key it may attend to at once, so its rows take an
    ordinary softmax over them (the kernels' online softmax over key blocks, with its running
    max and sum, is the same number computed in pieces) and only its (block, visible) scores
    exist at any moment."""
    xp = array_module(q)
    out = xp.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype)
    lse = xp.empty(q.shape[:-1], dtype=q.dtype)
    for start, stop, visible in _flash_blocks(q.shape[-2], k.shape[-2]):
        scores = _flash_scores(q[..., start:stop, :], k, visible, scale)  # (B, H_kv, G, Tb, visible)
        row_max = scores.max(axis=-1, keepdims=True)  # finite: every row sees its own key
        e = xp.exp(scores - row_max)
        total = e.sum(axis=-1, keepdims=True)
        probs = e / total
        if mask is not None:
            probs = probs * mask[..., start:stop, :visible]
        out[..., start:stop, :] = matmul(probs, v[..., :visible, :])
        lse[..., start:stop] = (row_max + xp.log(total))[..., 0]
    return out, lse


def flash_attention_backward(dout, q, k, v, out, lse, scale, mask=None):
    """Gradients of flash_attention_forward: dq (B, H_kv, G, Tq, hd), dk and dv (B, H_kv, 1, Tk, hd).

    P = exp(S - lse) is recomputed from the saved lse, block by block, and with Pd = P * mask
    (P itself without dropout), FlashAttention-2's backward is:

        dv = Pd^T dout                 dP = (dout v^T) * mask
        D = rowsum(dout * out)         (= rowsum(P * dP): out = Pd v, so dout . out_i = sum_j P_ij dP_ij)
        dS = P * (dP - D)              (the softmax backward, with D in place of rowsum(P * dP))
        dq = scale dS k                dk = scale dS^T q

    dk and dv are summed over the G query heads that share each key/value head."""
    xp = array_module(q)
    f = q.dtype.type
    dq = xp.empty(q.shape, dtype=q.dtype)
    dk = xp.zeros(k.shape, dtype=q.dtype)
    dv = xp.zeros(v.shape, dtype=q.dtype)
    delta = (dout * out).sum(axis=-1)  # (B, H_kv, G, Tq)
    for start, stop, visible in _flash_blocks(q.shape[-2], k.shape[-2]):
        q_block, dout_block = q[..., start:stop, :], dout[..., start:stop, :]
        probs = xp.exp(_flash_scores(q_block, k, visible, scale) - lse[..., start:stop, None])  # 0 where masked
        dprobs = matmul(dout_block, v[..., :visible, :].swapaxes(-1, -2))  # (B, H_kv, G, Tb, visible)
        dropped = probs
        if mask is not None:
            block_mask = mask[..., start:stop, :visible]
            dropped, dprobs = probs * block_mask, dprobs * block_mask
        dv[..., :visible, :] += matmul(dropped.swapaxes(-1, -2), dout_block).sum(axis=2, keepdims=True)
        dscores = probs * (dprobs - delta[..., start:stop, None]) * f(scale)
        dq[..., start:stop, :] = matmul(dscores, k[..., :visible, :])
        dk[..., :visible, :] += matmul(dscores.swapaxes(-1, -2), q_block).sum(axis=2, keepdims=True)
    return dq, dk, dv


def layernorm_forward(x, weight, bias, eps=1e-5):
    """x (..., C) -> out (..., C), mean (...), rstd (...): normalise over C, then scale and shift."""
    mean = x.mean(axis=-1)
    centered = x - mean[..., None]
    var = (centered * centered).mean(axis=-1)
    rstd = 1.0 / array_module(x).sqrt(var + x.dtype.type(eps))
    out = centered * rstd[..., None] * weight + bias
    return out, mean, rstd


def layernorm_backward(dout, x, weight, mean, rstd):
    """Gradients of layernorm_forward: dx (..., C), dweight (C,), dbias (C,).

    With xhat = (x - mean) * rstd and g = dout * weight:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    """
    xhat = (x - mean[..., None]) * rstd[..., None]
    lead = tuple(range(x.ndim - 1))
    dweight = (dout * xhat).sum(axis=lead)
    dbias = dout.sum(axis=lead)
    g = dout * weight
    dx = rstd[..., None] * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dweight, dbias


def rmsnorm_forward(x, weight, eps=1e-5):
    """x (..., C) -> out (..., C), rstd (...): RMSNorm (Llama), out = x / rms(x) * weight with
    rms(x) = sqrt(mean(x^2) + eps). No mean is subtracted and there is no bias."""
    rstd = 1.0 / array_module(x).sqrt((x * x).mean(axis=-1) + x.dtype.type(eps))
    return x * rstd[..., None] * weight, rstd


def rmsnorm_backward(dout, x, weight, rstd):
    """Gradients of rmsnorm_forward: dx (..., C), dweight (C,).

    With xhat = x * rstd and g = dout * weight:  dx = rstd * (g - xhat * mean(g * xhat))."""
    xhat = x * rstd[..., None]
    dweight = (dout * xhat).sum(axis=tuple(range(x.ndim - 1)))
    g = dout * weight
    dx = rstd[..., None] * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dweight


def rope_forward(x, cos, sin):
    """Rotary position embedding, half-split layout (GPT-NeoX, Hugging Face Llama).

    x (..., T, hd), cos and sin (T, hd / 2) -> out (..., T, hd). Channel i of the first half
    and channel i of the second half form a pair, rotated by the angle of position t:
        out1 = x1 cos - x2 sin ;  out2 = x2 cos + x1 sin."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return array_module(x).concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_backward(dout, cos, sin):
    """dx (..., T, hd): a rotation's transpose is the rotation by minus the angle."""
    half = dout.shape[-1] // 2
    d1, d2 = dout[..., :half], dout[..., half:]
    return array_module(dout).concatenate([d1 * cos + d2 * sin, d2 * cos - d1 * sin], axis=-1)


def _sigmoid(x):
    """1 / (1 + exp(-x)) from e = exp(-|x|) <= 1: 1 / (1 + e) for x >= 0, e / (1 + e) below.
    Nothing overflows, and the far negative tail keeps its relative precision."""
    xp = array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1, e) / (1 + e)


def swiglu_forward(gate, up):
    """SwiGLU's gating: silu(gate) * up, elementwise, with silu(g) = g * sigmoid(g).
    gate, up (...) -> out (...)."""
    return gate * _sigmoid(gate) * up


def swiglu_backward(dout, gate, up):
    """dgate, dup (...): with s = sigmoid(gate), d silu / d gate = s (1 + gate (1 - s))."""
    s = _sigmoid(gate)
    return dout * up * s * (1 + gate * (1 - s)), dout * gate * s


def gelu_forward(x):
    """GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    inner = x.dtype.type(GELU_SCALE) * (x + x.dtype.type(GELU_CUBIC) * x * x * x)
    return x.dtype.type(0.5) * x * (1 + array_module(x).tanh(inner))


def gelu_backward(dout, x):
    """dx = dout * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)), t = tanh(inner)."""
    f = x.dtype.type
    t = array_module(x).tanh(f(GELU_SCALE) * (x + f(GELU_CUBIC) * x * x * x))
    dinner = f(GELU_SCALE) * (1 + f(3 * GELU_CUBIC) * x * x)
    return dout * (f(0.5) * (1 + t) + f(0.5) * x * (1 - t * t) * dinner)


def cross_entropy_forward(logits, targets, ignore_index):
    """Per-row loss of softmax cross-entropy.

    logits (N, V) float, targets (N,) int -> losses (N,), logsumexp (N,).
    losses[i] = logsumexp(logits[i]) - logits[i, targets[i]], and 0 where targets[i] == ignore_index.
    The logsumexp is kept so the backward can rebuild the softmax without storing it.
    """
    xp = array_module(logits)
    valid = targets != ignore_index
    safe_targets = xp.where(valid, targets, 0)
    row_max = logits.max(axis=-1)
    lse = row_max + xp.log(xp.exp(logits - row_max[:, None]).sum(axis=-1))
    picked = logits[xp.arange(logits.shape[0]), safe_targets]
    losses = xp.where(valid, lse - picked, 0).astype(logits.dtype, copy=False)
    return losses, lse


def cross_entropy_backward(dlosses, logits, targets, lse, ignore_index):
    """Fused softmax + cross-entropy backward: dlogits (N, V) = (softmax(logits) - onehot) * dlosses.

    Rows whose target is ignore_index get a zero gradient whatever dlosses says.
    """
    xp = array_module(logits)
    valid = targets != ignore_index
    safe_targets = xp.where(valid, targets, 0)
    dlogits = xp.exp(logits - lse[:, None])
    dlogits[xp.arange(logits.shape[0]), safe_targets] -= 1
    dlogits *= xp.where(valid, dlosses, 0).astype(logits.dtype, copy=False)[:, None]
    return dlogits


def embedding_backward(dout, ids, num_embeddings):
    """Scatter-add rows of dout (N, C) into a (num_embeddings, C) table at rows ids (N,).

    A token that occurs several times accumulates every occurrence's gradient."""
    xp = array_module(dout)
    dtable = xp.zeros((num_embeddings, dout.shape[-1]), dtype=dout.dtype)
    xp.add.at(dtable, ids, dout)
    return dtable


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW update, in place on param, m and v (all the same shape), as torch.optim.AdamW:

    param *= 1 - lr * weight_decay                       (decoupled decay; 0 turns it off)
    m = beta1 m + (1 - beta1) grad ;  v = beta2 v + (1 - beta2) grad^2
    param -= lr * (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps)

    step counts from 1. Adam with L2 decay is this with the decay folded into grad first."""
    if weight_decay:
        param *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    m_hat = m / (1.0 - beta1**step)
    v_hat = v / (1.0 - beta2**step)
    param -= lr * m_hat / (array_module(param).sqrt(v_hat) + eps)


def host_adamw_step_scaled(adamw_step):
    """adamw_step_scaled built on a host backend's own ``adamw_step``: on the host the two
    scalars cost nothing to read, so it is that adamw_step behind a check (numba_cpu uses this
    too; the cupy backend has a kernel that reads them on the device)."""

    def adamw_step_scaled(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, applied_steps, grad_scale):
        """adamw_step on grad * grad_scale, with the bias-correction step read from applied_steps.

        applied_steps (0-d int) and grad_scale (0-d, param's dtype) are arrays on param's device,
        so a GPU training loop never waits for the host: the clip factor (and a float16 run's
        loss scale) folds into grad_scale, and a step whose gradient is not finite sets
        grad_scale to 0, which leaves param, m and v untouched (a skipped step; the caller does
        not count it in applied_steps). grad may be in a lower precision than param (mixed
        precision: float32 master weights); it is used in param's dtype."""
        scale = param.dtype.type(grad_scale)
        if scale == 0:
            return
        grad = grad if scale == 1 else grad.astype(param.dtype) * scale
        adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, int(applied_steps))

    return adamw_step_scaled


adamw_step_scaled = host_adamw_step_scaled(adamw_step)


def sum_of_squares(x):
    """sum(x^2) over every element, accumulated in float64, as a float64 scalar on x's device
    (a NumPy float64 on the host, a 0-d CuPy array on a GPU: no host round trip). The global
    gradient norm is the square root of the sum of these over all parameters."""
    xp = array_module(x)
    x64 = x.astype(xp.float64, copy=False).ravel()
    return xp.float64(xp.vdot(x64, x64)) if xp is np else xp.vdot(x64, x64)
