// kernels.cu: the CUDA kernels of nanollm's cupy backend (nanollm/backends/cupy_gpu.py).
//
// cupy_gpu.py loads this file once, at the first kernel it needs, with cupy.RawModule: NVRTC
// compiles it for the GPU at hand and CuPy caches the binary on disk. tests/test_cuda_sources.py
// compiles it with plain nvcc too, so every kernel is checked on a machine without a GPU.
//
// The rules every kernel keeps:
// - The math is numpy_ref's, formula by formula (nanollm/backends/numpy_ref.py is the spec);
//   each kernel's comment repeats its formula.
// - Each kernel is a template over the element type T, stamped out as one extern "C" entry
//   point per type, named <kernel>_<suffix>: f32 float, f64 double, f16 __half, bf16
//   __nv_bfloat16 (the STAMP macros below each template). The AdamW kernels are stamped per
//   pair (parameter type, gradient type): adamw_step_f32_bf16, ...
// - Loads widen T to its compute type A = acc_t<T> (float for float, __half and __nv_bfloat16;
//   double for double); all arithmetic and every sum is in A, and only the store narrows back to
//   T, rounding to nearest. Statistics kept for the backward (mean, rstd, logsumexp) are stored
//   in A, so half-precision inputs get float32 statistics.
// - Row-wise ops (softmax, layernorm, RMSNorm, cross-entropy) run one block per row: the
//   block's threads stride over the row's columns, and row reductions (max, sum) combine first
//   within each warp with shuffles, then across warps through shared memory (block_sum,
//   block_max). blockDim.x is a multiple of 32, at most 1024 (the wrapper picks it).
// - Elementwise ops run a grid-stride loop over a flat 64-bit index.
// - Inputs are C-contiguous; the wrapper flattens (..., C) to rows (N, C).
// - Sums here add in a fixed order, so results repeat bit for bit (embedding_backward too: it
//   adds each row's occurrences in position order, not with atomicAdd, whose order varies).
// - A product that a kernel computes twice (in two loops) is rounded on its own (mul_rn), so the
//   compiler cannot fuse one copy into an FMA and not the other.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

// ----------------------------------------------------------------------------- types

template <typename T> struct Compute { using type = float; };  // float, __half, __nv_bfloat16
template <> struct Compute<double> { using type = double; };
template <typename T> using acc_t = typename Compute<T>::type;

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T narrow(acc_t<T> x);
template <> __device__ __forceinline__ float narrow<float>(float x) { return x; }
template <> __device__ __forceinline__ double narrow<double>(double x) { return x; }
template <> __device__ __forceinline__ __half narrow<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// The math functions of the compute type: single precision for float, double for double.
__device__ __forceinline__ float math_exp(float x) { return expf(x); }
__device__ __forceinline__ double math_exp(double x) { return exp(x); }
__device__ __forceinline__ float math_log(float x) { return logf(x); }
__device__ __forceinline__ double math_log(double x) { return log(x); }
__device__ __forceinline__ float math_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double math_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float math_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double math_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float math_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double math_abs(double x) { return fabs(x); }
__device__ __forceinline__ float math_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double math_max(double a, double b) { return fmax(a, b); }
// a * b rounded on its own, never contracted into an FMA with a following add.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// -infinity and NaN by their bits (NVRTC has no math.h for INFINITY and NAN).
template <typename A> __device__ __forceinline__ A minus_infinity();
template <> __device__ __forceinline__ float minus_infinity<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double minus_infinity<double>() {
    return __longlong_as_double(0xfff0000000000000LL);
}
template <typename A> __device__ __forceinline__ A quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

// One extern "C" entry point per element type: STAMP_KERNEL(T, suffix) defines <name>_<suffix>.
#define FOR_EACH_TYPE(STAMP_KERNEL) \
    STAMP_KERNEL(float, f32) STAMP_KERNEL(double, f64) STAMP_KERNEL(__half, f16) STAMP_KERNEL(__nv_bfloat16, bf16)

// ----------------------------------------------------------------------------- reductions

constexpr unsigned FULL_WARP = 0xffffffffu;

template <typename A> __device__ A warp_sum(A v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_WARP, v, offset);
    return v;
}

