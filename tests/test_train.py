"""train_with_config: results, accumulation, clipping, resume, NaN guard, early stopping, errors."""

import json
import math
import sys

import numpy as np
import pytest

from nanollm import CharTokenizer, TransformerLanguageModel, generate_text, load_checkpoint, train_with_config
from nanollm.data import EpochOrder, windows_at
from nanollm.checkpoint import read_checkpoint_metadata
from nanollm.metrics import plot_metrics, read_metrics
from nanollm.step import TrainingStep
from nanollm.optim import decays
from nanollm.train import evaluate, evaluate_loss

SAMPLE = "data/raw/sample.txt"
RESULT_KEYS = {"final_loss", "final_grad_norm", "final_accuracy", "final_val_loss", "final_val_accuracy",
               "final_val_perplexity", "best_val_loss", "steps", "tokens_seen", "tokens_per_second", "training_time_seconds", "history", "checkpoints",
               "last_good_checkpoint", "metrics_path", "stopped_early", "diverged", "stopped_because", "config",
               "ranks", "rank", "communication_seconds"}


@pytest.fixture(scope="module")
def text_and_tokenizer():
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()[:20_000]
    return text, CharTokenizer().build_vocab(text)


@pytest.fixture()
def ids(text_and_tokenizer):
    text, tokenizer = text_and_tokenizer
    return np.array(tokenizer.encode(text), dtype=np.int64)


def tiny_model(vocab_size, seed=0, dtype="float32", dropout=0.0, max_seq_len=16):
    return TransformerLanguageModel(vocab_size, embedding_dim=16, num_layers=1, num_heads=2, ffn_hidden_dim=32,
                                    max_seq_len=max_seq_len, dropout=dropout, dtype=dtype, seed=seed)


def quiet(**cfg):
    return {"log_interval": 0, "eval_steps": 2, "batch_size": 4, **cfg}


def test_training_lowers_the_loss_and_reports_every_result(ids, text_and_tokenizer, tmp_path):
    vocab = text_and_tokenizer[1].vocab_size
    model = tiny_model(vocab)
    results = train_with_config(model, ids, quiet(num_steps=40, learning_rate=3e-3, eval_interval=20,
                                                  log_interval=10, checkpoint_dir=str(tmp_path)))
    assert set(results) == RESULT_KEYS
    history = results["history"]
    assert [r["step"] for r in history] == [1, 10, 20, 30, 40]
    assert results["final_loss"] < history[0]["loss"] - 0.5
    assert results["final_val_loss"] == history[-1]["val_loss"] and "val_loss" in history[2]
    assert results["final_val_perplexity"] == pytest.approx(math.exp(results["final_val_loss"]))
    assert results["best_val_loss"] == min(history[2]["val_loss"], history[4]["val_loss"])
    assert results["steps"] == 40 and results["tokens_seen"] == 40 * 4 * 16
    assert results["tokens_per_second"] > 0 and results["training_time_seconds"] > 0
    assert results["stopped_early"] is False and results["diverged"] is False and results["stopped_because"] is None
    assert results["config"]["num_steps"] == 40 and results["config"]["checkpoint_dir"] == str(tmp_path)
    assert read_metrics(results["metrics_path"]) == history
    assert set(history[-1]) == {"step", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "grad_norm",
                                "tokens_per_second", "elapsed", "train_seconds"}
    assert results["final_accuracy"] == history[-1]["accuracy"] > history[0]["accuracy"]
    assert results["final_val_accuracy"] == history[-1]["val_accuracy"] and 0 < results["final_val_accuracy"] < 1
    assert results["checkpoints"]["final"] == str(tmp_path / "checkpoint_final.npz")
    assert load_checkpoint(results["checkpoints"]["final"], tiny_model(vocab, seed=5))["step"] == 40


def test_a_tiny_model_overfits_one_window(text_and_tokenizer, ids):
    model = tiny_model(text_and_tokenizer[1].vocab_size)
    results = train_with_config(model, ids[:17], quiet(num_steps=150, learning_rate=1e-2, val_fraction=0.0,
                                                       weight_decay=0.0))
    assert results["final_loss"] < 0.05 and results["final_val_loss"] is None


