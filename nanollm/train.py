"""train_with_config(model, tokens, cfg): the training loop, from a plain config dict.

    results = train_with_config(model, ids, {"learning_rate": 1e-3, "num_steps": 2000,
                                             "checkpoint_dir": "checkpoints/run"})

One optimizer step:
    windows  batch_size x grad_accum_steps windows of max_seq_len + 1 tokens (random, or the
             next ones of a shuffled epoch)
    forward/backward per micro-batch; gradients and losses averaged over all of them, so
             accumulation equals one big batch
    guard    a NaN/Inf loss or gradient norm stops the run before the update touches anything
    clip     the accumulated gradient to max_grad_norm (global L2 norm)
    update   the optimizer at lr_at(step), weight decay on the parameters optim.decays() picks
             (optimizer="muon": Muon on the matrices optim.uses_muon() picks, AdamW on the rest)
then, every so many steps: a log record, a validation loss (early stopping, best checkpoint),
a checkpoint, a printed sample.

Data parallel (`mpiexec -n N`, see nanollm.distributed): each rank draws its own windows (its
own random stream, or its slice of the epoch's step), sums its micro-batches' gradients into one
flat buffer, and one Allreduce adds every rank's; divided by the step's counted targets that is
the gradient of one big batch, identical on every rank. Rank 0 alone logs, samples and writes
checkpoints (holding every rank's random streams); ranks compare parameter hashes every
param_check_interval steps; any rank's error ends the whole job (MPI Abort), never a hang.

Everything a resumed run needs is in the checkpoints (parameters, optimizer state, step, the
batch and dropout generators, best validation loss), so an interrupted and resumed run ends
with the same parameters, bit for bit, as one that never stopped.
"""

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from nanollm import backends, distributed
from nanollm.checkpoint import find_checkpoint, load_checkpoint, save_adapters, save_checkpoint, step_checkpoints
from nanollm.config import resolve
from nanollm.data import EpochOrder, TokenDataset, as_dataset, micro_batches, random_starts, require_windows
from nanollm.generate import generate_text
from nanollm.lora import lora_setting
from nanollm.metrics import METRICS_FILE, MetricsLog, Progress, log_line
from nanollm.ops.cross_entropy import IGNORE_INDEX
from nanollm.optim import OPTIMIZERS, clip_coefficient, decays, global_grad_norm, rule_for
from nanollm.precision import HALF_DTYPES, LossScaler, compute_dtype, computing_in
from nanollm.schedule import lr_at

ADAPTERS_FILE = "adapters_final.npz"  # a LoRA run's adapters alone, beside its final checkpoint
MODEL_KEYS = ("vocab_size", "embedding_dim", "num_layers", "ffn_hidden_dim", "num_heads", "num_kv_heads",
              "architecture", "tie_embeddings", "rope_base")


def evaluate_loss(model, tokens, seq_len, batch_size, num_batches=None, seed=0, comm=None):
    """Mean loss of ``model`` on ``tokens`` (ids or a TokenDataset) with dropout off (the model's
    mode is restored).

    num_batches=None: every non-overlapping window of the stream once, an exact figure.
    Otherwise that many batches of random windows drawn from ``seed``: the same windows every
    call, so successive evaluations compare the model, not the sample.
    comm: data-parallel ranks share the batches (rank r takes every size-th) and add their sums."""
    comm = comm or distributed.SingleProcess()
    data = tokens if isinstance(tokens, TokenDataset) else TokenDataset(tokens)
    if num_batches is None:
        starts = np.arange(0, len(data) - seq_len, seq_len)
        batches = [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]
    else:
        rng = np.random.default_rng(seed)
        batches = [random_starts(rng, len(data), seq_len, batch_size) for _ in range(num_batches)]
    loss_sum, count = 0.0, 0  # loss x counted targets (on the parameters' device), counted targets
    with model.evaluating():
        for starts in batches[comm.rank::comm.size]:
            inputs, targets = data.windows(starts, seq_len)
            counted = int((targets != IGNORE_INDEX).sum())  # masked targets (instruction prompts) do not count
            loss_sum = loss_sum + model.forward(inputs, targets)[1].astype(np.float64) * counted
            count += counted
    total, count = comm.allreduce_sum(np.array([float(loss_sum), count]))  # the one host read
    return float(total / count) if count else math.nan


