"""numba_cpu: the primitives as fused @njit kernels, one pass over memory each.

Why this backend exists: outside its matrix products a train step is a dozen elementwise and
row-wise passes (layernorm, GELU, softmax, cross-entropy, AdamW). NumPy makes each of them
several passes with a temporary array per operator; a kernel here reads its inputs once and
writes its outputs once, and ``prange`` spreads rows over the cores.

Rules the kernels keep:
- Matrix products stay on BLAS (``matmul`` is NumPy's): nothing written here beats sgemm.
- ``cache=True``: compiled once per machine into ``__pycache__``, then loaded in milliseconds.
  Nothing compiles at import; the first call of each kernel per dtype compiles it.
- ``FASTMATH`` allows reassociation (vectorised sums) and contraction (FMA) but not the
  "no NaN / no Inf" assumptions: a NaN loss must stay NaN so training can stop on it.
- Sums (means, variances, softmax normalisers) accumulate in float64, also for float32 data.
- float32 GELU uses a rational tanh (Eigen's, error < 1 ulp after rounding to float32) because
  LLVM vectorises it and not libm's tanhf; float64 uses the exact ``math.tanh``. SwiGLU's
  sigmoid is built from exp(-|g|) <= 1 (no overflow, no cancellation in the tails), with the
  same vectorisable float32 exp as the softmax; float64 uses ``math.exp``.
- Rows of the causal softmax never touch their masked (future) half.

Shapes: ``...`` is any number of leading axes; wrappers flatten them to rows (N, C) (RoPE: to
(M, T, hd), M the leading axes). Outputs take the dtype of x (of gate for SwiGLU).
"""

import math
import os

import numpy as np
from numba import njit, prange

from nanollm.backends import numpy_ref

FASTMATH = {"reassoc", "contract", "arcp", "nsz"}  # no "nnan"/"ninf": NaN and Inf propagate
# Serial by default: OpenBLAS already keeps both cores busy in the matmuls, and a second thread
# pool fighting it for them made the train step slower (BENCHMARKS.md, "thread sharing").
# NANOLLM_NUMBA_PARALLEL=1 compiles the prange loops multi-threaded, to measure that again.
PARALLEL = os.environ.get("NANOLLM_NUMBA_PARALLEL") == "1"
_kernel = njit(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=PARALLEL)
_serial_kernel = njit(cache=True, fastmath=FASTMATH, error_model="numpy")
_inline = njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")

GELU_SCALE, GELU_CUBIC = numpy_ref.GELU_SCALE, numpy_ref.GELU_CUBIC
_TANH_CLAMP = 7.90531110763549805  # beyond it tanh(x) rounds to +-1 in float32
_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = HI + LO, HI exact in a few bits (Cephes)


matmul = numpy_ref.matmul  # BLAS: no kernel written here beats sgemm


def _rows(x):
    """x (..., C) -> a C-contiguous (N, C) view (a copy only when x is not contiguous)."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


# ----------------------------------------------------------------------------- exp


@_inline
def _exp_into(x, scale, shift, out, count, pow2_bits, fast):
    """out[j] = exp(x[j] * scale - shift) for j < count; returns their sum (float64).

    float32 rows (``fast``, the wrapper's dtype test) take a vectorisable path, because libm's
    expf is one call per element: with t = x * scale - shift and n = round(t / ln 2),
    exp(t) = 2^n * exp(r), r = t - n ln 2 (ln 2 split in two so r is exact, Cody-Waite), 2^n
    written straight into a float's exponent bits (pow2_bits, an int32 scratch row viewed as
    float32) and exp(r), |r| <= 0.35, from its degree-6 Taylor polynomial: within 2 float32 ulp
    of the exact value. Arguments below -87 count as -87 (1.6e-38 instead of less, or 0):
    invisible next to the row's largest term, 1. float64 rows use the exact math.exp."""
    total = 0.0
    if not fast:
        for j in range(count):
            e = math.exp(x[j] * scale - shift)
            out[j] = e
            total += e
        return total
    for j in range(count):
        t = max(np.float32(x[j] * scale - shift), np.float32(-87.0))  # exp(-87) is still a normal float
        n = np.floor(t * np.float32(_LOG2E) + np.float32(0.5))
        r = (t - n * np.float32(_LN2_HI)) - n * np.float32(_LN2_LO)
        out[j] = np.float32(1.0) + r * (np.float32(1.0) + r * (np.float32(1 / 2) + r * (np.float32(1 / 6) + r * (
            np.float32(1 / 24) + r * (np.float32(1 / 120) + r * np.float32(1 / 720))))))
        pow2_bits[j] = (np.int32(n) + np.int32(127)) << np.int32(23)
    pow2 = pow2_bits.view(np.float32)
    for j in range(count):
        out[j] *= pow2[j]
        total += out[j]
    return total