template <typename A> __device__ A warp_max(A v) {
    for (int offset = 16; offset > 0; offset /= 2) v = math_max(v, __shfl_xor_sync(FULL_WARP, v, offset));
    return v;
}

// Sum of v over the block, returned to every thread: each warp sums its 32 values, lane 0 of
// each warp leaves its warp's sum in shared memory, and every warp then sums those (<= 32).
template <typename A> __device__ A block_sum(A v) {
    __shared__ A warp_sums[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // a previous call's readers are done with warp_sums
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    return warp_sum(lane < warps ? warp_sums[lane] : A(0));
}

// Max of v over the block, returned to every thread (as block_sum). fmax skips NaN, but a NaN
// in a row still reaches every output of that row through its exp and the row's sum.
template <typename A> __device__ A block_max(A v) {
    __shared__ A warp_maxes[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) warp_maxes[warp] = v;
    __syncthreads();
    return warp_max(lane < warps ? warp_maxes[lane] : minus_infinity<A>());
}

// The grid-stride loop of the elementwise kernels: i runs over [0, n) across the whole grid.
#define GRID_STRIDE_LOOP(i, n)                                                         \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

// ----------------------------------------------------------------------------- causal softmax

// Attention probabilities from raw scores (M * Tq rows of Tk keys), one block per row (query).
// Query i (row % Tq) sits at position Tk - Tq + i and sees keys j < visible = Tk - Tq + i + 1:
// p_j = exp(scale s_j - max) / sum over visible keys; the masked keys get exactly 0, and their
// scores are never read.
template <typename T>
__device__ void causal_softmax_forward(const T* scores, T* probs, long long num_queries, long long num_keys,
                                       acc_t<T> scale) {
    using A = acc_t<T>;
    const long long visible = num_keys - num_queries + blockIdx.x % num_queries + 1;
    scores += blockIdx.x * num_keys;
    probs += blockIdx.x * num_keys;
    A row_max = minus_infinity<A>();
    for (long long j = threadIdx.x; j < visible; j += blockDim.x) row_max = math_max(row_max, widen(scores[j]) * scale);
    row_max = block_max(row_max);
    A total = 0;
    for (long long j = threadIdx.x; j < visible; j += blockDim.x) total += math_exp(widen(scores[j]) * scale - row_max);
    total = block_sum(total);
    for (long long j = threadIdx.x; j < num_keys; j += blockDim.x)
        probs[j] = narrow<T>(j < visible ? math_exp(widen(scores[j]) * scale - row_max) / total : A(0));
}
#define STAMP_CAUSAL_SOFTMAX_FORWARD(T, S)                                                               \
    extern "C" __global__ void causal_softmax_forward_##S(const T* scores, T* probs, long long num_queries, \
                                                          long long num_keys, acc_t<T> scale) {         \
        causal_softmax_forward(scores, probs, num_queries, num_keys, scale);                            \
    }
FOR_EACH_TYPE(STAMP_CAUSAL_SOFTMAX_FORWARD)

// d scores = scale * p * (dp - sum(dp * p)) over the visible keys of each row, 0 for the masked
// ones (whose dprobs are never read).
template <typename T>
__device__ void causal_softmax_backward(const T* dprobs, const T* probs, T* dscores, long long num_queries,
                                        long long num_keys, acc_t<T> scale) {
    using A = acc_t<T>;
    const long long visible = num_keys - num_queries + blockIdx.x % num_queries + 1;
    const long long start = blockIdx.x * num_keys;
    dprobs += start;
    probs += start;
    dscores += start;
    A dot = 0;
    for (long long j = threadIdx.x; j < visible; j += blockDim.x) dot += widen(dprobs[j]) * widen(probs[j]);
    dot = block_sum(dot);
    for (long long j = threadIdx.x; j < num_keys; j += blockDim.x)
        dscores[j] = narrow<T>(j < visible ? widen(probs[j]) * (widen(dprobs[j]) - dot) * scale : A(0));
}
#define STAMP_CAUSAL_SOFTMAX_BACKWARD(T, S)                                                                   \
    extern "C" __global__ void causal_softmax_backward_##S(const T* dprobs, const T* probs, T* dscores,         \
                                                           long long num_queries, long long num_keys,          \
                                                           acc_t<T> scale) {                                   \
        causal_softmax_backward(dprobs, probs, dscores, num_queries, num_keys, scale);                         \
    }
