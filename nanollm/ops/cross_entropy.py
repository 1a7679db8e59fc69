"""Softmax cross-entropy over the vocabulary, averaged over the targets that count.

Targets equal to ``ignore_index`` (padding, prompt tokens in instruction tuning) add nothing
to the loss and get a zero gradient; the mean is over the remaining targets. The backward is
fused: dlogits = (softmax(logits) - onehot(target)) / num_counted, never materialising the
softmax Jacobian.
"""

from nanollm import backends

IGNORE_INDEX = -100  # as PyTorch's F.cross_entropy


def cross_entropy_forward(logits, targets, ignore_index=IGNORE_INDEX):
    """logits (..., V), targets (...) int -> loss (scalar: mean over counted targets), cache.

    With no counted target at all the loss is 0 and so is the gradient."""
    vocab = logits.shape[-1]
    logits2d, targets1d = logits.reshape(-1, vocab), targets.reshape(-1)  # (N, V), (N,)
    losses, lse = backends.current().cross_entropy_forward(logits2d, targets1d, ignore_index)
    num_counted = int((targets1d != ignore_index).sum())
    loss = losses.sum() / max(num_counted, 1)
    cache = (logits2d, targets1d, lse, ignore_index, num_counted, logits.shape)
    return loss, cache


def cross_entropy_backward(dloss, cache):
    """dloss (scalar, 1.0 for the loss itself) -> dlogits (..., V)."""
    logits2d, targets1d, lse, ignore_index, num_counted, logits_shape = cache
    xp = backends.array_module(logits2d)
    dlosses = xp.full(targets1d.shape, dloss / max(num_counted, 1), dtype=logits2d.dtype)  # (N,)
    dlogits = backends.current().cross_entropy_backward(dlosses, logits2d, targets1d, lse, ignore_index)
    return dlogits.reshape(logits_shape)
