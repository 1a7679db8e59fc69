"""Sophia-G's curvature: the Gauss-Newton-Bartlett (GNB) estimate of the Hessian's diagonal.

For the cross-entropy of logits z = f(theta, x) (V classes, p = softmax(z)), the Gauss-Newton
matrix J^T (diag(p) - p p^T) J is the Hessian less its terms in f's second derivatives, and
Bartlett's identity writes it as an expectation of squared gradients: for a label y drawn from
the model's own p, E_y[grad l(z, y) grad l(z, y)^T] = J^T (diag(p) - p p^T) J. So for the mean
loss over B counted targets, each with its own sampled label, g_hat = its gradient has

    E[B * g_hat * g_hat] = diag(Gauss-Newton matrix of the mean loss)

(the cross terms between targets have mean 0), for the price of one forward and one backward.
Sophia (nanollm.optim.sophia_update) keeps h = an average of g_hat^2 and multiplies B in at
the step (rho * tokens * h), as the authors' code does.

    rng = label_stream(seed, rank, step)                   # this step's generator
    labels = sample_labels(logits, targets, rng.random(targets.shape))   # (b, T)
    loss_and_backward = sampled_loss_and_backward(model, rng)   # for TrainingStep.accumulate

Sampled labels are drawn by inverse CDF from uniforms drawn on the host (b * T numbers a
micro-batch), so CPU and GPU draw the same labels from the same logits. A step's generator is
seeded by (seed, rank, step): a function of the run's state, so a resumed run draws exactly
what an uninterrupted one draws with nothing more in its checkpoint. Each rank samples for
its own windows; the step's one Allreduce sums the gradients, so every rank holds the same h.
Masked targets (IGNORE_INDEX) are not sampled: they stay masked and count for nothing.
"""

import numpy as np

from nanollm import backends
from nanollm.ops.cross_entropy import IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward

LABEL_STREAM = 26  # in the label generator's seed, apart from the batch, dropout and evaluation streams
SAMPLE_CHUNK = 1 << 22  # logits sampled at a time (16 MiB of float32 running sums)


def label_stream(seed, rank, index):
    """The generator of the uniforms that sample step ``index``'s labels on rank ``rank``."""
    return np.random.default_rng([seed, LABEL_STREAM, rank, index])


def sample_labels(logits, targets, uniforms):
    """Labels drawn from softmax(logits), one per target: logits (..., V); targets (...) ints
    (host or device); uniforms (...) in [0, 1) -> labels (...) ints on the logits' device.

    Label j is the first with cdf_j >= u * cdf_V (cdf the running sum of exp(z - max z)), which
    happens with probability p_j; a label of probability 0 is never drawn. Half-precision logits
    are sampled in float32. Rows go SAMPLE_CHUNK values at a time, so the running sums take a
    few MiB beside the logits, not another copy of them. Where a target is IGNORE_INDEX the
    label is too."""
    xp = backends.array_module(logits)
    work = np.float64 if logits.dtype == np.float64 else np.float32
    vocab = logits.shape[-1]
    rows = logits.reshape(-1, vocab)                                    # (N, V)
    thresholds = xp.asarray(uniforms, dtype=work).reshape(-1)           # (N,)
    labels = xp.empty(rows.shape[0], dtype=np.int64)                    # (N,)
    chunk = max(1, SAMPLE_CHUNK // vocab)
    for start in range(0, rows.shape[0], chunk):
        z = rows[start:start + chunk].astype(work)                      # (n, V)
        cdf = xp.cumsum(xp.exp(z - z.max(axis=1, keepdims=True)), axis=1)  # unnormalised
        threshold = thresholds[start:start + chunk] * cdf[:, -1]          # (n,)
        labels[start:start + chunk] = (cdf < threshold[:, None]).sum(axis=1)  # in [0, V - 1]
    labels = labels.reshape(logits.shape[:-1])
    return xp.where(xp.asarray(targets) == IGNORE_INDEX, IGNORE_INDEX, labels)


def sampled_loss_and_backward(model, rng):
    """A micro-batch's loss and gradients for TrainingStep.accumulate, against labels sampled
    from the model itself (rng: label_stream's, drawn from in micro-batch order): (mean
    cross-entropy over the counted targets, gradients of dloss x it, None: no accuracy)."""
    def loss_and_backward(inputs, targets, dloss):
        logits, _ = model.forward(inputs)                                    # (b, T, V)
        labels = sample_labels(logits, targets, rng.random(np.shape(targets)))  # (b, T)
        loss, cache = cross_entropy_forward(logits, labels, IGNORE_INDEX)
        del logits
        return loss, model.backward(dlogits=cross_entropy_backward(dloss, cache)), None
    return loss_and_backward
