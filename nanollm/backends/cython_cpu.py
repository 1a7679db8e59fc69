"""cython_cpu: the primitives as compiled Cython kernels (kernels/*.pyx), behind a thin wrapper.

Why this backend exists: it is the same fused, one-pass-per-row idea as numba_cpu, written as
C loops you can read (typed memoryviews, a fused float/double type, no GIL), compiled ahead of
time by ``pip install .`` (or ``python setup.py build_ext --inplace``) instead of at first call.
This file only reshapes (..., C) inputs to contiguous (N, C) rows, checks and casts dtypes,
allocates the outputs, calls the kernel and reshapes back.

Rules the kernels keep:
- Matrix products stay on BLAS (``matmul`` is NumPy's). ``blocked_matmul`` is exported as a
  readable cache-blocked reference for the benchmark; it loses to BLAS several times over.
- float32 and float64 only: any other dtype is a ValueError (mixed float inputs are computed
  in their common type, as NumPy would). Sums accumulate in double for both.
- Built portable (-O3 with reassociation so row sums vectorise; no -ffinite-math-only, no
  -march=native; see setup.py): NaN and Inf propagate.
- float32 GELU and SwiGLU use the same vectorisable rational tanh and exp as numba_cpu
  (kernels/fastmath.pxd); elsewhere exp is libc's, one call per element, so cross-entropy is
  slower than NumPy's SIMD np.exp.
- One core: the loops release the GIL but do not spread rows over threads (no OpenMP).
- Rows of the causal softmax never touch their masked (future) half; the fused attention
  (kernels/flash_attention.pyx) never holds a (Tq, Tk) array.

Shapes: ``...`` is any number of leading axes; the wrapper flattens them to rows (N, C) (RoPE:
to (M, T, hd), M the leading axes).
"""

import math

import numpy as np

from nanollm.backends import (
    _flash_attention,
    _gelu,
    _layernorm,
    _matmul,
    _rmsnorm,
    _rope,
    _softmax,
    _swiglu,
    numpy_ref,
)

blocked_matmul = _matmul.blocked_matmul  # the teaching reference (see kernels/matmul.pyx)

_FLOATS = (np.float32, np.float64)


matmul = numpy_ref.matmul  # BLAS: no kernel written here beats sgemm


def _dtype(**arrays):
    """The common dtype of float32/float64 arrays; a ValueError names any other dtype."""
    dtypes = {name: np.asarray(x).dtype for name, x in arrays.items()}
    for name, dtype in dtypes.items():
        if dtype not in _FLOATS:
            raise ValueError(f"the cython backend supports float32 and float64 arrays; {name} is {dtype}")
    return np.result_type(*dtypes.values())


def _rows(x, dtype):
    """x (..., C) -> a C-contiguous (N, C) array of dtype (a copy only when needed)."""
    x = np.ascontiguousarray(x, dtype=dtype)
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _stack(x, dtype):
    """x (..., Tq, Tk) -> a C-contiguous (M, Tq, Tk) array of dtype."""
    x = np.ascontiguousarray(x, dtype=dtype)
    return x.reshape(math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1])


def _flat(x, dtype):
    """x (...) -> a C-contiguous 1-D array of dtype (a copy only when needed)."""
    return np.ascontiguousarray(x, dtype=dtype).reshape(-1)


