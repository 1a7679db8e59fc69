"""Llama's feed-forward block, SwiGLU (Shazeer 2020): a gated linear unit with a SiLU gate.

    out = (silu(x @ gate_weight) * (x @ up_weight)) @ down_weight,   silu(g) = g * sigmoid(g)

Three matrices instead of GPT-2's two; with F = 8C/3 (Llama's choice, nanollm's default for
architecture="llama") it has GPT-2's 8 C^2 parameters. No biases.
"""

from nanollm import backends
from nanollm.ops.linear import linear_backward, linear_forward


def swiglu_forward(gate, up):
    """gate, up (..., F) -> out (..., F) = silu(gate) * up, elementwise."""
    return backends.current().swiglu_forward(gate, up), (gate, up)


def swiglu_backward(dout, cache):
    """dout (..., F) -> dgate (..., F), dup (..., F)."""
    gate, up = cache
    return backends.current().swiglu_backward(dout, gate, up)


def swiglu_mlp_forward(x, gate_weight, up_weight, down_weight):
    """x (..., C), gate_weight and up_weight (C, F), down_weight (F, C) -> out (..., C)."""
    gate, gate_cache = linear_forward(x, gate_weight)  # (..., F)
    up, up_cache = linear_forward(x, up_weight)  # (..., F)
    hidden, swiglu_cache = swiglu_forward(gate, up)  # (..., F)
    out, down_cache = linear_forward(hidden, down_weight)  # (..., C)
    return out, (gate_cache, up_cache, swiglu_cache, down_cache)


def swiglu_mlp_backward(dout, cache):
    """dout (..., C) -> dx, dgate_weight, dup_weight, ddown_weight (the forward's inputs)."""
    gate_cache, up_cache, swiglu_cache, down_cache = cache
    dhidden, ddown_weight, _ = linear_backward(dout, down_cache)
    dgate, dup = swiglu_backward(dhidden, swiglu_cache)
    dx_up, dup_weight, _ = linear_backward(dup, up_cache)
    dx_gate, dgate_weight, _ = linear_backward(dgate, gate_cache)
    return dx_gate + dx_up, dgate_weight, dup_weight, ddown_weight
