# cython: language_level=3
"""Inline float32 math shared by the kernels (cimported, not compiled on its own: setup.py builds
only *.pyx): a rational tanh and an exp that the C compiler vectorises, where a call to libc's
tanhf or expf per element does not vectorise without -ffast-math.

A .pxd does not inherit the directives of the .pyx that cimports it, so each function sets
cdivision itself: a zero-division check is a branch, and a branch stops the loop vectorising.
"""

cimport cython
from libc.stdint cimport int32_t, uint32_t
from libc.string cimport memcpy


@cython.cdivision(True)
cdef inline float tanh_float32(float x) noexcept nogil:
    """tanh for float32: a clamp and a 13/6 rational polynomial (Eigen's ptanh_float, the one
    numba_cpu uses). Every constant is a float, so a loop calling it stays in float32. It is
    exactly +-1 from |x| = 7.9 on (where the true 1 - |tanh| is still 2.7e-7): a tanh a hair
    short of +-1 there would give GELU's backward large errors for large |x|, so the result is
    pinned, not left to the polynomial's rounding. NaN fails every comparison and stays NaN."""
    cdef float clamp = <float>7.90531110763549805  # beyond it tanh(x) rounds to +-1 in float32
    cdef float one = 1.0
    cdef float xc = clamp if x > clamp else x  # conditional expressions: selects, so loops vectorise
    xc = -clamp if xc < -clamp else xc
    cdef float x2 = xc * xc
    cdef float p = <float>-2.76076847742355e-16
    p = p * x2 + <float>2.00018790482477e-13
    p = p * x2 + <float>-8.60467152213735e-11
    p = p * x2 + <float>5.12229709037114e-08
    p = p * x2 + <float>1.48572235717979e-05
    p = p * x2 + <float>6.37261928875436e-04
    p = p * x2 + <float>4.89352455891786e-03
    cdef float q = <float>1.19825839466702e-06
    q = q * x2 + <float>1.18534705686654e-04
    q = q * x2 + <float>2.26843463243900e-03
    q = q * x2 + <float>4.89352518554385e-03
    cdef float t = xc * p / q
    t = one if x >= clamp else t
    return -one if x <= -clamp else t


@cython.cdivision(True)
cdef inline float exp_nonpositive_float32(float t) noexcept nogil:
    """exp(t) for t <= 0 in float32, within 2 ulp (numba_cpu's float32 exp): with n = round(t / ln 2),
    exp(t) = 2^n exp(r), r = t - n ln 2 (reduced in double, so r is exact to float precision),
    exp(r) from its degree-6 Taylor polynomial (|r| <= 0.35) and 2^n written into a float's
    exponent bits.
    Arguments below -87 count as -87 (exp(-87) = 1.6e-38 is the last normal float; the caller
    decides what a smaller value means). NaN stays NaN. Only t <= 0: there round(t / ln 2) is
    minus the truncation of 0.5 - t / ln 2, one SSE2 instruction, where floorf is a libm call."""
    t = <float>-87.0 if t < <float>-87.0 else t
    cdef int32_t n = -<int32_t>(<float>0.5 - t * <float>1.4426950408889634)
    # r in double: the build's -fassociative-math may fold a float Cody-Waite split, (t - n hi) - n lo,
    # back into t - n ln2, whose rounding costs up to 4e-6 relative at n = -125; in double it cannot.
    cdef float r = <float>(<double>t - <double>n * 0.6931471805599453)
    cdef float p = <float>1.0 + r * (<float>1.0 + r * (<float>(1.0 / 2) + r * (<float>(1.0 / 6) + r * (
        <float>(1.0 / 24) + r * (<float>(1.0 / 120) + r * <float>(1.0 / 720))))))
    cdef uint32_t bits = <uint32_t>(n + 127) << 23
    cdef float pow2
    memcpy(&pow2, &bits, sizeof(float))
    return p * pow2
