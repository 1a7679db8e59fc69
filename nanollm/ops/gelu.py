"""GELU activation in GPT-2's tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

from nanollm import backends


def gelu_forward(x):
    """x (...) -> out (...), elementwise."""
    return backends.current().gelu_forward(x), x


def gelu_backward(dout, cache):
    """dout (...) -> dx (...)."""
    return backends.current().gelu_backward(dout, cache)
