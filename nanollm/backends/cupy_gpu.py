"""cupy_gpu: the primitives on an NVIDIA GPU, as CuPy arrays and fused CUDA kernels.

Why this backend exists: on a GPU the matrix products run on cuBLAS, so the dozen row-wise and
elementwise passes between them (layernorm, GELU, softmax, cross-entropy, AdamW) take a large
share of a train step. Written with CuPy's operators each of them is several kernel launches,
each with a temporary array (x - max, exp, sum, divide, ...); here each is one kernel from
cuda/kernels.cu (two for the norm backwards) that reads its inputs once and writes its outputs
once. This file checks and casts the inputs, flattens (..., C) to contiguous rows (N, C), picks
the kernel for the dtype, allocates the outputs, launches and reshapes back.

Rules the kernels keep (kernels.cu's header says how):
- Matrix products are ``cupy.matmul`` (cuBLAS): nothing written here would beat it.
- float32, float64, float16 and bfloat16 (``ml_dtypes.bfloat16`` arrays, CuPy 14+). Kernels
  compute in float32 (float64 for float64) and round once, when they store. Half-precision
  inputs get float32 statistics (layernorm mean and rstd, RMSNorm rstd, cross-entropy
  logsumexp); every other output has the dtype of the op's main input (x, scores, probs,
  logits, gate, dout for the embedding), and the other float inputs (weight, bias, cos, sin,
  dout, up, ...) are cast to that dtype first. So a float32 weight with bfloat16 x gives a
  bfloat16 out, as autocast would; numpy_ref would promote to float32 instead. For inputs of
  one dtype, the two agree.
- One block per row for the row-wise ops, warp-shuffle reductions, grid-stride loops for the
  elementwise ones. The kernels trust the shapes they get, so this file checks them.
- Nothing here waits for the host: ``sum_of_squares`` returns a 0-d device array and
  ``adamw_step_scaled`` reads its step count and gradient scale on the device.
- Results repeat bit for bit, except ``embedding_backward`` (atomicAdd: the order of the adds,
  so the last bits of a token's summed gradient, vary from run to run).
- A kernel cannot raise: a cross-entropy target outside 0..V-1 (not ignore_index) gives a NaN
  loss, and an embedding id outside the table is skipped, where NumPy raises an IndexError.
- CuPy compiles with -ftz=true: float32 results below 1.2e-38 (subnormals) flush to 0, where
  NumPy keeps them.
- NumPy inputs are copied to the device; outputs are always CuPy arrays.
- kernels.cu compiles once (NVRTC), at the first kernel called; CuPy caches the binary on
  disk (~/.cupy/kernel_cache), so later runs load it in milliseconds.

Beyond the primitives: ``CounterGenerator``, dropout masks drawn on the device from a state a
checkpoint can save (``backends.random_generator`` hands it out on a GPU).

Shapes: ``...`` is any number of leading axes, N rows, C channels, V classes.
"""

import functools
import hashlib
import math

import numpy as np

try:
    import cupy
except ImportError as exc:
    raise ImportError(f'CuPy is not installed ({exc}): pip install ".[gpu]"') from exc
if not cupy.cuda.is_available():
    raise ImportError("CuPy is installed but sees no CUDA GPU (cupy.cuda.is_available() is False); check that "
                      "nvidia-smi lists one and that the cupy-cuda wheel matches the driver's CUDA version")

from nanollm.backends import cuda, numpy_ref

ROW_THREADS = 512  # threads per block of a row-wise kernel, at most (a warp for rows of <= 32)
THREADS = 256  # threads per block of the elementwise and column kernels
MAX_BLOCKS = 4096  # blocks of a grid-stride kernel, at most: each thread loops over the rest
STRIP_ROWS = 32  # norm weight gradients: rows summed per thread, at least ...
MAX_STRIPS = 1024  # ... and at most this many strips of partial sums, added up by CuPy
PARTIALS = 1024  # sum_of_squares: partial sums (blocks), at most