def _configure_model(model, cfg):
    """Check the config's model keys against the model and apply dtype and dropout; returns the
    training context length."""
    for key in MODEL_KEYS:
        if cfg[key] is not None and cfg[key] != model.config[key]:
            raise ValueError(f"config says {key}={cfg[key]} but the model has {key}={model.config[key]}; "
                             "build the model with the config's value or drop the key")
    seq_len = model.max_seq_len if cfg["max_seq_len"] is None else cfg["max_seq_len"]
    if seq_len > model.max_seq_len:
        raise ValueError(f"max_seq_len={seq_len} exceeds the model's max_seq_len={model.max_seq_len}; "
                         "lower max_seq_len or build the model with a longer context")
    master = "float32" if cfg["dtype"] in HALF_DTYPES else cfg["dtype"]  # half precision: float32 master weights
    if master is not None and master != model.dtype:
        model.params = {name: p.astype(master) for name, p in model.params.items()}
        model.dtype = model.config["dtype"] = master
    if cfg["dropout"] is not None:
        model.dropout = model.config["dropout"] = cfg["dropout"]
    return seq_len


def _where(data):
    """' (path)' for a dataset read from a file, '' for ids given in memory."""
    return f" ({data.path})" if data.path is not None else ""


def _split_data(model, tokens, val_tokens, cfg, seq_len):
    """(train, val or None) TokenDatasets, each checked against the model's vocabulary."""
    train = as_dataset(tokens, model.vocab_size)
    if val_tokens is not None:
        val = as_dataset(val_tokens, model.vocab_size, name="val_tokens")
    else:
        train, val = train.split(cfg["val_fraction"])
    require_windows(train.tokens, seq_len, f"the training data{_where(train)}",
                    "give more tokens or lower max_seq_len")
    if val is not None and len(val) == 0:
        val = None
    if val is not None:
        require_windows(val.tokens, seq_len, f"the validation data{_where(val)}",
                        "raise val_fraction, pass more val_tokens, or set val_fraction to 0 for no validation")
    return train, val


def _check_tokenizer(model, tokenizer):
    if tokenizer is not None and tokenizer.vocab_size != model.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model has vocab_size="
                         f"{model.vocab_size}; build the model with vocab_size=tokenizer.vocab_size (the tokenizer "
                         "the data was encoded with)")