def _int64(x, name):
    """Integer indices (targets) as a contiguous int64 1-D array; a ValueError for non-integers."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array; it is {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.int64).reshape(-1)


# ----------------------------------------------------------------------------- causal softmax


def causal_softmax_forward(scores, scale):
    """Masked, scaled softmax over the keys each query may see (see numpy_ref)."""
    s = _stack(scores, _dtype(scores=scores))
    probs = np.empty_like(s)
    _softmax.causal_softmax_forward(s, float(scale), probs)
    return probs.reshape(np.shape(scores))


def causal_softmax_backward(dprobs, probs, scale):
    """d scores from d probs, visible entries only; the masked ones are 0 (see numpy_ref)."""
    dtype = _dtype(dprobs=dprobs, probs=probs)
    p = _stack(probs, dtype)
    dscores = np.empty_like(p)
    _softmax.causal_softmax_backward(_stack(dprobs, dtype), p, float(scale), dscores)
    return dscores.reshape(np.shape(probs))


# ----------------------------------------------------------------------------- fused causal attention


def _flash_inputs(q, k, v, mask):
    """Contiguous (M, Tq, hd) queries, (M / G, Tk, hd) keys and values, (M, Tq, Tk) mask (a
    (1, 1, 1) placeholder for None) of one float dtype, and G = q.shape[2] (the kernel checks
    the shapes)."""
    dtype = _dtype(q=q, k=k, v=v)
    if np.ndim(q) != 5 or np.ndim(k) != 5 or np.ndim(v) != 5:
        raise ValueError(f"flash attention needs q (B, H_kv, G, Tq, hd), k and v (B, H_kv, 1, Tk, hd); got q "
                         f"{np.shape(q)}, k {np.shape(k)}, v {np.shape(v)}")
    qs, ks, vs = _stack(q, dtype), _stack(k, dtype), _stack(v, dtype)
    ms = np.zeros((1, 1, 1), dtype=dtype) if mask is None else _stack(mask, dtype)
    return qs, ks, vs, ms, np.shape(q)[2], dtype


def flash_attention_forward(q, k, v, scale, mask=None):
    """Fused causal attention -> out (B, H_kv, G, Tq, hd), lse (B, H_kv, G, Tq) (see numpy_ref),
    without the (Tq, Tk) probabilities: an online softmax over the visible key blocks."""
    qs, ks, vs, ms, group, dtype = _flash_inputs(q, k, v, mask)
    out = np.zeros_like(qs)
    lse = np.empty(qs.shape[:2], dtype=dtype)
    _flash_attention.flash_attention_forward(qs, ks, vs, float(scale), ms, mask is not None, group, out, lse)
    return out.reshape(np.shape(q)), lse.reshape(np.shape(q)[:-1])


def flash_attention_backward(dout, q, k, v, out, lse, scale, mask=None):
    """-> dq (B, H_kv, G, Tq, hd), dk, dv (B, H_kv, 1, Tk, hd) (see numpy_ref): the probabilities
    rebuilt from lse, block by block."""
    qs, ks, vs, ms, group, dtype = _flash_inputs(q, k, v, mask)
    dq, dk, dv = np.zeros_like(qs), np.zeros_like(ks), np.zeros_like(vs)
    _flash_attention.flash_attention_backward(_stack(dout, dtype), qs, ks, vs, _stack(out, dtype),
                                              _rows(lse, dtype), float(scale), ms, mask is not None, group,
                                              dq, dk, dv)
    return dq.reshape(np.shape(q)), dk.reshape(np.shape(k)), dv.reshape(np.shape(v))


# ----------------------------------------------------------------------------- layernorm


def layernorm_forward(x, weight, bias, eps=1e-5):
    """-> out (..., C), mean (...), rstd (...) (see numpy_ref)."""
    dtype = _dtype(x=x, weight=weight, bias=bias)
    rows = _rows(x, dtype)
    out = np.empty_like(rows)
    mean = np.empty(rows.shape[0], dtype=dtype)
    rstd = np.empty(rows.shape[0], dtype=dtype)
    _layernorm.layernorm_forward(rows, _flat(weight, dtype), _flat(bias, dtype), float(eps), out, mean, rstd)
    lead = np.shape(x)[:-1]
    return out.reshape(np.shape(x)), mean.reshape(lead), rstd.reshape(lead)


def layernorm_backward(dout, x, weight, mean, rstd):
    """-> dx (..., C), dweight (C,), dbias (C,) (see numpy_ref)."""
    dtype = _dtype(dout=dout, x=x, weight=weight, mean=mean, rstd=rstd)
    rows = _rows(x, dtype)
    dx = np.empty_like(rows)
    dweight = np.zeros(rows.shape[1])  # float64 accumulators, cast to dtype below
    dbias = np.zeros(rows.shape[1])
    _layernorm.layernorm_backward(_rows(dout, dtype), rows, _flat(weight, dtype), _flat(mean, dtype),
                                  _flat(rstd, dtype), dx, dweight, dbias)
    return dx.reshape(np.shape(x)), dweight.astype(dtype, copy=False), dbias.astype(dtype, copy=False)


# ----------------------------------------------------------------------------- RMSNorm


def rmsnorm_forward(x, weight, eps=1e-5):
    """-> out (..., C), rstd (...) (see numpy_ref)."""
    dtype = _dtype(x=x, weight=weight)
    rows = _rows(x, dtype)
    out = np.empty_like(rows)
    rstd = np.empty(rows.shape[0], dtype=dtype)
    _rmsnorm.rmsnorm_forward(rows, _flat(weight, dtype), float(eps), out, rstd)
    return out.reshape(np.shape(x)), rstd.reshape(np.shape(x)[:-1])


def rmsnorm_backward(dout, x, weight, rstd):
    """-> dx (..., C), dweight (C,) (see numpy_ref)."""
    dtype = _dtype(dout=dout, x=x, weight=weight, rstd=rstd)
    rows = _rows(x, dtype)
    dx = np.empty_like(rows)
    dweight = np.zeros(rows.shape[1])  # a float64 accumulator, cast to dtype below
    _rmsnorm.rmsnorm_backward(_rows(dout, dtype), rows, _flat(weight, dtype), _flat(rstd, dtype), dx, dweight)
    return dx.reshape(np.shape(x)), dweight.astype(dtype, copy=False)


# ----------------------------------------------------------------------------- RoPE


def _rotate(kernel, x, cos, sin):
    """x (..., T, hd) -> (..., T, hd) through kernel (forward or backward); the kernel checks
    that cos and sin are (T, hd/2)."""
    dtype = _dtype(x=x, cos=cos, sin=sin)
    if np.ndim(x) < 2 or np.ndim(cos) != 2 or np.ndim(sin) != 2:
        raise ValueError(f"rope: x must be (..., T, hd) and cos, sin (T, hd/2); got x {np.shape(x)}, "
                         f"cos {np.shape(cos)}, sin {np.shape(sin)}")
    stack = _stack(x, dtype)
    out = np.empty_like(stack)
    kernel(stack, np.ascontiguousarray(cos, dtype=dtype), np.ascontiguousarray(sin, dtype=dtype), out)
    return out.reshape(np.shape(x))


def rope_forward(x, cos, sin):
    """Rotary position embedding, half-split pairs (see numpy_ref)."""
    return _rotate(_rope.rope_forward, x, cos, sin)


def rope_backward(dout, cos, sin):
    """The rotation by minus the angle (see numpy_ref)."""
    return _rotate(_rope.rope_backward, dout, cos, sin)


# ----------------------------------------------------------------------------- GELU


def gelu_forward(x):
    """GELU, tanh form, elementwise (see numpy_ref)."""
    flat = _flat(x, _dtype(x=x))
    out = np.empty_like(flat)
    _gelu.gelu_forward(flat, out)
    return out.reshape(np.shape(x))


def gelu_backward(dout, x):
    """dout * GELU'(x), elementwise (see numpy_ref)."""
    dtype = _dtype(dout=dout, x=x)
    flat = _flat(x, dtype)
    dx = np.empty_like(flat)
    _gelu.gelu_backward(_flat(dout, dtype), flat, dx)
    return dx.reshape(np.shape(x))


