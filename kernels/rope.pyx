# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Rotary position embedding (RoPE), half-split layout (GPT-NeoX, Hugging Face Llama).

Channel i and channel i + hd/2 of position t form a pair, rotated by the angle of t:

    forward:   out1 = x1 cos - x2 sin ;   out2 = x2 cos + x1 sin
    backward:  dx1  = d1 cos + d2 sin ;   dx2  = d2 cos - d1 sin      (the transposed rotation)

Each function takes C-contiguous float32 or float64 arrays of one dtype, x (M, T, hd) (M: the
leading axes, batch and heads, flattened) and the tables cos, sin (T, hd/2), and writes into an
output array the caller allocates (``nanollm/backends/cython_cpu.py``), in one pass, without
the GIL. The inner loop over a row's hd/2 pairs is four contiguous streams: it vectorises.
"""

ctypedef fused real:
    float
    double


cdef _check_shapes(str name, tuple x, tuple cos, tuple sin, tuple out):
    """x (M, T, hd) needs cos and sin (T, hd/2) and out (M, T, hd): the loop trusts them."""
    if x[2] % 2 or cos != (x[1], x[2] // 2) or sin != cos or out != x:
        raise ValueError(f"{name}: x (M, T, hd) with an even hd needs cos and sin (T, hd/2) and out (M, T, hd); "
                         f"got x {x}, cos {cos}, sin {sin}, out {out}")


cdef inline void _rotate(const real[:, :, ::1] x, const real[:, ::1] cos, const real[:, ::1] sin, real sign,
                         real[:, :, ::1] out) noexcept nogil:
    """out = x rotated pair by pair by sign * the angle of its position (sign: +1 or -1)."""
    cdef Py_ssize_t m, t, i, half = cos.shape[1]
    cdef const real* xr
    cdef const real* c
    cdef const real* s
    cdef real* o
    cdef real x1, x2, si
    for m in range(x.shape[0]):
        for t in range(x.shape[1]):
            xr, o, c, s = &x[m, t, 0], &out[m, t, 0], &cos[t, 0], &sin[t, 0]
            for i in range(half):
                x1, x2, si = xr[i], xr[half + i], sign * s[i]
                o[i] = x1 * c[i] - x2 * si
                o[half + i] = x2 * c[i] + x1 * si


def rope_forward(const real[:, :, ::1] x, const real[:, ::1] cos, const real[:, ::1] sin, real[:, :, ::1] out):
    """x (M, T, hd), cos, sin (T, hd/2) -> out (M, T, hd): each pair rotated by its angle."""
    _check_shapes("rope_forward", (x.shape[0], x.shape[1], x.shape[2]), (cos.shape[0], cos.shape[1]),
                  (sin.shape[0], sin.shape[1]), (out.shape[0], out.shape[1], out.shape[2]))
    with nogil:
        _rotate(x, cos, sin, <real>1, out)


def rope_backward(const real[:, :, ::1] dout, const real[:, ::1] cos, const real[:, ::1] sin, real[:, :, ::1] dx):
    """dout (M, T, hd), cos, sin (T, hd/2) -> dx (M, T, hd): each pair rotated by minus its angle."""
    _check_shapes("rope_backward", (dout.shape[0], dout.shape[1], dout.shape[2]), (cos.shape[0], cos.shape[1]),
                  (sin.shape[0], sin.shape[1]), (dx.shape[0], dx.shape[1], dx.shape[2]))
    with nogil:
        _rotate(dout, cos, sin, <real>-1, dx)
