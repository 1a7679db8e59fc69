"""The math of the model: one file per layer, each a forward/backward pair.

    out, cache = <layer>_forward(inputs...)
    grads = <layer>_backward(dout, cache)     # one gradient per forward input, same order

Ops are written against ``backends.array_module(x)`` and reach their hot loops through
``backends.current()``, so the same code runs on every backend and on CuPy arrays.
"""

from nanollm.ops.attention import attention_backward, attention_forward
from nanollm.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward
from nanollm.ops.dropout import dropout_backward, dropout_forward
from nanollm.ops.embedding import embedding_backward, embedding_forward
from nanollm.ops.flash_attention import flash_attention_backward, flash_attention_forward
from nanollm.ops.gelu import gelu_backward, gelu_forward
from nanollm.ops.layernorm import layernorm_backward, layernorm_forward
from nanollm.ops.linear import linear_backward, linear_forward
from nanollm.ops.mlp import mlp_backward, mlp_forward, swiglu_mlp_backward, swiglu_mlp_forward
from nanollm.ops.residual import residual_backward, residual_forward
from nanollm.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward
from nanollm.ops.rope import rope_backward, rope_forward, rope_tables
from nanollm.ops.swiglu import swiglu_backward, swiglu_forward

__all__ = [
    "attention_backward", "attention_forward",
    "cross_entropy_backward", "cross_entropy_forward",
    "dropout_backward", "dropout_forward",
    "embedding_backward", "embedding_forward",
    "flash_attention_backward", "flash_attention_forward",
    "gelu_backward", "gelu_forward",
    "layernorm_backward", "layernorm_forward",
    "linear_backward", "linear_forward",
    "mlp_backward", "mlp_forward",
    "residual_backward", "residual_forward",
    "rmsnorm_backward", "rmsnorm_forward",
    "rope_backward", "rope_forward", "rope_tables",
    "swiglu_backward", "swiglu_forward", "swiglu_mlp_backward", "swiglu_mlp_forward",
]
