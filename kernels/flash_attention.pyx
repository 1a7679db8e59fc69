# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused causal attention (FlashAttention-2) forward and backward, one head at a time.

The same algorithm as numba_cpu's kernels, as C loops: per head, a block of BLOCK_Q query rows
against the blocks of BLOCK_K keys it may see (key blocks wholly in the future are skipped; on
the diagonal each row stops at its own last visible key), with an online softmax: a running
max and sum per row, the output row rescaled by exp(old max - new max) when the max grows. So
no (Tq, Tk) array exists; the forward keeps each row's log-sum-exp ``lse`` and the backward
rebuilds the probabilities P = exp(scale * q.k - lse) from it:

    dv += (P * mask)^T dout      dP = (dout v^T) * mask      D = rowsum(dout * out)
    dS = scale * P * (dP - D)    dq += dS k                  dk += dS^T q

Arrays: q, dout, out (M, Tq, hd) with M = (batch, kv head, group) flattened, k, v (M / group,
Tk, hd), lse (M, Tq), mask (M, Tq, Tk) (the dropout multiplier; any placeholder when has_mask
is false), all C-contiguous, one dtype (float or double, a fused type). out, dq, dk, dv must be
zeros on entry (they are the accumulators); cython_cpu.py allocates them. Query i sits at key
position Tk - Tq + i. Scratch (a few blocks) is malloc'ed per call; one core, no GIL.

