"""train_with_config(model, tokens, cfg): the training loop, from a plain config dict.

    results = train_with_config(model, ids, {"learning_rate": 1e-3, "num_steps": 2000,
                                             "checkpoint_dir": "checkpoints/run"})

Each job has its own module; this one sets a run up once and loops:
    nanollm.step       one optimizer step: micro-batches -> gradient buffer -> (Allreduce) ->
                       guard -> clip -> every update rule through optim; the same code for 1
                       or N ranks and for every dtype
    nanollm.run_state  the counters, random streams and checkpoints: save and resume
    here               the windows each step trains on (random, or the next ones of a shuffled
                       epoch), then every so many steps a log record, a validation loss (early
                       stopping, best checkpoint), a checkpoint, a printed sample

A config key reaches the code that uses it by one path: resolved once (train_with_config, or
`nanollm train` through nanollm.launch), applied to the model once (train_with_config; launch
builds the model with it), then read where it acts (step, run_state, the loop here).

Data parallel (`mpiexec -n N`, see nanollm.distributed): each rank draws its own windows (its
own random stream, or its slice of the epoch's step) and the step's Allreduce makes the
gradient of one big batch, identical on every rank. Rank 0 alone logs, samples and writes
checkpoints (holding every rank's random streams); ranks compare parameter hashes every
param_check_interval steps; any rank's error ends the whole job (MPI Abort), never a hang.
"""

import math
import time
from pathlib import Path

import numpy as np

from nanollm import backends, distributed
from nanollm.checkpoint import find_checkpoint, load_checkpoint, save_adapters
from nanollm.config import resolve
from nanollm.data import EpochOrder, TokenDataset, as_dataset, micro_batches, random_starts, require_windows
from nanollm.generate import generate_text
from nanollm.lora import lora_setting
from nanollm.metrics import MetricsLog, Progress, log_line
from nanollm.model_config import TRAINING_KEYS, master_dtype
from nanollm.ops.cross_entropy import IGNORE_INDEX, correct_predictions
from nanollm.precision import HALF_DTYPES
from nanollm.run_state import ADAPTERS_FILE, RunState, finite_or_none, prepare_checkpoint_dir, resuming_in_place
from nanollm.schedule import lr_at, schedule_position
from nanollm.step import TrainingStep
from nanollm.tracking import Trackers, open_trackers


