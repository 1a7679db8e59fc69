"""Linear layer: out = x @ weight + bias, with weight stored (in, out) as GPT-2's Conv1D."""

from nanollm import backends


def linear_forward(x, weight, bias=None):
    """x (..., C_in), weight (C_in, C_out), bias (C_out,) or None -> out (..., C_out)."""
    c_in, c_out = weight.shape
    out = backends.current().matmul(x.reshape(-1, c_in), weight)  # (N, C_out), N = prod(...)
    if bias is not None:
        out += bias
    cache = (x, weight, bias is not None)
    return out.reshape(*x.shape[:-1], c_out), cache


def linear_backward(dout, cache, weight_grads=True):
    """dout (..., C_out) -> dx (..., C_in), dweight (C_in, C_out), dbias (C_out,) or None.

    weight_grads=False: dweight and dbias are None, not computed (a frozen layer: one matmul
    of the two saved)."""
    x, weight, has_bias = cache
    c_in, c_out = weight.shape
    matmul = backends.current().matmul
    dout2d = dout.reshape(-1, c_out)  # (N, C_out)
    dx = matmul(dout2d, weight.T).reshape(x.shape)
    if not weight_grads:
        return dx, None, None
    dweight = matmul(x.reshape(-1, c_in).T, dout2d)
    dbias = dout2d.sum(axis=0) if has_bias else None
    return dx, dweight, dbias
