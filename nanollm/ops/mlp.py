"""The transformer's two feed-forward blocks, a forward/backward pair each:

    gpt2  mlp_forward         out = proj(gelu(fc(x)))               x (..., C) -> out (..., C)
    llama swiglu_mlp_forward  out = down(silu(gate(x)) * up(x))     no biases (SwiGLU, Shazeer 2020)
          mlp_forward(activation="relu2")  out = proj(relu(fc(x))^2)  the speedrun's MLP (either architecture)

Each is written once over its linear layers, a ``Linear`` pair of functions: plain
``linear_forward`` / ``linear_backward`` by default (what notebooks and tests check). The model
runs these same functions with its own pair, whose layers also carry LoRA adapters: to that
pair a weight argument is a matrix's name ("mlp.fc"), and the weight gradients it returns are
dicts of that matrix's parameter gradients.
"""

from typing import Callable, NamedTuple

from nanollm.ops.gelu import gelu_backward, gelu_forward
from nanollm.ops.linear import linear_backward, linear_forward
from nanollm.ops.relu_squared import relu_squared_backward, relu_squared_forward
from nanollm.ops.swiglu import swiglu_backward, swiglu_forward


class Linear(NamedTuple):
    """A linear layer as the feed-forward blocks call it."""
    forward: Callable   # (x, weight, bias) -> (out, cache)
    backward: Callable  # (dout, cache) -> (dx, dweight, dbias)


PLAIN_LINEAR = Linear(linear_forward, linear_backward)
# The two-matrix MLP's activations: name -> (forward, backward). SwiGLU has a third matrix and its own pair.
ACTIVATIONS = {"gelu": (gelu_forward, gelu_backward), "relu2": (relu_squared_forward, relu_squared_backward)}


def mlp_forward(x, fc_weight, fc_bias, proj_weight, proj_bias, linear=PLAIN_LINEAR, activation="gelu"):
    """x (..., C), fc_weight (C, F), fc_bias (F,) or None, proj_weight (F, C), proj_bias (C,) or None
    -> out (..., C); activation: a key of ACTIVATIONS."""
    activation_forward, activation_backward = ACTIVATIONS[activation]
    hidden, fc_cache = linear.forward(x, fc_weight, fc_bias)  # (..., F)
    activated, activation_cache = activation_forward(hidden)  # (..., F)
    out, proj_cache = linear.forward(activated, proj_weight, proj_bias)  # (..., C)
    return out, (fc_cache, activation_cache, activation_backward, proj_cache, linear)


def mlp_backward(dout, cache):
    """dout (..., C) -> dx, dfc_weight, dfc_bias, dproj_weight, dproj_bias (the forward's inputs)."""
    fc_cache, activation_cache, activation_backward, proj_cache, linear = cache
    dactivated, dproj_weight, dproj_bias = linear.backward(dout, proj_cache)
    dhidden = activation_backward(dactivated, activation_cache)
    dx, dfc_weight, dfc_bias = linear.backward(dhidden, fc_cache)
    return dx, dfc_weight, dfc_bias, dproj_weight, dproj_bias


def swiglu_mlp_forward(x, gate_weight, up_weight, down_weight, linear=PLAIN_LINEAR):
    """x (..., C), gate_weight and up_weight (C, F), down_weight (F, C) -> out (..., C)."""
    gate, gate_cache = linear.forward(x, gate_weight, None)  # (..., F)
    up, up_cache = linear.forward(x, up_weight, None)  # (..., F)
    hidden, swiglu_cache = swiglu_forward(gate, up)  # (..., F)
    out, down_cache = linear.forward(hidden, down_weight, None)  # (..., C)
    return out, (gate_cache, up_cache, swiglu_cache, down_cache, linear)


def swiglu_mlp_backward(dout, cache):
    """dout (..., C) -> dx, dgate_weight, dup_weight, ddown_weight (the forward's inputs)."""
    gate_cache, up_cache, swiglu_cache, down_cache, linear = cache
    dhidden, ddown_weight, _ = linear.backward(dout, down_cache)
    dgate, dup = swiglu_backward(dhidden, swiglu_cache)
    dx_up, dup_weight, _ = linear.backward(dup, up_cache)
    dx_gate, dgate_weight, _ = linear.backward(dgate, gate_cache)
    return dx_gate + dx_up, dgate_weight, dup_weight, ddown_weight
