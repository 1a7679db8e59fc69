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
- The fused attention (flash_attention_*) never holds a (Tq, Tk) array: blocks of queries
  against the visible blocks of keys, an online softmax; its products accumulate in the data's
  dtype (as BLAS does), its softmax sums in float64. Its scratch comes from the wrapper.

Shapes: ``...`` is any number of leading axes; wrappers flatten them to rows (N, C) (RoPE: to
(M, T, hd), M the leading axes). Outputs take the dtype of x (of gate for SwiGLU).
"""

import math
import os

import numba
import numpy as np
from numba import njit, prange

from nanollm.backends import numpy_ref

FASTMATH = {"reassoc", "contract", "arcp", "nsz"}  # no "nnan"/"ninf": NaN and Inf propagate
# Serial by default: OpenBLAS already keeps both cores busy in the matmuls, and a second thread
# pool fighting it for them made the train step slower (BENCHMARKS.md, "thread sharing").
# NANOLLM_NUMBA_PARALLEL=1 compiles the prange loops multi-threaded, to measure that again.
# nogil: the kernels release the GIL, so batch shards (nanollm.shards) run them on every core at once.
PARALLEL = os.environ.get("NANOLLM_NUMBA_PARALLEL") == "1"
_kernel = njit(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=PARALLEL, nogil=True)
_serial_kernel = njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
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


# ----------------------------------------------------------------------------- fused causal attention
# FlashAttention-2 on the CPU, per head: a block of FLASH_BLOCK_Q query rows at a time against
# the blocks of FLASH_BLOCK_K keys it may see. Key blocks wholly in the future are never
# visited, and in a block on the diagonal each row stops at its own last visible key. The
# softmax over the key blocks is online (a running max and sum per row; the output row is
# rescaled by exp(old max - new max) when the max grows), so no (Tq, Tk) array exists: the
# largest is the backward's (BQ, BK) block of probabilities. The backward recomputes the
# probabilities from the forward's log-sum-exp.
#
# The products are loops LLVM vectorises: a key block is transposed once into kt (hd, BK), so
# a row of scores is a sum of kt's rows weighted by the query's entries, and the output row a
# sum of value rows weighted by the probabilities; both are unrolled four terms at a time, so
# each pass over the accumulator row adds four products (1.5x faster than one at a time).
# They reach 25-30 GFLOP/s on one core, where BLAS reaches ~100: with OpenBLAS on one thread
# the unfused path (BLAS products over the full T x T, then the softmax) is still faster at
# T <= 1024 (`python -m nanollm.tools.attention_bench`); what the fused one wins is memory.
# Every scratch array comes from the wrapper, one set per thread (numba.get_thread_id()), so
# the kernels allocate nothing and the memory of a call is the wrapper's to see and test.

FLASH_BLOCK_Q = 64  # query rows per block
FLASH_BLOCK_K = 128  # keys per block (128 measured 1.2x faster than 64 at T = 1024; 256 no better)


@_inline
def _weighted_rows_into(w, count, x, mx, row0, out):
    """out[:] += sum_{c < count} w[c] * x[mx, row0 + c, :]: four rows of x per pass over out."""
    width = out.shape[0]
    c = 0
    while c + 4 <= count:
        w0, w1, w2, w3 = w[c], w[c + 1], w[c + 2], w[c + 3]
        j = row0 + c
        for d in range(width):
            out[d] += w0 * x[mx, j, d] + w1 * x[mx, j + 1, d] + w2 * x[mx, j + 2, d] + w3 * x[mx, j + 3, d]
        c += 4
    while c < count:
        wc, j = w[c], row0 + c
        for d in range(width):
            out[d] += wc * x[mx, j, d]
        c += 1


@_inline
def _scores_row(x, m, i, kt, count, row):
    """row[c] = x[m, i] . kt[:, c] for c < count (kt: a key block transposed, (hd, BK)):
    kt's rows weighted by x[m, i]'s entries, four per pass over row."""
    head_dim = x.shape[2]
    for c in range(count):
        row[c] = 0.0
    d = 0
    while d + 4 <= head_dim:
        x0, x1, x2, x3 = x[m, i, d], x[m, i, d + 1], x[m, i, d + 2], x[m, i, d + 3]
        for c in range(count):
            row[c] += x0 * kt[d, c] + x1 * kt[d + 1, c] + x2 * kt[d + 2, c] + x3 * kt[d + 3, c]
        d += 4
    while d < head_dim:
        xd = x[m, i, d]
        for c in range(count):
            row[c] += xd * kt[d, c]
        d += 1


@_inline
def _transpose_block(x, mx, row0, count, xt):
    """xt[:, :count] = x[mx, row0 : row0 + count, :].T."""
    for c in range(count):
        for d in range(x.shape[2]):
            xt[d, c] = x[mx, row0 + c, d]


@_kernel
def _flash_attention_forward(q, k, v, scale, mask, has_mask, group, fast, out, lse, kt_s, row_s, max_s, sum_s,
                             bits_s):
    """q (M, Tq, hd), k and v (M / group, Tk, hd), mask (M, Tq, Tk) when has_mask ->
    out (M, Tq, hd) (zeros on entry: it is the accumulator), lse (M, Tq). Scratch per thread t:
    kt_s[t] (hd, BK), row_s[t] (BK,), max_s[t], sum_s[t] (BQ,) float64, bits_s[t] (BK,) int32."""
    heads, num_queries, head_dim = q.shape
    offset = k.shape[1] - num_queries  # query i sits at key position offset + i
    block_q, block_k = max_s.shape[1], row_s.shape[1]
    for m in prange(heads):
        t = numba.get_thread_id()
        kt, row, run_max, run_sum, bits = kt_s[t], row_s[t], max_s[t], sum_s[t], bits_s[t]
        mk = m // group  # the key/value head of query head m
        for i0 in range(0, num_queries, block_q):
            rows = min(block_q, num_queries - i0)
            for r in range(rows):
                run_max[r] = -np.inf
                run_sum[r] = 0.0
            end = offset + i0 + rows  # the block's last row sees keys 0 .. end - 1
            for j0 in range(0, end, block_k):
                cols = min(block_k, end - j0)
                _transpose_block(k, mk, j0, cols, kt)
                for r in range(rows):
                    i = i0 + r
                    count = min(cols, offset + i + 1 - j0)  # this row's visible keys in the block
                    if count <= 0:
                        continue
                    _scores_row(q, m, i, kt, count, row)
                    block_max = row[0] * scale
                    for c in range(1, count):
                        block_max = max(block_max, row[c] * scale)
                    new_max = max(run_max[r], block_max)
                    correction = math.exp(run_max[r] - new_max)  # 0 at the first block (max -inf)
                    # row <- exp(scale * scores - new_max), the block's unnormalised probabilities
                    run_sum[r] = run_sum[r] * correction + _exp_into(row, scale, new_max, row, count, bits, fast)
                    run_max[r] = new_max
                    if has_mask:  # dropout weighs the values with the dropped probabilities
                        for c in range(count):
                            row[c] *= mask[m, i, j0 + c]
                    acc = out[m, i]
                    for d in range(head_dim):
                        acc[d] *= correction
                    _weighted_rows_into(row, count, v, mk, j0, acc)
            for r in range(rows):
                inv = 1.0 / run_sum[r]
                for d in range(head_dim):
                    out[m, i0 + r, d] *= inv
                lse[m, i0 + r] = run_max[r] + math.log(run_sum[r])


@_kernel
def _flash_attention_backward(dout, q, k, v, out, lse, scale, mask, has_mask, group, fast, dq, dk, dv, kt_s, vt_s,
                              p_s, pd_s, ds_s, delta_s, bits_s):
    """dout, q, out (M, Tq, hd), k, v (M / group, Tk, hd), lse (M, Tq) -> dq (M, Tq, hd),
    dk, dv (M / group, Tk, hd), all zeros on entry. One prange iteration per key/value head,
    looping over its group's query heads, so its dk and dv rows have one writer. Scratch per
    thread t: kt_s[t], vt_s[t] (hd, BK), p_s[t], pd_s[t], ds_s[t] (BQ, BK) (P, P * mask, dS),
    delta_s[t] (BQ,) float64, bits_s[t] (BK,) int32."""
    heads, num_queries, head_dim = q.shape
    offset = k.shape[1] - num_queries
    block_q, block_k = delta_s.shape[1], kt_s.shape[2]
    for mk in prange(k.shape[0]):
        t = numba.get_thread_id()
        kt, vt, probs, dropped, dscores = kt_s[t], vt_s[t], p_s[t], pd_s[t], ds_s[t]
        delta, bits = delta_s[t], bits_s[t]
        if not has_mask:
            dropped = probs
        for m in range(mk * group, (mk + 1) * group):
            for i0 in range(0, num_queries, block_q):
                rows = min(block_q, num_queries - i0)
                for r in range(rows):  # D = rowsum(dout * out) = rowsum(P * dP)
                    total = 0.0
                    for d in range(head_dim):
                        total += dout[m, i0 + r, d] * out[m, i0 + r, d]
                    delta[r] = total
                end = offset + i0 + rows
                for j0 in range(0, end, block_k):
                    cols = min(block_k, end - j0)
                    _transpose_block(k, mk, j0, cols, kt)
                    _transpose_block(v, mk, j0, cols, vt)
                    first = max(0, j0 - offset - i0)  # rows before it see none of this block
                    for r in range(first, rows):
                        i = i0 + r
                        count = min(cols, offset + i + 1 - j0)
                        p, pd, ds = probs[r], dropped[r], dscores[r]
                        _scores_row(q, m, i, kt, count, p)
                        _exp_into(p, scale, lse[m, i], p, count, bits, fast)  # P, rebuilt from lse
                        _scores_row(dout, m, i, vt, count, ds)  # dP = dout v^T (of the dropped P)
                        if has_mask:
                            for c in range(count):
                                pd[c] = p[c] * mask[m, i, j0 + c]
                                ds[c] *= mask[m, i, j0 + c]
                        for c in range(count):  # dS = P * (dP - D), times the scale
                            ds[c] = p[c] * (ds[c] - delta[r]) * scale
                        _weighted_rows_into(ds, count, k, mk, j0, dq[m, i])  # dq += dS k
                    for c in range(cols):  # dk += dS^T q, dv += (P * mask)^T dout: rows that see key c
                        j = j0 + c
                        r = max(first, j - offset - i0)
                        while r + 4 <= rows:
                            i = i0 + r
                            s0, s1, s2, s3 = dscores[r, c], dscores[r + 1, c], dscores[r + 2, c], dscores[r + 3, c]
                            p0, p1, p2, p3 = dropped[r, c], dropped[r + 1, c], dropped[r + 2, c], dropped[r + 3, c]
                            for d in range(head_dim):
                                dk[mk, j, d] += (s0 * q[m, i, d] + s1 * q[m, i + 1, d] + s2 * q[m, i + 2, d]
                                                 + s3 * q[m, i + 3, d])
                                dv[mk, j, d] += (p0 * dout[m, i, d] + p1 * dout[m, i + 1, d] + p2 * dout[m, i + 2, d]
                                                 + p3 * dout[m, i + 3, d])
                            r += 4
                        while r < rows:
                            i = i0 + r
                            s0, p0 = dscores[r, c], dropped[r, c]
                            for d in range(head_dim):
                                dk[mk, j, d] += s0 * q[m, i, d]
                                dv[mk, j, d] += p0 * dout[m, i, d]
                            r += 1


def _flash_scratch(dtype, head_dim, *shapes):
    """One scratch array per (shape, dtype) in shapes, with a leading axis of one slot per
    thread that may run the kernel's prange (1 when PARALLEL is off); "dtype" stands for the
    data's dtype, "hd" for the head dimension.

    It also calls numba.get_thread_id() once from Python, which starts Numba's threading layer:
    a kernel loaded from the cache calls the layer's get_thread_id symbol, which nothing else
    provides before the layer starts (a kernel compiled in this process starts it at typing),
    and a call through the missing symbol is a segfault."""
    numba.get_thread_id()
    threads = numba.config.NUMBA_NUM_THREADS if PARALLEL else 1
    return [np.empty((threads,) + tuple(head_dim if n == "hd" else n for n in shape),
                     dtype=dtype if kind == "dtype" else kind) for shape, kind in shapes]


def _flash_inputs(q, k, v, mask):
    """Contiguous (M, Tq, hd) queries, (M / G, Tk, hd) keys and values, (M, Tq, Tk) mask (a
    (1, 1, 1) placeholder for None) in one float dtype, G, and that dtype."""
    if q.ndim != 5 or k.shape[2] != 1 or v.shape[:-1] != k.shape[:-1] or q.shape[:2] != k.shape[:2]:
        raise ValueError(f"flash attention needs q (B, H_kv, G, Tq, hd), k and v (B, H_kv, 1, Tk, hd); got q "
                         f"{q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[-2] > k.shape[-2]:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq of Tk keys), got "
                         f"{q.shape[-2]} > {k.shape[-2]}")
    dtype = np.result_type(q, k, v)
    qs = np.ascontiguousarray(q, dtype=dtype).reshape(-1, q.shape[-2], q.shape[-1])
    ks = np.ascontiguousarray(k, dtype=dtype).reshape(-1, k.shape[-2], k.shape[-1])
    vs = np.ascontiguousarray(v, dtype=dtype).reshape(-1, v.shape[-2], v.shape[-1])
    ms = (np.zeros((1, 1, 1), dtype=dtype) if mask is None
          else np.ascontiguousarray(mask, dtype=dtype).reshape(qs.shape[0], qs.shape[1], ks.shape[1]))
    return qs, ks, vs, ms, q.shape[2], dtype


def flash_attention_forward(q, k, v, scale, mask=None):
    """Fused causal attention -> out (B, H_kv, G, Tq, hd), lse (B, H_kv, G, Tq) (see numpy_ref):
    an online softmax over the visible key blocks; memory: the output, lse and a few blocks per thread."""
    qs, ks, vs, ms, group, dtype = _flash_inputs(q, k, v, mask)
    out = np.zeros(qs.shape[:2] + (vs.shape[-1],), dtype=dtype)
    lse = np.empty(qs.shape[:2], dtype=dtype)
    bq, bk = FLASH_BLOCK_Q, FLASH_BLOCK_K
    scratch = _flash_scratch(dtype, qs.shape[-1], (("hd", bk), "dtype"), ((bk,), "dtype"), ((bq,), np.float64),
                             ((bq,), np.float64), ((bk,), np.int32))
    _flash_attention_forward(qs, ks, vs, dtype.type(scale), ms, mask is not None, group, dtype == np.float32,
                             out, lse, *scratch)
    return out.reshape(q.shape[:-1] + (v.shape[-1],)), lse.reshape(q.shape[:-1])


def flash_attention_backward(dout, q, k, v, out, lse, scale, mask=None):
    """-> dq (B, H_kv, G, Tq, hd), dk, dv (B, H_kv, 1, Tk, hd) (see numpy_ref): P rebuilt from lse,
    FlashAttention-2's dS = P * (dP - rowsum(dout * out)); dk, dv summed over each group."""
    qs, ks, vs, ms, group, dtype = _flash_inputs(q, k, v, mask)
    douts = np.ascontiguousarray(dout, dtype=dtype).reshape(qs.shape[:2] + (vs.shape[-1],))
    outs = np.ascontiguousarray(out, dtype=dtype).reshape(douts.shape)
    lses = np.ascontiguousarray(lse, dtype=dtype).reshape(qs.shape[:2])
    dq, dk, dv = np.zeros_like(qs), np.zeros_like(ks), np.zeros_like(vs)
    bq, bk = FLASH_BLOCK_Q, FLASH_BLOCK_K
    scratch = _flash_scratch(dtype, qs.shape[-1], (("hd", bk), "dtype"), (("hd", bk), "dtype"), ((bq, bk), "dtype"),
                             ((bq, bk) if mask is not None else (1, 1), "dtype"), ((bq, bk), "dtype"),
                             ((bq,), np.float64), ((bk,), np.int32))
    _flash_attention_backward(douts, qs, ks, vs, outs, lses, dtype.type(scale), ms, mask is not None, group,
                              dtype == np.float32, dq, dk, dv, *scratch)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


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
