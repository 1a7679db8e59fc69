"""The loop GRPO, PPO and DPO share, built from supervised training's own pieces:

    TrainingStep   micro-batches -> one gradient buffer -> NaN guard -> clip -> optimizer (step.py)
    RunState       checkpoints, the run's random stream (which samples the rollouts), resume
    MetricsLog     metrics.jsonl and the experiment trackers; Progress the bar or the log lines

    loop = PolicyLoop(model, cfg, tokenizer=tok)           # cfg resolved, init_from loaded, LoRA attached
    results = loop.run(make_rows, loss_and_backward, per="token")

Each step, ``make_rows(step, rng)`` builds the step's rows (rollouts sampled with ``rng``, the
run's stream, or pairs drawn with it) and returns (rows, stats); then rl_inner_epochs passes of
micro-batches (batch_size rows each) through ``loss_and_backward(rows, targets, dloss)``, each
pass one optimizer update. The reference model (the starting weights, frozen) is saved as
reference_weights.npz in the run folder, so a resumed run compares with the same reference.
"""

import math
import time

import numpy as np

from nanollm import backends, distributed
from nanollm.checkpoint import load_checkpoint, save_checkpoint
from nanollm.config import resolve
from nanollm.metrics import MetricsLog, Progress
from nanollm.model_config import build_model
from nanollm.run_state import RunState, prepare_checkpoint_dir, resuming_in_place
from nanollm.schedule import lr_at
from nanollm.step import TrainingStep
from nanollm.tracking import Trackers, open_trackers
from nanollm.train import apply_config_to_model, attach_lora, load_initial_weights

REFERENCE_FILE = "reference_weights.npz"


def frozen_copy(model):
    """A model with ``model``'s config and a copy of its weights, in eval mode: the reference."""
    copy = build_model(model.config, seed=0)
    copy.params = {name: value.copy() for name, value in model.params.items()}
    copy.to_device(backends.array_module(model.params["wte"]))
    return copy.eval()