# ----------------------------------------------------------------------------- SwiGLU


def swiglu_forward(gate, up):
    """silu(gate) * up, elementwise (see numpy_ref)."""
    dtype = _dtype(gate=gate, up=up)
    flat = _flat(gate, dtype)
    out = np.empty_like(flat)
    _swiglu.swiglu_forward(flat, _flat(up, dtype), out)
    return out.reshape(np.shape(gate))


def swiglu_backward(dout, gate, up):
    """-> dgate, dup (...) (see numpy_ref)."""
    dtype = _dtype(dout=dout, gate=gate, up=up)
    flat = _flat(gate, dtype)
    dgate, dup = np.empty_like(flat), np.empty_like(flat)
    _swiglu.swiglu_backward(_flat(dout, dtype), flat, _flat(up, dtype), dgate, dup)
    return dgate.reshape(np.shape(gate)), dup.reshape(np.shape(gate))


# ----------------------------------------------------------------------------- cross-entropy


def cross_entropy_forward(logits, targets, ignore_index):
    """-> losses (N,), logsumexp (N,) (see numpy_ref); a target outside 0..V-1 that is not
    ignore_index is an IndexError."""
    rows = _rows(logits, _dtype(logits=logits))
    losses = np.empty(rows.shape[0], dtype=rows.dtype)
    lse = np.empty(rows.shape[0], dtype=rows.dtype)
    _softmax.cross_entropy_forward(rows, _int64(targets, "targets"), int(ignore_index), losses, lse)
    return losses, lse


def cross_entropy_backward(dlosses, logits, targets, lse, ignore_index):
    """-> dlogits (N, V) = (softmax - onehot) * dlosses, 0 on ignored rows (see numpy_ref)."""
    dtype = _dtype(logits=logits, lse=lse)  # dlosses is cast to it, as numpy_ref does
    _dtype(dlosses=dlosses)
    rows = _rows(logits, dtype)
    dlogits = np.empty_like(rows)
    _softmax.cross_entropy_backward(_flat(dlosses, dtype), rows, _int64(targets, "targets"), _flat(lse, dtype),
                                    int(ignore_index), dlogits)
    return dlogits


# ----------------------------------------------------------------------------- the rest, from numpy_ref

# Not compiled here: each is one pass over a parameter-sized array per step, tiny next to the
# matmuls, which do B*T times that work (numba_cpu has fused versions for the last few percent).
embedding_backward = numpy_ref.embedding_backward  # scatter-add with np.add.at
adamw_step = numpy_ref.adamw_step
adamw_step_scaled = numpy_ref.adamw_step_scaled
sum_of_squares = numpy_ref.sum_of_squares  # np.vdot: BLAS