def earlier_run_files(folder):
    """The checkpoints, adapters and metrics.jsonl an earlier run left in ``folder`` (none if it
    does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("checkpoint_*.npz")) + sorted(folder.glob(ADAPTERS_FILE)) + sorted(folder.glob(METRICS_FILE))


def check_checkpoint_dir(cfg, resuming_here):
    """A ValueError when checkpoint_dir is a file, or holds an earlier run that this fresh run
    would mix into without overwrite=true. Changes nothing on disk."""
    if cfg["checkpoint_dir"] is None:
        return
    folder = Path(cfg["checkpoint_dir"])
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint_dir={str(folder)!r} is a file, not a folder; choose another checkpoint_dir")
    earlier = earlier_run_files(folder)
    if earlier and not resuming_here and not cfg["overwrite"]:
        raise ValueError(f"checkpoint_dir={str(folder)!r} already holds a run ({earlier[0].name}); continue it "
                         f"with resume_from={str(earlier[0])!r}, choose a new checkpoint_dir, or set "
                         "overwrite=true to replace it")


def _prepare_checkpoint_dir(cfg, resuming_here):
    """Create checkpoint_dir; refuse to mix a fresh run into an earlier run's files unless
    overwrite is set (then those files are removed first)."""
    check_checkpoint_dir(cfg, resuming_here)
    if cfg["checkpoint_dir"] is None:
        return None
    folder = Path(cfg["checkpoint_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    if not resuming_here:
        for path in earlier_run_files(folder):
            path.unlink()
    return folder


class _TrainingRun:
    """The state of one call to train_with_config, and the loop over steps."""

    def __init__(self, model, train, val, cfg, seq_len, tokenizer, folder, comm):
        self.model, self.train, self.val, self.cfg, self.seq_len = model, train, val, cfg, seq_len
        self.tokenizer, self.folder, self.comm = tokenizer, folder, comm
        self.windows_per_step = cfg["batch_size"] * cfg["grad_accum_steps"]  # this rank's
        self.order = None
        if cfg["epochs"] is not None:  # an epoch's step covers every rank's windows; each takes its slice
            self.order = EpochOrder(len(train), seq_len, self.windows_per_step * comm.size, cfg["drop_last"],
                                    cfg["seed"])
            self.total_steps = cfg["epochs"] * self.order.steps_per_epoch
        else:
            self.total_steps = cfg["num_steps"]
        self.schedule_cfg = {**cfg, "num_steps": self.total_steps}
        # per parameter: update rule, its settings, lr factor (optimizer="muon": Muon or AdamW)
        trainable = {name: model.params[name] for name in model.trainable}  # with LoRA: the adapters alone
        self.rules = {name: rule_for(name, p, cfg) for name, p in trainable.items()}
        self.states = {name: self.rules[name].optimizer.init(p) for name, p in trainable.items()}
        self.decay = {name: decays(name, p, cfg["no_decay"]) for name, p in trainable.items()}
        self.batch_rng = np.random.default_rng(distributed.rank_seed(cfg["seed"], comm.rank))  # on the host
        model.dropout_rng = backends.random_generator(distributed.rank_seed(cfg["seed"] + 1, comm.rank))  # on the device
        xp = self.xp = backends.array_module(model.params["wte"])
        self.gradients = None  # alone: gradients straight from backward; with ranks: one flat buffer to Allreduce
        if comm.size > 1:
            self.gradients = distributed.GradientBuffer(trainable, xp)
        # Mixed precision: a half-precision copy of the weights computes; float16 scales its loss.
        self.half = compute_dtype(cfg["dtype"]) if cfg["dtype"] in HALF_DTYPES else None
        self.scaler = LossScaler(xp) if cfg["dtype"] == "float16" else None
        # The step's guard lives on the device (see guard()): the host reads it every step only
        # where that costs nothing (host arrays) or where an update rule cannot skip by itself.
        device_skips = all(rule.optimizer is OPTIMIZERS["adamw"] for rule in self.rules.values())
        self.read_every_step = xp is np or not device_skips
        self.applied_steps = xp.asarray(0, dtype=xp.int64)  # updates applied (AdamW's bias-correction step)
        self.skipped_steps = xp.asarray(0, dtype=xp.int64)  # float16 overflows skipped
        self.diverged_at = xp.asarray(-1, dtype=xp.int64)   # 0-based step of the first non-finite loss or norm
        self.diverged_values = xp.zeros(2, dtype=xp.float64)  # that step's loss and gradient norm
        self.last_good_values = xp.zeros(2, dtype=xp.float64)  # the loss and norm of the last step before it
        self.unread_tokens = []  # tokens of each step since the host last read the guard
        self.communication_seconds = 0.0  # spent in the gradient Allreduce, waiting for other ranks included
        self.step, self.tokens_seen = 0, 0
        self.best_val_loss, self.evals_without_improvement = math.inf, 0
        self.loss = self.grad_norm = self.val_loss = self.evaluated_at = None
        self.checkpoints = {"steps": [], "best": None, "final": None, "adapters": None}
        self.last_good_checkpoint = None
        self.stopped_early, self.diverged, self.stopped_because = False, False, None
        self.notes = []  # said once the run starts (rank 0)
        self.checked_at = None  # the step of the last check that the ranks agree

    # ---------------------------------------------------------------- one optimizer step

    def step_starts(self, step):
        """This rank's window starts for 0-based ``step``."""
        if self.order is None:
            return random_starts(self.batch_rng, len(self.train), self.seq_len, self.windows_per_step)
        starts = self.order.starts_for_step(step)
        share = self.windows_per_step
        return starts[self.comm.rank * share:(self.comm.rank + 1) * share]

    def forward_backward(self, starts):
        """(loss, gradients, windows) of the step, averaged over every counted target of the
        step, micro-batch by micro-batch: each micro-batch's mean is weighted by its share of the
        counted targets (a smaller last micro-batch, or one with more masked prompt tokens, counts
        for less), so accumulation equals one big batch."""
        batches = [self.train.windows(batch, self.seq_len) for batch in micro_batches(starts, self.cfg["batch_size"])]
        counted = [int((targets != IGNORE_INDEX).sum()) for _, targets in batches]
        if self.gradients is not None:
            return self.forward_backward_ranks(batches, counted)
        total = sum(counted)
        loss, grads = 0.0, None  # loss: a float64 scalar on the parameters' device
        dloss = 1.0 if self.scaler is None else self.scaler.scale  # float16: the scaled loss's gradient
        # float16 overflows are expected and handled by the scaler: no NumPy warnings for them
        quiet_overflow = np.errstate(over="ignore", invalid="ignore") if self.scaler is not None else nullcontext()
        # mixed precision: the half-precision weights are cast once per step, shared by its micro-batches
        with computing_in(self.model, self.half), quiet_overflow:
            for (inputs, targets), count in zip(batches, counted):  # (b, T) each, host ids
                _, batch_loss = self.model.forward(inputs, targets)
                batch_grads = self.model.backward(dloss=dloss)
                weight = count / total if total else len(inputs) / len(starts)
                loss = loss + weight * batch_loss.astype(np.float64)  # no host read: a GPU keeps going
                if grads is None:
                    grads = batch_grads if weight == 1.0 else {k: g * weight for k, g in batch_grads.items()}
                else:
                    for name, g in batch_grads.items():
                        grads[name] += weight * g
                del batch_grads  # freed before the next micro-batch's backward allocates its own
        return loss, grads, len(starts)

    def forward_backward_ranks(self, batches, counted):
        """forward_backward across ranks: each micro-batch's gradient, times its counted targets,
        is summed into the flat buffer; one Allreduce adds every rank's sums (and their losses,
        targets and windows); dividing by the step's targets gives the big batch's mean."""
        buffer = self.gradients
        buffer.zero()
        for (inputs, targets), count in zip(batches, counted):  # (b, T) each
            _, batch_loss = self.model.forward(inputs, targets)
            buffer.add(self.model.backward(), count)
            buffer.add_counts(float(batch_loss) * count, count, len(inputs))
        tick = time.perf_counter()
        self.comm.allreduce_sum(buffer.flat)
        self.communication_seconds += time.perf_counter() - tick
        loss_sum, targets, windows = buffer.counts()
        buffer.scale(1.0 / max(targets, 1.0))  # no counted target anywhere: loss and gradient 0, as alone
        return loss_sum / max(targets, 1.0), buffer.grads, int(windows)

    def guard(self, step, loss, grads):
        """(gradient norm, grad_scale) of 0-based ``step``, device scalars, no host read.

        grad_scale is what the update multiplies the gradients by: the clip factor (times 1/S
        under float16's loss scale S), or 0 when the step must not update anything: a
        non-finite loss or gradient norm (divergence: diverged_at records the first such step
        and every later step is skipped too, so the weights stay the last good ones until the
        host reads the guard and stops), or a float16 overflow (skipped, and S halves)."""
        xp = self.xp
        norm = global_grad_norm(grads)  # float64, on the device
        finite_loss, finite_norm = xp.isfinite(loss), xp.isfinite(norm)
        overflow = finite_loss & ~finite_norm if self.scaler is not None else xp.asarray(False)
        if self.scaler is not None:
            norm = norm / self.scaler.scale.astype(xp.float64)  # the unscaled gradient's norm
            bad = ~finite_loss
        else:
            bad = ~(finite_loss & finite_norm)
        values = xp.stack([xp.asarray(loss, dtype=xp.float64), norm])  # (2,): loss, gradient norm
        first_bad = bad & (self.diverged_at < 0)
        self.diverged_at = xp.where(first_bad, step, self.diverged_at)
        self.diverged_values = xp.where(first_bad, values, self.diverged_values)
        skip = overflow | (self.diverged_at >= 0)
        self.last_good_values = xp.where(self.diverged_at >= 0, self.last_good_values, values)
        scale = clip_coefficient(norm, self.cfg["max_grad_norm"], xp)
        if self.scaler is not None:
            scale = scale / self.scaler.scale.astype(xp.float64)
            self.scaler.update(overflow)
            self.skipped_steps = self.skipped_steps + overflow
        grad_scale = xp.where(skip, 0.0, scale).astype(self.model.params["wte"].dtype)  # the master weights' dtype
        self.applied_steps = self.applied_steps + ~skip
        return norm, grad_scale

    def update(self, grads, lr, grad_scale):
        """The update rules on the gradients times grad_scale; AdamW (the fused
        adamw_step_scaled) reads grad_scale and the step count on the device and skips when
        grad_scale is 0; the other rules are called only for steps the host saw were good."""
        weight_decay, adamw_step_scaled = self.cfg["weight_decay"], backends.current().adamw_step_scaled
        for name, grad in grads.items():
            rule, state, param = self.rules[name], self.states[name], self.model.params[name]
            lr_here, decay_here = lr * rule.lr_factor, weight_decay if self.decay[name] else 0.0
            if rule.optimizer is OPTIMIZERS["adamw"]:
                state["step"] = self.applied_steps  # a host int again when a checkpoint is written
                adamw_step_scaled(param, grad, state["m"], state["v"], lr_here, rule.hyper["beta1"],
                                  rule.hyper["beta2"], rule.hyper["eps"], decay_here, self.applied_steps, grad_scale)
                continue
            if float(grad_scale) == 0:  # read every step for these rules (read_every_step)
                continue
            grad = grad.astype(param.dtype, copy=False)
            grad = grad if float(grad_scale) == 1 else grad * grad_scale
            rule.optimizer.update(param, grad, state, lr=lr_here, weight_decay=decay_here, **rule.hyper)

    def read_guard(self, step):
        """Read the device guard on the host, after 0-based ``step`` (a GPU finishes its queued
        work first). True when the run diverged: the step count, tokens, last good loss and
        the reason are then set for stopping."""
        first = int(self.diverged_at)
        if first < 0:
            self.unread_tokens = []
            return False
        loss, norm = (float(v) for v in self.diverged_values)
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
        later = step - first  # steps after the first bad one: skipped as well
        self.tokens_seen -= sum(self.unread_tokens[len(self.unread_tokens) - later - 1:])
        if later:  # the loop had moved on: go back to the last good step's figures
            good = tuple(float(v) for v in self.last_good_values)
            self.loss, self.grad_norm = good if first > self.first_step else self.before_run
        self.step, self.diverged = first, True
        skipped = f", nor in the {later} step(s) queued after it" if later else ""
        self.stopped_because = (f"diverged at step {first + 1}: {what}; training stopped before updating{skipped}, "
                                f"last good checkpoint: {self.last_good_checkpoint or 'none'}")
        return True

    # ---------------------------------------------------------------- checkpoints

    def random_streams(self):
        return {"batches": self.batch_rng.bit_generator.state, "dropout": self.model.dropout_rng.bit_generator.state}

    def save(self, name):
        """Every rank calls this (their random streams are gathered); rank 0 writes the file."""
        streams = self.random_streams()
        rng_states = dict(streams)
        if self.comm.size > 1:
            rng_states["ranks"] = self.comm.allgather(streams)  # rank r resumes from ranks[r]
        path = self.folder / name
        for state in self.states.values():  # AdamW's step count lives on the device during the run
            state["step"] = int(state["step"])
        extra = {"val_loss": self.val_loss, "best_val_loss": _finite_or_none(self.best_val_loss),
                 "evals_without_improvement": self.evals_without_improvement,
                 "tokens_seen": self.tokens_seen, "ranks": self.comm.size}
        if self.scaler is not None:
            extra.update(self.scaler.state(), skipped_steps=int(self.skipped_steps))
        if self.comm.is_root:
            save_checkpoint(
                path, self.model, optimizer_state=self.states, step=self.step, loss=self.loss,
                config=self.cfg, tokenizer=self.tokenizer, rng_states=rng_states, extra=extra)
        self.last_good_checkpoint = str(path)
        return str(path)

    def save_step_checkpoint(self):
        self.checkpoints["steps"].append(self.save(f"checkpoint_step_{self.step}.npz"))
        keep = self.cfg["keep_last_n"]
        existing = step_checkpoints(self.folder) if self.comm.is_root else []
        for old in existing[:-keep] if keep else []:
            old.unlink()
            if str(old) in self.checkpoints["steps"]:
                self.checkpoints["steps"].remove(str(old))

    def resume(self, path, tokenizer):
        info = load_checkpoint(path, self.model, optimizer_state=self.states, tokenizer=tokenizer)
        saved_optimizer = (info["config"] or {}).get("optimizer")
        if saved_optimizer is not None and saved_optimizer != self.cfg["optimizer"]:
            raise ValueError(f"{path} was trained with optimizer={saved_optimizer!r}, this config says "
                             f"{self.cfg['optimizer']!r}; resume with the same optimizer")
        self.step, self.loss = info["step"], info["loss"]
        extra = info["extra"]
        saved_ranks = info["rng_states"].get("ranks", [info["rng_states"]])  # one rank's: its own streams
        streams = saved_ranks[self.comm.rank] if self.comm.rank < len(saved_ranks) else {}
        for name, generator in (("batches", self.batch_rng), ("dropout", self.model.dropout_rng)):
            if name not in streams:
                continue
            if streams[name].get("bit_generator") != generator.bit_generator.state.get("bit_generator"):
                self.notes.append(f"{path} holds a {streams[name].get('bit_generator')} {name} stream and this "
                                  f"device draws from {generator.bit_generator.state.get('bit_generator')}: "
                                  f"the {name} stream starts fresh (written on a GPU and resumed on the CPU, or the "
                                  "other way)")
                continue
            generator.bit_generator.state = streams[name]
        saved, ranks = len(saved_ranks), self.comm.size
        if saved != ranks:
            what = (f"ranks {saved} to {ranks - 1} start fresh random streams" if ranks > saved
                    else f"the random streams of ranks {ranks} to {saved - 1} go unused")
            self.notes.append(f"{path} was written by {saved} rank(s) and this run has {ranks}: {what}, so batches "
                              "and dropout differ from an uninterrupted run's")
        best = extra.get("best_val_loss")
        self.best_val_loss = math.inf if best is None else best
        self.val_loss = extra.get("val_loss")
        self.evals_without_improvement = extra.get("evals_without_improvement", 0)
        self.tokens_seen = extra.get("tokens_seen", self.step * self.windows_per_step * self.seq_len)
        self.last_good_checkpoint = str(path)
        adamw_steps = [state["step"] for name, state in self.states.items()
                       if self.rules[name].optimizer is OPTIMIZERS["adamw"]]
        self.applied_steps = self.xp.asarray(max(adamw_steps, default=0), dtype=self.xp.int64)
        if self.scaler is not None:
            self.scaler = LossScaler(self.xp, scale=extra.get("loss_scale", self.scaler.scale),
                                     good_steps=extra.get("loss_scale_good_steps", 0))
            self.skipped_steps = self.xp.asarray(extra.get("skipped_steps", 0), dtype=self.xp.int64)

    # ---------------------------------------------------------------- evaluation

    def evaluate(self):
        """Validation loss; tracks the best (saving checkpoint_best.npz) and the patience count."""
        cfg = self.cfg
        self.val_loss = evaluate_loss(self.model, self.val, self.seq_len, cfg["batch_size"], cfg["eval_steps"],
                                      seed=[cfg["seed"], 2], comm=self.comm)
        self.evaluated_at = self.step
        if self.val_loss < self.best_val_loss - cfg["min_delta"]:
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        if self.val_loss < self.best_val_loss:
            self.best_val_loss = self.val_loss
            if self.folder is not None and cfg["save_best"]:
                self.checkpoints["best"] = self.save("checkpoint_best.npz")
        return self.val_loss

    def out_of_patience(self):
        patience = self.cfg["patience"]
        if patience is None or self.evals_without_improvement < patience:
            return False
        self.stopped_early = True
        self.stopped_because = (f"early stop at step {self.step}: validation loss did not improve by more than "
                                f"{self.cfg['min_delta']} for {patience} evaluations (best {self.best_val_loss:.4f})")
        return True

    # ---------------------------------------------------------------- the loop

    def check_ranks_agree(self):
        """Every rank's trainable parameters equal rank 0's, bit for bit (else a RuntimeError)."""
        if self.comm.size > 1 and self.checked_at != self.step:
            distributed.check_identical(self.comm, {name: self.model.params[name] for name in self.model.trainable},
                                        self.step)
            self.checked_at = self.step

    def run(self, metrics, progress):
        """The loop over steps. The host reads the step's loss, norm and guard every step when
        that is free (host arrays; see read_every_step), else only at the steps that need
        them: logs, evaluations, checkpoints, samples, rank checks and the last step."""
        cfg, model, comm = self.cfg, self.model, self.comm
        start_time = time.perf_counter()
        train_seconds, interval_seconds, interval_tokens = 0.0, 0.0, 0
        self.first_step, self.before_run = self.step, (self.loss, self.grad_norm)
        for note in self.notes:
            progress.print(note)
        self.check_ranks_agree()  # same model, same checkpoint, on every rank
        for step in range(self.step, self.total_steps):
            tick = time.perf_counter()
            lr = lr_at(step, self.schedule_cfg)
            loss, grads, windows = self.forward_backward(self.step_starts(step))
            grad_norm, grad_scale = self.guard(step, loss, grads)
            step_tokens = windows * self.seq_len  # every rank's
            self.tokens_seen += step_tokens
            self.unread_tokens.append(step_tokens)
            if self.read_every_step and self.read_guard(step):  # stops before this step's update
                progress.print(self.stopped_because)
                break
            self.update(grads, lr, grad_scale)

            at = step + 1
            last = at == self.total_steps
            evaluating = self.val is not None and (last or (cfg["eval_interval"] and at % cfg["eval_interval"] == 0))
            logging = last or at == 1 or (cfg["log_interval"] and at % cfg["log_interval"] == 0)
            checkpointing = self.folder is not None and cfg["checkpoint_interval"] and at % cfg["checkpoint_interval"] == 0
            checking = cfg["param_check_interval"] and at % cfg["param_check_interval"] == 0
            sampling = (comm.is_root and self.tokenizer is not None and cfg["sample_interval"]
                        and at % cfg["sample_interval"] == 0)
            reading = self.read_every_step or last or evaluating or logging or checkpointing or checking or sampling
            if not self.read_every_step and reading and self.read_guard(step):  # a GPU's first read since the last
                progress.print(self.stopped_because)
                break
            if reading:
                loss, grad_norm = float(loss), float(grad_norm)
            self.step, self.loss, self.grad_norm = at, loss, grad_norm
            spent = time.perf_counter() - tick  # a GPU's queued work is finished at each read, so it counts here
            train_seconds += spent
            interval_seconds += spent
            interval_tokens += step_tokens
            progress.step(loss if reading else None)

            record = None
            if evaluating:
                self.evaluate()
                self.out_of_patience()
            if logging or evaluating:
                record = dict(step=at, loss=loss, lr=lr, grad_norm=grad_norm,
                              tokens_per_second=interval_tokens / max(interval_seconds, 1e-9),
                              elapsed=time.perf_counter() - start_time)
                if self.scaler is not None:
                    record.update(loss_scale=float(self.scaler.scale), skipped_steps=int(self.skipped_steps))
                if evaluating:
                    record["val_loss"] = self.val_loss
                metrics.write(record)
                progress.print(log_line(record, self.total_steps))
                interval_seconds, interval_tokens = 0.0, 0
            if checkpointing:
                self.save_step_checkpoint()
            if checking:
                self.check_ranks_agree()
            if sampling:
                sample = generate_text(model, self.tokenizer, cfg["sample_prompt"], cfg["sample_length"],
                                       temperature=0.8, top_k=40, seed=cfg["seed"] + at)
                progress.print(f"--- sample at step {at} ---\n{sample}\n---")
            if self.stopped_early:
                progress.print(self.stopped_because)
                break
        if not self.diverged:
            self.check_ranks_agree()
        return train_seconds, time.perf_counter() - start_time