FOR_EACH_TYPE(STAMP_CAUSAL_SOFTMAX_BACKWARD)

// ----------------------------------------------------------------------------- layernorm

// Over each row of x (rows, cols), one block per row: mean = sum(x) / C,
// var = sum((x - mean)^2) / C, rstd = 1 / sqrt(var + eps), out = (x - mean) * rstd * w + b.
template <typename T>
__device__ void layernorm_forward(const T* x, const T* weight, const T* bias, T* out, acc_t<T>* mean_out,
                                  acc_t<T>* rstd_out, long long cols, acc_t<T> eps) {
    using A = acc_t<T>;
    x += blockIdx.x * cols;
    out += blockIdx.x * cols;
    A total = 0;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) total += widen(x[j]);
    const A mean = block_sum(total) / A(cols);
    A squares = 0;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        const A centered = widen(x[j]) - mean;
        squares += centered * centered;
    }
    const A rstd = A(1) / math_sqrt(block_sum(squares) / A(cols) + eps);
    for (long long j = threadIdx.x; j < cols; j += blockDim.x)
        out[j] = narrow<T>((widen(x[j]) - mean) * rstd * widen(weight[j]) + widen(bias[j]));
    if (threadIdx.x == 0) {
        mean_out[blockIdx.x] = mean;
        rstd_out[blockIdx.x] = rstd;
    }
}
#define STAMP_LAYERNORM_FORWARD(T, S)                                                                      \
    extern "C" __global__ void layernorm_forward_##S(const T* x, const T* weight, const T* bias, T* out,   \
                                                     acc_t<T>* mean, acc_t<T>* rstd, long long cols,        \
                                                     acc_t<T> eps) {                                        \
        layernorm_forward(x, weight, bias, out, mean, rstd, cols, eps);                                    \
    }
FOR_EACH_TYPE(STAMP_LAYERNORM_FORWARD)

// dx of layernorm, one block per row: with xhat = (x - mean) * rstd and g = dout * w,
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). dweight and dbias: norm_weight_grads.
template <typename T>
__device__ void layernorm_backward_dx(const T* dout, const T* x, const T* weight, const acc_t<T>* mean,
                                      const acc_t<T>* rstd, T* dx, long long cols) {
    using A = acc_t<T>;
    const long long start = blockIdx.x * cols;
    dout += start;
    x += start;
    dx += start;
    const A row_mean = mean[blockIdx.x], row_rstd = rstd[blockIdx.x];
    A sum_g = 0, sum_g_xhat = 0;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        const A g = mul_rn(widen(dout[j]), widen(weight[j]));
        sum_g += g;
        sum_g_xhat += g * mul_rn(widen(x[j]) - row_mean, row_rstd);
    }
    const A mean_g = block_sum(sum_g) / A(cols), mean_g_xhat = block_sum(sum_g_xhat) / A(cols);
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        const A g = mul_rn(widen(dout[j]), widen(weight[j])), xhat = mul_rn(widen(x[j]) - row_mean, row_rstd);
        dx[j] = narrow<T>(row_rstd * (g - mean_g - xhat * mean_g_xhat));
    }
}
#define STAMP_LAYERNORM_BACKWARD_DX(T, S)                                                                  \
    extern "C" __global__ void layernorm_backward_dx_##S(const T* dout, const T* x, const T* weight,        \
                                                         const acc_t<T>* mean, const acc_t<T>* rstd, T* dx, \
                                                         long long cols) {                                  \
        layernorm_backward_dx(dout, x, weight, mean, rstd, dx, cols);                                      \
    }
FOR_EACH_TYPE(STAMP_LAYERNORM_BACKWARD_DX)

