"""How a run reports itself: metrics.jsonl (one JSON record per logged step), the console
(a progress bar or log lines), and loss-curve plots.

    records = read_metrics("checkpoints/run/metrics.jsonl")
    plot_metrics("checkpoints/run/metrics.jsonl", "checkpoints/run/curves.png")

A record holds step, loss, lr, grad_norm, tokens_per_second (since the previous record) and
elapsed seconds; records of evaluation steps add val_loss.
"""

import json
import math
import sys
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def _json_number(value):
    """NaN and Inf are not JSON: they are written as null (inside per-layer dicts too)."""
    if isinstance(value, dict):
        return {key: _json_number(v) for key, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path):
    """The list of records in a metrics.jsonl file."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {number}: not a JSON record ({exc.msg})") from None
    return records


class MetricsLog:
    """Appends records to ``<folder>/metrics.jsonl`` (or only keeps them, when folder is None), and
    hands each to the experiment trackers (nanollm.tracking), so every view has the same figures."""

    def __init__(self, folder, resume_step=None, trackers=()):
        """resume_step: continuing a run, so records after that step (written by the interrupted
        run, which the resumed one will redo) are dropped from the file first."""
        self.records, self.trackers = [], trackers
        self.path = None if folder is None else Path(folder) / METRICS_FILE
        if self.path is not None and resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            temporary.replace(self.path)

    def write(self, record):
        record = {key: _json_number(value) for key, value in record.items()}
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        for tracker in self.trackers:
            tracker.log(record)

    def text(self, tag, text, step):
        """A text (a sample generation) for the trackers; metrics.jsonl keeps numbers only."""
        for tracker in self.trackers:
            tracker.text(tag, text, step)


def _loss_figures(loss, accuracy):
    """"1.2345 (ppl 3.44, acc 61.2%)": a loss with its perplexity and top-1 accuracy."""
    figures = [f"ppl {math.exp(loss):.2f}"] if loss is not None and loss < 700 else []
    if accuracy is not None:
        figures.append(f"acc {100 * accuracy:.1f}%")
    return f"{loss:.4f}" + (f" ({', '.join(figures)})" if figures else "")


def log_line(record, total_steps):
    """One record as a console line: step, loss (perplexity, accuracy), val, lr, norm, tokens/s, elapsed."""
    parts = [f"step {record['step']:>{len(str(total_steps))}}/{total_steps}",
             f"loss {_loss_figures(record['loss'], record.get('accuracy'))}"]
    if record.get("val_loss") is not None:
        parts.append(f"val {_loss_figures(record['val_loss'], record.get('val_accuracy'))}")
    parts += [f"lr {record['lr']:.2e}", f"norm {record['grad_norm']:.3f}",
              f"{record['tokens_per_second']:,.0f} tok/s", f"{record['elapsed']:.1f} s"]
    return " | ".join(parts)


class Progress:
    """A tqdm bar when stderr is a terminal (and tqdm is installed); plain log lines otherwise;
    nothing at all when quiet (data-parallel ranks other than 0)."""

    def __init__(self, total, initial, quiet=False):
        self.bar, self.quiet = None, quiet
        if sys.stderr.isatty() and not quiet:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def step(self, loss=None):
        """One step done; its loss (None when it was not read from the device this step)."""
        if self.bar is not None:
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(1)

    def print(self, line):
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def plot_metrics(source, path, title=None):
    """Plot loss and val_loss, accuracy, learning rate and gradient norm against the step into a PNG.

    source is a metrics.jsonl path or a list of records (results["history"]). Returns path."""
    from matplotlib.figure import Figure  # not pyplot: no global backend switch, no open windows

    records = read_metrics(source) if isinstance(source, (str, Path)) else list(source)
    if not records:
        raise ValueError(f"{source} holds no metrics records to plot")

    def series(key):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        return [p[0] for p in points], [p[1] for p in points]

    figure = Figure(figsize=(20, 4))
    loss_axes, accuracy_axes, lr_axes, norm_axes = figure.subplots(1, 4)
    loss_axes.plot(*series("loss"), label="train loss", linewidth=1)
    if series("val_loss")[0]:
        loss_axes.plot(*series("val_loss"), "o-", label="val loss")
    loss_axes.set_ylabel("cross-entropy (nats/token)")
    loss_axes.legend()
    accuracy_axes.plot(*series("accuracy"), label="train", linewidth=1)
    if series("val_accuracy")[0]:
        accuracy_axes.plot(*series("val_accuracy"), "o-", label="val")
    accuracy_axes.set_ylabel("next-token accuracy (top-1)")
    accuracy_axes.legend()
    lr_axes.plot(*series("lr"))
    lr_axes.set_ylabel("learning rate")
    norm_axes.plot(*series("grad_norm"), linewidth=1)
    norm_axes.set_ylabel("gradient norm (before clipping)")
    for axes in (loss_axes, accuracy_axes, lr_axes, norm_axes):
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
