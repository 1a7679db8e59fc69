# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Softmax kernels: causal (masked) attention softmax, fused softmax cross-entropy.

Each function takes C-contiguous float32 or float64 arrays of one dtype (a Cython fused type
picks the C specialisation at call time) and writes into output arrays the caller allocates;
``nanollm/backends/cython_cpu.py`` does the reshaping, dtype checks and allocation. Loops run
without the GIL, one row at a time, so a row is read from memory once and its later sweeps
find it in the L1 cache.

- The row max is subtracted before exp, so exp never overflows.
- Normalisers (sum of exp, sum of dp * p) accumulate in double, also for float32 data.
- float32 uses expf, float64 exp (libc); NaN propagates (no -ffast-math).
- The causal softmax never reads or computes the masked (future) half of a row: it only
  writes zeros there.
"""

from libc.math cimport INFINITY, exp, expf, log
from libc.stdint cimport int64_t

ctypedef fused real:
    float
    double


cdef inline real _exp(real x) noexcept nogil:
    if real is float:
        return expf(x)
    else:
        return exp(x)


cdef inline void _softmax_row(const real* x, real scale, Py_ssize_t n, real* out) noexcept nogil:
    """out[:n] = softmax(scale * x[:n])."""
    cdef Py_ssize_t j
    cdef real row_max = -INFINITY, v
    cdef double total = 0.0
    for j in range(n):
        v = scale * x[j]
        if v > row_max:
            row_max = v
    for j in range(n):
        v = _exp(scale * x[j] - row_max)
        out[j] = v
        total += v
    cdef real inv = <real>(1.0 / total)
    for j in range(n):
        out[j] *= inv


cdef inline void _softmax_backward_row(const real* dprobs, const real* probs, real scale, Py_ssize_t n,
                                       real* dx) noexcept nogil:
    """dx[:n] = scale * p * (dp - sum(dp * p))."""
    cdef Py_ssize_t j
    cdef double dot = 0.0
    for j in range(n):
        dot += <double>dprobs[j] * probs[j]
    cdef real d = <real>dot
    for j in range(n):
        dx[j] = scale * probs[j] * (dprobs[j] - d)


cdef _check_same(str what, tuple want, tuple got):
    if want != got:
        raise ValueError(f"{what}: expected shape {want}, got {got}")


cdef _check_causal(Py_ssize_t tq, Py_ssize_t tk):
    if tq > tk:
        raise ValueError(f"causal softmax needs Tq <= Tk (queries are the last Tq of Tk keys), got {tq} > {tk}")


# ----------------------------------------------------------------------------- causal softmax
# Queries are the last Tq of the Tk key positions (Tq < Tk with a KV cache), so query row i
# sees keys 0 .. Tk - Tq + i and the rest of its row is the masked future.


def causal_softmax_forward(const real[:, :, ::1] scores, double scale, real[:, :, ::1] probs):
    """scores (M, Tq, Tk) -> probs (M, Tq, Tk): softmax(scale * scores) over the visible keys
    of each query row; the masked entries are written as 0 and never read."""
    cdef Py_ssize_t m, i, j, visible
    cdef Py_ssize_t stacks = scores.shape[0], tq = scores.shape[1], tk = scores.shape[2]
    cdef real s = <real>scale
    _check_same("causal_softmax_forward probs", (stacks, tq, tk), (probs.shape[0], probs.shape[1], probs.shape[2]))
    _check_causal(tq, tk)
    with nogil:
        for m in range(stacks):
            for i in range(tq):
                visible = tk - tq + i + 1
                _softmax_row(&scores[m, i, 0], s, visible, &probs[m, i, 0])
                for j in range(visible, tk):
                    probs[m, i, j] = 0


def causal_softmax_backward(const real[:, :, ::1] dprobs, const real[:, :, ::1] probs, double scale,
                            real[:, :, ::1] dscores):
    """dprobs, probs (M, Tq, Tk) -> dscores (M, Tq, Tk) = scale * p * (dp - sum(dp * p)) over the
    visible keys; the masked entries are written as 0 and never read."""
    cdef Py_ssize_t m, i, j, visible
    cdef Py_ssize_t stacks = probs.shape[0], tq = probs.shape[1], tk = probs.shape[2]
    cdef real s = <real>scale
    shape = (stacks, tq, tk)
    _check_same("causal_softmax_backward dprobs", shape, (dprobs.shape[0], dprobs.shape[1], dprobs.shape[2]))
    _check_same("causal_softmax_backward dscores", shape, (dscores.shape[0], dscores.shape[1], dscores.shape[2]))
    _check_causal(tq, tk)
    with nogil:
        for m in range(stacks):
            for i in range(tq):
                visible = tk - tq + i + 1
                _softmax_backward_row(&dprobs[m, i, 0], &probs[m, i, 0], s, visible, &dscores[m, i, 0])
                for j in range(visible, tk):
                    dscores[m, i, j] = 0


# ----------------------------------------------------------------------------- cross-entropy


cdef _bad_target(const int64_t[::1] targets, Py_ssize_t row, Py_ssize_t vocab, int64_t ignore_index):
    return IndexError(f"target {targets[row]} of row {row} is outside 0..{vocab - 1} "
                      f"and is not ignore_index ({ignore_index})")


def cross_entropy_forward(const real[:, ::1] logits, const int64_t[::1] targets, int64_t ignore_index,
                          real[::1] losses, real[::1] lse):
    """logits (N, V), targets (N,) -> losses (N,) = logsumexp - logits[target] (0 where the target
    is ignore_index) and lse (N,) = logsumexp of each row, kept for the backward."""
    cdef Py_ssize_t i, j, rows = logits.shape[0], vocab = logits.shape[1], bad = -1
    cdef const real* row
    cdef real row_max
    cdef double total, log_norm
    cdef int64_t t
    _check_same("cross_entropy_forward targets", (rows,), (targets.shape[0],))
    _check_same("cross_entropy_forward losses", (rows,), (losses.shape[0],))
    _check_same("cross_entropy_forward lse", (rows,), (lse.shape[0],))
    with nogil:
        for i in range(rows):
            row = &logits[i, 0]
            row_max = -INFINITY
            for j in range(vocab):
                if row[j] > row_max:
                    row_max = row[j]
            total = 0.0
            for j in range(vocab):
                total += _exp(row[j] - row_max)
            log_norm = row_max + log(total)
            lse[i] = <real>log_norm
            t = targets[i]
            if t == ignore_index:
                losses[i] = 0
            elif t < 0 or t >= vocab:
                bad = i
                break
            else:
                losses[i] = <real>(log_norm - row[t])
    if bad >= 0:
        raise _bad_target(targets, bad, vocab, ignore_index)


def cross_entropy_backward(const real[::1] dlosses, const real[:, ::1] logits, const int64_t[::1] targets,
                           const real[::1] lse, int64_t ignore_index, real[:, ::1] dlogits):
    """-> dlogits (N, V) = (softmax(logits) - onehot(target)) * dlosses, rebuilt from lse;
    rows whose target is ignore_index get 0."""
    cdef Py_ssize_t i, j, rows = logits.shape[0], vocab = logits.shape[1], bad = -1
    cdef const real* row
    cdef real* out
    cdef real scale, log_norm
    cdef int64_t t
    _check_same("cross_entropy_backward dlosses", (rows,), (dlosses.shape[0],))
    _check_same("cross_entropy_backward targets", (rows,), (targets.shape[0],))
    _check_same("cross_entropy_backward lse", (rows,), (lse.shape[0],))
    _check_same("cross_entropy_backward dlogits", (rows, vocab), (dlogits.shape[0], dlogits.shape[1]))
    with nogil:
        for i in range(rows):
            row, out, t = &logits[i, 0], &dlogits[i, 0], targets[i]
            if t == ignore_index:
                for j in range(vocab):
                    out[j] = 0
                continue
            if t < 0 or t >= vocab:
                bad = i
                break
            scale, log_norm = dlosses[i], lse[i]
            for j in range(vocab):
                out[j] = _exp(row[j] - log_norm) * scale
            out[t] -= scale
    if bad >= 0:
        raise _bad_target(targets, bad, vocab, ignore_index)