def test_accumulation_equals_one_big_batch_with_clipping_on_the_sum(ids, text_and_tokenizer):
    vocab = text_and_tokenizer[1].vocab_size
    finals = []
    for batch_size, accum in ((8, 1), (4, 2), (2, 4)):
        model = tiny_model(vocab, seed=3, dtype="float64")
        results = train_with_config(model, ids, quiet(num_steps=3, batch_size=batch_size, grad_accum_steps=accum,
                                                      max_grad_norm=0.05, val_fraction=0.0))
        finals.append((model.params, results))
    (reference, ref_results), others = finals[0], finals[1:]
    assert ref_results["final_grad_norm"] > 0.05  # clipping was active
    for params, results in others:
        assert results["final_loss"] == pytest.approx(ref_results["final_loss"], rel=1e-12)
        assert results["final_grad_norm"] == pytest.approx(ref_results["final_grad_norm"], rel=1e-12)
        for name, p in reference.items():
            np.testing.assert_allclose(params[name], p, rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.01])
def test_clipping_bounds_the_update_of_plain_sgd(ids, text_and_tokenizer, max_grad_norm):
    model = tiny_model(text_and_tokenizer[1].vocab_size, dtype="float64")
    before = {name: p.copy() for name, p in model.params.items()}
    results = train_with_config(model, ids, quiet(num_steps=1, optimizer="sgd", learning_rate=1.0, weight_decay=0.0,
                                                  max_grad_norm=max_grad_norm, val_fraction=0.0))
    step_norm = math.sqrt(sum(float(np.sum((model.params[n] - p) ** 2)) for n, p in before.items()))
    norm = results["final_grad_norm"]
    assert step_norm == pytest.approx(norm if max_grad_norm == 0 else max_grad_norm * norm / (norm + 1e-6), rel=1e-9)


def test_weight_decay_spares_biases_and_gains_unless_told_otherwise(text_and_tokenizer):
    model = tiny_model(text_and_tokenizer[1].vocab_size)
    decayed = {name for name, p in model.params.items() if decays(name, p)}
    assert decayed == {"wte", "wpe", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                       "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"}
    spared = {name for name, p in model.params.items() if not decays(name, p, no_decay=["*.bias", "wpe"])}
    assert spared == {name for name in model.params if name.endswith(".bias")} | {"wpe"}


def test_weight_decay_reaches_only_the_chosen_parameters_in_training(ids, text_and_tokenizer):
    """One SGD step with and without a huge L2 decay: only the decayed parameters differ."""
    runs = []
    for weight_decay in (0.0, 100.0):
        model = tiny_model(text_and_tokenizer[1].vocab_size, dtype="float64")
        train_with_config(model, ids, quiet(num_steps=1, optimizer="sgd", learning_rate=1e-3, max_grad_norm=0.0,
                                            weight_decay=weight_decay, val_fraction=0.0))
        runs.append(model.params)
    differing = {name for name in runs[0] if not np.array_equal(runs[0][name], runs[1][name])}
    assert differing == {"wte", "wpe", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                         "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"}