def _check_precision(cfg):
    """Half precision runs on the GPU (backend cupy) or, slowly, on the NumPy reference backend
    (for tests); the compiled CPU kernels are float32/float64 only."""
    name = backends.current_name()
    if cfg["dtype"] in HALF_DTYPES and name not in ("cupy", "numpy"):
        raise ValueError(f"dtype={cfg['dtype']} computes in half precision, which the {name} backend does not "
                         "support: set backend=cupy to train on a GPU (or backend=numpy, a slow CPU reference), or "
                         "use dtype=float32")


def _finite_or_none(value):
    return value if value is not None and math.isfinite(value) else None


def _load_initial_weights(model, init_from, tokenizer):
    """Fine-tuning: the checkpoint's parameters, and nothing else of its run (the optimizer
    state, step, schedule and random generators start fresh)."""
    try:
        path = find_checkpoint(init_from)
    except FileNotFoundError as exc:
        raise ValueError(f"init_from: {exc}") from None
    load_checkpoint(path, model, tokenizer=tokenizer)  # shapes and tokenizer checked against the model's


def _attach_lora(model, cfg):
    """lora_rank > 0: LoRA adapters on the model, every other weight frozen. A model that has
    adapters already (a resumed run's, or attached by hand) must have these."""
    wanted = lora_setting(cfg)
    if wanted is None:
        return
    if model.lora is None:
        model.add_lora(**wanted, seed=cfg["seed"])
    elif model.lora != wanted:
        raise ValueError(f"the model has LoRA adapters {model.lora} but the config asks for {wanted}; set the "
                         "config's lora_* keys to the model's, or give a model without adapters")


