"""Update rules as plain functions of (param, grad, state, hyper-parameters), in place.

    state = adamw_init(param)
    adamw_update(param, grad, state, lr=1e-3, weight_decay=0.1)

Which parameters get weight decay is the caller's choice (the training loop decays 2-D
weights and embeddings only).
"""

from nanollm import backends


def adamw_init(param):
    """Fresh AdamW state for one parameter: first and second moments, step count."""
    xp = backends.array_module(param)
    return {"m": xp.zeros_like(param), "v": xp.zeros_like(param), "step": 0}


def adamw_update(param, grad, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One AdamW step (Loshchilov & Hutter), as PyTorch's torch.optim.AdamW:

    param -= lr * weight_decay * param                    (decoupled decay)
    m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
    param -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    """
    state["step"] += 1
    t = state["step"]
    m, v = state["m"], state["v"]
    if weight_decay:
        param *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    xp = backends.array_module(param)
    m_hat = m / (1.0 - beta1**t)
    v_hat = v / (1.0 - beta2**t)
    param -= lr * m_hat / (xp.sqrt(v_hat) + eps)
