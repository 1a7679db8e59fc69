"""Learning-rate schedules as pure functions of the step: lr_at(step, cfg).

Every schedule starts with an optional linear warmup over ``warmup_steps`` (nanoGPT's
lr * (step + 1) / (warmup_steps + 1)), then follows its own shape from ``learning_rate``:

    constant      learning_rate
    cosine        min_learning_rate + (lr - min_lr) * (1 + cos(pi * progress)) / 2
    warmup_cosine the same as cosine (the name nano-llm configs use for it)
    step          learning_rate * gamma ** floor((step - warmup_steps) / step_size)
    polynomial    min_learning_rate + (lr - min_lr) * (1 - progress) ** power

progress = (step - warmup_steps) / (decay_steps - warmup_steps), clipped to [0, 1];
decay_steps defaults to num_steps, after which cosine and polynomial stay at min_learning_rate.
Steps count from 0: lr_at(0, cfg) is the rate of the first update.

With a time budget (max_train_seconds) the schedule runs on whichever clock is further along:
the trainer passes the fractional step num_steps * max(step / num_steps, training seconds spent /
max_train_seconds), so warmup_steps / num_steps and decay_steps / num_steps read as shares of
the run, and the schedule ends when the run does, whether the budget or num_steps stops it.
``schedule_position`` computes it. Such a run depends on the machine's speed, so two runs (or a
run and its resumed copy) are not bit-identical, as step-based runs are.

cfg is a resolved training config (``nanollm.config.resolve({...})``): every key is present, with
nanollm.config.DEFAULTS the one place the schedule's defaults are written down.
"""

import math

SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "polynomial")


def schedule_position(step, cfg, train_seconds):
    """Where the schedule stands at 0-based ``step``: the step itself, or with max_train_seconds
    the larger of the steps' and the budget's shares so far, in (fractional) steps of num_steps."""
    budget = cfg["max_train_seconds"]
    if budget is None:
        return step
    return max(step, cfg["num_steps"] * min(train_seconds / budget, 1.0))


def lr_at(step, cfg):
    """The learning rate for 0-based ``step`` under the schedule of ``cfg``, a resolved config
    (``nanollm.config.resolve({...})``: every key present, DEFAULTS for those not given)."""
    lr, schedule, warmup = cfg["learning_rate"], cfg["lr_schedule"], cfg["warmup_steps"]
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if schedule == "constant":
        return lr
    if schedule == "step":
        if cfg["step_size"] < 1:
            raise ValueError(f"step_size must be >= 1 for the step schedule, got {cfg['step_size']}")
        return lr * cfg["gamma"] ** ((step - warmup) // cfg["step_size"])
    decay_steps = cfg["decay_steps"] if cfg["decay_steps"] is not None else cfg["num_steps"]
    span = decay_steps - warmup
    progress = 1.0 if span <= 0 else min(max((step - warmup) / span, 0.0), 1.0)
    min_lr = cfg["min_learning_rate"]
    if schedule in ("cosine", "warmup_cosine"):
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + (lr - min_lr) * (1.0 - progress) ** cfg["power"]