def matmul(a, b):
    """a (..., M, K) @ b (..., K, N) through cuBLAS. CuPy's matmul takes no bfloat16, so bfloat16
    operands are widened to float32 (exactly), multiplied with float32 sums, as a bfloat16
    GEMM accumulates, and the product is rounded to the result dtype."""
    if "bfloat16" not in (a.dtype.name, b.dtype.name):
        return cupy.matmul(a, b)
    result = np.result_type(a.dtype, b.dtype)
    return cupy.matmul(a.astype(cupy.float32), b.astype(cupy.float32)).astype(result)


# ----------------------------------------------------------------------------- kernels


@functools.cache
def _module():
    """kernels.cu as a cupy.RawModule: NVRTC compiles it when the first kernel is asked for."""
    return cupy.RawModule(code=cuda.SOURCE.read_text(encoding="utf-8"), options=("-std=c++17",))


@functools.cache
def _function(name):
    """The kernel called ``name`` (see cuda.KERNEL_NAMES). The first call compiles kernels.cu;
    NVRTC needs CUDA's headers for it (cuda_fp16.h), which CuPy looks for under CUDA_PATH and
    in the CUDA wheels that its [ctk] extra installs."""
    try:
        return _module().get_function(name)
    except cupy.cuda.compiler.CompileException as exc:
        raise RuntimeError(f"NVRTC could not compile {cuda.SOURCE} (if it cannot open cuda_fp16.h, CuPy did not "
                           f"find CUDA's headers: set CUDA_PATH, or pip install \".[gpu]\", which brings them)\n{exc}"
                           ) from exc


def _launch(kernel, dtypes, grid, block, args):
    """Run kernel_<suffix of each dtype> on grid x block; an empty grid has nothing to do."""
    if all(grid):
        _function(cuda.kernel_name(kernel, *(np.dtype(d).name for d in dtypes)))(grid, block, args)


