"""report_to: TensorBoard event files read back with tensorboard's own EventAccumulator, a W&B
offline run holding the history, one-line errors for what is missing, and the plain run
untouched. Nothing is sent anywhere: W&B runs with WANDB_MODE=offline."""

import glob
import json
import math
import sys
import time

import numpy as np
import pytest

from nanollm import CharTokenizer, TransformerLanguageModel, train_with_config
from nanollm.corpus import synthetic_text
from nanollm.metrics import read_metrics
from nanollm.tracking import scalars


@pytest.fixture(scope="module")
def data():
    text = synthetic_text(20_000, seed=0)
    tokenizer = CharTokenizer().build_vocab(text=text)
    return np.array(tokenizer.encode(text)), tokenizer


def run(data, folder, steps=12, **cfg):
    ids, tokenizer = data
    model = TransformerLanguageModel(tokenizer.vocab_size, embedding_dim=16, num_layers=1, num_heads=2,
                                     ffn_hidden_dim=32, max_seq_len=16, seed=0)
    settings = {"num_steps": steps, "batch_size": 4, "log_interval": 3, "eval_interval": 6, "eval_steps": 2,
                "checkpoint_dir": str(folder), "sample_interval": 6, "sample_length": 10, **cfg}
    return train_with_config(model, ids, settings, tokenizer=tokenizer)


def test_scalars_name_train_and_val_figures_and_add_perplexities():
    record = {"step": 3, "loss": 2.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.6, "lr": 1e-3,
              "layer_grad_norms": {"blocks.0": 0.5}, "update_ratios": {"blocks.0": None}}
    tags = scalars(record)
    assert tags["train/loss"] == 2.0 and tags["val/accuracy"] == 0.6 and tags["train/lr"] == 1e-3
    assert tags["train/perplexity"] == pytest.approx(math.exp(2.0)) and tags["val/perplexity"] == pytest.approx(math.e)
    assert tags["train/grad_norm/blocks.0"] == 0.5 and "train/update_ratio/blocks.0" not in tags


def test_tensorboard_events_hold_every_logged_step_the_config_and_samples(data, tmp_path):
    pytest.importorskip("tensorboardX", reason="report_to=tensorboard needs tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="reading the events back needs tensorboard")
    results = run(data, tmp_path / "run", report_to="tensorboard", log_layer_stats=True)
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    history = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert history == results["history"]
    for key, tag in (("loss", "train/loss"), ("accuracy", "train/accuracy"), ("grad_norm", "train/grad_norm")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in history], tag
    val = [(e.step, e.value) for e in events.Scalars("val/loss")]
    assert val == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in history if "val_loss" in r]
    assert [e.step for e in events.Scalars("train/grad_norm/blocks.0")] == [r["step"] for r in history]
    texts = events.Tags()["tensors"]
    assert "config/text_summary" in texts and "samples/text_summary" in texts


def test_tensorboard_resume_purges_the_interrupted_runs_later_events(data, tmp_path):
    pytest.importorskip("tensorboardX", reason="report_to=tensorboard needs tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="reading the events back needs tensorboard")
    first = run(data, tmp_path / "run", steps=12, report_to="tensorboard", checkpoint_interval=6)
    time.sleep(1.1)  # event files are named by the second they start in, and read in that order
    resumed = run(data, tmp_path / "run", steps=12, report_to="tensorboard",
                  resume_from=first["checkpoints"]["steps"][0])  # step 6: steps 9 and 12 are redone
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 3, 6, 9, 12]  # each step once
    assert events.Scalars("train/loss")[-1].value == pytest.approx(resumed["history"][-1]["loss"], rel=1e-6)


def test_wandb_offline_run_holds_the_history(data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="report_to=wandb needs wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # never sends anything, whatever the machine says
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = run(data, tmp_path / "run", report_to="wandb")
    runs = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "*.wandb"))
    assert len(runs) == 1
    # The .wandb file is W&B's log of protobuf records (read by `wandb sync`; this version ships no
    # offline reader): each history value is stored as its JSON text, so every logged figure and
    # tag is in its bytes.
    content = open(runs[0], "rb").read()
    for record in results["history"]:
        for key in ("loss", "accuracy"):
            assert json.dumps(record[key]).encode() in content, (record["step"], key)
    assert b"train/loss" in content and b"val/accuracy" in content


def test_missing_tracker_package_and_missing_folder_are_one_line_errors(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes `import tensorboardX` fail
    with pytest.raises(ImportError, match=r"^report_to=tensorboard needs the tensorboardX package: pip install "
                                          r"tensorboardX \(or nanollm's \"tensorboard\" extra\)$"):
        run(data, tmp_path / "run", report_to="tensorboard")
    monkeypatch.delitem(sys.modules, "tensorboardX")
    pytest.importorskip("tensorboardX", reason="the folder check comes after the import")
    with pytest.raises(ValueError, match="report_to=tensorboard writes into the run folder: set checkpoint_dir"):
        run(data, tmp_path / "other", report_to="tensorboard", checkpoint_dir=None)
    with pytest.raises(ValueError, match="report_to takes tensorboard, wandb"):
        run(data, tmp_path / "other", report_to=["mlflow"])
    from nanollm.config import parse_value, resolve
    assert resolve({"report_to": parse_value("report_to", "none")})["report_to"] == []  # --report_to=none


def test_without_report_to_nothing_but_metrics_jsonl_is_written(data, tmp_path):
    run(data, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint_best.npz", "checkpoint_final.npz",
                                                                   "metrics.jsonl"]
