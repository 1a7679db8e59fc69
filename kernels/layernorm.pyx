# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Layer normalisation over the last axis: forward (out, mean, rstd) and backward (dx, dweight, dbias).

Each function takes C-contiguous float32 or float64 rows (N, C) of one dtype and writes into
output arrays the caller allocates (``nanollm/backends/cython_cpu.py``). One row at a time,
without the GIL: the row is read from memory once; its statistics take two sweeps over it
while it sits in the L1 cache (the mean, then the centred variance, never E[x^2] - E[x]^2,
which cancels catastrophically), then one sweep writes the output.

Means, variances and the two row sums of the backward accumulate in double, also for float32.
"""

from libc.math cimport sqrt

ctypedef fused real:
    float
    double


def layernorm_forward(const real[:, ::1] x, const real[::1] weight, const real[::1] bias, double eps,
                      real[:, ::1] out, real[::1] mean, real[::1] rstd):
    """x (N, C), weight (C,), bias (C,) -> out (N, C) = (x - mean) * rstd * weight + bias,
    mean (N,), rstd (N,) = 1 / sqrt(var + eps)."""
    cdef Py_ssize_t i, j, rows = x.shape[0], cols = x.shape[1]
    cdef const real* xr
    cdef real* o
    cdef double total, sq, d, mu64
    cdef real mu, r
    if weight.shape[0] != cols or bias.shape[0] != cols:
        raise ValueError(f"layernorm_forward: weight {weight.shape[0]} and bias {bias.shape[0]} must have C={cols}")
    if out.shape[0] != rows or out.shape[1] != cols or mean.shape[0] != rows or rstd.shape[0] != rows:
        raise ValueError("layernorm_forward: out must be (N, C), mean and rstd (N,)")
    with nogil:
        for i in range(rows):
            xr, o = &x[i, 0], &out[i, 0]
            total = 0.0
            for j in range(cols):
                total += xr[j]
            mu64 = total / cols
            sq = 0.0
            for j in range(cols):
                d = xr[j] - mu64
                sq += d * d
            mu, r = <real>mu64, <real>(1.0 / sqrt(sq / cols + eps))
            for j in range(cols):
                o[j] = (xr[j] - mu) * r * weight[j] + bias[j]
            mean[i], rstd[i] = mu, r


def layernorm_backward(const real[:, ::1] dout, const real[:, ::1] x, const real[::1] weight,
                       const real[::1] mean, const real[::1] rstd, real[:, ::1] dx,
                       double[::1] dweight, double[::1] dbias):
    """dout, x (N, C), weight (C,), mean, rstd (N,) -> dx (N, C), and ADDS the column sums
    dweight (C,) += sum(dout * xhat), dbias (C,) += sum(dout) into float64 accumulators
    (pass them zeroed; the caller casts them to the data dtype).

    With xhat = (x - mean) * rstd and g = dout * weight:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    """
    cdef Py_ssize_t i, j, rows = x.shape[0], cols = x.shape[1]
    cdef const real* xr
    cdef const real* dr
    cdef real* o
    cdef real mu, r, xhat, g, g_mean, gx_mean
    cdef double g_sum, gx_sum
    if dout.shape[0] != rows or dout.shape[1] != cols or dx.shape[0] != rows or dx.shape[1] != cols:
        raise ValueError("layernorm_backward: dout and dx must have the shape of x")
    if weight.shape[0] != cols or dweight.shape[0] != cols or dbias.shape[0] != cols:
        raise ValueError(f"layernorm_backward: weight, dweight and dbias must have C={cols}")
    if mean.shape[0] != rows or rstd.shape[0] != rows:
        raise ValueError(f"layernorm_backward: mean and rstd must have N={rows}")
    with nogil:
        for i in range(rows):
            xr, dr, o = &x[i, 0], &dout[i, 0], &dx[i, 0]
            mu, r = mean[i], rstd[i]
            g_sum = 0.0
            gx_sum = 0.0
            for j in range(cols):
                xhat = (xr[j] - mu) * r
                g = dr[j] * weight[j]
                g_sum += g
                gx_sum += <double>g * xhat
                dweight[j] += <double>dr[j] * xhat
                dbias[j] += dr[j]
            g_mean, gx_mean = <real>(g_sum / cols), <real>(gx_sum / cols)
            for j in range(cols):
                xhat = (xr[j] - mu) * r
                o[j] = r * (dr[j] * weight[j] - g_mean - xhat * gx_mean)
