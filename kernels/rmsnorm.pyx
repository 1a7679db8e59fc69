# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""RMS normalisation (Llama) over the last axis: forward (out, rstd) and backward (dx, dweight).

    out = x * rstd * weight,  rstd = 1 / sqrt(mean(x^2) + eps)      (no mean subtracted, no bias)
    dx  = rstd * (g - xhat * mean(g * xhat)),  xhat = x * rstd, g = dout * weight

Each function takes C-contiguous float32 or float64 rows (N, C) of one dtype and writes into
output arrays the caller allocates (``nanollm/backends/cython_cpu.py``). One row at a time,
without the GIL: a row is read from memory once, its sum of squares (forward) or its sum of
g * xhat (backward) takes one sweep, and the sweep that writes the output finds it in L1.

Sums accumulate in double, also for float32; rstd and the row mean are then rounded to the data
dtype, so a float32 row's output sweep stays in float32 (twice the SIMD lanes of double).
"""

from libc.math cimport sqrt

ctypedef fused real:
    float
    double


def rmsnorm_forward(const real[:, ::1] x, const real[::1] weight, double eps, real[:, ::1] out, real[::1] rstd):
    """x (N, C), weight (C,) -> out (N, C) = x * rstd * weight, rstd (N,) = 1 / sqrt(mean(x^2) + eps)."""
    cdef Py_ssize_t i, j, rows = x.shape[0], cols = x.shape[1]
    cdef const real* xr
    cdef real* o
    cdef double sq
    cdef real r
    if weight.shape[0] != cols:
        raise ValueError(f"rmsnorm_forward: weight has {weight.shape[0]} channels, x has C={cols}")
    if out.shape[0] != rows or out.shape[1] != cols or rstd.shape[0] != rows:
        raise ValueError("rmsnorm_forward: out must be (N, C) and rstd (N,)")
    with nogil:
        for i in range(rows):
            xr, o = &x[i, 0], &out[i, 0]
            sq = 0.0
            for j in range(cols):
                sq += <double>xr[j] * xr[j]
            r = <real>(1.0 / sqrt(sq / cols + eps))
            for j in range(cols):
                o[j] = xr[j] * r * weight[j]
            rstd[i] = r


def rmsnorm_backward(const real[:, ::1] dout, const real[:, ::1] x, const real[::1] weight,
                     const real[::1] rstd, real[:, ::1] dx, double[::1] dweight):
    """dout, x (N, C), weight (C,), rstd (N,) -> dx (N, C), and ADDS the column sums
    dweight (C,) += sum(dout * xhat) into a float64 accumulator (pass it zeroed; the caller
    casts it to the data dtype)."""
    cdef Py_ssize_t i, j, rows = x.shape[0], cols = x.shape[1]
    cdef const real* xr
    cdef const real* dr
    cdef real* o
    cdef real r, xhat, gx_mean
    cdef double gx_sum
    if dout.shape[0] != rows or dout.shape[1] != cols or dx.shape[0] != rows or dx.shape[1] != cols:
        raise ValueError("rmsnorm_backward: dout and dx must have the shape of x")
    if weight.shape[0] != cols or dweight.shape[0] != cols:
        raise ValueError(f"rmsnorm_backward: weight and dweight must have C={cols}")
    if rstd.shape[0] != rows:
        raise ValueError(f"rmsnorm_backward: rstd must have N={rows}")
    with nogil:
        for i in range(rows):
            xr, dr, o = &x[i, 0], &dout[i, 0], &dx[i, 0]
            r = rstd[i]
            gx_sum = 0.0
            for j in range(cols):
                xhat = xr[j] * r
                gx_sum += <double>(dr[j] * weight[j]) * xhat
                dweight[j] += <double>dr[j] * xhat
            gx_mean = <real>(gx_sum / cols)
            for j in range(cols):
                o[j] = r * (dr[j] * weight[j] - xr[j] * r * gx_mean)
