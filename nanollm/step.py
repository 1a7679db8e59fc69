"""One optimizer step, the same code for one process or N ranks and for every dtype:

    micro-batches  forward and backward each (half precision: a half copy of the weights
                   computes and float16 scales its loss); each gradient, times the micro-batch's
                   counted targets, is added into one flat gradient buffer in the weights' dtype,
                   with the loss, the counts and the top-1 hits beside it; on a CPU each
                   micro-batch's rows are split into ``threads`` shards that run at once
                   (nanollm.shards), added shard by shard in order
    ranks          one Allreduce sums every rank's buffer (alone: nothing to do)
    mean           1 / the step's counted targets, folded into grad_scale: the gradient of one
                   big batch without another pass over the buffer
    guard          a NaN/Inf loss or gradient norm (or a float16 overflow) makes the update a
                   no-op, decided on the device
    clip           the global norm to max_grad_norm, folded with 1/loss-scale into grad_scale
    update         every parameter's rule through optim.apply_update(..., grad_scale)
    hessian        Sophia only, every sophia_hessian_interval steps: the same micro-batches
                   again, against labels sampled from the updated model (nanollm.sophia),
                   through the same accumulate (and Allreduce) into a buffer of their own, so
                   the step's loss, accuracy and gradient stay the real labels'; the mean
                   gradient feeds every parameter's Hessian estimate (optim.apply_hessian)

    step = TrainingStep(model, cfg, comm)
    loss, grad_norm, windows = step(index, batches, lr)     # device scalars, no host read
    step.accuracy                                           # that step's top-1 accuracy, on the device

Nothing here reads the device unless an update rule needs it (``reads_every_step``), so a GPU
never waits for the host; the trainer reads the guard (``read_guard``) when it needs figures.
The post-training trainers reuse this class with a loss of their own (``loss_and_backward``).
"""

import time
from contextlib import nullcontext

import numpy as np

from nanollm import backends, distributed, shards
from nanollm.ops.cross_entropy import IGNORE_INDEX, correct_predictions
from nanollm.optim import apply_hessian, apply_update, clip_coefficient, decays, global_grad_norm, rule_for
from nanollm.precision import HALF_DTYPES, LossScaler, compute_dtype, computing_in
from nanollm.sophia import label_stream, sampled_loss_and_backward