@pytest.mark.parametrize("mode", [
    {}, {"epochs": 2},
    {"optimizer": "muon"},  # muon: buffers and AdamW's m, v
    {"lora_rank": 2, "lora_dropout": 0.1, "lora_targets": ["q", "v", "mlp"]},  # frozen base, adapters' state
    # sophia: m and h; Hessian estimates after steps 3, 6, 9, 12, so the checkpoint at step 4 falls
    # between two and the resumed run must draw the estimates' labels as the uninterrupted one did
    {"optimizer": "sophia", "sophia_hessian_interval": 3},
    {"optimizer": "sophia", "sophia_hessian_interval": 3, "grad_accum_steps": 2, "lora_rank": 2,
     "lora_targets": ["q", "v", "mlp"]},
])
def test_an_interrupted_and_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does(
        ids, text_and_tokenizer, tmp_path, monkeypatch, crash_at_step, mode):
    text, tokenizer = text_and_tokenizer
    data = ids[:700]  # epochs: 630 training tokens, 39 windows, 9 steps an epoch
    cfg = quiet(num_steps=12, checkpoint_interval=4, eval_interval=4, lr_schedule="cosine", warmup_steps=2,
                dropout=0.1, log_interval=1)
    cfg.update(mode)
    straight = tiny_model(tokenizer.vocab_size, seed=1)
    expected = train_with_config(straight, data, {**cfg, "checkpoint_dir": str(tmp_path / "straight")})

    crash_at_step(7)
    with pytest.raises(KeyboardInterrupt):
        train_with_config(tiny_model(tokenizer.vocab_size, seed=1), data,
                          {**cfg, "checkpoint_dir": str(tmp_path / "crashed")}, tokenizer=tokenizer)
    monkeypatch.undo()
    resumed = tiny_model(tokenizer.vocab_size, seed=99)  # the checkpoint replaces every weight
    results = train_with_config(resumed, data, {**cfg, "checkpoint_dir": str(tmp_path / "crashed")},
                                tokenizer=tokenizer, resume_from=tmp_path / "crashed" / "checkpoint_step_4.npz")

    assert results["steps"] == expected["steps"] and results["tokens_seen"] == expected["tokens_seen"]
    for name, p in straight.params.items():
        assert np.array_equal(resumed.params[name], p), name
    assert results["final_val_loss"] == expected["final_val_loss"]
    metrics = read_metrics(tmp_path / "crashed" / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [r["step"] for r in expected["history"]]  # no step twice
    assert [r["loss"] for r in metrics] == [r["loss"] for r in expected["history"]]


def test_a_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(ids, text_and_tokenizer, tmp_path, capsys):
    model = tiny_model(text_and_tokenizer[1].vocab_size)
    original_forward, calls = model.forward, []

    def forward(idx, targets=None):
        logits, loss = original_forward(idx, targets)
        calls.append(1)
        return logits, (np.float32("nan") if len(calls) == 5 else loss)

    model.forward = forward
    results = train_with_config(model, ids, quiet(num_steps=10, checkpoint_interval=2, val_fraction=0.0,
                                                  checkpoint_dir=str(tmp_path), threads=1))  # one thread: a patched forward
    good = str(tmp_path / "checkpoint_step_4.npz")
    assert results["steps"] == 4 and results["last_good_checkpoint"] == good and results["diverged"]
    assert results["stopped_because"].startswith("diverged at step 5: loss is nan")
    assert "diverged at step 5" in capsys.readouterr().out
    assert results["checkpoints"]["final"] is None and not (tmp_path / "checkpoint_final.npz").exists()
    restored = tiny_model(text_and_tokenizer[1].vocab_size, seed=8)
    assert load_checkpoint(good, restored)["step"] == 4
    assert all(np.array_equal(restored.params[n], p) for n, p in model.params.items())  # no update at step 5


def test_a_nan_gradient_stops_before_the_update(ids, text_and_tokenizer):
    model = tiny_model(text_and_tokenizer[1].vocab_size)
    original_backward, calls = model.backward, []

    def backward(dlogits=None, dloss=1.0):
        grads = original_backward(dlogits, dloss)
        calls.append(1)
        if len(calls) == 3:
            grads["blocks.0.mlp.fc.bias"][0] = np.inf
        return grads

    model.backward = backward
    results = train_with_config(model, ids, quiet(num_steps=10, val_fraction=0.0, threads=1))  # counts backward calls
    assert results["steps"] == 2 and "diverged at step 3: gradient norm is inf" in results["stopped_because"]
    assert all(np.isfinite(p).all() for p in model.params.values())


def test_early_stopping_when_validation_stops_improving(ids, text_and_tokenizer):
    model = tiny_model(text_and_tokenizer[1].vocab_size)
    results = train_with_config(model, ids, quiet(num_steps=100, eval_interval=5, patience=2, min_delta=10.0))
    assert results["stopped_early"] and results["steps"] == 15  # evals at 5 (best), 10, 15: two without gain
    assert "did not improve by more than 10.0 for 2 evaluations" in results["stopped_because"]


def test_explicit_validation_tokens_are_used_whole(ids, text_and_tokenizer):
    model = tiny_model(text_and_tokenizer[1].vocab_size, dtype="float64")
    val = ids[-500:]
    results = train_with_config(model, ids[:-500], quiet(num_steps=2, seed=4), val_tokens=val)
    assert results["final_val_loss"] == evaluate_loss(model, val, 16, 4, 2, seed=[4, 2])


def test_whole_split_evaluation_weighs_every_window_once(ids, text_and_tokenizer):
    model = tiny_model(text_and_tokenizer[1].vocab_size, dtype="float64")
    val = ids[:100]  # windows start at 0, 16, ..., 80: batches of 4 and 2
    per_window = [float(model.forward(*windows_at(val, [start], 16))[1]) for start in range(0, 81, 16)]
    assert evaluate_loss(model, val, 16, batch_size=4) == pytest.approx(np.mean(per_window), rel=1e-12)
    results = train_with_config(model, ids, quiet(num_steps=1, eval_steps=None))
    assert results["final_val_loss"] == evaluate_loss(model, ids[-2000:], 16, 4)


def test_accuracy_counts_top_1_hits_over_counted_targets_only(ids, text_and_tokenizer):
    """evaluate's accuracy, and a training step's, equal the argmax hits counted by hand, with
    masked targets (IGNORE_INDEX) left out of both the hits and the count."""
    from nanollm.config import resolve
    from nanollm.ops.cross_entropy import IGNORE_INDEX

    model = tiny_model(text_and_tokenizer[1].vocab_size, dtype="float64")
    val = ids[:100]
    hits = counted = 0
    for start in range(0, 81, 16):
        inputs, targets = windows_at(val, [start], 16)
        logits = model.forward(inputs)[0]
        hits += int((logits.argmax(-1) == targets).sum())
        counted += targets.size
    assert evaluate(model, val, 16, batch_size=4)[1] == pytest.approx(hits / counted, rel=1e-12)

    inputs, targets = windows_at(ids, [0, 40, 80], 16)
    masked = targets.copy()
    masked[:, :8] = IGNORE_INDEX  # half of every window does not count
    logits = model.forward(inputs)[0]
    expected = int((logits.argmax(-1) == targets)[:, 8:].sum()) / masked[:, 8:].size
    step = TrainingStep(model, resolve({}))
    step(0, [(inputs[:2], masked[:2]), (inputs[2:], masked[2:])], 0.0)  # two micro-batches, lr 0
    assert float(step.accuracy) == pytest.approx(expected, rel=1e-12)


def test_layer_stats_split_the_gradient_norm_and_measure_each_update(ids, text_and_tokenizer, tmp_path):
    model = tiny_model(text_and_tokenizer[1].vocab_size, dtype="float64")
    before = {name: p.copy() for name, p in model.params.items()}
    results = train_with_config(model, ids, quiet(num_steps=1, log_interval=1, log_layer_stats=True,
                                                  max_grad_norm=0.0, optimizer="sgd", learning_rate=0.1,
                                                  weight_decay=0.0))
    record = results["history"][-1]
    norms, ratios = record["layer_grad_norms"], record["update_ratios"]
    assert sorted(norms) == sorted(ratios) == ["blocks.0", "ln_f", "wpe", "wte"]
    assert math.sqrt(sum(n * n for n in norms.values())) == pytest.approx(record["grad_norm"], rel=1e-9)
    block = [name for name in before if name.startswith("blocks.0.")]
    change = math.sqrt(sum(((model.params[n] - before[n]) ** 2).sum() for n in block))
    size = math.sqrt(sum((before[n] ** 2).sum() for n in block))
    assert ratios["blocks.0"] == pytest.approx(change / size, rel=1e-9)
    assert ratios["blocks.0"] == pytest.approx(0.1 * norms["blocks.0"] / size, rel=1e-9)  # SGD: lr x gradient
    quiet_run = train_with_config(tiny_model(text_and_tokenizer[1].vocab_size), ids, quiet(num_steps=1, log_interval=1))
    assert "layer_grad_norms" not in quiet_run["history"][-1]  # off by default


def test_epochs_walk_every_window_once_per_epoch_in_a_new_order():
    order = EpochOrder(num_tokens=1001, seq_len=10, windows_per_step=8, drop_last=True, seed=0)
    assert order.num_windows == 100 and order.steps_per_epoch == 12
    epoch0 = np.concatenate([order.starts_for_step(s) for s in range(12)])
    epoch1 = np.concatenate([order.starts_for_step(s) for s in range(12, 24)])
    assert len(set(epoch0.tolist())) == 96 and set(epoch0.tolist()) <= set(range(0, 1000, 10))
    assert not np.array_equal(epoch0, epoch1)
    keep_last = EpochOrder(num_tokens=1001, seq_len=10, windows_per_step=8, drop_last=False, seed=0)
    assert keep_last.steps_per_epoch == 13 and len(keep_last.starts_for_step(12)) == 4
    with pytest.raises(ValueError, match="fewer than one step of batch_size x grad_accum_steps = 200"):
        EpochOrder(num_tokens=1001, seq_len=10, windows_per_step=200, drop_last=True, seed=0)


def test_epoch_mode_sets_the_number_of_steps(ids, text_and_tokenizer):
    model = tiny_model(text_and_tokenizer[1].vocab_size)
    data = ids[:801]  # 50 windows of 16 (+1) tokens
    results = train_with_config(model, data, quiet(epochs=2, batch_size=8, val_fraction=0.0, drop_last=False))
    assert results["steps"] == 2 * 7 and results["tokens_seen"] == 2 * 50 * 16


def test_config_overrides_dtype_and_dropout_of_the_model(ids, text_and_tokenizer):
    model = tiny_model(text_and_tokenizer[1].vocab_size)
    train_with_config(model, ids, quiet(num_steps=1, dtype="float64", dropout=0.2, val_fraction=0.0))
    assert model.dtype == "float64" and all(p.dtype == np.float64 for p in model.params.values())
    assert model.dropout == 0.2 and model.config["dropout"] == 0.2


@pytest.mark.parametrize("cfg, kwargs, message", [
    ({"embedding_dim": 32}, {}, "config says embedding_dim=32 but the model has embedding_dim=16"),
    ({"max_seq_len": 64}, {}, "max_seq_len=64 exceeds the model's max_seq_len=16"),
    ({"learning_rat": 1e-3}, {}, "unknown config key 'learning_rat'; did you mean 'learning_rate'"),
    ({"batch_size": 0}, {}, "batch_size must be > 0"),
    ({"sample_interval": 5}, {}, "sample_interval is set but no tokenizer was given"),
    ({}, {"resume_from": "nowhere.npz"}, "resume_from='nowhere.npz' does not exist"),
    ({"val_fraction": 0.0005}, {}, "the validation data has 10 tokens, fewer than one window"),
    ({}, {"val_tokens": np.zeros((2, 50), dtype=np.int64)}, r"val_tokens must be 1-D"),
    ({}, {"val_tokens": [[1, 2]]}, "val_tokens must be a list of integer token ids"),
])
def test_bad_settings_are_one_line_errors(ids, text_and_tokenizer, cfg, kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        train_with_config(tiny_model(text_and_tokenizer[1].vocab_size), ids, {**quiet(num_steps=1), **cfg}, **kwargs)
    assert "\n" not in str(error.value)


def test_bad_tokens_are_one_line_errors(text_and_tokenizer):
    model = tiny_model(text_and_tokenizer[1].vocab_size)
    with pytest.raises(ValueError, match=f"token id {model.vocab_size} outside the model's vocabulary"):
        train_with_config(model, np.full(100, model.vocab_size), quiet(num_steps=1))
    with pytest.raises(ValueError, match="the training data has 10 tokens, fewer than one window"):
        train_with_config(model, np.zeros(10, dtype=np.int64), quiet(num_steps=1, val_fraction=0.0))
    with pytest.raises(ValueError, match="must hold integer token ids"):
        train_with_config(model, np.zeros(100), quiet(num_steps=1))


def test_a_fresh_run_never_overwrites_an_earlier_one_unless_told(ids, text_and_tokenizer, tmp_path):
    vocab = text_and_tokenizer[1].vocab_size
    cfg = quiet(num_steps=2, val_fraction=0.0, checkpoint_dir=str(tmp_path))
    train_with_config(tiny_model(vocab), ids, cfg)
    before = (tmp_path / "checkpoint_final.npz").read_bytes()
    with pytest.raises(ValueError, match="already holds a run .* resume_from=.* overwrite=true"):
        train_with_config(tiny_model(vocab), ids, cfg)
    assert (tmp_path / "checkpoint_final.npz").read_bytes() == before
    results = train_with_config(tiny_model(vocab, seed=1), ids, {**cfg, "overwrite": True})
    assert len(read_metrics(results["metrics_path"])) == 2


def test_step_checkpoints_are_pruned_to_keep_last_n(ids, text_and_tokenizer, tmp_path):
    results = train_with_config(tiny_model(text_and_tokenizer[1].vocab_size), ids,
                                quiet(num_steps=10, checkpoint_interval=2, keep_last_n=2, eval_interval=5,
                                      checkpoint_dir=str(tmp_path)))
    names = sorted(p.name for p in tmp_path.glob("*.npz"))
    assert names == ["checkpoint_best.npz", "checkpoint_final.npz", "checkpoint_step_10.npz", "checkpoint_step_8.npz"]
    assert results["checkpoints"]["steps"] == [str(tmp_path / "checkpoint_step_8.npz"),
                                               str(tmp_path / "checkpoint_step_10.npz")]
    best = load_checkpoint(tmp_path / "checkpoint_best.npz", tiny_model(text_and_tokenizer[1].vocab_size))
    assert best["step"] in (5, 10) and best["extra"]["best_val_loss"] == results["best_val_loss"]


def test_samples_are_printed_during_training(ids, text_and_tokenizer, capsys):
    _, tokenizer = text_and_tokenizer
    train_with_config(tiny_model(tokenizer.vocab_size), ids,
                      quiet(num_steps=4, sample_interval=2, sample_prompt="The", sample_length=10, val_fraction=0.0),
                      tokenizer=tokenizer)
    out = capsys.readouterr().out
    assert out.count("--- sample at step") == 2 and "\nThe" in out


def test_plot_metrics_writes_a_png(ids, text_and_tokenizer, tmp_path):
    results = train_with_config(tiny_model(text_and_tokenizer[1].vocab_size), ids,
                                quiet(num_steps=6, log_interval=1, eval_interval=3))
    path = plot_metrics(results["history"], tmp_path / "curves.png", title="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results["history"]))
    assert plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "again.png").stat().st_size > 1000


def test_plotting_leaves_matplotlibs_backend_alone(tmp_path):
    """A notebook's inline backend must survive a plot helper (matplotlib.use('Agg') broke it)."""
    import matplotlib

    from nanollm.experiments import plot_grid

    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        plot_metrics([{"step": 1, "loss": 2.0, "lr": 1e-3, "grad_norm": 1.0}], tmp_path / "m.png")
        record = {"experiment_name": "a", "num_parameters": 10, "results": {"final_val_loss": 1.0}, "varied": {},
                  "config": {"batch_size": 1, "max_seq_len": 2}, "history": [{"step": 1, "loss": 2.0}]}
        plot_grid([record], tmp_path, "g")
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)


def test_the_nano_llm_script_end_to_end(tmp_path):
    """tokenizer -> model -> train_with_config with checkpoints -> load_checkpoint -> generate_text."""
    tokenizer = CharTokenizer()
    tokenizer.build_vocab(SAMPLE)
    with open(SAMPLE, encoding="utf-8") as f:
        ids = tokenizer.encode(f.read())
    model = TransformerLanguageModel(vocab_size=tokenizer.vocab_size, embedding_dim=32, num_layers=2,
                                     ffn_hidden_dim=64, max_seq_len=32, seed=0)
    results = train_with_config(model, ids, {"learning_rate": 3e-3, "num_steps": 150, "batch_size": 8,
                                             "checkpoint_dir": str(tmp_path / "nano"), "checkpoint_interval": 50,
                                             "log_interval": 50, "eval_interval": 50, "eval_steps": 4},
                                tokenizer=tokenizer)
    assert results["final_val_loss"] < 2.6  # uniform guessing is ln(vocab) = 4.2
    info = load_checkpoint(tmp_path / "nano" / "checkpoint_final.npz")
    loaded = info["model"]
    assert info["step"] == 150 and info["loss"] == results["final_loss"]
    expected = generate_text(model, tokenizer, "The cow", max_length=60, temperature=0.8, top_k=10, seed=42)
    assert generate_text(loaded, info["tokenizer"], "The cow", max_length=60, temperature=0.8, top_k=10,
                         seed=42) == expected
    assert sorted(p.name for p in (tmp_path / "nano").glob("checkpoint_step_*")) == [
        "checkpoint_step_100.npz", "checkpoint_step_150.npz", "checkpoint_step_50.npz"]


TINY_RUN = """
import numpy as np
from nanollm import GPT, train_with_config
model = GPT(vocab_size=10, embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=8, seed=0)
train_with_config(model, np.arange(2000) % 10, {"num_steps": 30, "log_interval": 10, "eval_steps": 2})
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_a_terminal_gets_a_progress_bar_and_a_pipe_plain_lines():
    pytest.importorskip("tqdm", reason="tqdm is not installed")
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: python on a 120-column terminal
        os.execv(sys.executable, [sys.executable, "-c", TINY_RUN])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    terminal = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child has exited
            break
        if not chunk:
            break
        terminal += chunk
    os.waitpid(pid, 0)
    assert b"30/30 [" in terminal and b"step/s" in terminal and b"step 30/30 | loss" in terminal
    piped = subprocess.run([sys.executable, "-c", TINY_RUN], capture_output=True, text=True, check=True)
    assert "step/s" not in piped.stdout + piped.stderr and "step 30/30 | loss" in piped.stdout


def test_init_from_starts_a_new_run_from_the_weights_only(ids, text_and_tokenizer, tmp_path):
    """Fine-tuning: the checkpoint's parameters, a fresh optimizer, step count and schedule."""
    tokenizer = text_and_tokenizer[1]
    base = tiny_model(tokenizer.vocab_size, seed=0)
    train_with_config(base, ids, quiet(num_steps=30, learning_rate=3e-3, checkpoint_dir=str(tmp_path / "base")),
                      tokenizer=tokenizer)
    tuned = tiny_model(tokenizer.vocab_size, seed=1)   # other weights, all replaced
    results = train_with_config(tuned, ids, quiet(num_steps=5, learning_rate=1e-12, weight_decay=0.0,
                                                  init_from=str(tmp_path / "base"),   # a run folder works
                                                  checkpoint_dir=str(tmp_path / "tuned")), tokenizer=tokenizer)
    assert results["steps"] == 5 and results["history"][0]["step"] == 1
    for name, value in base.params.items():
        np.testing.assert_allclose(tuned.params[name], value, rtol=1e-6, atol=1e-9, err_msg=name)
    saved = read_checkpoint_metadata(tmp_path / "tuned" / "checkpoint_final.npz")
    assert saved["step"] == 5 and saved["optimizer_scalars"]["wte"]["step"] == 5   # Adam's count restarted

    wider = TransformerLanguageModel(tokenizer.vocab_size, embedding_dim=32, num_layers=1, num_heads=2,
                                     ffn_hidden_dim=32, max_seq_len=16)
    with pytest.raises(ValueError, match="embedding_dim"):
        train_with_config(wider, ids, quiet(num_steps=1, init_from=str(tmp_path / "base" / "checkpoint_final.npz")))
    with pytest.raises(ValueError, match="init_from: checkpoint 'nowhere' does not exist"):
        train_with_config(tiny_model(tokenizer.vocab_size), ids, quiet(num_steps=1, init_from="nowhere"))
