"""Experiment trackers, fed the very records metrics.jsonl gets: TensorBoard and Weights & Biases.

    trackers = open_trackers(cfg["report_to"], folder, cfg, resume_step)   # rank 0 only
    MetricsLog(folder, trackers=trackers)    # every record written goes to each tracker too
    trackers.text("samples", text, step); trackers.close()

Scalars are named ``train/<key>`` and ``val/<key>`` (``loss`` -> train/loss, ``val_accuracy`` ->
val/accuracy, perplexities added); per-layer figures (``log_layer_stats``) become
``train/grad_norm/<layer>`` and ``train/update_ratio/<layer>``. The resolved config goes in
once as text, sample generations as text.

- TensorBoard: event files written with tensorboardX (``pip install tensorboardX``) into
  <run folder>/tensorboard; ``tensorboard --logdir RUN/tensorboard`` shows them. A resumed run
  purges the events after its checkpoint's step, as metrics.jsonl drops those records.
- W&B: ``wandb`` (``pip install wandb``) in offline mode unless WANDB_MODE says otherwise: the
  run lives in <run folder>/wandb until ``wandb sync``; nothing is sent on its own.
"""

import json
import math
import os

from nanollm.optional import require

# A record's keys -> tracker tags (anything numeric not listed goes under train/).
TAGS = {"loss": "train/loss", "accuracy": "train/accuracy", "lr": "train/lr", "grad_norm": "train/grad_norm",
        "tokens_per_second": "train/tokens_per_second", "elapsed": "train/elapsed_seconds",
        "val_loss": "val/loss", "val_accuracy": "val/accuracy"}
NESTED = {"layer_grad_norms": "train/grad_norm", "update_ratios": "train/update_ratio"}


def scalars(record):
    """{tag: float} of one metrics record: its numbers, perplexities, per-layer figures."""
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if key in NESTED and isinstance(value, dict):
            out.update({f"{NESTED[key]}/{name}": float(v) for name, v in value.items() if v is not None})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[TAGS.get(key, f"train/{key}")] = float(value)
    for loss, tag in (("loss", "train/perplexity"), ("val_loss", "val/perplexity")):
        if isinstance(record.get(loss), (int, float)) and record[loss] < 700:
            out[tag] = math.exp(record[loss])
    return out


class TensorBoardTracker:
    """Event files in <folder>/tensorboard, through tensorboardX's SummaryWriter."""

    def __init__(self, folder, cfg, resume_step=None):
        tensorboardx = require("tensorboardX", "report_to=tensorboard")
        if folder is None:
            raise ValueError("report_to=tensorboard writes into the run folder: set checkpoint_dir (nanollm train "
                             "--out) or drop tensorboard from report_to")
        # a resumed run drops the interrupted run's events after its checkpoint, as metrics.jsonl does
        self.writer = tensorboardx.SummaryWriter(logdir=str(folder / "tensorboard"),
                                                 purge_step=None if resume_step is None else resume_step + 1)
        self.writer.add_text("config", "```\n" + json.dumps(cfg, indent=2, default=str) + "\n```", 0)

    def log(self, record):
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def text(self, tag, text, step):
        self.writer.add_text(tag, text, step)

    def close(self):
        self.writer.close()


class WandbTracker:
    """A W&B run, offline unless WANDB_MODE is set, in <folder>/wandb (or W&B's default place)."""

    def __init__(self, folder, cfg, resume_step=None):
        wandb = require("wandb", "report_to=wandb")
        mode = os.environ.get("WANDB_MODE", "offline")
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "nanollm"), mode=mode, config=cfg,
                              dir=None if folder is None else str(folder),
                              name=None if folder is None else folder.name, reinit="finish_previous")

    def log(self, record):
        self.run.log(scalars(record), step=record["step"])

    def text(self, tag, text, step):
        self.run.log({tag: self.wandb.Html(f"<pre>{text}</pre>")}, step=step)

    def close(self):
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


class Trackers(list):
    """The open trackers, one call for all."""

    def log(self, record):
        for tracker in self:
            tracker.log(record)

    def text(self, tag, text, step):
        for tracker in self:
            tracker.text(tag, text, step)

    def close(self):
        for tracker in self:
            tracker.close()


def open_trackers(names, folder, cfg, resume_step=None):
    """Trackers of ``names`` (cfg["report_to"]); a missing package is a one-line error naming the
    pip command. Call on rank 0 only."""
    trackers = Trackers()
    try:
        for name in names:
            trackers.append(TRACKERS[name](folder, cfg, resume_step))
    except BaseException:
        trackers.close()
        raise
    return trackers