// The weight (and bias) gradients of layernorm and RMSNorm are column sums over all rows:
// dweight_j = sum_i dout_ij xhat_ij, dbias_j = sum_i dout_ij, with xhat = (x - mean) * rstd
// (RMSNorm has no mean and no bias: mean and dbias_parts are null). One thread per column j
// (consecutive threads read consecutive columns), one grid row (blockIdx.y) per strip of
// rows_per_strip rows; each thread writes its strip's partial sums to
// dweight_parts[strip, j] (strips, cols), and the wrapper sums over the strips.
template <typename T>
__device__ void norm_weight_grads(const T* dout, const T* x, const acc_t<T>* mean, const acc_t<T>* rstd,
                                  acc_t<T>* dweight_parts, acc_t<T>* dbias_parts, long long rows, long long cols,
                                  long long rows_per_strip) {
    using A = acc_t<T>;
    const long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (j >= cols) return;
    const long long first = blockIdx.y * rows_per_strip;
    const long long last = first + rows_per_strip < rows ? first + rows_per_strip : rows;
    A dweight = 0, dbias = 0;
    for (long long i = first; i < last; i++) {
        const A d = widen(dout[i * cols + j]);
        const A xhat = (widen(x[i * cols + j]) - (mean ? mean[i] : A(0))) * rstd[i];
        dweight += d * xhat;
        dbias += d;
    }
    dweight_parts[blockIdx.y * cols + j] = dweight;
    if (dbias_parts) dbias_parts[blockIdx.y * cols + j] = dbias;
}
#define STAMP_NORM_WEIGHT_GRADS(T, S)                                                                        \
    extern "C" __global__ void layernorm_weight_grads_##S(const T* dout, const T* x, const acc_t<T>* mean,   \
                                                          const acc_t<T>* rstd, acc_t<T>* dweight_parts,       \
                                                          acc_t<T>* dbias_parts, long long rows, long long cols, \
                                                          long long rows_per_strip) {                          \
        norm_weight_grads(dout, x, mean, rstd, dweight_parts, dbias_parts, rows, cols, rows_per_strip);      \
    }                                                                                                        \
    extern "C" __global__ void rmsnorm_weight_grads_##S(const T* dout, const T* x, const acc_t<T>* rstd,     \
                                                        acc_t<T>* dweight_parts, long long rows, long long cols, \
                                                        long long rows_per_strip) {                            \
        norm_weight_grads(dout, x, (const acc_t<T>*)nullptr, rstd, dweight_parts, (acc_t<T>*)nullptr, rows,  \
                          cols, rows_per_strip);                                                             \
    }
FOR_EACH_TYPE(STAMP_NORM_WEIGHT_GRADS)

// ----------------------------------------------------------------------------- RMSNorm

// Over each row, one block per row: rstd = 1 / sqrt(mean(x^2) + eps), out = x * rstd * w.
template <typename T>
__device__ void rmsnorm_forward(const T* x, const T* weight, T* out, acc_t<T>* rstd_out, long long cols,
                                acc_t<T> eps) {
    using A = acc_t<T>;
    x += blockIdx.x * cols;
    out += blockIdx.x * cols;
    A squares = 0;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) squares += widen(x[j]) * widen(x[j]);
    const A rstd = A(1) / math_sqrt(block_sum(squares) / A(cols) + eps);
    for (long long j = threadIdx.x; j < cols; j += blockDim.x)
        out[j] = narrow<T>(widen(x[j]) * rstd * widen(weight[j]));
    if (threadIdx.x == 0) rstd_out[blockIdx.x] = rstd;
}
#define STAMP_RMSNORM_FORWARD(T, S)                                                                        \
    extern "C" __global__ void rmsnorm_forward_##S(const T* x, const T* weight, T* out, acc_t<T>* rstd,      \
                                                   long long cols, acc_t<T> eps) {                          \
        rmsnorm_forward(x, weight, out, rstd, cols, eps);                                                  \
    }
FOR_EACH_TYPE(STAMP_RMSNORM_FORWARD)

// dx of RMSNorm, one block per row: with xhat = x * rstd and g = dout * w,
// dx = rstd * (g - xhat * mean(g * xhat)). dweight: rmsnorm_weight_grads.
template <typename T>
__device__ void rmsnorm_backward_dx(const T* dout, const T* x, const T* weight, const acc_t<T>* rstd, T* dx,
                                    long long cols) {
    using A = acc_t<T>;
    const long long start = blockIdx.x * cols;
    dout += start;
    x += start;
    dx += start;
    const A row_rstd = rstd[blockIdx.x];
    A sum_g_xhat = 0;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x)
        sum_g_xhat += mul_rn(widen(dout[j]), widen(weight[j])) * mul_rn(widen(x[j]), row_rstd);
    const A mean_g_xhat = block_sum(sum_g_xhat) / A(cols);
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        const A g = mul_rn(widen(dout[j]), widen(weight[j])), xhat = mul_rn(widen(x[j]), row_rstd);
        dx[j] = narrow<T>(row_rstd * (g - xhat * mean_g_xhat));
    }
}
#define STAMP_RMSNORM_BACKWARD_DX(T, S)                                                                    \
    extern "C" __global__ void rmsnorm_backward_dx_##S(const T* dout, const T* x, const T* weight,          \
                                                       const acc_t<T>* rstd, T* dx, long long cols) {        \
        rmsnorm_backward_dx(dout, x, weight, rstd, dx, cols);                                              \
    }
