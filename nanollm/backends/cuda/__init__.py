"""The CUDA source of the cupy backend (kernels.cu) and the names of the kernels it defines.

Kept free of CuPy, so tests/test_cuda_sources.py can compile the source with nvcc and check
these names on a machine without a GPU. A kernel is an extern "C" function named
``<kernel>_<suffix>``, one per element type (see kernels.cu); ``kernel_name`` builds the name.
"""

from pathlib import Path

SOURCE = Path(__file__).with_name("kernels.cu")

# dtype name -> the suffix of its kernels (bfloat16 is ml_dtypes.bfloat16, which CuPy 14 supports).
SUFFIXES = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}

# Kernels stamped out once per element type.
PER_TYPE = (
    "causal_softmax_forward",
    "causal_softmax_backward",
    "layernorm_forward",
    "layernorm_backward_dx",
    "layernorm_weight_grads",
    "rmsnorm_forward",
    "rmsnorm_backward_dx",
    "rmsnorm_weight_grads",
    "rope",
    "gelu_forward",
    "gelu_backward",
    "swiglu_forward",
    "swiglu_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "embedding_backward",
    "sum_of_squares",
    "uniform",
)

# Kernels stamped out per (parameter type, gradient type): float32/float64 master copies,
# gradients of any of the four types.
PER_PARAM_AND_GRAD = ("adamw_step", "adamw_step_scaled")
PARAM_DTYPES = ("float32", "float64")


def kernel_name(kernel, *dtype_names):
    """kernel_name("causal_softmax_forward", "float32") -> "causal_softmax_forward_f32"."""
    return "_".join([kernel] + [SUFFIXES[name] for name in dtype_names])


KERNEL_NAMES = tuple(
    [kernel_name(kernel, dtype) for kernel in PER_TYPE for dtype in SUFFIXES]
    + [kernel_name(kernel, param, grad) for kernel in PER_PARAM_AND_GRAD for param in PARAM_DTYPES
       for grad in SUFFIXES]
)