def _launch_rows(kernel, dtype, rows, cols, args):
    """One block per row, of whole warps: enough threads for the row, ROW_THREADS at most."""
    _launch(kernel, (dtype,), (rows,), (min(ROW_THREADS, 32 * max(1, -(-cols // 32))),), args)


def _launch_flat(kernel, dtypes, n, args):
    """A grid-stride kernel over n elements."""
    _launch(kernel, dtypes, (min(MAX_BLOCKS, -(-n // THREADS)),), (THREADS,), args)


# ----------------------------------------------------------------------------- inputs


def _float_dtype(name, x):
    """x's dtype if kernels.cu has kernels for it; a ValueError names any other."""
    dtype = np.dtype(x.dtype)
    if dtype.name not in cuda.SUFFIXES:
        raise ValueError(f"the cupy backend supports float32, float64, float16 and bfloat16 arrays; {name} is {dtype}")
    return dtype


def _stat_dtype(dtype):
    """The kernels' compute type, that of statistics and partial sums: float64 for float64, else float32."""
    return np.dtype(np.float64 if dtype == np.float64 else np.float32)


def _scalar(value, dtype):
    """A Python number as a kernel's compute-type argument (acc_t<T> in kernels.cu)."""
    return _stat_dtype(dtype).type(value)


def _device(x, dtype):
    """x as a C-contiguous CuPy array of dtype and x's shape (0-d stays 0-d): a copy only when
    needed (always for NumPy input)."""
    x = cupy.asarray(x, dtype=dtype)
    return x if x.flags.c_contiguous else x.copy(order="C")


def _input(name, y, dtype, shape):
    """A second input: checked to be a float array of the shape the kernel will assume, then
    cast to the op's dtype (see the module docstring)."""
    _float_dtype(name, y)
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; it has {tuple(y.shape)}")
    return _device(y, dtype)


def _indices(name, ids, size):
    """Integer indices (targets, token ids) as a contiguous int64 1-D CuPy array of size elements."""
    ids = cupy.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array; it is {ids.dtype}")
    if ids.size != size:
        raise ValueError(f"{name} must have {size} elements, one per row; it has {ids.size}")
    return cupy.ascontiguousarray(ids.reshape(-1), dtype=cupy.int64)


def _rows(x):
    """A contiguous x (..., C) as an (N, C) view."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


# ----------------------------------------------------------------------------- causal softmax


def causal_softmax_forward(scores, scale):
    """Masked, scaled softmax of scores (..., Tq, Tk) over the keys each query may see; the
    masked (future) keys get exactly 0 and are never read (see numpy_ref)."""
    dtype = _float_dtype("scores", scores)
    scores = _device(scores, dtype)
    num_queries, num_keys = scores.shape[-2:]
    probs = cupy.empty_like(scores)
    _launch_rows("causal_softmax_forward", dtype, math.prod(scores.shape[:-1]), num_keys,
                 (scores, probs, np.int64(num_queries), np.int64(num_keys), _scalar(scale, dtype)))
    return probs


def causal_softmax_backward(dprobs, probs, scale):
    """d scores (..., Tq, Tk) from d probs over the visible keys; 0 for the masked ones, whose
    dprobs are never read (see numpy_ref)."""
    dtype = _float_dtype("probs", probs)
    probs = _device(probs, dtype)
    num_queries, num_keys = probs.shape[-2:]
    dscores = cupy.empty_like(probs)
    _launch_rows("causal_softmax_backward", dtype, math.prod(probs.shape[:-1]), num_keys,
                 (_input("dprobs", dprobs, dtype, probs.shape), probs, dscores, np.int64(num_queries),
                  np.int64(num_keys), _scalar(scale, dtype)))
    return dscores


# ----------------------------------------------------------------------------- fused causal attention
# No CUDA kernel yet: numpy_ref's blocked version on device arrays (cuBLAS products, CuPy's
# elementwise kernels), a block of query rows at a time, so its scores never exceed
# (B, H_kv, G, numpy_ref.FLASH_QUERY_BLOCK, Tk). Half precision computes in float32, like the
# kernels, and rounds the outputs once; lse is float32 then (a statistic). Measured on an H200,
# float32 forward + backward, H=4 hd=32: 1.5 ms against the unfused path's 0.74 at T=64 B=12,
# 15 against 0.78 at T=1024 B=4, 33 against 8.8 at T=4096 B=4 (memory pool 1.4 GiB against
# 4.2): it saves memory but loses time to its many small launches, until a fused kernel replaces it.


def _flash_arrays(*arrays):
    """Device copies of the float arrays (None stays None) in the compute type of the first one's dtype."""
    dtype = _float_dtype("q", arrays[0])
    compute = _stat_dtype(dtype)
    return dtype, [None if a is None else cupy.asarray(a).astype(compute, copy=False) for a in arrays]


def flash_attention_forward(q, k, v, scale, mask=None):
    """-> out (B, H_kv, G, Tq, hd) in q's dtype, lse (B, H_kv, G, Tq) (see numpy_ref)."""
    dtype, (q, k, v, mask) = _flash_arrays(q, k, v, mask)
    out, lse = numpy_ref.flash_attention_forward(q, k, v, scale, mask)
    return out.astype(dtype, copy=False), lse


def flash_attention_backward(dout, q, k, v, out, lse, scale, mask=None):
    """-> dq, dk, dv in q's dtype (see numpy_ref)."""
    dtype, (q, dout, k, v, out, lse, mask) = _flash_arrays(q, dout, k, v, out, lse, mask)
    grads = numpy_ref.flash_attention_backward(dout, q, k, v, out, lse, scale, mask)
    return tuple(g.astype(dtype, copy=False) for g in grads)


# ----------------------------------------------------------------------------- layernorm and RMSNorm


def layernorm_forward(x, weight, bias, eps=1e-5):
    """-> out (..., C), mean (...), rstd (...) (see numpy_ref); mean and rstd are float32 for
    half-precision x."""
    dtype = _float_dtype("x", x)
    x = _device(x, dtype)
    rows = _rows(x)  # (N, C)
    n, c = rows.shape
    out = cupy.empty_like(rows)
    mean = cupy.empty(n, dtype=_stat_dtype(dtype))  # (N,)
    rstd = cupy.empty_like(mean)  # (N,)
    _launch_rows("layernorm_forward", dtype, n, c,
                 (rows, _input("weight", weight, dtype, (c,)), _input("bias", bias, dtype, (c,)), out, mean, rstd,
                  np.int64(c), _scalar(eps, dtype)))
    lead = x.shape[:-1]
    return out.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def layernorm_backward(dout, x, weight, mean, rstd):
    """-> dx (..., C), dweight (C,), dbias (C,) (see numpy_ref)."""
    dtype = _float_dtype("x", x)
    x = _device(x, dtype)
    rows = _rows(x)  # (N, C)
    n, c = rows.shape
    lead, stat = x.shape[:-1], _stat_dtype(dtype)
    dout = _rows(_input("dout", dout, dtype, x.shape))  # (N, C)
    mean, rstd = _input("mean", mean, stat, lead), _input("rstd", rstd, stat, lead)
    dx = cupy.empty_like(rows)
    _launch_rows("layernorm_backward_dx", dtype, n, c,
                 (dout, rows, _input("weight", weight, dtype, (c,)), mean, rstd, dx, np.int64(c)))
    dweight, dbias = _weight_grads("layernorm_weight_grads", dout, rows, (mean, rstd), with_bias=True)
    return dx.reshape(x.shape), dweight, dbias


def _weight_grads(kernel, dout, x, stats, with_bias):
    """Column sums over the rows of dout, x (N, C): dweight (C,) and, with_bias, dbias (C,), in x's
    dtype. The kernel sums strips of rows (one thread per column and strip) into partial sums
    (strips, C) in the compute type; CuPy then adds up the strips."""
    n, c = x.shape
    rows_per_strip = max(STRIP_ROWS, -(-n // MAX_STRIPS))
    strips = max(1, -(-n // rows_per_strip))
    parts = [cupy.empty((strips, c), dtype=_stat_dtype(x.dtype)) for _ in range(2 if with_bias else 1)]
    _launch(kernel, (x.dtype,), (-(-c // THREADS), strips), (THREADS,),
            (dout, x, *stats, *parts, np.int64(n), np.int64(c), np.int64(rows_per_strip)))
    return tuple(part.sum(axis=0).astype(x.dtype, copy=False) for part in parts)


def rmsnorm_forward(x, weight, eps=1e-5):
    """-> out (..., C), rstd (...) (see numpy_ref); rstd is float32 for half-precision x."""
    dtype = _float_dtype("x", x)
    x = _device(x, dtype)
    rows = _rows(x)  # (N, C)
    n, c = rows.shape
    out = cupy.empty_like(rows)
    rstd = cupy.empty(n, dtype=_stat_dtype(dtype))  # (N,)
    _launch_rows("rmsnorm_forward", dtype, n, c,
                 (rows, _input("weight", weight, dtype, (c,)), out, rstd, np.int64(c), _scalar(eps, dtype)))
    return out.reshape(x.shape), rstd.reshape(x.shape[:-1])


def rmsnorm_backward(dout, x, weight, rstd):
    """-> dx (..., C), dweight (C,) (see numpy_ref)."""
    dtype = _float_dtype("x", x)
    x = _device(x, dtype)
    rows = _rows(x)  # (N, C)
    n, c = rows.shape
    dout = _rows(_input("dout", dout, dtype, x.shape))  # (N, C)
    rstd = _input("rstd", rstd, _stat_dtype(dtype), x.shape[:-1])
    dx = cupy.empty_like(rows)
    _launch_rows("rmsnorm_backward_dx", dtype, n, c,
                 (dout, rows, _input("weight", weight, dtype, (c,)), rstd, dx, np.int64(c)))
    (dweight,) = _weight_grads("rmsnorm_weight_grads", dout, rows, (rstd,), with_bias=False)
    return dx.reshape(x.shape), dweight


# ----------------------------------------------------------------------------- RoPE


def _rotate(x, cos, sin, sign):
    """x (..., T, hd) -> each half-split pair rotated by sign * its angle (cos, sin: (T, hd/2))."""
    dtype = _float_dtype("x", x)
    x = _device(x, dtype)
    if x.ndim < 2 or x.shape[-1] % 2:
        raise ValueError(f"rope: x must be (..., T, hd) with hd even; it is {x.shape}")
    positions, half = x.shape[-2], x.shape[-1] // 2
    cos, sin = _input("cos", cos, dtype, (positions, half)), _input("sin", sin, dtype, (positions, half))
    out = cupy.empty_like(x)
    pairs = x.size // 2
    _launch_flat("rope", (dtype,), pairs,
                 (x, cos, sin, out, np.int64(pairs), np.int64(positions), np.int64(half), _scalar(sign, dtype)))
    return out


def rope_forward(x, cos, sin):
    """Rotary position embedding, half-split pairs (see numpy_ref)."""
    return _rotate(x, cos, sin, 1.0)


def rope_backward(dout, cos, sin):
    """The rotation by minus the angle (see numpy_ref)."""
    return _rotate(dout, cos, sin, -1.0)


# ----------------------------------------------------------------------------- GELU and SwiGLU


def gelu_forward(x):
    """GELU, tanh form, elementwise (see numpy_ref)."""
    dtype = _float_dtype("x", x)
    x = _device(x, dtype)
    out = cupy.empty_like(x)
    _launch_flat("gelu_forward", (dtype,), x.size, (x, out, np.int64(x.size)))
    return out


def gelu_backward(dout, x):
    """dout * GELU'(x), elementwise (see numpy_ref)."""
    dtype = _float_dtype("x", x)
    x = _device(x, dtype)
    dx = cupy.empty_like(x)
    _launch_flat("gelu_backward", (dtype,), x.size, (_input("dout", dout, dtype, x.shape), x, dx, np.int64(x.size)))
    return dx


def swiglu_forward(gate, up):
    """silu(gate) * up, elementwise, the sigmoid built from exp(-|gate|) (see numpy_ref)."""
    dtype = _float_dtype("gate", gate)
    gate = _device(gate, dtype)
    out = cupy.empty_like(gate)
    _launch_flat("swiglu_forward", (dtype,), gate.size,
                 (gate, _input("up", up, dtype, gate.shape), out, np.int64(gate.size)))
    return out


def swiglu_backward(dout, gate, up):
    """-> dgate, dup (...) (see numpy_ref)."""
    dtype = _float_dtype("gate", gate)
    gate = _device(gate, dtype)
    dgate, dup = cupy.empty_like(gate), cupy.empty_like(gate)
    _launch_flat("swiglu_backward", (dtype,), gate.size,
                 (_input("dout", dout, dtype, gate.shape), gate, _input("up", up, dtype, gate.shape), dgate, dup,
                  np.int64(gate.size)))
    return dgate, dup


# ----------------------------------------------------------------------------- cross-entropy


def cross_entropy_forward(logits, targets, ignore_index):
    """-> losses (N,), logsumexp (N,) (see numpy_ref); logsumexp is float32 for half-precision
    logits, and a target outside 0..V-1 that is not ignore_index gives a NaN loss."""
    dtype = _float_dtype("logits", logits)
    logits = _device(logits, dtype)  # (N, V)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, V); it is {logits.shape}")
    n, vocab = logits.shape
    losses = cupy.empty(n, dtype=dtype)
    lse = cupy.empty(n, dtype=_stat_dtype(dtype))
    _launch_rows("cross_entropy_forward", dtype, n, vocab,
                 (logits, _indices("targets", targets, n), losses, lse, np.int64(vocab), np.int64(ignore_index)))
    return losses, lse


def cross_entropy_backward(dlosses, logits, targets, lse, ignore_index):
    """-> dlogits (N, V) = (softmax - onehot) * dlosses, 0 on ignored rows (see numpy_ref)."""
    dtype = _float_dtype("logits", logits)
    logits = _device(logits, dtype)  # (N, V)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, V); it is {logits.shape}")
    n, vocab = logits.shape
    dlogits = cupy.empty_like(logits)
    _launch_flat("cross_entropy_backward", (dtype,), logits.size,
                 (_input("dlosses", dlosses, dtype, (n,)), logits, _indices("targets", targets, n),
                  _input("lse", lse, _stat_dtype(dtype), (n,)), dlogits, np.int64(logits.size), np.int64(vocab),
                  np.int64(ignore_index)))
    return dlogits


# ----------------------------------------------------------------------------- embedding


def embedding_backward(dout, ids, num_embeddings):
    """The rows of dout (N, C) summed into a (num_embeddings, C) table at rows ids (N,) (see
    numpy_ref), each table row's occurrences added in row order (sums in float32 for half
    dout): a stable sort by id lines them up, so the result repeats bit for bit, as bit-exact
    resume needs. Ids outside the table are skipped."""
    dtype = _float_dtype("dout", dout)
    dout = _rows(_device(dout, dtype))  # (N, C)
    n, channels = dout.shape
    ids = _indices("ids", ids, n)
    order = cupy.argsort(ids)  # stable: equal ids keep their row order
    starts = cupy.searchsorted(ids[order], cupy.arange(num_embeddings + 1, dtype=cupy.int64))  # (V + 1,)
    dtable = cupy.empty((num_embeddings, channels), dtype=dtype)  # (V, C)
    _launch_flat("embedding_backward", (dtype,), dtable.size,
                 (dout, order, starts, dtable, np.int64(channels), np.int64(num_embeddings)))
    return dtable


# ----------------------------------------------------------------------------- optimizer and norm


def _optimizer_arrays(param, grad, m, v):
    """Check the in-place operands (param, m, v: C-contiguous CuPy arrays of one float32/float64
    dtype and shape) and return grad as a contiguous CuPy array of its own float dtype."""
    for name, array in (("param", param), ("m", m), ("v", v)):
        if not isinstance(array, cupy.ndarray) or not array.flags.c_contiguous:
            raise ValueError(f"AdamW updates param, m and v in place: {name} must be a C-contiguous CuPy array")
        if array.dtype != param.dtype or array.shape != param.shape:
            raise ValueError(f"{name} is {array.dtype} {array.shape}, param is {param.dtype} {param.shape}")
    if param.dtype.name not in cuda.PARAM_DTYPES:
        raise ValueError(f"AdamW keeps float32 or float64 parameters (master copies); param is {param.dtype}")
    return _input("grad", grad, _float_dtype("grad", grad), param.shape)


def _hyperparameters(lr, beta1, beta2, eps, weight_decay):
    """The AdamW kernels take their hyperparameters in double and round them to the parameters'
    type themselves, as NumPy rounds a Python float against a float32 array."""
    return tuple(np.float64(h) for h in (lr, beta1, beta2, eps, weight_decay))


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW update, in place on param, m and v, in one pass (see numpy_ref). grad may be of
    any of the four float dtypes; it is converted to param's."""
    grad = _optimizer_arrays(param, grad, m, v)
    _launch_flat("adamw_step", (param.dtype, grad.dtype), param.size,
                 (param, grad, m, v, np.int64(param.size), *_hyperparameters(lr, beta1, beta2, eps, weight_decay),
                  np.float64(1.0 - beta1**step), np.float64(1.0 - beta2**step)))


def adamw_step_scaled(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, applied_steps, grad_scale):
    """adamw_step with the gradient grad * grad_scale and the step count applied_steps, both read
    by the kernel on the device (0-d CuPy arrays: int64, and param's dtype), so the host never
    waits for them. grad_scale == 0 marks a skipped step (the caller found the gradient not
    finite): nothing changes (see numpy_ref)."""
    grad = _optimizer_arrays(param, grad, m, v)
    applied_steps = cupy.asarray(applied_steps, dtype=cupy.int64)  # no copy when it already is
    grad_scale = cupy.asarray(grad_scale, dtype=param.dtype)
    if applied_steps.size != 1 or grad_scale.size != 1:
        raise ValueError(f"applied_steps and grad_scale must be single numbers; they have shapes "
                         f"{applied_steps.shape} and {grad_scale.shape}")
    _launch_flat("adamw_step_scaled", (param.dtype, grad.dtype), param.size,
                 (param, grad, m, v, np.int64(param.size), *_hyperparameters(lr, beta1, beta2, eps, weight_decay),
                  applied_steps, grad_scale))


def sum_of_squares(x):
    """sum(x^2) over every element, accumulated in float64 (see numpy_ref), as a 0-d float64
    CuPy array, not a Python float: the global gradient norm adds these up on the device, so
    nothing waits for the host. Partial sums per block, then CuPy's sum of those."""
    dtype = _float_dtype("x", x)
    x = _device(x, dtype)
    blocks = max(1, min(PARTIALS, -(-x.size // THREADS)))
    partials = cupy.empty(blocks, dtype=cupy.float64)
    _launch("sum_of_squares", (dtype,), (blocks,), (THREADS,), (x, partials, np.int64(x.size)))
    return partials.sum()


# ----------------------------------------------------------------------------- random numbers


class CounterGenerator:
    """A random source on the device for dropout masks, whose state a checkpoint can save.

    Element k of its stream is a pure function of (seed, k) (splitmix64's k-th output, see
    kernels.cu), so drawing n numbers is one kernel over k = counter .. counter + n - 1, and the
    whole state is two integers. Duck-typed like numpy.random.Generator for what nanollm uses:
    ``random(size, dtype)`` and ``bit_generator.state`` (a plain JSON-able dict, read and set).
    """

    NAME = "nanollm.CounterGenerator"

    def __init__(self, seed=0):
        """seed: an int or a sequence of ints, hashed (BLAKE2b) to the 64-bit seed of the stream."""
        words = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
        digest = hashlib.blake2b(",".join(str(int(w)) for w in words).encode(), digest_size=8).digest()
        self.seed = int.from_bytes(digest, "little")
        self.counter = 0  # elements drawn so far: the next draw starts at element counter

    @property
    def bit_generator(self):
        """numpy's Generator keeps its state on ``.bit_generator``; here the two are one object."""
        return self

    @property
    def state(self):
        """{"bit_generator": "nanollm.CounterGenerator", "seed": int, "counter": int}."""
        return {"bit_generator": self.NAME, "seed": self.seed, "counter": self.counter}

    @state.setter
    def state(self, value):
        if value.get("bit_generator") != self.NAME:
            raise ValueError(f"not a {self.NAME} state: its bit_generator is {value.get('bit_generator')!r} "
                             "(a run on the CPU saves numpy's generator state instead)")
        self.seed, self.counter = int(value["seed"]) % 2**64, int(value["counter"])

    def random(self, size=None, dtype=np.float32):
        """Uniform numbers on [0, 1), a CuPy array of shape size (a 0-d array for None) and dtype
        (any of the four float dtypes); the counter moves on by their number."""
        dtype = np.dtype(dtype)
        if dtype.name not in cuda.SUFFIXES:
            raise ValueError(f"CounterGenerator.random draws float32, float64, float16 or bfloat16; not {dtype}")
        out = cupy.empty(() if size is None else size, dtype=dtype)
        _launch_flat("uniform", (dtype,), out.size,
                     (out, np.int64(out.size), np.uint64(self.seed), np.uint64(self.counter % 2**64)))
        self.counter += out.size
        return out
