"""Update rules as plain functions of (param, grad, state, hyper-parameters), in place.

    state = OPTIMIZERS["adamw"].init(param)
    OPTIMIZERS["adamw"].update(param, grad, state, lr=1e-3, weight_decay=0.1)

Each rule follows PyTorch's definition of the optimizer of the same name, so the two can be
compared step for step. Which parameters get weight decay is the caller's choice (training
decays 2-D weights and embeddings only). ``clip_grad_norm`` scales all gradients together.
"""

import math
from fnmatch import fnmatchcase
from typing import Callable, NamedTuple

from nanollm import backends


def sgd_init(param):
    """SGD's state: the momentum buffer (created at the first step, as PyTorch does)."""
    return {"momentum_buffer": None, "step": 0}


def sgd_update(param, grad, state, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """SGD with optional (Nesterov) momentum and L2 weight decay, as torch.optim.SGD:

    g = grad + weight_decay * param ;  buf = momentum * buf + g  (buf = g at the first step)
    param -= lr * (g + momentum * buf if nesterov else buf)
    """
    if nesterov and momentum <= 0:
        raise ValueError("nesterov momentum needs momentum > 0")
    state["step"] += 1
    g = grad + weight_decay * param if weight_decay else grad
    if momentum:
        buf = state["momentum_buffer"]
        if buf is None:
            buf = state["momentum_buffer"] = g.copy()
        else:
            buf *= momentum
            buf += g
        g = g + momentum * buf if nesterov else buf
    param -= lr * g


def adam_init(param):
    """Adam's state: first and second moments and the step count."""
    xp = backends.array_module(param)
    return {"m": xp.zeros_like(param), "v": xp.zeros_like(param), "step": 0}


def adam_update(param, grad, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """Adam (Kingma & Ba) with L2 weight decay folded into the gradient, as torch.optim.Adam."""
    state["step"] += 1
    grad = grad + weight_decay * param if weight_decay else grad
    backends.current().adamw_step(param, grad, state["m"], state["v"], lr, beta1, beta2, eps, 0.0, state["step"])


def adamw_update(param, grad, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """AdamW (Loshchilov & Hutter), as torch.optim.AdamW: decoupled decay, then the Adam step.

    param -= lr * weight_decay * param
    m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
    param -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    """
    state["step"] += 1
    backends.current().adamw_step(param, grad, state["m"], state["v"], lr, beta1, beta2, eps, weight_decay,
                                  state["step"])


adamw_init = adam_init


def lion_init(param):
    """Lion's state: one momentum (exponential average of gradients)."""
    xp = backends.array_module(param)
    return {"m": xp.zeros_like(param), "step": 0}


def lion_update(param, grad, state, lr, beta1=0.9, beta2=0.99, weight_decay=0.0):
    """Lion (Chen et al., 2023): the sign of an interpolated momentum, decoupled decay.

    param -= lr * (sign(beta1 m + (1 - beta1) g) + weight_decay * param) ;  m = beta2 m + (1 - beta2) g
    """
    xp = backends.array_module(param)
    state["step"] += 1
    m = state["m"]
    direction = xp.sign(beta1 * m + (1.0 - beta1) * grad)
    if weight_decay:
        param *= 1.0 - lr * weight_decay
    param -= lr * direction
    m *= beta2
    m += (1.0 - beta2) * grad


class Optimizer(NamedTuple):
    init: Callable
    update: Callable


OPTIMIZERS = {
    "sgd": Optimizer(sgd_init, sgd_update),
    "adam": Optimizer(adam_init, adam_update),
    "adamw": Optimizer(adamw_init, adamw_update),
    "lion": Optimizer(lion_init, lion_update),
}


def decays(name, param, no_decay=None):
    """Whether weight decay applies to a parameter. By default the 2-D weight matrices and
    embeddings decay and the 1-D biases and norm gains do not; ``no_decay``, a list of name
    patterns ("*.bias", "wpe"), replaces that rule: every parameter matching none decays."""
    if no_decay is None:
        return param.ndim >= 2
    return not any(fnmatchcase(name, pattern) for pattern in no_decay)


def hyperparameters(cfg):
    """The keyword arguments of cfg["optimizer"]'s update rule, taken from a resolved config
    (everything except lr and weight_decay, which change per step and per parameter)."""
    beta1, beta2 = cfg["betas"]
    return {
        "sgd": dict(momentum=cfg["momentum"], nesterov=cfg["nesterov"]),
        "adam": dict(beta1=beta1, beta2=beta2, eps=cfg["eps"]),
        "adamw": dict(beta1=beta1, beta2=beta2, eps=cfg["eps"]),
        "lion": dict(beta1=beta1, beta2=beta2),
    }[cfg["optimizer"]]


def global_grad_norm(grads):
    """The L2 norm of all gradients taken together, as one float."""
    sum_of_squares = backends.current().sum_of_squares
    return sum(sum_of_squares(g) for g in grads.values()) ** 0.5


def clip_grad_norm(grads, max_norm):
    """Scale every gradient in place so their global norm is at most max_norm (0 or None: off).

    Returns the norm before clipping, as torch.nn.utils.clip_grad_norm_ does. A NaN or Inf norm
    leaves the gradients as they are, for the caller to stop on."""
    norm = global_grad_norm(grads)
    if max_norm and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm
