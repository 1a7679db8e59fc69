"""Inverted dropout: zero each element with probability p in training and scale the rest by
1 / (1 - p), so evaluation needs no rescaling. The mask comes from a seeded generator."""

import numpy as np


def dropout_forward(x, p, rng, training=True):
    """x (...) -> out (...). Identity (cache None) when not training or p == 0.

    rng: a numpy Generator (on a GPU, the cupy backend's CounterGenerator); the same seed
    gives the same mask."""
    if not training or p == 0.0:
        return x, None
    mask = dropout_mask(x.shape, x.dtype, p, rng)
    return x * mask, mask


def dropout_mask(shape, dtype, p, rng):
    """The multiplier dropout_forward applies: (shape) of dtype, 0 with probability p, else
    1 / (1 - p). One draw of rng.random(shape), so an op that applies the mask itself (the
    fused attention) gets the same mask from the same seed."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    dtype = np.dtype(dtype)
    uniform_dtype = "float64" if dtype == "float64" else "float32"  # generators draw no float16
    keep = rng.random(shape, dtype=uniform_dtype) >= p
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - p))  # (...), 0 or 1/(1-p)


def dropout_backward(dout, cache):
    """dout (...) -> dx (...): the same mask, the same scale."""
    return dout if cache is None else dout * cache