def evaluate(model, tokens, seq_len, batch_size, num_batches=None, seed=0, comm=None):
    """(mean loss, top-1 accuracy) of ``model`` on ``tokens`` (ids or a TokenDataset) over the
    counted targets, with dropout off (the model's mode is restored).

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
    loss_sum, correct, count = 0.0, 0, 0  # loss x counted targets, top-1 hits (on the parameters' device), targets
    with model.evaluating():
        for starts in batches[comm.rank::comm.size]:
            inputs, targets = data.windows(starts, seq_len)
            counted = int((targets != IGNORE_INDEX).sum())  # masked targets (instruction prompts) do not count
            logits, loss = model.forward(inputs, targets)
            loss_sum = loss_sum + loss.astype(np.float64) * counted
            correct = correct + correct_predictions(logits, targets)
            count += counted
    total, correct, count = comm.allreduce_sum(np.array([float(loss_sum), float(correct), count]))  # the one host read
    return (float(total / count), float(correct / count)) if count else (math.nan, math.nan)


def evaluate_loss(model, tokens, seq_len, batch_size, num_batches=None, seed=0, comm=None):
    """The mean loss alone of ``evaluate``."""
    return evaluate(model, tokens, seq_len, batch_size, num_batches, seed, comm)[0]


def apply_config_to_model(model, cfg):
    """A user's model made what the config says where a config may change a built model: dtype
    (float32 master weights for half precision) and dropout. Its other model keys describe the
    model and cannot reshape it (run_training checks them). `nanollm train` builds the model
    from the config instead."""
    master = master_dtype(cfg["dtype"]) if cfg["dtype"] is not None else None
    if master is not None and master != model.dtype:
        model.params = {name: p.astype(master) for name, p in model.params.items()}
        model.dtype = model.config["dtype"] = master
    if cfg["dropout"] is not None:
        model.dropout = model.config["dropout"] = cfg["dropout"]


def _check_model(model, cfg):
    """The training window fits the model, and the model is what the config says (dtype and
    dropout included: apply_config_to_model or launch's build made it so). Returns the window."""
    seq_len = model.max_seq_len if cfg["max_seq_len"] is None else cfg["max_seq_len"]
    if seq_len > model.max_seq_len:
        raise ValueError(f"max_seq_len={seq_len} exceeds the model's max_seq_len={model.max_seq_len}; "
                         "lower max_seq_len or build the model with a longer context")
    wanted = {key: cfg[key] for key in TRAINING_KEYS if key != "max_seq_len" and cfg[key] is not None}
    if cfg["dtype"] is not None:
        wanted["dtype"] = master_dtype(cfg["dtype"])
    for key, value in wanted.items():
        if value != model.config[key]:
            raise ValueError(f"config says {key}={value} but the model has {key}={model.config[key]}; "
                             "build the model with the config's value or drop the key")
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


def load_initial_weights(model, init_from, tokenizer):
    """Fine-tuning: the checkpoint's parameters, and nothing else of its run (the optimizer
    state, step, schedule and random generators start fresh)."""
    try:
        path = find_checkpoint(init_from)
    except FileNotFoundError as exc:
        raise ValueError(f"init_from: {exc}") from None
    load_checkpoint(path, model, tokenizer=tokenizer)  # shapes and tokenizer checked against the model's


def attach_lora(model, cfg):
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


def _check_precision(cfg):
    """Half precision runs on the GPU (backend cupy) or, slowly, on the NumPy reference backend
    (for tests); the compiled CPU kernels are float32/float64 only."""
    name = backends.current_name()
    if cfg["dtype"] in HALF_DTYPES and name not in ("cupy", "numpy"):
        raise ValueError(f"dtype={cfg['dtype']} computes in half precision, which the {name} backend does not "
                         "support: set backend=cupy to train on a GPU (or backend=numpy, a slow CPU reference), or "
                         "use dtype=float32")


class Trainer:
    """One run of the loop: its data, its TrainingStep and its RunState."""

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
        self.training_step = TrainingStep(model, cfg, comm)
        self.state = RunState(model, self.training_step, cfg, folder, comm, tokenizer,
                              tokens_per_step=self.windows_per_step * seq_len)
        self.unread_tokens = []  # tokens of each step since the host last read the guard
        self.evaluated_at = None
        self.stopped_early, self.diverged, self.stopped_because = False, False, None
        self.checked_at = None  # the step of the last check that the ranks agree

    def batches(self, step):
        """This rank's micro-batches [(inputs, targets) (b, T) each, host ids] for 0-based ``step``."""
        if self.order is None:
            starts = random_starts(self.state.batch_rng, len(self.train), self.seq_len, self.windows_per_step)
        else:
            share = self.windows_per_step
            starts = self.order.starts_for_step(step)[self.comm.rank * share:(self.comm.rank + 1) * share]
        return [self.train.windows(batch, self.seq_len) for batch in micro_batches(starts, self.cfg["batch_size"])]

    def read_guard(self, step):
        """Read the step's device guard on the host, after 0-based ``step`` (a GPU finishes its
        queued work first). True when the run diverged: the step count, tokens, last good loss
        and the reason are then set for stopping."""
        state, guard = self.state, self.training_step
        first = int(guard.diverged_at)
        if first < 0:
            self.unread_tokens = []
            return False
        loss, norm = (float(v) for v in guard.diverged_values)
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
        later = step - first  # steps after the first bad one: skipped as well
        state.tokens_seen -= sum(self.unread_tokens[len(self.unread_tokens) - later - 1:])
        if later:  # the loop had moved on: go back to the last good step's figures
            good = tuple(float(v) for v in guard.last_good_values)
            state.loss, state.grad_norm = good if first > self.first_step else self.before_run
        state.step, self.diverged = first, True
        skipped = f", nor in the {later} step(s) queued after it" if later else ""
        self.stopped_because = (f"diverged at step {first + 1}: {what}; training stopped before updating{skipped}, "
                                f"last good checkpoint: {state.last_good_checkpoint or 'none'}")
        return True

    # ---------------------------------------------------------------- evaluation

    def evaluate(self):
        """Validation loss and accuracy; tracks the best loss (saving checkpoint_best.npz) and the
        patience count."""
        cfg, state = self.cfg, self.state
        state.val_loss, state.val_accuracy = evaluate(self.model, self.val, self.seq_len, cfg["batch_size"],
                                                      cfg["eval_steps"], seed=[cfg["seed"], 2], comm=self.comm)
        self.evaluated_at = state.step
        if state.val_loss < state.best_val_loss - cfg["min_delta"]:
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
        if state.val_loss < state.best_val_loss:
            state.best_val_loss = state.val_loss
            if self.folder is not None and cfg["save_best"]:
                state.checkpoints["best"] = state.save("checkpoint_best.npz")
        return state.val_loss

    def out_of_patience(self):
        patience, state = self.cfg["patience"], self.state
        if patience is None or state.evals_without_improvement < patience:
            return False
        self.stopped_early = True
        self.stopped_because = (f"early stop at step {state.step}: validation loss did not improve by more than "
                                f"{self.cfg['min_delta']} for {patience} evaluations (best {state.best_val_loss:.4f})")
        return True

    # ---------------------------------------------------------------- the loop

    def check_ranks_agree(self):
        """Every rank's trainable parameters equal rank 0's, bit for bit (else a RuntimeError)."""
        if self.comm.size > 1 and self.checked_at != self.state.step:
            distributed.check_identical(self.comm, {name: self.model.params[name] for name in self.model.trainable},
                                        self.state.step)
            self.checked_at = self.state.step

    def run(self, metrics, progress):
        """The loop over steps. The host reads the step's loss, norm and guard every step when
        that is free (host arrays; see TrainingStep.reads_every_step), else only at the steps
        that need them: logs, evaluations, checkpoints, samples, rank checks and the last step."""
        cfg, model, comm, state, step_fn = self.cfg, self.model, self.comm, self.state, self.training_step
        start_time = time.perf_counter()
        train_seconds, interval_seconds, interval_tokens = 0.0, 0.0, 0
        budget, step_seconds = cfg["max_train_seconds"], 0.0  # the last step's time predicts whether one more fits
        self.first_step, self.before_run = state.step, (state.loss, state.grad_norm)
        for note in state.notes:
            progress.print(note)
        self.check_ranks_agree()  # same model, same checkpoint, on every rank
        for step in range(state.step, self.total_steps):
            tick = time.perf_counter()
            lr = lr_at(schedule_position(step, self.schedule_cfg, state.train_seconds), self.schedule_cfg)
            at = step + 1
            out_of_time = budget is not None and state.train_seconds + step_seconds >= budget  # after this step
            last = at == self.total_steps or out_of_time
            evaluating = self.val is not None and (last or (cfg["eval_interval"] and at % cfg["eval_interval"] == 0))
            logging = last or at == 1 or (cfg["log_interval"] and at % cfg["log_interval"] == 0)
            # log_layer_stats: the weights before the step, to measure its update (log steps only)
            before = ({name: model.params[name].copy() for name in model.trainable}
                      if logging and cfg["log_layer_stats"] else None)
            loss, grad_norm, windows = step_fn(step, self.batches(step), lr)
            step_tokens = windows * self.seq_len  # every rank's
            state.tokens_seen += step_tokens
            self.unread_tokens.append(step_tokens)

            checkpointing = self.folder is not None and cfg["checkpoint_interval"] and at % cfg["checkpoint_interval"] == 0
            checking = cfg["param_check_interval"] and at % cfg["param_check_interval"] == 0
            sampling = (comm.is_root and self.tokenizer is not None and cfg["sample_interval"]
                        and at % cfg["sample_interval"] == 0)
            reading = step_fn.reads_every_step or last or evaluating or logging or checkpointing or checking or sampling
            if reading and self.read_guard(step):  # a diverged step updated nothing: stop at the last good one
                progress.print(self.stopped_because)
                break
            if reading:
                loss, grad_norm = float(loss), float(grad_norm)
            if logging or evaluating or last:
                state.accuracy = float(step_fn.accuracy)
            state.step, state.loss, state.grad_norm = at, loss, grad_norm
            spent = time.perf_counter() - tick  # a GPU's queued work is finished at each read, so it counts here
            if budget is not None and comm.size > 1:
                spent = max(comm.allgather(spent))  # the ranks stop at the same step and share the schedule
            train_seconds += spent
            state.train_seconds += spent
            step_seconds = spent
            interval_seconds += spent
            interval_tokens += step_tokens
            progress.step(loss if reading else None)

            if evaluating:
                self.evaluate()
                self.out_of_patience()
            if logging or evaluating:
                record = dict(step=at, loss=loss, accuracy=state.accuracy, lr=lr, grad_norm=grad_norm,
                              tokens_per_second=interval_tokens / max(interval_seconds, 1e-9),
                              elapsed=time.perf_counter() - start_time, train_seconds=state.train_seconds)
                if step_fn.scaler is not None:
                    record.update(loss_scale=float(step_fn.scaler.scale), skipped_steps=int(step_fn.skipped_steps))
                if evaluating:
                    record.update(val_loss=state.val_loss, val_accuracy=state.val_accuracy)
                if before is not None:
                    record["layer_grad_norms"], record["update_ratios"] = step_fn.layer_statistics(before)
                    del before
                metrics.write(record)
                progress.print(log_line(record, self.total_steps))
                interval_seconds, interval_tokens = 0.0, 0
            if checkpointing:
                state.save_step_checkpoint()
            if checking:
                self.check_ranks_agree()
            if sampling:
                sample = generate_text(model, self.tokenizer, cfg["sample_prompt"], cfg["sample_length"],
                                       temperature=0.8, top_k=40, seed=cfg["seed"] + at)
                progress.print(f"--- sample at step {at} ---\n{sample}\n---")
                metrics.text("samples", sample, at)
            if self.stopped_early:
                progress.print(self.stopped_because)
                break
            if out_of_time and at < self.total_steps:
                self.stopped_because = (f"max_train_seconds={budget:g} spent: stopped after step {at} "
                                        f"({state.train_seconds:.1f} s of training steps)")
                break
        if not self.diverged:
            self.check_ranks_agree()
        return train_seconds, time.perf_counter() - start_time


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
        overrides = [cfg if cfg is not None else {}]
        if resume_from is not None:
            overrides.append({"resume_from": str(resume_from)})
        cfg = resolve(*overrides, preset=preset, sources=["config", "resume_from argument"][:len(overrides)])
        apply_config_to_model(model, cfg)
        if cfg["init_from"] is not None and cfg["resume_from"] is None:  # a resumed run has its weights already
            load_initial_weights(model, cfg["init_from"], tokenizer)
        distributed.root_only(comm, lambda: prepare_checkpoint_dir(cfg))
    return run_training(model, tokens, cfg, val_tokens=val_tokens, tokenizer=tokenizer, communicator=comm)


def run_training(model, tokens, cfg, *, val_tokens=None, tokenizer=None, communicator=None):
    """The run itself, on a resolved config, a model that already is what it says (weights from
    init_from loaded) and a prepared checkpoint_dir: train_with_config's second half, and what
    `nanollm train` calls after setting all of that up its own way. Same results dict; with
    more than one rank, an error on any rank ends the whole job (MPI Abort)."""
    comm = communicator if communicator is not None else distributed.world()
    with distributed.failing_together(comm):
        return _run(model, tokens, cfg, val_tokens, tokenizer, comm)


def _run(model, tokens, cfg, val_tokens, tokenizer, comm):
    distributed.check_same_config(comm, cfg)
    seq_len = _check_model(model, cfg)
    _check_tokenizer(model, tokenizer)
    train, val = _split_data(model, tokens, val_tokens, cfg, seq_len)
    if cfg["sample_interval"] and tokenizer is None:
        raise ValueError("sample_interval is set but no tokenizer was given; pass tokenizer=... to "
                         "train_with_config or set sample_interval to 0")
    resume = cfg["resume_from"]
    if resume is not None and not Path(resume).is_file():
        raise ValueError(f"resume_from={resume!r} does not exist; give the path of a checkpoint_*.npz file")
    attach_lora(model, cfg)
    folder = Path(cfg["checkpoint_dir"]) if cfg["checkpoint_dir"] is not None else None  # every rank's name for it

    previous_backend = backends.current_name()
    if cfg["backend"] is not None:
        backends.use(cfg["backend"])
    try:
        _check_precision(cfg)
        model.to_device(backends.device_module())  # the parameters live where the backend computes
        model.activation_checkpointing = cfg["activation_checkpointing"]
        model.fused_attention = cfg["fused_attention"]
        trainer = Trainer(model, train, val, cfg, seq_len, tokenizer, folder, comm)
        state = trainer.state
        if resume is not None:
            state.resume(resume)
        resume_step = state.step if resuming_in_place(cfg) else None
        trackers = open_trackers(cfg["report_to"], folder, cfg, resume_step) if comm.is_root else Trackers()
        metrics = MetricsLog(folder if comm.is_root else None, resume_step=resume_step, trackers=trackers)
        progress = Progress(trainer.total_steps, state.step, quiet=not comm.is_root)
        if comm.size > 1:
            progress.print(f"data parallel: {comm.description}; each step {trainer.windows_per_step * comm.size} "
                           f"windows ({trainer.windows_per_step} per rank)")
        tokens_before = state.tokens_seen
        model.train()
        try:
            train_seconds, wall_seconds = trainer.run(metrics, progress)
            if not trainer.diverged and trainer.val is not None and trainer.evaluated_at != state.step:
                trainer.evaluate()  # resumed at the end: nothing trained, but the results report a val loss
            if not trainer.diverged and folder is not None:
                state.checkpoints["final"] = state.save("checkpoint_final.npz")
                if model.lora is not None and comm.is_root:
                    state.checkpoints["adapters"] = str(save_adapters(folder / ADAPTERS_FILE, model, tokenizer,
                                                                      extra={"init_from": cfg["init_from"]}))
        finally:
            progress.close()
            trackers.close()
    finally:
        backends.use(previous_backend)
        model.to_device(backends.device_module())  # back where the restored backend computes

    trained_tokens = state.tokens_seen - tokens_before
    final_val = state.val_loss if trainer.val is not None else None
    return {
        "final_loss": state.loss, "final_grad_norm": state.grad_norm, "final_accuracy": state.accuracy,
        "final_val_loss": final_val,
        "final_val_accuracy": state.val_accuracy if trainer.val is not None else None,
        "final_val_perplexity": math.exp(final_val) if final_val is not None else None,
        "best_val_loss": finite_or_none(state.best_val_loss),
        "steps": state.step, "tokens_seen": state.tokens_seen,
        "tokens_per_second": trained_tokens / train_seconds if train_seconds else None,
        "training_time_seconds": wall_seconds,
        "history": metrics.records, "checkpoints": state.checkpoints,
        "last_good_checkpoint": state.last_good_checkpoint,
        "metrics_path": str(metrics.path) if metrics.path else None,
        "stopped_early": trainer.stopped_early, "diverged": trainer.diverged,
        "stopped_because": trainer.stopped_because,
        "config": cfg, "ranks": comm.size, "rank": comm.rank,
        "communication_seconds": trainer.training_step.communication_seconds,
    }