def train_with_config(model, tokens, cfg=None, *, val_tokens=None, tokenizer=None, resume_from=None, preset=None,
                      communicator=None):
    """Train ``model`` on ``tokens`` as the config says: a 1-D list/array of token ids, or a
    TokenDataset (a memmapped .bin file; instruction data with its loss mask).

    cfg: a dict of keys from nanollm.config.DEFAULTS (resolved on top of ``preset``).
    val_tokens: validation ids or dataset (default: the last val_fraction of ``tokens``).
    tokenizer: saved into checkpoints, needed for samples during training; its vocab_size must
    equal the model's.
    resume_from: a checkpoint to continue from (same as cfg["resume_from"]).
    cfg["init_from"]: a checkpoint (or run folder) whose weights start a new run: fine-tuning.
    cfg["lora_rank"] > 0: LoRA adapters train and every other weight stays frozen; the adapters
    are also saved alone, as adapters_final.npz in checkpoint_dir.
    communicator: the data-parallel ranks (default nanollm.distributed.world(): every rank of an
    `mpiexec -n N` job, or this process alone); distributed.SingleProcess() trains alone. With
    more than one rank, an error on any rank ends the whole job (MPI Abort) after printing it.

    Returns a dict: final_loss, final_grad_norm, final_val_loss, final_val_perplexity,
    best_val_loss, steps, tokens_seen, tokens_per_second, training_time_seconds, history,
    checkpoints ({"steps": [...], "best": path, "final": path, "adapters": path or None}), last_good_checkpoint,
    metrics_path, stopped_early, diverged, stopped_because (None when the run finished), config,
    ranks, rank, communication_seconds (in the gradient Allreduce; 0 alone).
    """
    comm = communicator if communicator is not None else distributed.world()
    with distributed.failing_together(comm):
        return _train(model, tokens, cfg, val_tokens, tokenizer, resume_from, preset, comm)


