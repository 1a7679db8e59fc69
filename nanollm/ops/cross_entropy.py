"""Softmax cross-entropy over the vocabulary, averaged over the targets that count.

Targets equal to ``ignore_index`` (padding, prompt tokens in instruction tuning) add nothing
to the loss and get a zero gradient; the mean is over the remaining targets. The backward is
fused: dlogits = (softmax(logits) - onehot(target)) / num_counted, never materialising the
softmax Jacobian.
"""

import numpy as np

from nanollm import backends

IGNORE_INDEX = -100  # as PyTorch's F.cross_entropy


def cross_entropy_forward(logits, targets, ignore_index=IGNORE_INDEX):
    """logits (..., V), targets (...) int -> loss (scalar: mean over counted targets), cache.

    With no counted target at all the loss is 0 and so is the gradient."""
    vocab = logits.shape[-1]
    logits2d, targets1d = logits.reshape(-1, vocab), targets.reshape(-1)  # (N, V), (N,)
    xp = backends.array_module(logits2d)
    losses, lse = backends.current().cross_entropy_forward(logits2d, targets1d, ignore_index)
    total = losses.sum(dtype=np.promote_types(losses.dtype, np.float32))  # float16 sums would overflow
    num_counted = (targets1d != ignore_index).sum()
    if xp is np:
        num_counted = max(int(num_counted), 1)
    else:  # on a GPU the count stays there: reading it would make the host wait every step
        num_counted = xp.maximum(num_counted, 1).astype(total.dtype)
    loss = total / num_counted
    cache = (logits2d, targets1d, lse, ignore_index, num_counted, logits.shape)
    return loss, cache


def cross_entropy_backward(dloss, cache):
    """dloss (scalar, 1.0 for the loss itself) -> dlogits (..., V)."""
    logits2d, targets1d, lse, ignore_index, num_counted, logits_shape = cache
    xp = backends.array_module(logits2d)
    dlosses = xp.empty(targets1d.shape, dtype=logits2d.dtype)  # (N,)
    dlosses[...] = dloss / num_counted  # dloss and the count may be 0-d arrays on a GPU
    dlogits = backends.current().cross_entropy_backward(dlosses, logits2d, targets1d, lse, ignore_index)
    return dlogits.reshape(logits_shape)


def correct_predictions(logits, targets, ignore_index=IGNORE_INDEX):
    """How many counted targets are the logits' most likely token (top-1 accuracy's numerator):
    logits (..., V), targets (...) int -> an int 0-d array on the logits' device (no host read).
    Ties go to the lowest id, as argmax does."""
    xp = backends.array_module(logits)
    targets = xp.asarray(targets)
    return ((logits.argmax(axis=-1) == targets) & (targets != ignore_index)).sum()