class PolicyLoop:
    """One post-training run: its config, step, state, reference model and logs."""

    def __init__(self, model, cfg=None, *, tokenizer=None, needs_reference=None):
        """needs_reference: keep the frozen starting weights (None: when rl_beta != 0, the KL term)."""
        cfg = resolve(cfg or {})
        if cfg["optimizer"] == "sophia":
            raise ValueError("optimizer='sophia' estimates its Hessian from labels sampled for the language-model "
                             "loss, which post-training's objectives do not have; use optimizer=adamw for GRPO/PPO/DPO")
        self.model, self.tokenizer = model, tokenizer
        apply_config_to_model(model, cfg)
        if cfg["init_from"] is not None and cfg["resume_from"] is None:
            load_initial_weights(model, cfg["init_from"], tokenizer)
        self.folder = prepare_checkpoint_dir(cfg)
        if cfg["backend"] is not None:
            backends.use(cfg["backend"])
        model.to_device(backends.device_module())
        needs_reference = cfg["rl_beta"] != 0 if needs_reference is None else needs_reference
        self.reference = self._reference(cfg) if needs_reference else None
        attach_lora(model, cfg)
        self.cfg = cfg
        self.comm = distributed.SingleProcess()
        self.training_step = TrainingStep(model, cfg, self.comm)
        self.state = RunState(model, self.training_step, cfg, self.folder, self.comm, tokenizer)
        if cfg["resume_from"] is not None:
            self.state.resume(cfg["resume_from"])
        self.loss_stats = []  # what loss_and_backward reports for each micro-batch of a step

    def _reference(self, cfg):
        """The frozen starting weights: read back from the run folder when resuming, else copied
        (and saved there, for a later resume)."""
        saved = None if self.folder is None else self.folder / REFERENCE_FILE
        if cfg["resume_from"] is not None:
            if saved is None or not saved.exists():
                raise ValueError(f"resuming needs the run's {REFERENCE_FILE} in checkpoint_dir (the reference "
                                 "model's weights); it is not there")
            reference = build_model(load_checkpoint(saved)["model_config"], seed=0)
            load_checkpoint(saved, reference)
            reference.to_device(backends.device_module())
            return reference.eval()
        reference = frozen_copy(self.model)
        if saved is not None:
            save_checkpoint(saved, reference, tokenizer=self.tokenizer)
        return reference

    def micro_batches(self, rows, per):
        """[(rows, counting targets)] of batch_size rows each (see Rows.counting_targets)."""
        size = self.cfg["batch_size"]
        parts = [rows.select(slice(begin, begin + size)) for begin in range(0, len(rows), size)]
        return [(part, part.counting_targets(per)) for part in parts]

    def run(self, make_rows, loss_and_backward, per="token", evaluate=None):
        """The steps from the state's to num_steps; returns the results dict. evaluate(model) ->
        {name: figure}, called at eval_interval and at the end, goes into the records."""
        cfg, state, step_fn = self.cfg, self.state, self.training_step
        metrics_trackers = open_trackers(cfg["report_to"], self.folder, cfg) if cfg["report_to"] else Trackers()
        metrics = MetricsLog(self.folder, resume_step=state.step if resuming_in_place(cfg) else None,
                             trackers=metrics_trackers)
        progress = Progress(cfg["num_steps"], state.step)
        start, diverged, stopped_because, record = time.perf_counter(), False, None, {}
        self.model.train()
        try:
            for step in range(state.step, cfg["num_steps"]):
                rows, stats = make_rows(step, state.batch_rng)
                lr = lr_at(step, cfg)
                self.loss_stats = []
                for _ in range(cfg["rl_inner_epochs"]):
                    loss, grads, factor, _ = step_fn.accumulate(self.micro_batches(rows, per), loss_and_backward)
                    grad_norm, grad_scale = step_fn.guard(step, loss, grads, factor)
                    step_fn.update(grads, lr, grad_scale)
                if int(step_fn.diverged_at) >= 0:
                    loss_value, norm = (float(v) for v in step_fn.diverged_values)
                    diverged = True
                    stopped_because = (f"diverged at step {step + 1}: loss {loss_value}, gradient norm {norm}; "
                                       "stopped before updating")
                    progress.print(stopped_because)
                    break
                at = step + 1
                state.step, state.loss, state.grad_norm = at, float(loss), float(grad_norm)
                progress.step(state.loss)
                last = at == cfg["num_steps"]
                logging = last or at == 1 or (cfg["log_interval"] and at % cfg["log_interval"] == 0)
                evaluating = evaluate is not None and (last or (cfg["eval_interval"] and at % cfg["eval_interval"] == 0))
                if logging or evaluating:
                    record = {"step": at, "loss": state.loss, "lr": lr, "grad_norm": state.grad_norm, **stats,
                              **self._mean_loss_stats(), "elapsed": time.perf_counter() - start}
                    if evaluating:
                        record.update(evaluate(self.model))
                    metrics.write(record)
                    progress.print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in record.items()))
                if self.folder is not None and cfg["checkpoint_interval"] and at % cfg["checkpoint_interval"] == 0:
                    state.save_step_checkpoint()
            if not diverged and self.folder is not None:
                state.checkpoints["final"] = state.save("checkpoint_final.npz")
        finally:
            progress.close()
            metrics_trackers.close()
        return {"final_loss": state.loss, "final_grad_norm": state.grad_norm, "steps": state.step,
                "history": metrics.records, "checkpoints": state.checkpoints, "diverged": diverged,
                "stopped_because": stopped_because, "training_time_seconds": time.perf_counter() - start,
                "metrics_path": str(metrics.path) if metrics.path else None, "config": cfg,
                "last_record": record}

    def _mean_loss_stats(self):
        """The step's micro-batch statistics (clip fraction, KL, entropy, ...), averaged."""
        if not self.loss_stats:
            return {}
        keys = self.loss_stats[0].keys()
        return {key: float(np.mean([s[key] for s in self.loss_stats])) for key in keys
                if all(isinstance(s.get(key), (int, float)) and math.isfinite(s[key]) for s in self.loss_stats)}

