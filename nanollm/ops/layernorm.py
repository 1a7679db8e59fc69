"""Layer normalisation over the channel axis, with a learned gain (weight) and bias."""

from nanollm import backends

LAYERNORM_EPS = 1e-5  # as GPT-2 and PyTorch's nn.LayerNorm


def layernorm_forward(x, weight, bias, eps=LAYERNORM_EPS):
    """x (..., C), weight (C,), bias (C,) -> out (..., C) = (x - mean) / std * weight + bias."""
    out, mean, rstd = backends.current().layernorm_forward(x, weight, bias, eps)
    cache = (x, weight, mean, rstd)  # mean, rstd: (...)
    return out, cache


def layernorm_backward(dout, cache):
    """dout (..., C) -> dx (..., C), dweight (C,), dbias (C,)."""
    x, weight, mean, rstd = cache
    return backends.current().layernorm_backward(dout, x, weight, mean, rstd)
