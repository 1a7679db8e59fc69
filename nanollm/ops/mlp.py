"""The transformer's feed-forward block: linear (C -> F), GELU, linear (F -> C)."""

from nanollm.ops.gelu import gelu_backward, gelu_forward
from nanollm.ops.linear import linear_backward, linear_forward


def mlp_forward(x, fc_weight, fc_bias, proj_weight, proj_bias):
    """x (..., C), fc_weight (C, F), fc_bias (F,), proj_weight (F, C), proj_bias (C,) -> out (..., C)."""
    hidden, fc_cache = linear_forward(x, fc_weight, fc_bias)  # (..., F)
    activated, gelu_cache = gelu_forward(hidden)  # (..., F)
    out, proj_cache = linear_forward(activated, proj_weight, proj_bias)  # (..., C)
    return out, (fc_cache, gelu_cache, proj_cache)


def mlp_backward(dout, cache):
    """dout (..., C) -> dx, dfc_weight, dfc_bias, dproj_weight, dproj_bias (the forward's inputs)."""
    fc_cache, gelu_cache, proj_cache = cache
    dactivated, dproj_weight, dproj_bias = linear_backward(dout, proj_cache)
    dhidden = gelu_backward(dactivated, gelu_cache)
    dx, dfc_weight, dfc_bias = linear_backward(dhidden, fc_cache)
    return dx, dfc_weight, dfc_bias, dproj_weight, dproj_bias
