# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""SwiGLU's gating (Llama's MLP), forward and backward, elementwise over flat arrays.

    out   = silu(gate) * up,   silu(g) = g s,   s = sigmoid(g)
    dgate = dout * up * s * (1 + g (1 - s)) ;   dup = dout * g * s

Each function takes C-contiguous 1-D float32 or float64 arrays of one dtype and writes into
output arrays the caller allocates (``nanollm/backends/cython_cpu.py``), in one pass, without
the GIL.

The sigmoid is built from e = exp(-|g|) <= 1: s = 1 / (1 + e) for g >= 0, e / (1 + e) below.
Nothing can overflow and nothing cancels (the tanh form (1 + tanh(g/2)) / 2 keeps one significant
digit of a float32 sigmoid(-16)); far out s is exactly 0 or 1, so silu(-1000) is 0, not NaN;
NaN stays NaN. float64 calls libc's ``exp``; float32 the vectorisable exp of ``fastmath.pxd``,
since a call to libc's ``expf`` per element does not vectorise.
"""

from libc.math cimport exp, fabs, fabsf

from fastmath cimport exp_nonpositive_float32

ctypedef fused real:
    float
    double


cdef inline real _sigmoid(real g) noexcept nogil:
    cdef real zero = 0.0, one = 1.0, e
    if real is float:
        e = exp_nonpositive_float32(-fabsf(g))  # clamped at exp(-87): zero it beyond
        e = zero if g < <float>-87.0 else e  # NaN fails the test and stays NaN
    else:
        e = exp(-fabs(g))
    return (one if g >= zero else e) / (one + e)


def swiglu_forward(const real[::1] gate, const real[::1] up, real[::1] out):
    """gate, up (n,) -> out (n,) = silu(gate) * up."""
    cdef Py_ssize_t i, n = gate.shape[0]
    cdef real g
    if up.shape[0] != n or out.shape[0] != n:
        raise ValueError(f"swiglu_forward: up ({up.shape[0]}) and out ({out.shape[0]}) must have gate's {n} elements")
    with nogil:
        for i in range(n):
            g = gate[i]
            out[i] = g * _sigmoid(g) * up[i]


def swiglu_backward(const real[::1] dout, const real[::1] gate, const real[::1] up, real[::1] dgate, real[::1] dup):
    """dout, gate, up (n,) -> dgate (n,) = dout * up * silu'(gate), dup (n,) = dout * silu(gate)."""
    cdef Py_ssize_t i, n = gate.shape[0]
    cdef real g, s, one = 1.0
    if dout.shape[0] != n or up.shape[0] != n or dgate.shape[0] != n or dup.shape[0] != n:
        raise ValueError(f"swiglu_backward: dout, up, dgate and dup must have gate's {n} elements")
    with nogil:
        for i in range(n):
            g = gate[i]
            s = _sigmoid(g)
            dgate[i] = dout[i] * up[i] * s * (one + g * (one - s))
            dup[i] = dout[i] * g * s