# ----------------------------------------------------------------------------- causal softmax


@_kernel
def _causal_softmax_forward(scores, scale, probs, fast):  # scores, probs: (M, Tq, Tk)
    num_queries, num_keys = scores.shape[1], scores.shape[2]
    for m in prange(scores.shape[0]):
        pow2_bits = np.empty(num_keys, dtype=np.int32)
        for i in range(num_queries):
            visible = num_keys - num_queries + i + 1  # keys 0 .. visible-1 are in the past
            row_max = scores[m, i, 0] * scale
            for j in range(1, visible):
                row_max = max(row_max, scores[m, i, j] * scale)
            total = _exp_into(scores[m, i], scale, row_max, probs[m, i], visible, pow2_bits, fast)
            inv = 1.0 / total
            for j in range(visible):
                probs[m, i, j] *= inv
            for j in range(visible, num_keys):
                probs[m, i, j] = 0.0


@_kernel
def _causal_softmax_backward(dprobs, probs, scale, dscores):  # all (M, Tq, Tk)
    num_queries, num_keys = probs.shape[1], probs.shape[2]
    for m in prange(probs.shape[0]):
        for i in range(num_queries):
            visible = num_keys - num_queries + i + 1
            dot = 0.0
            for j in range(visible):
                dot += dprobs[m, i, j] * probs[m, i, j]
            for j in range(visible):
                dscores[m, i, j] = scale * probs[m, i, j] * (dprobs[m, i, j] - dot)
            for j in range(visible, num_keys):
                dscores[m, i, j] = 0.0


