"""Update rules as plain functions of (param, grad, state, hyper-parameters), in place.

    state = OPTIMIZERS["adamw"].init(param)
    OPTIMIZERS["adamw"].update(param, grad, state, lr=1e-3, weight_decay=0.1)

Each rule follows PyTorch's definition of the optimizer of the same name, so the two can be
compared step for step. Which parameters get weight decay is the caller's choice (training
decays 2-D weights and embeddings only). ``clip_grad_norm`` scales all gradients together.

Muon is for 2-D weight matrices only: optimizer="muon" in a config means Muon for the hidden
matrices ``uses_muon`` picks and AdamW for every other parameter; ``rule_for(name, param, cfg)``
says, per parameter, which rule a config uses and with what settings.

Sophia keeps a curvature estimate h beside its momentum: its Optimizer carries a ``hessian``
rule (h from a gradient of sampled labels, which nanollm.sophia computes every
sophia_hessian_interval steps), and its update takes the step's token count.
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


def adamw_update(param, grad, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=None):
    """AdamW (Loshchilov & Hutter), as torch.optim.AdamW: decoupled decay, then the Adam step.

    param -= lr * weight_decay * param
    m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
    param -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    grad_scale (training passes it; None: 1) is a 0-d array on param's device: g = grad *
    grad_scale (the clip factor, over float16's loss scale), and 0 skips the step, leaving
    param, m, v and the step count t as they were. Nothing here reads the device, so a GPU
    loop never waits for the host (the fused adamw_step_scaled primitive does the work)."""
    if grad_scale is None:
        grad_scale = backends.array_module(param).asarray(1, dtype=param.dtype)
    state["step"] = state["step"] + (grad_scale != 0)  # t: a 0-d device integer during training
    backends.current().adamw_step_scaled(param, grad, state["m"], state["v"], lr, beta1, beta2, eps, weight_decay,
                                         state["step"], grad_scale)


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


# ---------------------------------------------------------------------------- Muon
#
# Muon (Keller Jordan, 2024; "MomentUm Orthogonalized by Newton-Schulz") replaces the momentum
# of a weight matrix by the nearest (semi-)orthogonal matrix before stepping: every direction
# of the update, rare or common, moves by about the same amount. This follows the code of
# torch.optim.Muon (itself Keller Jordan's muon.py) line for line, with two differences that
# change nothing but the rounding:
#   - torch runs the Newton-Schulz iteration in bfloat16 (fast on GPUs); here it runs in the
#     parameter's own dtype (NumPy has no bfloat16), float32 or float64.
#   - nanollm stores a weight as (in, out) (GPT-2's Conv1D layout, x @ W), torch's nn.Linear as
#     (out, in). Orthogonalising W^T gives the transpose of orthogonalising W, so the update
#     is the same; the learning-rate shape factor is the one place where the layout matters,
#     and muon_lr_factor reads fan_in, fan_out as (in, out) to give torch's factor.

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (a, b, c), as torch's default
NS_EPS = 1e-7                                # guard of the normalisation (torch.optim.Muon's eps)
MUON_ADJUST_LR = ("original", "match_rms_adamw")  # torch.optim.Muon's adjust_lr_fn choices
ADAMW_MATRICES = ("wte", "wpe", "lm_head.weight")  # 2-D, but embeddings / output layer: AdamW


def uses_muon(name, param):
    """Whether optimizer="muon" updates this parameter with Muon (True) or with AdamW (False).

    Muon orthogonalises a matrix-shaped update, which suits the hidden layers: the attention
    (qkv, proj) and MLP (fc, proj; llama's gate, up, down) weight matrices. The embeddings
    (wte, wpe: rows looked up one token at a time, not a linear map of the residual stream),
    the output layer (lm_head.weight when untied; by default it is wte) and every 1-D parameter
    (biases, norm gains) stay on AdamW, as Keller Jordan's recipe and torch.optim.Muon's
    documentation advise.
    param: the array, or just its shape."""
    shape = getattr(param, "shape", param)
    return len(shape) == 2 and name not in ADAMW_MATRICES


def newton_schulz(g, steps=5, coefficients=NS_COEFFICIENTS, eps=NS_EPS):
    """About the orthogonal factor of g: U S' V^T for g = U S V^T, every S' near 1.

    g: (m, n) -> (m, n), same dtype. Each step is the quintic X <- a X + (b A + c A^2) X with
    A = X X^T, which maps every singular value s of X to a s + b s^3 + c s^5 and keeps the
    singular vectors. The coefficients make the slope at 0 large (a = 3.4 per step), so small
    singular values grow fast, at the price of not converging to exactly 1: after 5 steps every
    singular value of g / ||g||_F above 0.02 lands in [0.68, 1.14] (torch's docstring: that does
    not hurt training). Dividing by the Frobenius norm first puts every singular value in
    [0, 1], where the iteration is stable. A tall g is transposed so that A is the smaller
    (min(m, n))^2 gram matrix; orthogonalising g^T gives the transpose of orthogonalising g.
    As torch.optim._muon._zeropower_via_newtonschulz, but in g's dtype instead of bfloat16.
    """
    xp = backends.array_module(g)
    a, b, c = coefficients
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g                       # (r, k), r <= k
    x = x / xp.maximum(xp.linalg.norm(x), eps)   # Frobenius norm 1: spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T                           # A: (r, r)
        poly = b * gram + c * (gram @ gram)      # b A + c A^2: (r, r)
        x = a * x + poly @ x                     # (r, k)
    return x.T if tall else x


def muon_lr_factor(shape, adjust_lr="original"):
    """The factor torch.optim.Muon's adjust_lr_fn puts on the learning rate of a weight matrix
    of nanollm's ``shape`` = (fan_in, fan_out).

    torch's rule reads its (out, in) Linear weight as (A, B) = (fan_out, fan_in), so on
    nanollm's (in, out) layout A = shape[1] and B = shape[0]:
      original          sqrt(max(1, fan_out / fan_in))   Keller Jordan's: a widening layer's
                        orthogonal update maps unit-RMS inputs to outputs of RMS
                        sqrt(fan_in / fan_out), and this brings it back to 1
      match_rms_adamw   0.2 sqrt(max(fan_in, fan_out))   Moonshot's: an orthogonal update has RMS
                        1 / sqrt(max(fan_in, fan_out)), so this gives AdamW's typical update RMS
                        of 0.2 and lets Muon reuse AdamW's learning rate and weight decay
    """
    fan_in, fan_out = shape
    if adjust_lr == "original":
        return math.sqrt(max(1, fan_out / fan_in))
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(fan_in, fan_out))
    raise ValueError(f"adjust_lr={adjust_lr!r} is not one of {', '.join(MUON_ADJUST_LR)}")


def muon_init(param):
    """Muon's state: the momentum buffer (zeros, as torch.optim.Muon creates it) and the step count."""
    if param.ndim != 2:
        raise ValueError(f"Muon updates 2-D weight matrices only, got a parameter of shape {tuple(param.shape)}; "
                         "use AdamW for the others (optimizer='muon' in a config does)")
    xp = backends.array_module(param)
    return {"momentum_buffer": xp.zeros_like(param), "step": 0}


def muon_update(param, grad, state, lr, momentum=0.95, nesterov=True, ns_steps=5, adjust_lr="original",
                weight_decay=0.0, coefficients=NS_COEFFICIENTS, eps=NS_EPS):
    """Muon, as torch.optim.Muon (its code, which keeps the buffer an average of gradients):

    buf = momentum buf + (1 - momentum) g                      (torch: buf.lerp_(g, 1 - momentum))
    u = (1 - momentum) g + momentum buf if nesterov else buf   (torch: g.lerp(buf, momentum))
    param -= lr * weight_decay * param                         (decoupled, at the unadjusted lr)
    param -= lr * muon_lr_factor(shape) * newton_schulz(u)

    param, grad, buf: (fan_in, fan_out), nanollm's layout (see muon_lr_factor). The average
    differs from the sum in torch's docstring (B = momentum B + g) by a constant factor
    (1 - momentum), which the normalisation inside newton_schulz removes (up to its eps).
    """
    if param.ndim != 2:
        raise ValueError(f"Muon updates 2-D weight matrices only, got a parameter of shape {tuple(param.shape)}")
    state["step"] += 1
    buf = state["momentum_buffer"]              # (fan_in, fan_out)
    buf *= momentum
    buf += (1.0 - momentum) * grad
    direction = (1.0 - momentum) * grad + momentum * buf if nesterov else buf
    direction = newton_schulz(direction, ns_steps, coefficients, eps)   # (fan_in, fan_out), singular values ~1
    if weight_decay:
        param *= 1.0 - lr * weight_decay
    param -= (lr * muon_lr_factor(param.shape, adjust_lr)) * direction


# ---------------------------------------------------------------------------- Sophia
#
# Sophia-G (Liu, Li, Hall, Liang & Ma, 2023, "Sophia: A Scalable Stochastic Second-order
# Optimizer for Language Model Pre-training"), as the authors' SophiaG (github.com/Liuhong99/
# Sophia, sophia.py) computes it, operation for operation:
#     step():            param.mul_(1 - lr * weight_decay)
#                        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
#                        ratio = (exp_avg.abs() / (rho * bs * hessian + 1e-15)).clamp(None, 1)
#                        param.addcmul_(exp_avg.sign(), ratio, value=-lr)
#     update_hessian():  hessian.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
# with bs the tokens of a step (train_sophiag.py: total_bs * block_size) and update_hessian fed
# the gradient of the mean cross-entropy against labels sampled from the model's own softmax
# (nanollm.sophia). Two differences, both settings: the guard 1e-15 is the config's eps (pass
# eps=1e-15 for the reference's number), and bs is the step's counted targets, which equals its
# tokens unless targets are masked (the loss, and so the Hessian's gradient, averages over those).
# No bias correction: the first steps, before any Hessian estimate (h = 0), are sign steps of
# size lr, as in the reference.

def sophia_init(param):
    """Sophia's state: the gradient average m, the Hessian diagonal estimate h, the step count."""
    xp = backends.array_module(param)
    return {"m": xp.zeros_like(param), "h": xp.zeros_like(param), "step": 0}


def sophia_update(param, grad, state, lr, tokens, beta1=0.965, beta2=0.99, rho=0.04, eps=1e-15, weight_decay=0.0,
                  grad_scale=None):
    """Sophia-G's step (see the comment above: the authors' SophiaG.step):

    param *= 1 - lr * weight_decay
    m = beta1 m + (1 - beta1) g
    param -= lr * sign(m) * min(|m| / (rho * tokens * h + eps), 1)

    Every coordinate moves by at most lr: by lr where the curvature is small next to the
    gradient (clipped), by lr |m| / (rho tokens h), a Newton step damped by rho, where it is not.
    tokens: the step's counted targets (bs in the reference), a number or a 0-d array; beta2 is
    the Hessian's (sophia_hessian_update). grad_scale (None: 1) as adamw_update's: g = grad *
    grad_scale, 0 skips the step (param, m, t unchanged), decided on the device, no host read.
    param, grad, m, h: one shape; the arithmetic stays in param's dtype."""
    xp = backends.array_module(param)
    dtype = param.dtype
    grad_scale = xp.asarray(1 if grad_scale is None else grad_scale, dtype=dtype)
    take = grad_scale != 0                                     # 0-d bool: False skips the step
    m, h = state["m"], state["h"]
    g = xp.where(take, grad * grad_scale, 0)                   # a skipped step's grad may be NaN
    m[...] = xp.where(take, m * dtype.type(beta1) + dtype.type(1.0 - beta1) * g, m)
    curvature = xp.asarray(rho * tokens, dtype=dtype) * h + dtype.type(eps)
    ratio = xp.minimum(xp.abs(m) / curvature, dtype.type(1))
    size = xp.asarray(lr * take, dtype=dtype)                  # lr, or 0 for a skipped step
    param *= 1 - size * dtype.type(weight_decay)
    param -= size * xp.sign(m) * ratio
    state["step"] = state["step"] + take


def sophia_hessian_update(state, grad, beta2=0.99, grad_scale=None):
    """The Hessian estimate's update (the authors' update_hessian): h = beta2 h + (1 - beta2) g^2,
    with g = grad * grad_scale the gradient of the mean loss against sampled labels (the
    Gauss-Newton-Bartlett estimate of diag(H) is tokens * g^2: the update multiplies tokens in).
    grad_scale 0 (a non-finite g, a diverged run) leaves h as it was."""
    xp = backends.array_module(state["h"])
    h = state["h"]
    dtype = h.dtype
    grad_scale = xp.asarray(1 if grad_scale is None else grad_scale, dtype=dtype)
    take = grad_scale != 0
    g = xp.where(take, grad * grad_scale, 0)
    h[...] = xp.where(take, h * dtype.type(beta2) + dtype.type(1.0 - beta2) * (g * g), h)


class Optimizer(NamedTuple):
    """An update rule: init(param) -> state; update(param, grad, state, lr, weight_decay, **hyper).
    scales_on_device: update also takes grad_scale (see adamw_update) and never reads the device.
    hessian: for a rule that keeps a curvature estimate (Sophia), hessian(state, grad, beta2,
    grad_scale) folds in a sampled-label gradient; its update then also takes tokens."""
    init: Callable
    update: Callable
    scales_on_device: bool = False
    hessian: Callable = None


OPTIMIZERS = {
    "sgd": Optimizer(sgd_init, sgd_update),
    "adam": Optimizer(adam_init, adam_update),
    "adamw": Optimizer(adamw_init, adamw_update, scales_on_device=True),
    "lion": Optimizer(lion_init, lion_update),
    "muon": Optimizer(muon_init, muon_update),  # 2-D matrices only; in a config: AdamW for the rest
    "sophia": Optimizer(sophia_init, sophia_update, scales_on_device=True, hessian=sophia_hessian_update),
}


def decays(name, param, no_decay=None):
    """Whether weight decay applies to a parameter. By default the 2-D weight matrices and
    embeddings decay and the 1-D biases and norm gains do not; ``no_decay``, a list of name
    patterns ("*.bias", "wpe"), replaces that rule: every parameter matching none decays."""
    if no_decay is None:
        return param.ndim >= 2
    return not any(fnmatchcase(name, pattern) for pattern in no_decay)


def hyperparameters(cfg, optimizer=None):
    """The keyword arguments of an update rule (cfg["optimizer"]'s unless ``optimizer`` names
    another), taken from a resolved config: everything except lr and weight_decay, which change
    per step and per parameter. For "muon", Muon's own (the AdamW part takes "adamw"'s)."""
    optimizer = cfg["optimizer"] if optimizer is None else optimizer
    if optimizer == "muon":
        return {"momentum": cfg["muon_momentum"], "nesterov": cfg["muon_nesterov"], "ns_steps": cfg["muon_ns_steps"],
                "adjust_lr": cfg["muon_adjust_lr"]}
    beta1, beta2 = cfg["betas"]
    return {
        "sgd": dict(momentum=cfg["momentum"], nesterov=cfg["nesterov"]),
        "adam": dict(beta1=beta1, beta2=beta2, eps=cfg["eps"]),
        "adamw": dict(beta1=beta1, beta2=beta2, eps=cfg["eps"]),
        "lion": dict(beta1=beta1, beta2=beta2),
        "sophia": dict(beta1=beta1, beta2=beta2, rho=cfg["sophia_rho"], eps=cfg["eps"]),
    }[optimizer]


class Rule(NamedTuple):
    """How training updates one parameter: the update rule, its keyword arguments, and the
    factor on the scheduled learning rate."""
    optimizer: Optimizer
    hyper: dict
    lr_factor: float


def rule_for(name, param, cfg):
    """The Rule of parameter ``name`` under a resolved config.

    Every parameter gets cfg["optimizer"], except with "muon": the matrices uses_muon() picks
    get Muon at muon_learning_rate, the rest AdamW (betas, eps) at learning_rate. The factor
    muon_learning_rate / learning_rate on the scheduled rate makes the schedule (warmup, decay,
    floor) scale both rates together."""
    if cfg["optimizer"] != "muon":
        return Rule(OPTIMIZERS[cfg["optimizer"]], hyperparameters(cfg), 1.0)
    if uses_muon(name, param):
        return Rule(OPTIMIZERS["muon"], hyperparameters(cfg), cfg["muon_learning_rate"] / cfg["learning_rate"])
    return Rule(OPTIMIZERS["adamw"], hyperparameters(cfg, "adamw"), 1.0)


def global_grad_norm(grads):
    """The L2 norm of all gradients taken together, a float64 where the gradients live (a NumPy
    float64 on the host, a 0-d CuPy array on a GPU: reading it is the caller's choice)."""
    sum_of_squares = backends.current().sum_of_squares
    return sum(sum_of_squares(g) for g in grads.values()) ** 0.5


def clip_coefficient(norm, max_norm, xp):
    """The factor clip_grad_norm scales the gradients by, as a 0-d array of ``xp`` (numpy or
    cupy) computed where norm lives, so a GPU never waits for the host: max_norm / (norm + 1e-6)
    above max_norm, else 1 (max_norm 0 or None: always 1)."""
    if not max_norm:
        return xp.asarray(1.0)
    return xp.where(norm > max_norm, max_norm / (norm + 1e-6), 1.0)


def clip_grad_norm(grads, max_norm):
    """Scale every gradient in place so their global norm is at most max_norm (0 or None: off),
    by clip_coefficient, the factor training folds into its grad_scale.

    Returns the norm before clipping, as torch.nn.utils.clip_grad_norm_ does. A NaN or Inf norm
    leaves the gradients as they are, for the caller to stop on."""
    norm = global_grad_norm(grads)
    if math.isfinite(norm):
        scale = clip_coefficient(norm, max_norm, backends.array_module(norm))
        if scale != 1:
            for g in grads.values():
                g *= scale.astype(g.dtype)
    return norm


def apply_update(rule, param, grad, state, lr, weight_decay, grad_scale, tokens=None):
    """One parameter's update by its Rule in training, on grad * grad_scale (0-d, on the
    parameters' device; 0: skip this step). A rule that scales on the device takes grad_scale
    itself; for the others the host reads it (training reads its guard every step for them).
    tokens: the step's counted targets (0-d, on the device), which a Hessian rule's update takes."""
    lr = lr * rule.lr_factor
    if rule.optimizer.hessian is not None:
        if tokens is None:
            raise ValueError("Sophia's update needs the step's token count: pass tokens= to apply_update")
        rule.optimizer.update(param, grad, state, lr=lr, tokens=tokens, weight_decay=weight_decay,
                              grad_scale=grad_scale, **rule.hyper)
        return
    if rule.optimizer.scales_on_device:
        rule.optimizer.update(param, grad, state, lr=lr, weight_decay=weight_decay, grad_scale=grad_scale,
                              **rule.hyper)
        return
    scale = float(grad_scale)
    if scale == 0:
        return
    grad = grad.astype(param.dtype, copy=False)
    rule.optimizer.update(param, grad if scale == 1 else grad * grad_scale, state, lr=lr,
                          weight_decay=weight_decay, **rule.hyper)


def apply_hessian(rule, state, grad, grad_scale):
    """A Hessian rule's (Sophia's) estimate update from one parameter's sampled-label gradient
    sums times grad_scale (0-d, on the device; 0: leave the estimate as it was)."""
    rule.optimizer.hessian(state, grad, beta2=rule.hyper["beta2"], grad_scale=grad_scale)