The products are written as sums of rows (a key block is transposed once into kt (hd, BLOCK_K),
so a row of scores is kt's rows weighted by the query's entries), four terms per pass over the
accumulator row, which the compiler vectorises under setup.py's -O3 -fassociative-math.
float32 exp is fastmath.pxd's vectorisable one (its arguments here are <= 0: scores minus their
running max, or minus lse), float64 libc's exp. Row sums (the softmax normaliser, D) are double.
"""

from libc.math cimport INFINITY, exp, log
from libc.stdlib cimport free, malloc

from fastmath cimport exp_nonpositive_float32

ctypedef fused real:
    float
    double

cdef enum:
    BLOCK_Q = 64  # query rows per block
    BLOCK_K = 128  # keys per block


cdef inline real _exp(real x) noexcept nogil:
    """exp(x) for x <= 0 (up to rounding)."""
    if real is float:
        return exp_nonpositive_float32(x)
    else:
        return exp(x)


cdef inline void _transpose(const real* x, Py_ssize_t count, Py_ssize_t width, real* xt) noexcept nogil:
    """xt[d, c] = x[c, d] for c < count, d < width; xt is (width, BLOCK_K)."""
    cdef Py_ssize_t c, d
    for c in range(count):
        for d in range(width):
            xt[d * BLOCK_K + c] = x[c * width + d]


cdef inline void _scores_row(const real* x, const real* xt, Py_ssize_t width, Py_ssize_t count,
                             real* row) noexcept nogil:
    """row[c] = x . xt[:, c] for c < count: xt's rows weighted by x's entries, four per pass."""
    cdef Py_ssize_t c, d = 0
    cdef real x0, x1, x2, x3
    cdef const real* t0
    for c in range(count):
        row[c] = 0
    while d + 4 <= width:
        x0, x1, x2, x3 = x[d], x[d + 1], x[d + 2], x[d + 3]
        t0 = xt + d * BLOCK_K
        for c in range(count):
            row[c] += x0 * t0[c] + x1 * t0[BLOCK_K + c] + x2 * t0[2 * BLOCK_K + c] + x3 * t0[3 * BLOCK_K + c]
        d += 4
    while d < width:
        x0, t0 = x[d], xt + d * BLOCK_K
        for c in range(count):
            row[c] += x0 * t0[c]
        d += 1


cdef inline void _weighted_rows_into(const real* w, Py_ssize_t count, const real* x, Py_ssize_t width,
                                     real* out) noexcept nogil:
    """out[:width] += sum_{c < count} w[c] * x[c, :] (x: count rows of width), four rows per pass."""
    cdef Py_ssize_t c = 0, d
    cdef real w0, w1, w2, w3
    cdef const real* x0
    while c + 4 <= count:
        w0, w1, w2, w3 = w[c], w[c + 1], w[c + 2], w[c + 3]
        x0 = x + c * width
        for d in range(width):
            out[d] += w0 * x0[d] + w1 * x0[width + d] + w2 * x0[2 * width + d] + w3 * x0[3 * width + d]
        c += 4
    while c < count:
        w0, x0 = w[c], x + c * width
        for d in range(width):
            out[d] += w0 * x0[d]
        c += 1


cdef _check(tuple q, tuple k, tuple v, tuple mask, bint has_mask, Py_ssize_t group):
    if group < 1 or q[0] != k[0] * group or v != k or q[2] != k[2]:
        raise ValueError(f"flash attention: q {q}, k {k}, v {v} are not (M, Tq, hd), (M / {group}, Tk, hd) twice")
    if q[1] > k[1]:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq of Tk keys), got {q[1]} > {k[1]}")
    if has_mask and mask != (q[0], q[1], k[1]):
        raise ValueError(f"flash attention: mask {mask} is not (M, Tq, Tk) = {(q[0], q[1], k[1])}")


def flash_attention_forward(const real[:, :, ::1] q, const real[:, :, ::1] k, const real[:, :, ::1] v, double scale,
                            const real[:, :, ::1] mask, bint has_mask, Py_ssize_t group, real[:, :, ::1] out,
                            real[:, ::1] lse):
    """q (M, Tq, hd), k, v (M / group, Tk, hd) -> out (M, Tq, hd) (zeros on entry), lse (M, Tq)."""
    cdef Py_ssize_t heads = q.shape[0], tq = q.shape[1], hd = q.shape[2], tk = k.shape[1]
    cdef Py_ssize_t offset = tk - tq, m, mk, ib, jb, i0, j0, r, i, c, d, rows, cols, count, end
    cdef real s = <real>scale, block_max, e, mval
    cdef double new_max, correction, total
    cdef real* acc
    _check((heads, tq, hd), (k.shape[0], tk, k.shape[2]), (v.shape[0], v.shape[1], v.shape[2]),
           (mask.shape[0], mask.shape[1], mask.shape[2]), has_mask, group)
    if (out.shape[0], out.shape[1], out.shape[2]) != (heads, tq, hd) or (lse.shape[0], lse.shape[1]) != (heads, tq):
        raise ValueError("flash_attention_forward: out must be (M, Tq, hd) and lse (M, Tq)")
    cdef real* kt = <real*>malloc(hd * BLOCK_K * sizeof(real))
    cdef real* row = <real*>malloc(BLOCK_K * sizeof(real))
    cdef double* run_max = <double*>malloc(BLOCK_Q * sizeof(double))
    cdef double* run_sum = <double*>malloc(BLOCK_Q * sizeof(double))
    if not kt or not row or not run_max or not run_sum:
        free(kt); free(row); free(run_max); free(run_sum)
        raise MemoryError()
    with nogil:
        for m in range(heads):
            mk = m // group
            for ib in range((tq + BLOCK_Q - 1) // BLOCK_Q):
                i0 = ib * BLOCK_Q
                rows = min(<Py_ssize_t>BLOCK_Q, tq - i0)
                for r in range(rows):
                    run_max[r] = -INFINITY
                    run_sum[r] = 0.0
                end = offset + i0 + rows  # the block's last row sees keys 0 .. end - 1
                for jb in range((end + BLOCK_K - 1) // BLOCK_K):
                    j0 = jb * BLOCK_K
                    cols = min(<Py_ssize_t>BLOCK_K, end - j0)
                    _transpose(&k[mk, j0, 0], cols, hd, kt)
                    for r in range(rows):
                        i = i0 + r
                        count = min(cols, offset + i + 1 - j0)  # this row's visible keys in the block
                        if count <= 0:
                            continue
                        _scores_row(&q[m, i, 0], kt, hd, count, row)
                        block_max = row[0] * s
                        for c in range(1, count):
                            block_max = max(block_max, row[c] * s)
                        new_max = max(run_max[r], <double>block_max)
                        correction = exp(run_max[r] - new_max)  # 0 at the first block (max -inf)
                        mval = <real>new_max
                        total = 0.0
                        for c in range(count):  # the block's unnormalised probabilities
                            e = _exp(row[c] * s - mval)
                            row[c] = e
                            total += e
                        run_sum[r] = run_sum[r] * correction + total
                        run_max[r] = new_max
                        if has_mask:  # dropout weighs the values with the dropped probabilities
                            for c in range(count):
                                row[c] *= mask[m, i, j0 + c]
                        acc = &out[m, i, 0]
                        for d in range(hd):
                            acc[d] *= <real>correction
                        _weighted_rows_into(row, count, &v[mk, j0, 0], hd, acc)
                for r in range(rows):
                    acc = &out[m, i0 + r, 0]
                    for d in range(hd):
                        acc[d] *= <real>(1.0 / run_sum[r])
                    lse[m, i0 + r] = <real>(run_max[r] + log(run_sum[r]))
    free(kt); free(row); free(run_max); free(run_sum)


def flash_attention_backward(const real[:, :, ::1] dout, const real[:, :, ::1] q, const real[:, :, ::1] k,
                             const real[:, :, ::1] v, const real[:, :, ::1] out, const real[:, ::1] lse, double scale,
                             const real[:, :, ::1] mask, bint has_mask, Py_ssize_t group, real[:, :, ::1] dq,
                             real[:, :, ::1] dk, real[:, :, ::1] dv):
    """-> dq (M, Tq, hd), dk, dv (M / group, Tk, hd), all zeros on entry (see the module docstring)."""
    cdef Py_ssize_t heads = q.shape[0], tq = q.shape[1], hd = q.shape[2], tk = k.shape[1]
    cdef Py_ssize_t offset = tk - tq, m, mk, ib, jb, i0, j0, r, i, j, c, d, rows, cols, count, end, first
    cdef real s = <real>scale, lse_i, s0, s1, s2, s3, p0, p1, p2, p3
    cdef double total
    cdef real *p
    cdef real *pd
    cdef real *ds
    cdef real *dkj
    cdef real *dvj
    cdef const real *qi
    cdef const real *gi
    shape = (heads, tq, hd)
    _check(shape, (k.shape[0], tk, k.shape[2]), (v.shape[0], v.shape[1], v.shape[2]),
           (mask.shape[0], mask.shape[1], mask.shape[2]), has_mask, group)
    for name, x in (("dout", dout), ("out", out), ("dq", dq)):
        if (x.shape[0], x.shape[1], x.shape[2]) != shape:
            raise ValueError(f"flash_attention_backward: {name} must be (M, Tq, hd) = {shape}")
    for name, x in (("dk", dk), ("dv", dv)):
        if (x.shape[0], x.shape[1], x.shape[2]) != (k.shape[0], tk, hd):
            raise ValueError(f"flash_attention_backward: {name} must be (M / group, Tk, hd)")
    if (lse.shape[0], lse.shape[1]) != (heads, tq):
        raise ValueError("flash_attention_backward: lse must be (M, Tq)")
    cdef real* kt = <real*>malloc(hd * BLOCK_K * sizeof(real))
    cdef real* vt = <real*>malloc(hd * BLOCK_K * sizeof(real))
    cdef real* probs = <real*>malloc(BLOCK_Q * BLOCK_K * sizeof(real))  # P of the block, row r at r * BLOCK_K
    cdef real* dropped = <real*>malloc(BLOCK_Q * BLOCK_K * sizeof(real))  # P * mask (P itself without dropout)
    cdef real* dscores = <real*>malloc(BLOCK_Q * BLOCK_K * sizeof(real))  # dP, then dS
    cdef double* delta = <double*>malloc(BLOCK_Q * sizeof(double))
    if not kt or not vt or not probs or not dropped or not dscores or not delta:
        free(kt); free(vt); free(probs); free(dropped); free(dscores); free(delta)
        raise MemoryError()
    cdef real* weights = dropped if has_mask else probs
    with nogil:
        for m in range(heads):
            mk = m // group
            for ib in range((tq + BLOCK_Q - 1) // BLOCK_Q):
                i0 = ib * BLOCK_Q
                rows = min(<Py_ssize_t>BLOCK_Q, tq - i0)
                for r in range(rows):  # D = rowsum(dout * out) = rowsum(P * dP)
                    total = 0.0
                    for d in range(hd):
                        total += <double>dout[m, i0 + r, d] * out[m, i0 + r, d]
                    delta[r] = total
                end = offset + i0 + rows
                for jb in range((end + BLOCK_K - 1) // BLOCK_K):
                    j0 = jb * BLOCK_K
                    cols = min(<Py_ssize_t>BLOCK_K, end - j0)
                    _transpose(&k[mk, j0, 0], cols, hd, kt)
                    _transpose(&v[mk, j0, 0], cols, hd, vt)
                    first = max(<Py_ssize_t>0, j0 - offset - i0)  # rows before it see none of this block
                    for r in range(first, rows):
                        i = i0 + r
                        count = min(cols, offset + i + 1 - j0)
                        p, pd, ds = probs + r * BLOCK_K, dropped + r * BLOCK_K, dscores + r * BLOCK_K
                        _scores_row(&q[m, i, 0], kt, hd, count, p)
                        lse_i = lse[m, i]
                        for c in range(count):  # P, rebuilt from lse
                            p[c] = _exp(p[c] * s - lse_i)
                        _scores_row(&dout[m, i, 0], vt, hd, count, ds)  # dP = dout v^T (of the dropped P)
                        if has_mask:
                            for c in range(count):
                                pd[c] = p[c] * mask[m, i, j0 + c]
                                ds[c] = ds[c] * mask[m, i, j0 + c]
                        for c in range(count):  # dS = P * (dP - D), times the scale
                            ds[c] = p[c] * (ds[c] - <real>delta[r]) * s
                        _weighted_rows_into(ds, count, &k[mk, j0, 0], hd, &dq[m, i, 0])  # dq += dS k
                    for c in range(cols):  # dk += dS^T q, dv += (P * mask)^T dout: rows that see key c
                        j = j0 + c
                        dkj, dvj = &dk[mk, j, 0], &dv[mk, j, 0]
                        r = max(first, j - offset - i0)
                        while r + 4 <= rows:
                            qi, gi = &q[m, i0 + r, 0], &dout[m, i0 + r, 0]
                            s0, s1 = dscores[r * BLOCK_K + c], dscores[(r + 1) * BLOCK_K + c]
                            s2, s3 = dscores[(r + 2) * BLOCK_K + c], dscores[(r + 3) * BLOCK_K + c]
                            p0, p1 = weights[r * BLOCK_K + c], weights[(r + 1) * BLOCK_K + c]
                            p2, p3 = weights[(r + 2) * BLOCK_K + c], weights[(r + 3) * BLOCK_K + c]
                            for d in range(hd):
                                dkj[d] += s0 * qi[d] + s1 * qi[hd + d] + s2 * qi[2 * hd + d] + s3 * qi[3 * hd + d]
                                dvj[d] += p0 * gi[d] + p1 * gi[hd + d] + p2 * gi[2 * hd + d] + p3 * gi[3 * hd + d]
                            r += 4
                        while r < rows:
                            qi, gi = &q[m, i0 + r, 0], &dout[m, i0 + r, 0]
                            s0, p0 = dscores[r * BLOCK_K + c], weights[r * BLOCK_K + c]
                            for d in range(hd):
                                dkj[d] += s0 * qi[d]
                                dvj[d] += p0 * gi[d]
                            r += 1
    free(kt); free(vt); free(probs); free(dropped); free(dscores); free(delta)
