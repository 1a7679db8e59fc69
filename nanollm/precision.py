"""Mixed precision: compute in float16 or bfloat16, keep float32 master weights.

    dtype="float32" (default) or "float64"  the parameters and the computation in that dtype
    dtype="float16" or "bfloat16"            the parameters stay float32 (the master copy the
                                             optimizer updates); each step computes with a
                                             half-precision copy of them, so activations and
                                             gradients are half the size and matrix products
                                             run on a GPU's tensor cores

Half-precision gradients are small numbers: float16 (5 exponent bits) flushes any below 6e-8
to zero. Dynamic loss scaling (as torch.cuda.amp.GradScaler) multiplies the loss by a large
scale S before the backward, so the gradients are S times larger and keep their digits, then
divides them by S before the update (folded into the optimizer's grad_scale). A step whose
scaled gradient overflowed to Inf or NaN is skipped and S halves; after growth_interval good
steps S doubles again. bfloat16 has float32's 8 exponent bits, so it needs no scaling.

The scale and its counter are arrays on the parameters' device: nothing here makes a GPU wait
for the host.
"""

from contextlib import contextmanager

import numpy as np

HALF_DTYPES = ("float16", "bfloat16")
INITIAL_SCALE = 2.0**16     # torch.cuda.amp.GradScaler's defaults
GROWTH_INTERVAL = 2000      # good steps before the scale doubles
BACKOFF, GROWTH = 0.5, 2.0  # the scale's factors after an overflow and after growth_interval good steps


def compute_dtype(name):
    """The NumPy dtype of a half-precision compute dtype name ("float16" or "bfloat16").

    bfloat16 is not a NumPy type: it comes from ml_dtypes (the package JAX uses, which CuPy 14
    understands too); without it a one-line error says how to get it."""
    if name == "float16":
        return np.dtype(np.float16)
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError("dtype=bfloat16 needs the ml_dtypes package (NumPy has no bfloat16): "
                             "`pip install ml_dtypes`, or pip install \".[gpu]\" which brings it; or use "
                             "dtype=float16") from None
        return np.dtype(ml_dtypes.bfloat16)
    raise ValueError(f"dtype={name!r} is not a half-precision dtype: choose one of {', '.join(HALF_DTYPES)}")


@contextmanager
def computing_in(model, dtype):
    """Inside the block the model computes with a copy of its weights cast to ``dtype`` (None:
    with the weights themselves); its master weights are back in model.params after it,
    whatever happened inside."""
    if dtype is None:
        yield
        return
    master = model.params
    model.params = {name: p.astype(dtype) for name, p in master.items()}
    try:
        yield
    finally:
        model.params = master


class LossScaler:
    """Dynamic loss scaling for float16, its state on the device of ``xp`` (numpy or cupy).

    scale: 0-d float32, the factor on the loss's gradient; good_steps: 0-d int64, steps since
    the last overflow or growth."""

    def __init__(self, xp, scale=INITIAL_SCALE, good_steps=0, growth_interval=GROWTH_INTERVAL):
        self.xp, self.growth_interval = xp, growth_interval
        self.scale = xp.asarray(scale, dtype=xp.float32)
        self.good_steps = xp.asarray(good_steps, dtype=xp.int64)

    def update(self, overflow):
        """After a step: halve the scale if its gradient overflowed (overflow: 0-d bool on the
        device), else count the step and double the scale every growth_interval good steps."""
        xp = self.xp
        counted = self.good_steps + 1
        grow = ~overflow & (counted >= self.growth_interval)
        factor = xp.where(overflow, BACKOFF, xp.where(grow, GROWTH, 1.0)).astype(xp.float32)
        self.scale = self.scale * factor
        self.good_steps = xp.where(overflow | grow, 0, counted)

    def state(self):
        """The host values a checkpoint keeps (this reads the device: call it when saving)."""
        return {"loss_scale": float(self.scale), "loss_scale_good_steps": int(self.good_steps)}