FOR_EACH_TYPE(STAMP_RMSNORM_BACKWARD_DX)

// ----------------------------------------------------------------------------- RoPE

// Rotary embedding, half-split pairs: x (M, T, hd), cos and sin (T, hd/2); one thread per pair
// (channel i and channel i + hd/2 of one position t), rotated by its angle:
//   out1 = x1 cos - x2 sin ;  out2 = x2 cos + x1 sin.
// sign = -1 gives the backward, the rotation by minus the angle.
template <typename T>
__device__ void rope(const T* x, const T* cos, const T* sin, T* out, long long pairs, long long positions,
                     long long half, acc_t<T> sign) {
    using A = acc_t<T>;
    GRID_STRIDE_LOOP(p, pairs) {
        const long long row = p / half, i = p % half, t = row % positions;
        const long long first = row * 2 * half + i, second = first + half;
        const A c = widen(cos[t * half + i]), s = sign * widen(sin[t * half + i]);
        const A x1 = widen(x[first]), x2 = widen(x[second]);
        out[first] = narrow<T>(x1 * c - x2 * s);
        out[second] = narrow<T>(x2 * c + x1 * s);
    }
}
#define STAMP_ROPE(T, S)                                                                                   \
    extern "C" __global__ void rope_##S(const T* x, const T* cos, const T* sin, T* out, long long pairs,     \
                                        long long positions, long long half, acc_t<T> sign) {              \
        rope(x, cos, sin, out, pairs, positions, half, sign);                                              \
    }
FOR_EACH_TYPE(STAMP_ROPE)

// ----------------------------------------------------------------------------- GELU

constexpr double GELU_SCALE = 0.7978845608028654;  // sqrt(2 / pi), numpy_ref.GELU_SCALE
constexpr double GELU_CUBIC = 0.044715;

// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise.
template <typename T> __device__ void gelu_forward(const T* x, T* out, long long n) {
    using A = acc_t<T>;
    GRID_STRIDE_LOOP(i, n) {
        const A v = widen(x[i]);
        const A inner = A(GELU_SCALE) * (v + A(GELU_CUBIC) * v * v * v);
        out[i] = narrow<T>(A(0.5) * v * (A(1) + math_tanh(inner)));
    }
}
#define STAMP_GELU_FORWARD(T, S) \
    extern "C" __global__ void gelu_forward_##S(const T* x, T* out, long long n) { gelu_forward(x, out, n); }
FOR_EACH_TYPE(STAMP_GELU_FORWARD)

// dx = dout (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)), t = tanh(inner).
template <typename T> __device__ void gelu_backward(const T* dout, const T* x, T* dx, long long n) {
    using A = acc_t<T>;
    GRID_STRIDE_LOOP(i, n) {
        const A v = widen(x[i]);
        const A t = math_tanh(A(GELU_SCALE) * (v + A(GELU_CUBIC) * v * v * v));
        const A dinner = A(GELU_SCALE) * (A(1) + A(3 * GELU_CUBIC) * v * v);
        dx[i] = narrow<T>(widen(dout[i]) * (A(0.5) * (A(1) + t) + A(0.5) * v * (A(1) - t * t) * dinner));
    }
}
#define STAMP_GELU_BACKWARD(T, S)                                                                          \
    extern "C" __global__ void gelu_backward_##S(const T* dout, const T* x, T* dx, long long n) {           \
        gelu_backward(dout, x, dx, n);                                                                     \
    }
FOR_EACH_TYPE(STAMP_GELU_BACKWARD)

// ----------------------------------------------------------------------------- SwiGLU

