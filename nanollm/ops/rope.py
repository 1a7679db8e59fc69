"""Rotary position embeddings (RoPE, Su et al. 2021), as Llama applies them to queries and keys.

Instead of adding a learned position vector to the input, each head's query and key channels
are taken in pairs and each pair is rotated by an angle proportional to the position t:

    theta_i = base^(-2 i / hd),  i = 0 .. hd/2 - 1;     angle(t, i) = t * theta_i

Then q_t . k_s depends on t and s only through t - s: attention sees relative positions.
The pairs are (channel i, channel i + hd/2), the half-split layout of GPT-NeoX and Hugging
Face's Llama (Meta's original pairs neighbouring channels; the two differ by a fixed
permutation of the q and k weights). Rotation has no parameters, and its backward is the
rotation by the opposite angle.
"""

import numpy as np

from nanollm import backends

ROPE_BASE = 10000.0  # Llama's default; larger bases stretch the wavelengths for longer contexts


def rope_tables(num_positions, head_dim, base=ROPE_BASE, dtype="float32", xp=None):
    """cos, sin (num_positions, head_dim / 2) of the angles t * base^(-2i / hd), computed in
    float64 and then cast (positions up to a few thousand keep full float32 precision)."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}; choose embedding_dim "
                         "and num_heads so that embedding_dim / num_heads is even")
    inverse_frequency = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)
    angles = np.outer(np.arange(num_positions, dtype=np.float64), inverse_frequency)  # (T, hd/2)
    xp = np if xp is None else xp
    return xp.asarray(np.cos(angles), dtype=dtype), xp.asarray(np.sin(angles), dtype=dtype)


def rope_forward(x, cos, sin):
    """x (..., T, hd), cos and sin (T, hd/2) of the positions of x's T rows -> out (..., T, hd)."""
    return backends.current().rope_forward(x, cos, sin), (cos, sin)


def rope_backward(dout, cache):
    """dout (..., T, hd) -> dx (..., T, hd)."""
    cos, sin = cache
    return backends.current().rope_backward(dout, cos, sin)
