# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""A cache-blocked matrix product in plain C loops: a readable teaching reference.

It LOSES TO BLAS, by a wide margin: at 768x128x512 float32 on the 2-core dev machine it runs
at 25 GFLOP/s on its one core, OpenBLAS at 100 on one core and 200 on two. That is why the
cython backend's ``matmul`` primitive stays on BLAS (``np.matmul``). BLAS wins with
hand-written assembly micro-kernels that keep a whole tile of C in vector registers, wide SIMD
chosen at run time (AVX2/AVX-512; this file is built portable, without ``-march=native``),
packed copies of A and B laid out in the order the micro-kernel reads them, and every core.
What is left here is the idea those tricks are built on:

    C (M, N) = A (M, K) @ B (K, N), computed tile by tile:

    for each tile of rows i, of the shared axis k and of columns j:
        for i in the row tile:
            for k in the k tile:
                a = A[i, k]
                C[i, j0:j1] += a * B[k, j0:j1]      # innermost loop: contiguous, vectorised

- i-k-j order, not the textbook i-j-k: the innermost loop walks one row of B and one row of C
  with stride 1, which the C compiler turns into SIMD multiply-adds; i-j-k would walk a column
  of B (stride N) and gather one float per cache line.
- Tiling: a BLOCK_K x BLOCK_J tile of B (128 KiB in float32) stays in the L2 cache while every
  row of the A tile streams over it, and the BLOCK_J-wide slice of C's row stays in L1 while k
  runs. Without tiles each row of A would pull all of B through the cache again.
- k is unrolled by 4: four rows of B are added into C's slice in one sweep, so C is loaded and
  stored once per four k instead of once per k (stores are the bottleneck of i-k-j); measured,
  it took the float32 figure above from 14 to 25 GFLOP/s.

Accumulation is in the data dtype (float32 stays float32), as BLAS does; sizes need not be
multiples of the block sizes.
"""

import numpy as np

ctypedef fused real:
    float
    double

cdef enum:
    BLOCK_I = 64    # rows of A and C per tile
    BLOCK_K = 128   # the shared axis per tile
    BLOCK_J = 256   # columns of B and C per tile


cdef void _tile(const real[:, ::1] a, const real[:, ::1] b, real[:, ::1] c,
                Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t k0, Py_ssize_t k1,
                Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """C[i0:i1, j0:j1] += A[i0:i1, k0:k1] @ B[k0:k1, j0:j1]."""
    cdef Py_ssize_t i, k, j, width = j1 - j0
    cdef real a0, a1, a2, a3
    cdef real* crow
    cdef const real* b0
    cdef const real* b1
    cdef const real* b2
    cdef const real* b3
    for i in range(i0, i1):
        crow = &c[i, j0]
        k = k0
        while k + 4 <= k1:  # four rows of B per sweep over C's row slice
            a0, a1, a2, a3 = a[i, k], a[i, k + 1], a[i, k + 2], a[i, k + 3]
            b0, b1, b2, b3 = &b[k, j0], &b[k + 1, j0], &b[k + 2, j0], &b[k + 3, j0]
            for j in range(width):
                crow[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
            k += 4
        while k < k1:  # the 0-3 rows left over
            a0 = a[i, k]
            b0 = &b[k, j0]
            for j in range(width):
                crow[j] += a0 * b0[j]
            k += 1


def matmul_into(const real[:, ::1] a, const real[:, ::1] b, real[:, ::1] c):
    """c (M, N) += a (M, K) @ b (K, N); all C-contiguous, one dtype. Pass c zeroed for a @ b."""
    cdef Py_ssize_t m = a.shape[0], kk = a.shape[1], n = b.shape[1]
    cdef Py_ssize_t i0, k0, j0
    if b.shape[0] != kk or c.shape[0] != m or c.shape[1] != n:
        raise ValueError(f"matmul_into: shapes {(m, kk)} @ {(b.shape[0], n)} -> {(c.shape[0], c.shape[1])} "
                         "do not fit")
    with nogil:
        i0 = 0
        while i0 < m:  # tiles of rows ...
            k0 = 0
            while k0 < kk:  # ... of the shared axis ...
                j0 = 0
                while j0 < n:  # ... and of columns
                    _tile(a, b, c, i0, min(i0 + BLOCK_I, m), k0, min(k0 + BLOCK_K, kk),
                          j0, min(j0 + BLOCK_J, n))
                    j0 += BLOCK_J
                k0 += BLOCK_K
            i0 += BLOCK_I


def blocked_matmul(a, b):
    """a (M, K) @ b (K, N) -> (M, N), float32 or float64, by the cache-blocked loops above.

    A teaching reference that loses to BLAS (use ``np.matmul`` for real work; the backend's
    ``matmul`` primitive does). Inputs are made C-contiguous; mixed float32/float64 inputs are
    computed in float64; any other dtype is a ValueError."""
    a, b = np.asarray(a), np.asarray(b)
    for name, x in (("a", a), ("b", b)):
        if x.dtype not in (np.float32, np.float64):
            raise ValueError(f"blocked_matmul supports float32 and float64 arrays; {name} is {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"blocked_matmul takes 2-D arrays; {name} has shape {x.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"blocked_matmul: inner dimensions differ, {a.shape} @ {b.shape}")
    dtype = np.result_type(a, b)
    a = np.ascontiguousarray(a, dtype=dtype)
    b = np.ascontiguousarray(b, dtype=dtype)
    c = np.zeros((a.shape[0], b.shape[1]), dtype=dtype)
    matmul_into(a, b, c)
    return c