// sigmoid(g) from e = exp(-|g|) <= 1: 1 / (1 + e) for g >= 0, e / (1 + e) below. Nothing
// overflows, and the far negative tail keeps its relative precision.
template <typename A> __device__ __forceinline__ A sigmoid(A g) {
    const A e = math_exp(-math_abs(g));
    return (g >= A(0) ? A(1) : e) / (A(1) + e);
}

// out = silu(gate) * up = gate * sigmoid(gate) * up, elementwise.
template <typename T> __device__ void swiglu_forward(const T* gate, const T* up, T* out, long long n) {
    using A = acc_t<T>;
    GRID_STRIDE_LOOP(i, n) {
        const A g = widen(gate[i]);
        out[i] = narrow<T>(g * sigmoid(g) * widen(up[i]));
    }
}
#define STAMP_SWIGLU_FORWARD(T, S)                                                                         \
    extern "C" __global__ void swiglu_forward_##S(const T* gate, const T* up, T* out, long long n) {        \
        swiglu_forward(gate, up, out, n);                                                                  \
    }
FOR_EACH_TYPE(STAMP_SWIGLU_FORWARD)

// With s = sigmoid(gate): dgate = dout * up * s (1 + gate (1 - s)), dup = dout * gate * s.
template <typename T>
__device__ void swiglu_backward(const T* dout, const T* gate, const T* up, T* dgate, T* dup, long long n) {
    using A = acc_t<T>;
    GRID_STRIDE_LOOP(i, n) {
        const A d = widen(dout[i]), g = widen(gate[i]), s = sigmoid(g);
        dgate[i] = narrow<T>(d * widen(up[i]) * s * (A(1) + g * (A(1) - s)));
        dup[i] = narrow<T>(d * g * s);
    }
}
#define STAMP_SWIGLU_BACKWARD(T, S)                                                                        \
    extern "C" __global__ void swiglu_backward_##S(const T* dout, const T* gate, const T* up, T* dgate,     \
                                                   T* dup, long long n) {                                  \
        swiglu_backward(dout, gate, up, dgate, dup, n);                                                    \
    }
FOR_EACH_TYPE(STAMP_SWIGLU_BACKWARD)

// ----------------------------------------------------------------------------- cross-entropy

// Per row of logits (rows, V), one block per row: lse = max + log(sum(exp(x - max))) and
// loss = lse - x[target], 0 where target == ignore_index. A target outside 0..V-1 that is not
// ignore_index gives a NaN loss (NumPy would raise an IndexError; a kernel cannot).
template <typename T>
__device__ void cross_entropy_forward(const T* logits, const long long* targets, T* losses, acc_t<T>* lse_out,
                                      long long vocab, long long ignore_index) {
    using A = acc_t<T>;
    logits += blockIdx.x * vocab;
    A row_max = minus_infinity<A>();
    for (long long j = threadIdx.x; j < vocab; j += blockDim.x) row_max = math_max(row_max, widen(logits[j]));
    row_max = block_max(row_max);
    A total = 0;
    for (long long j = threadIdx.x; j < vocab; j += blockDim.x) total += math_exp(widen(logits[j]) - row_max);
    const A lse = row_max + math_log(block_sum(total));
    if (threadIdx.x == 0) {
        const long long target = targets[blockIdx.x];
        A loss = quiet_nan<A>();
        if (target == ignore_index) loss = A(0);
        else if (target >= 0 && target < vocab) loss = lse - widen(logits[target]);
        losses[blockIdx.x] = narrow<T>(loss);
        lse_out[blockIdx.x] = lse;
    }
}
#define STAMP_CROSS_ENTROPY_FORWARD(T, S)                                                                  \
    extern "C" __global__ void cross_entropy_forward_##S(const T* logits, const long long* targets, T* losses, \
                                                         acc_t<T>* lse, long long vocab, long long ignore_index) { \
        cross_entropy_forward(logits, targets, losses, lse, vocab, ignore_index);                          \
    }
FOR_EACH_TYPE(STAMP_CROSS_ENTROPY_FORWARD)

