"""Inverted dropout: zero each element with probability p in training and scale the rest by
1 / (1 - p), so evaluation needs no rescaling. The mask comes from a seeded generator."""


def dropout_forward(x, p, rng, training=True):
    """x (...) -> out (...). Identity (cache None) when not training or p == 0.

    rng: a numpy Generator (on a GPU, the cupy backend's CounterGenerator); the same seed
    gives the same mask."""
    if not training or p == 0.0:
        return x, None
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    uniform_dtype = "float64" if x.dtype == "float64" else "float32"  # generators draw no float16
    keep = rng.random(x.shape, dtype=uniform_dtype) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))  # (...), 0 or 1/(1-p)
    return x * mask, mask


def dropout_backward(dout, cache):
    """dout (...) -> dx (...): the same mask, the same scale."""
    return dout if cache is None else dout * cache