def _stack(x):
    """x (..., Tq, Tk) -> a contiguous (M, Tq, Tk) view."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-2], x.shape[-1])


def causal_softmax_forward(scores, scale):
    """Masked, scaled softmax over the keys each query may see (see numpy_ref)."""
    s = _stack(scores)
    probs = np.empty_like(s)
    _causal_softmax_forward(s, s.dtype.type(scale), probs, s.dtype == np.float32)
    return probs.reshape(scores.shape)


def causal_softmax_backward(dprobs, probs, scale):
    """d scores from d probs, visible entries only; the masked ones are 0 (see numpy_ref)."""
    p = _stack(probs)
    dscores = np.empty_like(p)
    _causal_softmax_backward(_stack(dprobs), p, p.dtype.type(scale), dscores)
    return dscores.reshape(probs.shape)


# ----------------------------------------------------------------------------- layernorm


@_kernel
def _layernorm_forward_rows(x, weight, bias, eps, out, mean, rstd):  # x, out: (N, C); mean, rstd: (N,)
    channels = x.shape[1]
    for i in prange(x.shape[0]):
        total = 0.0
        for j in range(channels):
            total += x[i, j]
        mu = total / channels
        sq = 0.0
        for j in range(channels):
            d = x[i, j] - mu
            sq += d * d
        r = 1.0 / math.sqrt(sq / channels + eps)
        for j in range(channels):
            out[i, j] = (x[i, j] - mu) * r * weight[j] + bias[j]
        mean[i] = mu
        rstd[i] = r


@_kernel
def _layernorm_backward_rows(dout, x, weight, mean, rstd, dx, dweight_parts, dbias_parts):
    """dx (N, C) row by row; the (N, C) -> (C,) sums of dweight and dbias go into one partial
    row per chunk of rows (dweight_parts, dbias_parts: (chunks, C), float64), summed after."""
    rows, channels = x.shape
    chunks = dweight_parts.shape[0]
    for c in prange(chunks):
        for i in range(c * rows // chunks, (c + 1) * rows // chunks):
            mu, r = mean[i], rstd[i]
            g_mean = 0.0
            gx_mean = 0.0
            for j in range(channels):
                xhat = (x[i, j] - mu) * r
                g = dout[i, j] * weight[j]
                g_mean += g
                gx_mean += g * xhat
                dweight_parts[c, j] += dout[i, j] * xhat
                dbias_parts[c, j] += dout[i, j]
            g_mean /= channels
            gx_mean /= channels
            for j in range(channels):
                xhat = (x[i, j] - mu) * r
                dx[i, j] = r * (dout[i, j] * weight[j] - g_mean - xhat * gx_mean)


def _num_chunks(rows):
    """How many partial-sum rows a reduction over rows uses: enough to keep every thread busy,
    few enough that summing them afterwards costs nothing."""
    return max(1, min(rows, 16))


def layernorm_forward(x, weight, bias, eps=1e-5):
    """-> out (..., C), mean (...), rstd (...) (see numpy_ref)."""
    rows = _rows(x)
    out = np.empty_like(rows)
    mean = np.empty(rows.shape[0], dtype=x.dtype)
    rstd = np.empty(rows.shape[0], dtype=x.dtype)
    _layernorm_forward_rows(rows, weight, bias, x.dtype.type(eps), out, mean, rstd)
    return out.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def layernorm_backward(dout, x, weight, mean, rstd):
    """-> dx (..., C), dweight (C,), dbias (C,) (see numpy_ref)."""
    rows = _rows(x)
    dx = np.empty_like(rows)
    chunks = _num_chunks(rows.shape[0])
    dweight_parts = np.zeros((chunks, rows.shape[1]))
    dbias_parts = np.zeros((chunks, rows.shape[1]))
    _layernorm_backward_rows(_rows(dout), rows, weight, mean.reshape(-1), rstd.reshape(-1), dx,
                             dweight_parts, dbias_parts)
    dtype = x.dtype
    return dx.reshape(x.shape), dweight_parts.sum(axis=0).astype(dtype), dbias_parts.sum(axis=0).astype(dtype)


# ----------------------------------------------------------------------------- RMSNorm


@_kernel
def _rmsnorm_forward_rows(x, weight, eps, out, rstd):  # x, out: (N, C); weight: (C,); rstd: (N,)
    channels = x.shape[1]
    for i in prange(x.shape[0]):
        sq = 0.0
        for j in range(channels):
            v = np.float64(x[i, j])
            sq += v * v
        rstd[i] = 1.0 / math.sqrt(sq / channels + eps)
        r = rstd[i]  # read back in the data dtype: a float32 row stays float32 (8 lanes, not 4)
        for j in range(channels):
            out[i, j] = x[i, j] * r * weight[j]


@_kernel
def _rmsnorm_backward_rows(dout, x, weight, rstd, dx, dweight_parts):
    """dx (N, C) row by row; the (N, C) -> (C,) sum of dweight goes into one partial row per
    chunk of rows (dweight_parts: (chunks, C), float64), summed after."""
    rows, channels = x.shape
    chunks = dweight_parts.shape[0]
    for c in prange(chunks):
        scratch = np.empty(1, dtype=dx.dtype)  # rounds the row's mean to the data dtype, as numpy_ref
        for i in range(c * rows // chunks, (c + 1) * rows // chunks):
            r = rstd[i]
            gx_sum = 0.0
            for j in range(channels):
                xhat = x[i, j] * r
                gx_sum += dout[i, j] * weight[j] * xhat
                dweight_parts[c, j] += dout[i, j] * xhat
            scratch[0] = gx_sum / channels
            gx_mean = scratch[0]  # float32 for float32 rows: the loop below stays 8 lanes wide
            for j in range(channels):
                dx[i, j] = r * (dout[i, j] * weight[j] - x[i, j] * r * gx_mean)


def rmsnorm_forward(x, weight, eps=1e-5):
    """-> out (..., C), rstd (...) (see numpy_ref)."""
    rows = _rows(x)
    out = np.empty_like(rows)
    rstd = np.empty(rows.shape[0], dtype=x.dtype)
    _rmsnorm_forward_rows(rows, np.ascontiguousarray(weight), x.dtype.type(eps), out, rstd)
    return out.reshape(x.shape), rstd.reshape(x.shape[:-1])


def rmsnorm_backward(dout, x, weight, rstd):
    """-> dx (..., C), dweight (C,) (see numpy_ref)."""
    rows = _rows(x)
    dx = np.empty_like(rows)
    dweight_parts = np.zeros((_num_chunks(rows.shape[0]), rows.shape[1]))
    _rmsnorm_backward_rows(np.ascontiguousarray(dout, dtype=x.dtype).reshape(rows.shape), rows,
                           np.ascontiguousarray(weight), np.ascontiguousarray(rstd).reshape(-1), dx, dweight_parts)
    return dx.reshape(x.shape), dweight_parts.sum(axis=0).astype(x.dtype)


# ----------------------------------------------------------------------------- RoPE


@_kernel
def _rope_rows(x, cos, sin, sign, out):
    """x, out: (M, T, hd); cos, sin: (T, hd/2). Rotates each pair (channel i, channel i + hd/2)
    of row t by the angle of t (sign = 1) or by minus it (sign = -1: the backward)."""
    half = cos.shape[1]
    for m in prange(x.shape[0]):
        for t in range(x.shape[1]):
            # 1-D views of the row and its tables: the loop over pairs then vectorises (indexing
            # the 3-D arrays inside it measured 3.5x slower)
            xr, o, c, s = x[m, t], out[m, t], cos[t], sin[t]
            for i in range(half):
                x1, x2, si = xr[i], xr[half + i], sign * s[i]
                o[i] = x1 * c[i] - x2 * si
                o[half + i] = x2 * c[i] + x1 * si


def _rope(x, cos, sin, sign):
    """x (..., T, hd) -> x rotated by sign * angle, (..., T, hd); checks the table shapes,
    which the kernel trusts."""
    shape = x.shape
    table = (shape[-2], shape[-1] // 2) if len(shape) >= 2 else None
    if table is None or shape[-1] % 2 or np.shape(cos) != table or np.shape(sin) != table:
        raise ValueError(f"rope: x (..., T, hd) with even hd needs cos and sin of shape (T, hd/2); got x {shape}, "
                         f"cos {np.shape(cos)}, sin {np.shape(sin)}")
    stack = np.ascontiguousarray(x).reshape(-1, shape[-2], shape[-1])
    out = np.empty_like(stack)
    _rope_rows(stack, np.ascontiguousarray(cos, dtype=x.dtype), np.ascontiguousarray(sin, dtype=x.dtype),
               x.dtype.type(sign), out)
    return out.reshape(shape)


def rope_forward(x, cos, sin):
    """Rotary position embedding, half-split pairs (see numpy_ref)."""
    return _rope(x, cos, sin, 1)


def rope_backward(dout, cos, sin):
    """The rotation by minus the angle (see numpy_ref)."""
    return _rope(dout, cos, sin, -1)


# ----------------------------------------------------------------------------- GELU


@_inline
def _tanh_float32(x):
    """tanh for float32: a 13/6 rational polynomial (Eigen's ptanh_float) inside the clamp,
    exactly +-1 beyond it (the polynomial gives 0.99999976 there, and GELU's backward multiplies
    1 - t^2 by a factor growing like x^3: large inputs got gradients off by 2.5% at x=100)."""
    c = np.float32(_TANH_CLAMP)
    if x >= c:
        return np.float32(1.0)
    if x <= -c:
        return np.float32(-1.0)
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return x * p / q


@_kernel
def _gelu_forward_float32(x, out):  # x, out: (n,) float32
    s, c, half, one = np.float32(GELU_SCALE), np.float32(GELU_CUBIC), np.float32(0.5), np.float32(1.0)
    for i in prange(x.size):
        v = x[i]
        out[i] = half * v * (one + _tanh_float32(s * (v + c * v * v * v)))


@_kernel
def _gelu_backward_float32(dout, x, dx):  # all (n,) float32
    s, c, half, one = np.float32(GELU_SCALE), np.float32(GELU_CUBIC), np.float32(0.5), np.float32(1.0)
    c3 = np.float32(3.0 * GELU_CUBIC)
    for i in prange(x.size):
        v = x[i]
        t = _tanh_float32(s * (v + c * v * v * v))
        dx[i] = dout[i] * (half * (one + t) + half * v * (one - t * t) * s * (one + c3 * v * v))


@_kernel
def _gelu_forward_exact(x, out):  # float64 (or any dtype): math.tanh
    for i in prange(x.size):
        v = x[i]
        out[i] = 0.5 * v * (1.0 + math.tanh(GELU_SCALE * (v + GELU_CUBIC * v * v * v)))


@_kernel
def _gelu_backward_exact(dout, x, dx):
    for i in prange(x.size):
        v = x[i]
        t = math.tanh(GELU_SCALE * (v + GELU_CUBIC * v * v * v))
        dx[i] = dout[i] * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * v * v))


def gelu_forward(x):
    """GELU, tanh form, elementwise (see numpy_ref)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    (_gelu_forward_float32 if x.dtype == np.float32 else _gelu_forward_exact)(flat, out)
    return out.reshape(x.shape)


def gelu_backward(dout, x):
    """dout * GELU'(x), elementwise (see numpy_ref)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    dx = np.empty_like(flat)
    kernel = _gelu_backward_float32 if x.dtype == np.float32 else _gelu_backward_exact
    kernel(np.ascontiguousarray(dout, dtype=x.dtype).reshape(-1), flat, dx)
    return dx.reshape(x.shape)


# ----------------------------------------------------------------------------- SwiGLU

# sigmoid(g) from e = exp(-|g|) <= 1, as numpy_ref: 1 / (1 + e) for g >= 0, e / (1 + e) below.
# Nothing can overflow, nothing cancels (the tanh form (1 + tanh(g / 2)) / 2 would lose the far
# tail: a float32 sigmoid(-16) keeps one significant digit), far out s is exactly 0 or 1, so
# silu(-1000) is 0 and not NaN, and NaN stays NaN. float32 takes a vectorisable exp (below), float64 math.exp.
_SIGMOID_CHUNK = 2048  # float32 elements per pass of the exp: its two scratch rows stay in L1.
# The scratch is allocated per chunk: allocating it once per block of 12 chunks measured 5x
# slower (0.95 against 0.18 ms at (768, 512)).


@_inline
def _exp_minus_abs_float32(x, start, count, mant, pow2_bits):
    """exp(-|x[start + j]|) = mant[j] * pow2[j] for j < count; returns pow2, the int32 scratch
    pow2_bits viewed as float32. The float32 exp of ``_exp_into`` (Cody-Waite reduction, a
    degree-6 polynomial, 2^n written into the exponent bits), within 2 float32 ulp; arguments
    below -87 count as -87 (the caller zeroes those)."""
    for j in range(count):
        t = max(-abs(x[start + j]), np.float32(-87.0))
        n = np.floor(t * np.float32(_LOG2E) + np.float32(0.5))
        r = (t - n * np.float32(_LN2_HI)) - n * np.float32(_LN2_LO)
        mant[j] = np.float32(1.0) + r * (np.float32(1.0) + r * (np.float32(1 / 2) + r * (np.float32(1 / 6) + r * (
            np.float32(1 / 24) + r * (np.float32(1 / 120) + r * np.float32(1 / 720))))))
        pow2_bits[j] = (np.int32(n) + np.int32(127)) << np.int32(23)
    return pow2_bits.view(np.float32)


@_inline
def _sigmoid_float32(g, e):
    """sigmoid(g) from e = exp(-|g|) (clamped at -87): exactly 0 below -87; NaN stays NaN."""
    zero, one = np.float32(0.0), np.float32(1.0)
    e = zero if g < np.float32(-87.0) else e
    return (one if g >= zero else e) / (one + e)


@_inline
def _sigmoid_exact(g):
    e = math.exp(-abs(g))
    return (1.0 if g >= 0.0 else e) / (1.0 + e)


@_kernel
def _swiglu_forward_float32(gate, up, out):  # all (n,) float32
    n = gate.size
    for c in prange((n + _SIGMOID_CHUNK - 1) // _SIGMOID_CHUNK):
        mant, pow2_bits = np.empty(_SIGMOID_CHUNK, np.float32), np.empty(_SIGMOID_CHUNK, np.int32)
        start = c * _SIGMOID_CHUNK
        count = min(_SIGMOID_CHUNK, n - start)
        pow2 = _exp_minus_abs_float32(gate, start, count, mant, pow2_bits)
        for j in range(count):
            g = gate[start + j]
            out[start + j] = g * _sigmoid_float32(g, mant[j] * pow2[j]) * up[start + j]


@_kernel
def _swiglu_backward_float32(dout, gate, up, dgate, dup):  # all (n,) float32
    n = gate.size
    one = np.float32(1.0)
    for c in prange((n + _SIGMOID_CHUNK - 1) // _SIGMOID_CHUNK):
        mant, pow2_bits = np.empty(_SIGMOID_CHUNK, np.float32), np.empty(_SIGMOID_CHUNK, np.int32)
        start = c * _SIGMOID_CHUNK
        count = min(_SIGMOID_CHUNK, n - start)
        pow2 = _exp_minus_abs_float32(gate, start, count, mant, pow2_bits)
        for j in range(count):
            i = start + j
            g = gate[i]
            s = _sigmoid_float32(g, mant[j] * pow2[j])
            dgate[i] = dout[i] * up[i] * s * (one + g * (one - s))
            dup[i] = dout[i] * g * s


@_kernel
def _swiglu_forward_exact(gate, up, out):  # float64 (or any dtype): math.exp
    for i in prange(gate.size):
        g = gate[i]
        out[i] = g * _sigmoid_exact(g) * up[i]


@_kernel
def _swiglu_backward_exact(dout, gate, up, dgate, dup):
    for i in prange(gate.size):
        g = gate[i]
        s = _sigmoid_exact(g)
        dgate[i] = dout[i] * up[i] * s * (1.0 + g * (1.0 - s))
        dup[i] = dout[i] * g * s


def _flat(x, dtype):
    """x (...) -> a C-contiguous 1-D array of dtype (a copy only when needed)."""
    return np.ascontiguousarray(x, dtype=dtype).reshape(-1)


def swiglu_forward(gate, up):
    """silu(gate) * up, elementwise (see numpy_ref)."""
    flat = _flat(gate, gate.dtype)
    out = np.empty_like(flat)
    (_swiglu_forward_float32 if gate.dtype == np.float32 else _swiglu_forward_exact)(flat, _flat(up, gate.dtype), out)
    return out.reshape(gate.shape)


def swiglu_backward(dout, gate, up):
    """-> dgate, dup (...) (see numpy_ref)."""
    flat = _flat(gate, gate.dtype)
    dgate, dup = np.empty_like(flat), np.empty_like(flat)
    kernel = _swiglu_backward_float32 if gate.dtype == np.float32 else _swiglu_backward_exact
    kernel(_flat(dout, gate.dtype), flat, _flat(up, gate.dtype), dgate, dup)
    return dgate.reshape(gate.shape), dup.reshape(gate.shape)


# ----------------------------------------------------------------------------- cross-entropy


@_kernel
def _cross_entropy_forward_rows(logits, targets, ignore_index, losses, lse, fast):  # (N, V), (N,), ...
    for i in prange(logits.shape[0]):
        pow2_bits = np.empty(logits.shape[1], dtype=np.int32)
        exps = np.empty(logits.shape[1], dtype=logits.dtype)
        row_max = logits[i, 0]
        for j in range(1, logits.shape[1]):
            row_max = max(row_max, logits[i, j])
        total = _exp_into(logits[i], 1.0, row_max, exps, logits.shape[1], pow2_bits, fast)
        log_norm = row_max + math.log(total)
        lse[i] = log_norm
        losses[i] = 0.0 if targets[i] == ignore_index else log_norm - logits[i, targets[i]]


@_kernel
def _cross_entropy_backward_rows(dlosses, logits, targets, lse, ignore_index, dlogits, fast):
    for i in prange(logits.shape[0]):
        if targets[i] == ignore_index:
            for j in range(logits.shape[1]):
                dlogits[i, j] = 0.0
            continue
        pow2_bits = np.empty(logits.shape[1], dtype=np.int32)
        scale = dlosses[i]
        _exp_into(logits[i], 1.0, lse[i], dlogits[i], logits.shape[1], pow2_bits, fast)  # the softmax row
        for j in range(logits.shape[1]):
            dlogits[i, j] *= scale
        dlogits[i, targets[i]] -= scale


def cross_entropy_forward(logits, targets, ignore_index):
    """-> losses (N,), logsumexp (N,) (see numpy_ref)."""
    rows = _rows(logits)
    losses = np.empty(rows.shape[0], dtype=logits.dtype)
    lse = np.empty(rows.shape[0], dtype=logits.dtype)
    _cross_entropy_forward_rows(rows, np.ascontiguousarray(targets, dtype=np.int64), ignore_index, losses, lse,
                                rows.dtype == np.float32)
    return losses, lse


def cross_entropy_backward(dlosses, logits, targets, lse, ignore_index):
    """-> dlogits (N, V) = (softmax - onehot) * dlosses, 0 on ignored rows (see numpy_ref)."""
    rows = _rows(logits)
    dlogits = np.empty_like(rows)
    _cross_entropy_backward_rows(np.ascontiguousarray(dlosses, dtype=logits.dtype), rows,
                                 np.ascontiguousarray(targets, dtype=np.int64), lse, ignore_index, dlogits,
                                 rows.dtype == np.float32)
    return dlogits


# ----------------------------------------------------------------------------- embedding


@_serial_kernel
def _scatter_add_rows(dout, ids, dtable):  # dout (N, C), ids (N,), dtable (V, C)
    for n in range(ids.shape[0]):
        row = ids[n]
        for j in range(dout.shape[1]):
            dtable[row, j] += dout[n, j]


def embedding_backward(dout, ids, num_embeddings):
    """Scatter-add of dout (N, C) rows into a (num_embeddings, C) table (see numpy_ref).
    Serial: rows of the table collide, and the pass is tiny next to the matmuls."""
    rows = _rows(dout)
    dtable = np.zeros((num_embeddings, rows.shape[1]), dtype=dout.dtype)
    _scatter_add_rows(rows, np.ascontiguousarray(ids, dtype=np.int64), dtable)
    return dtable


# ----------------------------------------------------------------------------- optimizer


@_kernel
def _adamw_step(param, grad, m, v, lr, beta1, beta2, eps, decay, bias1, bias2, scale):  # all (n,)
    for i in prange(param.size):
        g = grad[i] * scale  # training's grad_scale, fused: no scaled copy of the gradient
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        param[i] = param[i] * decay - lr * (mi / bias1) / (math.sqrt(vi / bias2) + eps)


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """AdamW in one pass over param, grad, m and v, in place (see numpy_ref)."""
    _adamw(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, 1.0)


def adamw_step_scaled(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, applied_steps, grad_scale):
    """adamw_step on grad * grad_scale, the scale fused into the kernel (see numpy_ref); on the
    host the two scalars cost nothing to read, and grad_scale 0 skips the step."""
    scale = param.dtype.type(grad_scale)
    if scale != 0:
        _adamw(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, int(applied_steps), scale)


def _adamw(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, scale):
    """The kernel on grad * scale; numpy_ref's adamw_step where the arrays are not contiguous."""
    if not (param.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
        grad = grad if scale == 1 else grad.astype(param.dtype) * scale
        return numpy_ref.adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)
    f = param.dtype.type
    _adamw_step(param.reshape(-1), np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1),
                m.reshape(-1), v.reshape(-1), f(lr), f(beta1), f(beta2), f(eps), f(1.0 - lr * weight_decay),
                f(1.0 - beta1**step), f(1.0 - beta2**step), f(scale))


@_kernel
def _sum_of_squares(x):  # x: (n,)
    total = 0.0
    for i in prange(x.size):
        total += np.float64(x[i]) * np.float64(x[i])
    return total


def sum_of_squares(x):
    """sum(x^2) in float64, one pass, no temporary (see numpy_ref)."""
    return np.float64(_sum_of_squares(np.ascontiguousarray(x).reshape(-1)))
