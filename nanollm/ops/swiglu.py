"""SwiGLU's gate (Shazeer 2020), the middle of Llama's feed-forward block (ops/mlp.py):

    out = (silu(x @ gate_weight) * (x @ up_weight)) @ down_weight,   silu(g) = g * sigmoid(g)

Three matrices instead of GPT-2's two; with F = 8C/3 (Llama's choice, nanollm's default for
architecture="llama") it has GPT-2's 8 C^2 parameters. No biases.
"""

from nanollm import backends


def swiglu_forward(gate, up):
    """gate, up (..., F) -> out (..., F) = silu(gate) * up, elementwise."""
    return backends.current().swiglu_forward(gate, up), (gate, up)


def swiglu_backward(dout, cache):
    """dout (..., F) -> dgate (..., F), dup (..., F)."""
    gate, up = cache
    return backends.current().swiglu_backward(dout, gate, up)
