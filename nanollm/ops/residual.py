"""Residual (and broadcast) addition: out = a + b.

Backward hands the upstream gradient to both inputs, summed over any axis an input was
broadcast along (the positional embedding (T, C) added to a (B, T, C) batch, for instance).
"""


def residual_forward(a, b):
    """a, b broadcastable -> out = a + b."""
    return a + b, (a.shape, b.shape)


def _sum_to_shape(grad, shape):
    """Sum grad over the axes along which an array of ``shape`` was broadcast."""
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(axis for axis, size in enumerate(shape) if size == 1 and grad.shape[axis] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def residual_backward(dout, cache):
    """dout (broadcast shape) -> da (a.shape), db (b.shape)."""
    a_shape, b_shape = cache
    return _sum_to_shape(dout, a_shape), _sum_to_shape(dout, b_shape)
