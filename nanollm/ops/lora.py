"""LoRA (Hu et al. 2021): a low-rank update trained beside a frozen weight matrix.

    out = x @ W + b  +  scale * dropout(x) @ A @ B,     scale = alpha / r

W (C_in, C_out) stays frozen; only A (C_in, r) and B (r, C_out) train, r << C_in, C_out. B
starts at zero, so training starts from exactly the pretrained model. This op is the added
path alone (the frozen linear is ops/linear.py); the model adds its output to the linear's.
"""

from nanollm.ops.dropout import dropout_backward, dropout_forward
from nanollm.ops.linear import linear_backward, linear_forward


def lora_forward(x, a, b, scale, dropout=0.0, rng=None, training=True):
    """x (..., C_in), a (C_in, r), b (r, C_out) -> delta (..., C_out) = scale * dropout(x) @ a @ b."""
    dropped, dropout_cache = dropout_forward(x, dropout, rng, training)
    low, a_cache = linear_forward(dropped, a)  # (..., r): the rank-r bottleneck
    delta, b_cache = linear_forward(low, b)  # (..., C_out)
    delta *= scale
    return delta, (dropout_cache, a_cache, b_cache, scale)


def lora_backward(ddelta, cache):
    """ddelta (..., C_out) -> dx (..., C_in), da (C_in, r), db (r, C_out)."""
    dropout_cache, a_cache, b_cache, scale = cache
    dlow, db, _ = linear_backward(ddelta * scale, b_cache)
    ddropped, da, _ = linear_backward(dlow, a_cache)
    return dropout_backward(ddropped, dropout_cache), da, db
