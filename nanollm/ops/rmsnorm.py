"""RMS normalisation over the channel axis (Llama): a learned gain, no mean subtracted, no bias.

    out = x / sqrt(mean(x^2) + eps) * weight

Cheaper than layernorm by one reduction and one parameter vector; the backward is layernorm's
without the mean terms.
"""

from nanollm import backends

RMSNORM_EPS = 1e-5  # Llama 2's rms_norm_eps


def rmsnorm_forward(x, weight, eps=RMSNORM_EPS):
    """x (..., C), weight (C,) -> out (..., C)."""
    out, rstd = backends.current().rmsnorm_forward(x, weight, eps)
    cache = (x, weight, rstd)  # rstd: (...)
    return out, cache


def rmsnorm_backward(dout, cache):
    """dout (..., C) -> dx (..., C), dweight (C,)."""
    x, weight, rstd = cache
    return backends.current().rmsnorm_backward(dout, x, weight, rstd)