class TrainingStep:
    """The optimizer state, the gradient buffer and the device-side guard of one training run."""

    def __init__(self, model, cfg, comm=None):
        self.model, self.cfg = model, cfg
        self.comm = comm or distributed.SingleProcess()
        xp = self.xp = backends.array_module(model.params["wte"])
        trainable = {name: model.params[name] for name in model.trainable}  # with LoRA: the adapters alone
        # per parameter: update rule, its settings and lr factor (optimizer="muon": Muon or AdamW)
        self.rules = {name: rule_for(name, p, cfg) for name, p in trainable.items()}
        self.states = {name: self.rules[name].optimizer.init(p) for name, p in trainable.items()}
        self.decay = {name: decays(name, p, cfg["no_decay"]) for name, p in trainable.items()}
        self.buffer = GradientBuffer(trainable, xp)  # in the master weights' dtype
        # Sophia: every hessian_interval steps a sampled-label gradient, in a buffer of its own
        sophia = any(rule.optimizer.hessian is not None for rule in self.rules.values())
        self.hessian_interval = cfg["sophia_hessian_interval"] if sophia else None
        self.hessian_buffer = GradientBuffer(trainable, xp) if sophia else None
        # Mixed precision: a half-precision copy of the weights computes; float16 scales its loss.
        self.half = compute_dtype(cfg["dtype"]) if cfg["dtype"] in HALF_DTYPES else None
        self.scaler = LossScaler(xp) if cfg["dtype"] == "float16" else None
        # The host reads the guard every step where that is free (host arrays) or where an
        # update rule needs grad_scale on the host; else only when the trainer needs figures.
        on_device = all(rule.optimizer.scales_on_device for rule in self.rules.values())
        self.reads_every_step = xp is np or not on_device
        self.skipped_steps = xp.asarray(0, dtype=xp.int64)  # float16 overflows skipped
        self.diverged_at = xp.asarray(-1, dtype=xp.int64)   # 0-based step of the first non-finite loss or norm
        self.diverged_values = xp.zeros(2, dtype=xp.float64)  # that step's loss and gradient norm
        self.last_good_values = xp.zeros(2, dtype=xp.float64)  # the loss and norm of the last step before it
        self.communication_seconds = 0.0  # spent in the gradient Allreduce, waiting for other ranks included
        self.accuracy = xp.asarray(0.0)  # the last step's top-1 accuracy over its counted targets (device)
        # shards per micro-batch (1: none), and the fewest tokens a shard may have
        self.threads, self.min_shard_tokens = shards.step_threads(cfg["threads"], model, xp)

    def __call__(self, index, batches, lr):
        """Train on ``batches`` [(inputs, targets), ...] (host ids, (b, T) each) as 0-based step
        ``index`` at learning rate lr: (loss, gradient norm, windows of every rank)."""
        # With shards, BLAS keeps one thread the whole step and the updates run on the shards'
        # threads too: OpenBLAS's own threads, woken by a product outside the shards (Muon's),
        # spin on the cores for about 0.1 s after it, which the next step's shards need.
        together = shards.splits(batches, self.threads, self.min_shard_tokens)
        with shards.single_threaded_blas() if together else nullcontext():
            loss, grad_sums, grad_factor, windows = self.accumulate(batches, self.loss_and_backward,
                                                                    threads=self.threads)
            grad_norm, grad_scale = self.guard(index, loss, grad_sums, grad_factor)
            self.update(grad_sums, lr, grad_scale, threads=self.threads if together else 1)
            if self.hessian_interval is not None and (index + 1) % self.hessian_interval == 0:
                self.estimate_hessian(index, batches)
        return loss, grad_norm, windows

    def loss_and_backward(self, inputs, targets, dloss, model=None):
        """The supervised micro-batch: (mean loss over counted targets, gradients of dloss x it,
        counted targets predicted right by the top-1 token). A loss of another kind (post-training)
        returns None for the last. model: the model or a replica of it (a shard's thread)."""
        model = self.model if model is None else model
        logits, loss = model.forward(inputs, targets)
        correct = correct_predictions(logits, targets)
        del logits
        return loss, model.backward(dloss=dloss), correct

    def accumulate(self, batches, loss_and_backward, buffer=None, threads=1):
        """(loss, gradient sums, gradient factor, windows) of the step over every rank's
        micro-batches: each micro-batch's mean loss and gradient count for its counted targets (a
        smaller last micro-batch, or one with more masked prompt tokens, counts for less), so
        accumulation and ranks equal one big batch. loss is the mean over every counted target;
        the gradient is the sums (views into the buffer) times the factor, 1 / counted targets
        (0-d), which the guard folds into grad_scale. All stay on the device; float16's sums are
        still scaled by its loss scale. buffer: where the sums go (default: the step's own, and
        then the step's top-1 accuracy is left in self.accuracy). threads > 1: each micro-batch
        runs as that many shards at once (nanollm.shards; loss_and_backward then takes model=)."""
        buffer = self.buffer if buffer is None else buffer
        buffer.zero_counts()
        dloss = 1.0 if self.scaler is None else self.scaler.scale  # float16: the scaled loss's gradient
        # float16 overflows are expected and handled by the scaler: no NumPy warnings for them
        quiet = np.errstate(over="ignore", invalid="ignore") if self.scaler is not None else nullcontext()
        # mixed precision: the half-precision weights are cast once per step, shared by its micro-batches
        with computing_in(self.model, self.half), quiet:
            if threads > 1:
                results = shards.sharded(self.model, batches, loss_and_backward, dloss, threads, self.min_shard_tokens)
            else:
                results = ((inputs, targets, loss_and_backward(inputs, targets, dloss)) for inputs, targets in batches)
            for number, (inputs, targets, (loss, grads, correct)) in enumerate(results):
                counted = int((targets != IGNORE_INDEX).sum())  # host ids: no device read
                buffer.add(grads, counted, first=number == 0)
                buffer.add_counts(loss, counted, len(inputs), correct)
                del grads  # freed before the next micro-batch's backward allocates its own
        windows = sum(len(inputs) for inputs, _ in batches)
        if self.comm.size > 1:
            tick = time.perf_counter()
            self.comm.allreduce_sum(buffer.flat)
            self.communication_seconds += time.perf_counter() - tick
            windows = int(buffer.counts()[2])
        loss, factor = buffer.mean()
        if buffer is self.buffer:
            self.accuracy = buffer.accuracy()
        return loss, buffer.grads, factor, windows

    def guard(self, index, loss, grad_sums, grad_factor):
        """(gradient norm, grad_scale) of 0-based step ``index``, device scalars, no host read.

        grad_scale is what the update multiplies the gradient sums by: grad_factor times the
        clip factor (times 1/S under float16's loss scale S), or 0 when the step must not update
        anything: a non-finite loss or gradient norm (divergence: diverged_at records the first
        such step and every later step is skipped too, so the weights stay the last good ones
        until the host reads the guard and stops), or a float16 overflow (skipped, S halves)."""
        xp = self.xp
        norm = global_grad_norm(grad_sums) * grad_factor  # the mean gradient's, float64, on the device
        finite_loss, finite_norm = xp.isfinite(loss), xp.isfinite(norm)
        overflow = finite_loss & ~finite_norm if self.scaler is not None else xp.asarray(False)
        if self.scaler is not None:
            norm = norm / self.scaler.scale.astype(xp.float64)  # the unscaled gradient's norm
            bad = ~finite_loss
        else:
            bad = ~(finite_loss & finite_norm)
        values = xp.stack([xp.asarray(loss, dtype=xp.float64), xp.asarray(norm, dtype=xp.float64)])  # loss, norm
        first_bad = bad & (self.diverged_at < 0)
        self.diverged_at = xp.where(first_bad, index, self.diverged_at)
        self.diverged_values = xp.where(first_bad, values, self.diverged_values)
        skip = overflow | (self.diverged_at >= 0)
        self.last_good_values = xp.where(self.diverged_at >= 0, self.last_good_values, values)
        scale = clip_coefficient(norm, self.cfg["max_grad_norm"], xp) * grad_factor
        if self.scaler is not None:
            scale = scale / self.scaler.scale.astype(xp.float64)
            self.scaler.update(overflow)
            self.skipped_steps = self.skipped_steps + overflow
        grad_scale = xp.where(skip, 0.0, scale).astype(self.model.params["wte"].dtype)  # the master weights' dtype
        return norm, grad_scale

    def update(self, grads, lr, grad_scale, threads=1):
        """Every trainable parameter's rule on its gradient times grad_scale (0: no change).
        threads > 1: the parameters split into that many groups of about equal size, updated at
        once (each parameter's update is its own: the same results as one thread)."""
        weight_decay = self.cfg["weight_decay"]
        tokens = self.buffer.targets()  # the step's counted targets: Sophia's bs

        def update_all(names):
            for name in names:
                apply_update(self.rules[name], self.model.params[name], grads[name], self.states[name], lr,
                             weight_decay if self.decay[name] else 0.0, grad_scale, tokens)

        if threads > 1:
            shards.run_groups(update_all, shards.balanced_groups({name: g.size for name, g in grads.items()}, threads))
        else:
            update_all(list(grads))

    def estimate_hessian(self, index, batches):
        """Sophia's Gauss-Newton-Bartlett estimate after 0-based step ``index``, on the step's own
        micro-batches and the weights it has just updated (as the authors' README does): labels
        drawn from the model's softmax by this rank's label_stream(seed, rank, index), the mean
        cross-entropy's gradient through accumulate (micro-batch weights, the Allreduce) into
        hessian_buffer, then every parameter's h. A non-finite gradient (a float16 overflow; the
        loss scale is the real steps' business and stays) or a diverged run leaves h alone."""
        xp = self.xp
        rng = label_stream(self.cfg["seed"], self.comm.rank, index)
        _, sums, factor, _ = self.accumulate(batches, sampled_loss_and_backward(self.model, rng), self.hessian_buffer)
        if self.scaler is not None:
            factor = factor / self.scaler.scale.astype(xp.float64)
        keep = xp.isfinite(global_grad_norm(sums)) & (self.diverged_at < 0)
        grad_scale = xp.where(keep, factor, 0.0).astype(self.model.params["wte"].dtype)
        for name, grad in sums.items():
            apply_hessian(self.rules[name], self.states[name], grad, grad_scale)

    def layer_statistics(self, before):
        """({layer: gradient norm}, {layer: update-to-weight ratio}) of the step just taken, for
        log_layer_stats: the mean gradient's norm (before clipping) and ||W_after - W_before|| /
        ||W_before|| per layer ("blocks.3", "wte", "ln_f", ...). before: {name: the trainable
        parameters' copies taken before the step}. Reads the device."""
        xp, factor = self.xp, self.buffer.mean()[1]
        if self.scaler is not None:
            factor = factor / self.scaler.scale.astype(xp.float64)
        squares = {}  # layer -> [grad^2, update^2, weight^2]
        for name, old in before.items():
            layer = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else name.removesuffix(".weight")
            layer = layer.removesuffix(".bias")
            sums = squares.setdefault(layer, [0.0, 0.0, 0.0])
            grad = self.buffer.grads[name].astype(xp.float64)
            sums[0] += float((grad * grad).sum() * factor * factor)
            change = self.model.params[name].astype(xp.float64) - old
            sums[1] += float((change * change).sum())
            sums[2] += float((old.astype(xp.float64) ** 2).sum())
        norms = {layer: sums[0] ** 0.5 for layer, sums in squares.items()}
        ratios = {layer: (sums[1] / sums[2]) ** 0.5 if sums[2] else None for layer, sums in squares.items()}
        return norms, ratios

    # ---------------------------------------------------------------- what a checkpoint keeps

    def state(self):
        """The host values a checkpoint keeps besides the optimizer states (reads the device)."""
        for state in self.states.values():  # AdamW's step count lives on the device during the run
            state["step"] = int(state["step"])
        if self.scaler is None:
            return {}
        return {**self.scaler.state(), "skipped_steps": int(self.skipped_steps)}

    def load_state(self, extra):
        """Back to what state() returned (the optimizer states are loaded with the checkpoint)."""
        if self.scaler is not None:
            self.scaler = LossScaler(self.xp, scale=extra.get("loss_scale", self.scaler.scale),
                                     good_steps=extra.get("loss_scale_good_steps", 0))
            self.skipped_steps = self.xp.asarray(extra.get("skipped_steps", 0), dtype=self.xp.int64)


