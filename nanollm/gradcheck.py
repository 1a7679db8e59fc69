"""Numerical gradients by (fourth-order) central differences, and the relative error used to judge them.

One helper for the tests and the notebooks alike (after CS231n's ``gradient_check.py``):

    num = numerical_gradient(lambda: loss_of(x), x)       # perturbs x in place, restores it
    relative_error(analytic, num) < 1e-6                   # in float64
    errors = check_gradients(loss_fn, {"x": x, "w": w}, {"x": dx, "w": dw})

Use float64: float32 central differences are too noisy to tell a bug from rounding.
"""

import numpy as np

from nanollm import backends


def numerical_gradient(f, x, h=1e-4):
    """d f() / d x, element by element, by the fourth-order central difference

        f'(x) ~ (8 (f(x + h) - f(x - h)) - (f(x + 2h) - f(x - 2h))) / 12h

    whose truncation error is O(h^4), so h can be large enough (1e-4) that rounding in f
    (about 1e-16 |f| / h) stays far below the 1e-6 bar even for tiny gradients.
    f takes no arguments and reads x, which is modified in place and restored exactly."""
    grad = np.zeros(x.shape, dtype=np.float64)  # on the host, whatever device x is on
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    if not backends.array_module(x).shares_memory(flat_x, x):
        raise ValueError("numerical_gradient needs a contiguous array it can perturb in place")

    def f_at(i, value):
        flat_x[i] = value
        return float(f())

    for i in range(flat_x.size):
        original = flat_x[i].copy()  # a value, not a view (CuPy's flat_x[i] is a 0-d view)
        near = f_at(i, original + h) - f_at(i, original - h)
        far = f_at(i, original + 2 * h) - f_at(i, original - 2 * h)
        flat_x[i] = original
        flat_grad[i] = (8 * near - far) / (12 * h)
    return grad


def relative_error(a, b):
    """max|a - b| / max(1e-8, max(|a| + |b|)): the worst error relative to the gradient's scale.

    Taking the maxima over the whole tensor, rather than element by element, keeps tiny
    gradient entries (whose finite-difference noise is large relative to themselves) from
    dominating, while a wrong entry of any size still shows up."""
    a, b = (backends.to_numpy(v).astype(np.float64) for v in (a, b))  # GPU arrays come to the host
    if a.shape != b.shape:
        raise ValueError(f"relative_error: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))


def check_gradients(f, inputs, analytic, h=1e-4):
    """Relative error of each analytic gradient against the numerical one.

    f: no-argument function returning a scalar computed from the arrays in ``inputs``;
    inputs: {name: array} perturbed in place; analytic: {name: gradient array}.
    Returns {name: relative error}."""
    return {name: relative_error(analytic[name], numerical_gradient(f, x, h)) for name, x in inputs.items()}


def check_op_gradients(forward, backward, inputs, grad_names, seed=0, h=1e-4):
    """Gradient check of a forward/backward pair on a random projection of its output.

    forward(**inputs) -> (out, cache); backward(dout, cache) -> one gradient per name in
    grad_names (a single array when there is one name; None in grad_names skips an output).
    The scalar checked is sum(out * dout) for a fixed random dout, whose gradient with
    respect to each input is exactly what backward(dout) returns.
    Returns {name: relative error}."""
    out, cache = forward(**inputs)
    dout = np.random.default_rng(seed).normal(size=np.shape(out))
    dout = dout.astype(out.dtype) if hasattr(out, "dtype") else float(dout)
    grads = backward(dout, cache)
    grads = (grads,) if len(grad_names) == 1 else tuple(grads)
    if len(grads) != len(grad_names):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(grad_names)} names {grad_names}")
    analytic = {name: g for name, g in zip(grad_names, grads) if name is not None}

    def projected():
        return float(np.sum(forward(**inputs)[0] * dout))

    return check_gradients(projected, {name: inputs[name] for name in analytic}, analytic, h)
