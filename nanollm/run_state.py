"""Where a training run stands, and the checkpoints that keep it: save, resume, random streams.

    state = RunState(model, step, cfg, folder, comm, tokenizer)
    state.resume("runs/x/checkpoint_step_500.npz")     # parameters, optimizer, streams, counters
    ... train ...
    state.save("checkpoint_final.npz")

Everything a resumed run needs is in a checkpoint (parameters, optimizer state, step, the
batch and dropout generators of every rank, the loss scale, best validation loss, patience),
so an interrupted and resumed run ends with the same parameters, bit for bit, as one that
never stopped. The run folder's rules (a fresh run never mixes into an earlier run's files
unless overwrite=true) live here too.
"""

import math
from pathlib import Path

import numpy as np

from nanollm import backends, distributed
from nanollm.checkpoint import load_checkpoint, save_checkpoint, step_checkpoints
from nanollm.metrics import METRICS_FILE

ADAPTERS_FILE = "adapters_final.npz"  # a LoRA run's adapters alone, beside its final checkpoint


# ----------------------------------------------------------------------------- the run folder

def earlier_run_files(folder):
    """The checkpoints, adapters and metrics.jsonl an earlier run left in ``folder`` (none if it
    does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("checkpoint_*.npz")) + sorted(folder.glob(ADAPTERS_FILE)) + sorted(folder.glob(METRICS_FILE))


def resuming_in_place(cfg):
    """Whether the run resumes from a checkpoint in its own checkpoint_dir (it then continues
    that folder's files instead of starting them anew)."""
    resume, folder = cfg["resume_from"], cfg["checkpoint_dir"]
    return resume is not None and folder is not None and Path(resume).resolve().parent == Path(folder).resolve()


def check_checkpoint_dir(cfg):
    """A ValueError when checkpoint_dir is a file, or holds an earlier run that this fresh run
    would mix into without overwrite=true. Changes nothing on disk."""
    if cfg["checkpoint_dir"] is None:
        return
    folder = Path(cfg["checkpoint_dir"])
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint_dir={str(folder)!r} is a file, not a folder; choose another checkpoint_dir")
    earlier = earlier_run_files(folder)
    if earlier and not resuming_in_place(cfg) and not cfg["overwrite"]:
        raise ValueError(f"checkpoint_dir={str(folder)!r} already holds a run ({earlier[0].name}); continue it "
                         f"with resume_from={str(earlier[0])!r}, choose a new checkpoint_dir, or set "
                         "overwrite=true to replace it")


def prepare_checkpoint_dir(cfg):
    """Check checkpoint_dir (check_checkpoint_dir), create it, and for a fresh run with
    overwrite=true remove the earlier run's files. Returns the folder, or None."""
    check_checkpoint_dir(cfg)
    if cfg["checkpoint_dir"] is None:
        return None
    folder = Path(cfg["checkpoint_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    if not resuming_in_place(cfg):
        for path in earlier_run_files(folder):
            path.unlink()
    return folder


# ----------------------------------------------------------------------------- the run's state

def finite_or_none(value):
    return value if value is not None and math.isfinite(value) else None


class RunState:
    """The counters, random streams and checkpoint files of one run.

    model, step: the model and its TrainingStep (optimizer states, loss scale); folder: where
    checkpoints go (None: nowhere); every rank holds one, rank 0 alone writes."""

    def __init__(self, model, step, cfg, folder, comm, tokenizer=None, tokens_per_step=0):
        self.model, self.training_step, self.cfg, self.folder = model, step, cfg, folder
        self.comm, self.tokenizer, self.tokens_per_step = comm, tokenizer, tokens_per_step
        self.batch_rng = np.random.default_rng(distributed.rank_seed(cfg["seed"], comm.rank))  # on the host
        model.dropout_rng = backends.random_generator(distributed.rank_seed(cfg["seed"] + 1, comm.rank))  # on the device
        self.step, self.tokens_seen = 0, 0
        self.train_seconds = 0.0  # seconds spent in training steps, over resumes too (max_train_seconds counts these)
        self.loss = self.grad_norm = self.val_loss = None
        self.accuracy = self.val_accuracy = None  # top-1 next-token accuracy of the last step / evaluation
        self.best_val_loss, self.evals_without_improvement = math.inf, 0
        self.checkpoints = {"steps": [], "best": None, "final": None, "adapters": None}
        self.last_good_checkpoint = None
        self.notes = []  # said once the run starts (rank 0)

    def random_streams(self):
        return {"batches": self.batch_rng.bit_generator.state, "dropout": self.model.dropout_rng.bit_generator.state}

    def save(self, name):
        """Every rank calls this (their random streams are gathered); rank 0 writes the file."""
        streams = self.random_streams()
        rng_states = dict(streams)
        if self.comm.size > 1:
            rng_states["ranks"] = self.comm.allgather(streams)  # rank r resumes from ranks[r]
        path = self.folder / name
        extra = {"val_loss": self.val_loss, "accuracy": self.accuracy, "val_accuracy": self.val_accuracy,
                 "best_val_loss": finite_or_none(self.best_val_loss),
                 "evals_without_improvement": self.evals_without_improvement,
                 "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds, "ranks": self.comm.size,
                 **self.training_step.state()}
        if self.comm.is_root:
            save_checkpoint(path, self.model, optimizer_state=self.training_step.states, step=self.step,
                            loss=self.loss, config=self.cfg, tokenizer=self.tokenizer, rng_states=rng_states,
                            extra=extra)
        self.last_good_checkpoint = str(path)
        return str(path)

    def save_step_checkpoint(self):
        """checkpoint_step_<step>.npz, keeping the last keep_last_n of them."""
        self.checkpoints["steps"].append(self.save(f"checkpoint_step_{self.step}.npz"))
        keep = self.cfg["keep_last_n"]
        existing = step_checkpoints(self.folder) if self.comm.is_root else []
        for old in existing[:-keep] if keep else []:
            old.unlink()
            if str(old) in self.checkpoints["steps"]:
                self.checkpoints["steps"].remove(str(old))

    def resume(self, path):
        """Continue from the checkpoint at ``path``: parameters, optimizer states, loss scale,
        this rank's random streams and the run's counters."""
        info = load_checkpoint(path, self.model, optimizer_state=self.training_step.states, tokenizer=self.tokenizer)
        saved_optimizer = (info["config"] or {}).get("optimizer")
        if saved_optimizer is not None and saved_optimizer != self.cfg["optimizer"]:
            raise ValueError(f"{path} was trained with optimizer={saved_optimizer!r}, this config says "
                             f"{self.cfg['optimizer']!r}; resume with the same optimizer")
        self.step, self.loss = info["step"], info["loss"]
        extra = info["extra"]
        self._restore_streams(path, info["rng_states"])
        best = extra.get("best_val_loss")
        self.best_val_loss = math.inf if best is None else best
        self.val_loss = extra.get("val_loss")
        self.accuracy, self.val_accuracy = extra.get("accuracy"), extra.get("val_accuracy")
        self.evals_without_improvement = extra.get("evals_without_improvement", 0)
        self.tokens_seen = extra.get("tokens_seen", self.step * self.tokens_per_step)
        self.train_seconds = extra.get("train_seconds", 0.0)
        self.last_good_checkpoint = str(path)
        self.training_step.load_state(extra)

    def _restore_streams(self, path, rng_states):
        """This rank's batch and dropout streams from a checkpoint's; a note where they cannot
        be (another device's generator, another number of ranks)."""
        saved_ranks = rng_states.get("ranks", [rng_states])  # one rank's: its own streams
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