class GradientBuffer:
    """One contiguous (n + 4,) array holding every trainable parameter's gradient, then the step's
    summed loss x targets, counted targets, windows and top-1 hits, so one Allreduce carries all of it.

    grads[name] are views into the buffer with the parameters' shapes and dtype (the master
    weights': half-precision gradients are widened as they are added)."""

    EXTRAS = 4  # loss x targets, targets, windows, hits: in the gradients' dtype (float32 counts exactly to 2**24 a step)

    def __init__(self, params, xp=np):
        first = next(iter(params.values()))
        sizes = [p.size for p in params.values()]
        self.xp = xp
        self.flat = xp.zeros(sum(sizes) + self.EXTRAS, dtype=first.dtype)  # (n + 4,)
        self.grads, offset = {}, 0
        for (name, p), size in zip(params.items(), sizes):
            self.grads[name] = self.flat[offset:offset + size].reshape(p.shape)
            offset += size
        self.gradient_bytes = offset * self.flat.itemsize

    def zero_counts(self):
        self.flat[-self.EXTRAS:] = 0

    def add(self, grads, weight, first=False):
        """grads[name] += weight * g for every gradient of one micro-batch, in the buffer's
        dtype; first: the step's first micro-batch, which overwrites instead of adding."""
        dtype = self.flat.dtype
        for name, g in grads.items():
            view = self.grads[name]
            if first:
                self.xp.multiply(g, weight, out=view, dtype=dtype)
            else:
                view += self.xp.multiply(g, weight, dtype=dtype)

    def add_counts(self, loss, targets, windows, correct=None):
        """loss: a micro-batch's mean over its ``targets`` counted targets (a device scalar);
        correct: how many of them its top-1 token got right (a device scalar, or None)."""
        self.flat[-4] += loss.astype(self.flat.dtype) * targets
        self.flat[-3] += targets
        self.flat[-2] += windows
        if correct is not None:
            self.flat[-1] += correct

    def targets(self):
        """The counted targets summed so far (at least 1): a float64 0-d array on the device."""
        return self.xp.maximum(self.flat[-3], 1).astype(np.float64)

    def mean(self):
        """(mean loss, 1 / counted targets): float64 0-d arrays on the device (no host read).
        The gradient of the mean is the gradient sums times the second (no counted target
        anywhere: the sums, which are 0)."""
        targets = self.targets()
        return self.flat[-4].astype(np.float64) / targets, 1.0 / targets

    def accuracy(self):
        """Top-1 hits / counted targets: a float64 0-d array on the device (no host read)."""
        return self.flat[-1].astype(np.float64) / self.xp.maximum(self.flat[-3], 1).astype(np.float64)

    def counts(self):
        """(loss x targets, targets, windows, hits) summed so far, as Python floats (a host read)."""
        return tuple(float(x) for x in backends.to_numpy(self.flat[-self.EXTRAS:]))