// dlogits = (softmax(logits) - onehot(target)) * dloss, elementwise over (rows, V), the softmax
// rebuilt as exp(x - lse); rows whose target is ignore_index get 0.
template <typename T>
__device__ void cross_entropy_backward(const T* dlosses, const T* logits, const long long* targets,
                                       const acc_t<T>* lse, T* dlogits, long long n, long long vocab,
                                       long long ignore_index) {
    using A = acc_t<T>;
    GRID_STRIDE_LOOP(i, n) {
        const long long row = i / vocab, j = i % vocab, target = targets[row];
        const A dloss = target == ignore_index ? A(0) : widen(dlosses[row]);
        const A p = math_exp(widen(logits[i]) - lse[row]);
        dlogits[i] = narrow<T>((p - (j == target ? A(1) : A(0))) * dloss);
    }
}
#define STAMP_CROSS_ENTROPY_BACKWARD(T, S)                                                                  \
    extern "C" __global__ void cross_entropy_backward_##S(const T* dlosses, const T* logits,                \
                                                          const long long* targets, const acc_t<T>* lse,     \
                                                          T* dlogits, long long n, long long vocab,          \
                                                          long long ignore_index) {                          \
        cross_entropy_backward(dlosses, logits, targets, lse, dlogits, n, vocab, ignore_index);             \
    }
FOR_EACH_TYPE(STAMP_CROSS_ENTROPY_BACKWARD)

// ----------------------------------------------------------------------------- embedding

// dtable[v, c] = the sum of dout[r, c] over the rows r whose id is v, added in row order, so
// the bits repeat run to run (atomicAdd's order, and so its last bits, would vary). The wrapper
// sorts the rows by id, stably: order (rows,) lists them, and rows order[starts[v]] ..
// order[starts[v + 1] - 1] are v's. One thread per table element (V, C); consecutive threads
// read consecutive channels of a row. Ids outside 0..V-1 fall outside every segment: skipped.
template <typename T>
__device__ void embedding_backward(const T* dout, const long long* order, const long long* starts, T* dtable,
                                   long long channels, long long num_embeddings) {
    GRID_STRIDE_LOOP(i, num_embeddings * channels) {
        const long long v = i / channels, c = i % channels;
        acc_t<T> total = 0;
        for (long long s = starts[v]; s < starts[v + 1]; s++) total += widen(dout[order[s] * channels + c]);
        dtable[i] = narrow<T>(total);
    }
}
#define STAMP_EMBEDDING_BACKWARD(T, S)                                                                     \
    extern "C" __global__ void embedding_backward_##S(const T* dout, const long long* order,               \
                                                      const long long* starts, T* dtable, long long channels, \
                                                      long long num_embeddings) {                          \
        embedding_backward(dout, order, starts, dtable, channels, num_embeddings);                         \
    }
FOR_EACH_TYPE(STAMP_EMBEDDING_BACKWARD)

// ----------------------------------------------------------------------------- AdamW

// One AdamW update, in place, elementwise over param, m, v (type P: float or double, the master
// copies) and grad (type G, any of the four), in P's precision like numpy_ref (hyperparameters
// arrive in double and round to P once, as NumPy rounds a Python float against a P array):
//   g = grad * grad_scale
//   param *= 1 - lr * weight_decay                      (skipped when weight_decay == 0)
//   m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
//   param -= lr * (m / bias1) / (sqrt(v / bias2) + eps),  bias_k = 1 - beta_k^step
template <typename P, typename G>
__device__ void adamw_update(P* param, const G* grad, P* m, P* v, long long n, double lr, double beta1, double beta2,
                             double eps, double weight_decay, double bias1, double bias2, P grad_scale) {
    const P decay = P(1.0 - lr * weight_decay), b1 = P(beta1), b2 = P(beta2), one_minus_b1 = P(1.0 - beta1),
            one_minus_b2 = P(1.0 - beta2), c1 = P(bias1), c2 = P(bias2), rate = P(lr), epsilon = P(eps);
    GRID_STRIDE_LOOP(i, n) {
        const P g = P(widen(grad[i])) * grad_scale;
        P p = param[i];
        if (weight_decay != 0.0) p *= decay;
        const P m_new = b1 * m[i] + one_minus_b1 * g;
        const P v_new = b2 * v[i] + one_minus_b2 * g * g;
        m[i] = m_new;
        v[i] = v_new;
        param[i] = p - rate * (m_new / c1) / (math_sqrt(v_new / c2) + epsilon);
    }
}

