"""Logit soft-capping (Gemma 2, the modded-nanogpt speedrun): logits squashed smoothly into (-c, c).

    out = c tanh(z / c)        dz = (1 - tanh(z / c)^2) dout

Near zero it is the identity (slope 1); far out it saturates, so no logit can grow without bound
and sharpen the softmax early in training.
"""

from nanollm import backends


def softcap_forward(z, cap):
    """z (...), cap > 0 -> out (...) = cap tanh(z / cap); the cache is tanh(z / cap)."""
    xp = backends.array_module(z)
    cap = z.dtype.type(cap)
    squashed = xp.tanh(z / cap)  # (...)
    return squashed * cap, squashed


def softcap_backward(dout, cache):
    """dout (...) -> dz (...) = (1 - tanh^2) dout."""
    squashed = cache
    return dout * (squashed.dtype.type(1) - squashed * squashed)
