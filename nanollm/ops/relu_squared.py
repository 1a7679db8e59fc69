"""ReLU squared, the modded-nanogpt speedrun's MLP activation (So et al. 2021, "Primer"):

    out = max(x, 0)^2          dx = 2 max(x, 0) dout

Sparse like ReLU, smooth at zero like GELU, and cheaper than both: no tanh, one pass each way.
"""

from nanollm import backends


def relu_squared_forward(x):
    """x (...) -> out (...), elementwise; the cache is relu(x) (what the backward multiplies)."""
    xp = backends.array_module(x)
    positive = xp.maximum(x, x.dtype.type(0))  # (...)
    return positive * positive, positive


def relu_squared_backward(dout, cache):
    """dout (...) -> dx (...) = 2 relu(x) dout."""
    positive = cache
    return dout * (positive + positive)