// adamw_step: the step count (so bias1, bias2) comes from the host.
// adamw_step_scaled: the step count and the gradient's scale are read on the device, from
// applied_steps (int64) and grad_scale (type P): the host never waits for them. grad_scale == 0
// marks a skipped step (a non-finite gradient): the kernel then changes nothing.
#define STAMP_ADAMW(P, PS, G, GS)                                                                              \
    extern "C" __global__ void adamw_step_##PS##_##GS(P* param, const G* grad, P* m, P* v, long long n,         \
                                                      double lr, double beta1, double beta2, double eps,        \
                                                      double weight_decay, double bias1, double bias2) {        \
        adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bias1, bias2, P(1));           \
    }                                                                                                          \
    extern "C" __global__ void adamw_step_scaled_##PS##_##GS(P* param, const G* grad, P* m, P* v, long long n,  \
                                                             double lr, double beta1, double beta2, double eps, \
                                                             double weight_decay, const long long* applied_steps, \
                                                             const P* grad_scale) {                            \
        const P scale = *grad_scale;                                                                           \
        if (scale == P(0)) return;                                                                             \
        const double step = double(*applied_steps);                                                            \
        adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, 1.0 - pow(beta1, step),         \
                     1.0 - pow(beta2, step), scale);                                                           \
    }
#define STAMP_ADAMW_FOR_EACH_GRAD_TYPE(P, PS) \
    STAMP_ADAMW(P, PS, float, f32) STAMP_ADAMW(P, PS, double, f64) STAMP_ADAMW(P, PS, __half, f16) \
    STAMP_ADAMW(P, PS, __nv_bfloat16, bf16)
STAMP_ADAMW_FOR_EACH_GRAD_TYPE(float, f32)
STAMP_ADAMW_FOR_EACH_GRAD_TYPE(double, f64)

// ----------------------------------------------------------------------------- sum of squares

// Partial sums of x^2 in double, one per block (partials: gridDim.x): the wrapper adds them up
// on the device. Two stages instead of a double atomicAdd, so the sum repeats bit for bit.
template <typename T> __device__ void sum_of_squares(const T* x, double* partials, long long n) {
    double total = 0;
    GRID_STRIDE_LOOP(i, n) {
        const double v = double(widen(x[i]));
        total += v * v;
    }
    total = block_sum(total);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}
#define STAMP_SUM_OF_SQUARES(T, S)                                                                         \
    extern "C" __global__ void sum_of_squares_##S(const T* x, double* partials, long long n) {              \
        sum_of_squares(x, partials, n);                                                                    \
    }
FOR_EACH_TYPE(STAMP_SUM_OF_SQUARES)

// ----------------------------------------------------------------------------- random numbers

// Element k of a counter-based stream: splitmix64's k-th output for this seed,
// z = seed + (k + 1) * 0x9E3779B97F4A7C15 put through its finaliser (Steele, Lea and Flood,
// 2014; it passes BigCrush). Any element can be computed alone, in any order.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long seed, unsigned long long k) {
    unsigned long long z = seed + (k + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Significant bits of each type: a uniform of that many random bits is exact in it.
template <typename T> struct Precision;
template <> struct Precision<float> { static constexpr int bits = 24; };
template <> struct Precision<double> { static constexpr int bits = 53; };
template <> struct Precision<__half> { static constexpr int bits = 11; };
template <> struct Precision<__nv_bfloat16> { static constexpr int bits = 8; };

// out[i] = (top `bits` bits of splitmix64(seed, counter + i)) / 2^bits: uniform on [0, 1),
// every value a multiple of 2^-bits, so exact in T (never rounds up to 1).
template <typename T>
__device__ void uniform(T* out, long long n, unsigned long long seed, unsigned long long counter) {
    using A = acc_t<T>;
    constexpr int bits = Precision<T>::bits;
    const A unit = A(1.0 / double(1ULL << bits));
    GRID_STRIDE_LOOP(i, n) out[i] = narrow<T>(A(splitmix64(seed, counter + i) >> (64 - bits)) * unit);
}
#define STAMP_UNIFORM(T, S)                                                                                \
    extern "C" __global__ void uniform_##S(T* out, long long n, unsigned long long seed,                    \
                                           unsigned long long counter) {                                   \
        uniform(out, n, seed, counter);                                                                    \
    }
FOR_EACH_TYPE(STAMP_UNIFORM)