def _train(model, tokens, cfg, val_tokens, tokenizer, resume_from, preset, comm):
    overrides = [cfg if cfg is not None else {}]
    if resume_from is not None:
        overrides.append({"resume_from": str(resume_from)})
    cfg = resolve(*overrides, preset=preset, sources=["config", "resume_from argument"][:len(overrides)])
    distributed.check_same_config(comm, cfg)
    seq_len = _configure_model(model, cfg)
    _check_tokenizer(model, tokenizer)
    train, val = _split_data(model, tokens, val_tokens, cfg, seq_len)
    if cfg["sample_interval"] and tokenizer is None:
        raise ValueError("sample_interval is set but no tokenizer was given; pass tokenizer=... to "
                         "train_with_config or set sample_interval to 0")
    resume = cfg["resume_from"]
    if resume is not None and not Path(resume).is_file():
        raise ValueError(f"resume_from={resume!r} does not exist; give the path of a checkpoint_*.npz file")
    resuming_here = (resume is not None and cfg["checkpoint_dir"] is not None
                     and Path(resume).resolve().parent == Path(cfg["checkpoint_dir"]).resolve())
    if cfg["init_from"] is not None and resume is None:  # a resumed run has its weights already
        _load_initial_weights(model, cfg["init_from"], tokenizer)
    _attach_lora(model, cfg)
    distributed.root_only(comm, lambda: _prepare_checkpoint_dir(cfg, resuming_here))
    folder = Path(cfg["checkpoint_dir"]) if cfg["checkpoint_dir"] is not None else None  # every rank's name for it

    previous_backend = backends.current_name()
    if cfg["backend"] is not None:
        backends.use(cfg["backend"])
    try:
        _check_precision(cfg)
        model.to_device(backends.device_module())  # the parameters live where the backend computes
        run = _TrainingRun(model, train, val, cfg, seq_len, tokenizer, folder, comm)
        if resume is not None:
            run.resume(resume, tokenizer)
        metrics = MetricsLog(folder if comm.is_root else None, resume_step=run.step if resuming_here else None)
        progress = Progress(run.total_steps, run.step, quiet=not comm.is_root)
        if comm.size > 1:
            progress.print(f"data parallel: {comm.description}; each step {run.windows_per_step * comm.size} "
                           f"windows ({run.windows_per_step} per rank)")
        tokens_before = run.tokens_seen
        model.train()
        try:
            train_seconds, wall_seconds = run.run(metrics, progress)
            if not run.diverged and run.val is not None and run.evaluated_at != run.step:
                run.evaluate()  # resumed at the end: nothing trained, but the results report a val loss
            if not run.diverged and folder is not None:
                run.checkpoints["final"] = run.save("checkpoint_final.npz")
                if model.lora is not None and comm.is_root:
                    run.checkpoints["adapters"] = str(save_adapters(folder / ADAPTERS_FILE, model, tokenizer,
                                                                    extra={"init_from": cfg["init_from"]}))
        finally:
            progress.close()
    finally:
        backends.use(previous_backend)
        model.to_device(backends.device_module())  # back where the restored backend computes

    trained_tokens = run.tokens_seen - tokens_before
    final_val = run.val_loss if run.val is not None else None
    return {
        "final_loss": run.loss, "final_grad_norm": run.grad_norm,
        "final_val_loss": final_val,
        "final_val_perplexity": math.exp(final_val) if final_val is not None else None,
        "best_val_loss": _finite_or_none(run.best_val_loss),
        "steps": run.step, "tokens_seen": run.tokens_seen,
        "tokens_per_second": trained_tokens / train_seconds if train_seconds else None,
        "training_time_seconds": wall_seconds,
        "history": metrics.records, "checkpoints": run.checkpoints,
        "last_good_checkpoint": run.last_good_checkpoint,
        "metrics_path": str(metrics.path) if metrics.path else None,
        "stopped_early": run.stopped_early, "diverged": run.diverged, "stopped_because": run.stopped_because,
        "config": cfg, "ranks": comm.size, "rank": comm.rank, "communication_seconds": run.communication_seconds,
    }
