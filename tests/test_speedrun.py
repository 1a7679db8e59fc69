"""The CPU speedrun's pieces: ReLU^2, logit soft-capping, QK-norm, zero-init and max_train_seconds.

Each op is gradient-checked alone and inside the whole model on every backend, for both
architectures, with LoRA and in half precision; formats that cannot hold them refuse in one line.
"""

import importlib.util
import json

import numpy as np
import pytest

from nanollm import GPT, save_checkpoint, train_with_config
from nanollm.config import resolve
from nanollm.gradcheck import check_gradients, check_op_gradients
from nanollm.interop.hf import export_hf
from nanollm.ops.relu_squared import relu_squared_backward, relu_squared_forward
from nanollm.ops.softcap import softcap_backward, softcap_forward
from nanollm.schedule import lr_at, schedule_position

TINY = dict(vocab_size=7, embedding_dim=8, num_layers=2, ffn_hidden_dim=12, num_heads=4, max_seq_len=5, rope_base=50.0)
SPEEDRUN = dict(mlp_activation="relu2", qk_norm=True, logit_softcap=2.0)


def perturbed(seed=0, **settings):
    """A float64 tiny model moved well away from its init, so every path carries a gradient."""
    model = GPT(**{**TINY, "dtype": "float64", "seed": seed, **settings})
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p += rng.normal(0.0, 0.3, size=p.shape)
    return model


def test_relu_squared_and_softcap_values_and_gradients(backend):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5)) * 2
    out, _ = relu_squared_forward(x)
    np.testing.assert_array_equal(out, np.where(x > 0, x * x, 0.0))
    errors = check_op_gradients(relu_squared_forward, relu_squared_backward, {"x": x}, ["x"])
    assert errors["x"] < 1e-7, errors
    capped, _ = softcap_forward(x * 10, 3.0)
    np.testing.assert_allclose(capped, 3.0 * np.tanh(x * 10 / 3.0), rtol=1e-15)
    assert np.abs(capped).max() < 3.0
    errors = check_op_gradients(lambda z: softcap_forward(z, 3.0), softcap_backward, {"z": x}, ["z"])
    assert errors["z"] < 1e-7, errors


@pytest.mark.parametrize("architecture, settings", [
    ("gpt2", SPEEDRUN),
    ("gpt2", dict(qk_norm=True, num_kv_heads=2)),
    ("llama", {**SPEEDRUN, "tie_embeddings": False, "num_kv_heads": 2}),
    ("llama", dict(qk_norm=True, logit_softcap=1.5)),  # SwiGLU with the other two
])
def test_whole_model_gradient_check_with_the_speedrun_options(backend, architecture, settings):
    model = perturbed(architecture=architecture, **settings)
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 7, size=(2, 5)), rng.integers(0, 7, size=(2, 5))
    targets[1, 2] = -100
    model.forward(idx, targets)
    grads = model.backward()
    assert list(grads) == list(model.params)
    errors = check_gradients(lambda: model.forward(idx, targets)[1], model.params, grads)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"worst: {worst} {errors[worst]:.2e}"


def test_llama_relu2_has_two_mlp_matrices_and_lora_adapts_them(backend):
    model = perturbed(architecture="llama", mlp_activation="relu2")
    assert [n for n in model.params if n.startswith("blocks.0.mlp")] == ["blocks.0.mlp.fc.weight",
                                                                        "blocks.0.mlp.proj.weight"]
    assert model.ffn_hidden_dim == 12
    assert GPT(vocab_size=7, embedding_dim=16, architecture="llama", mlp_activation="relu2").ffn_hidden_dim == 64
    model.add_lora(rank=2, targets=["q", "mlp"], seed=0)
    rng = np.random.default_rng(2)
    for name in model.trainable:  # B starts at zero: move it so the adapters' path is checked
        model.params[name] += rng.normal(0.0, 0.3, size=model.params[name].shape)
    idx, targets = rng.integers(0, 7, size=(2, 5)), rng.integers(0, 7, size=(2, 5))
    model.forward(idx, targets)
    grads = model.backward()
    assert "blocks.1.mlp.proj.lora_B" in grads
    errors = check_gradients(lambda: model.forward(idx, targets)[1], {n: model.params[n] for n in grads}, grads)
    assert max(errors.values()) < 1e-6, errors


def test_zero_init_zeroes_the_output_projections_and_keeps_every_other_weight():
    plain = GPT(**TINY, tie_embeddings=False, seed=3)
    zeroed = GPT(**TINY, tie_embeddings=False, zero_init=True, seed=3)
    projections = [n for n in plain.params if n.endswith(("attn.proj.weight", "mlp.proj.weight")) or n == "lm_head.weight"]
    assert len(projections) == 5
    for name, value in zeroed.params.items():
        if name in projections:
            assert not value.any() and plain.params[name].any(), name
        else:
            np.testing.assert_array_equal(value, plain.params[name], err_msg=name)
    logits, loss = zeroed.forward(np.array([[1, 2, 3]]), np.array([[2, 3, 4]]))
    np.testing.assert_allclose(logits, 0.0)  # uniform start: loss = log V
    assert loss == pytest.approx(np.log(7), rel=1e-6)


def test_qk_norm_generation_with_and_without_the_kv_cache_agree():
    from nanollm.generate import generate_ids

    model = perturbed(architecture="llama", **SPEEDRUN)
    cached = generate_ids(model, [1, 2], 3, temperature=0)
    recomputed = generate_ids(model, [1, 2], 3, temperature=0, use_cache=False)
    assert cached == recomputed


@pytest.mark.parametrize("dtype", ["float16", pytest.param("bfloat16", marks=pytest.mark.skipif(
    importlib.util.find_spec("ml_dtypes") is None, reason="bfloat16 needs ml_dtypes (pip install ml_dtypes)"))])
def test_half_precision_steps_with_the_speedrun_options(dtype):
    model = GPT(**TINY, architecture="llama", seed=0, **SPEEDRUN)
    tokens = np.random.default_rng(0).integers(0, 7, 400)
    results = train_with_config(model, tokens, {"num_steps": 5, "batch_size": 4, "dtype": dtype, "log_interval": 0,
                                                "eval_interval": 0, "backend": "numpy"})
    assert np.isfinite(results["final_loss"]) and np.isfinite(results["final_val_loss"])


@pytest.mark.parametrize("settings, key", [
    (dict(architecture="gpt2", mlp_activation="swiglu"), "mlp_activation='swiglu' does not fit architecture='gpt2'"),
    (dict(logit_softcap=0.0), "logit_softcap must be a number > 0"),
    (dict(qk_norm="yes"), "qk_norm must be true or false"),
])
def test_bad_settings_are_one_line_errors(settings, key):
    with pytest.raises(ValueError, match=key):
        GPT(**{**TINY, **settings})


@pytest.mark.parametrize("settings, named", [
    (dict(qk_norm=True), "qk_norm=True"),
    (dict(logit_softcap=30.0), "logit_softcap=30.0"),
    (dict(mlp_activation="relu2", architecture="llama"), "mlp_activation=relu2"),
])
def test_export_refuses_what_hugging_face_and_gguf_cannot_express(tmp_path, settings, named):
    checkpoint = save_checkpoint(tmp_path / "c.npz", GPT(**{**TINY, **settings}, seed=0))
    with pytest.raises(ValueError, match=f"uses {named}.*cannot express"):
        export_hf(checkpoint, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    save_checkpoint(tmp_path / "zero.npz", GPT(**TINY, zero_init=True, seed=0))  # only an init: exports
    export_hf(tmp_path / "zero.npz", tmp_path / "zero")
    assert (tmp_path / "zero" / "config.json").exists()
    pytest.importorskip("gguf")
    from nanollm.interop.gguf_files import export_gguf

    with pytest.raises(ValueError, match=f"uses {named}.*cannot express"):
        export_gguf(checkpoint, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_the_schedule_runs_on_the_budget_clock():
    cfg = resolve({"num_steps": 1000, "max_train_seconds": 60.0, "lr_schedule": "cosine", "warmup_steps": 100,
                   "learning_rate": 1.0})
    assert schedule_position(7, cfg, 30.0) == 500.0  # half the budget: half the schedule, ...
    assert schedule_position(700, cfg, 30.0) == 700  # ... unless the steps are further along
    assert lr_at(schedule_position(7, cfg, 3.0), cfg) == pytest.approx(51 / 101)  # 5% of the budget: in the warmup
    assert lr_at(schedule_position(7, cfg, 99.0), cfg) == 0.0  # past the budget: the end of the cosine
    assert schedule_position(7, resolve({}), 99.0) == 7  # no budget: the step


def test_max_train_seconds_stops_checkpoints_and_evaluates(tmp_path):
    model = GPT(vocab_size=20, embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=16, seed=0)
    tokens = np.random.default_rng(0).integers(0, 20, 4000)
    cfg = {"num_steps": 10**6, "max_train_seconds": 1.0, "batch_size": 4, "log_interval": 0, "eval_interval": 0,
           "lr_schedule": "cosine", "checkpoint_dir": str(tmp_path / "run")}
    results = train_with_config(model, tokens, cfg)
    assert 1 < results["steps"] < 10**6
    assert results["stopped_because"].startswith("max_train_seconds=1 spent: stopped after step")
    assert results["final_val_loss"] is not None and results["checkpoints"]["final"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == results["steps"] and "val_loss" in records[-1]
    assert records[-1]["lr"] < 1e-3 * 0.01  # the cosine ended with the budget
    resumed = train_with_config(GPT(vocab_size=20, embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=16),
                                tokens, {**cfg, "max_train_seconds": 1.5, "overwrite": True,
                                         "resume_from": results["checkpoints"]["final"]})
    assert resumed["steps"] > results["steps"]  # the budget counts the first run's seconds too
    assert resumed["steps"] < 4 * results["steps"]


def test_a_time_budget_grid_keeps_num_steps_and_plots_validation_against_time(tmp_path):
    from nanollm.experiments import expand_runs, plot_grid, run_grid

    base = {"embedding_dim": 16, "num_layers": 1, "num_heads": 2, "max_seq_len": 16, "batch_size": 4,
            "num_steps": 10**5, "max_train_seconds": 0.5, "eval_interval": 40, "eval_steps": 2, "log_interval": 40}
    grid = {"name": "budget", "base": base,
            "runs": [{"name": "gpt2", "seed": 1}, {"name": "relu2", "mlp_activation": "relu2", "seed": 2},
                     {"name": "gpt2", "seed": 3}]}
    assert [cfg["num_steps"] for _, _, cfg in expand_runs(grid)] == [10**5] * 3
    records = run_grid(grid, tmp_path, quick=True, echo=lambda line: None)
    assert [(r["experiment_name"], r["seed"]) for r in records] == [("gpt2", 1), ("gpt2", 3), ("relu2", 2)]
    for record in records:
        assert 1 < len(record["history"]) and record["history"][-1]["train_seconds"] > 0.4
        assert record["history"][-1]["step"] < 10**5 and "val_loss" in record["history"][-1]
    saved = json.loads((tmp_path / "budget_scaling.json").read_text())  # one name, two seeds: both kept
    assert sorted((r["experiment_name"], r["seed"]) for r in saved) == [("gpt2", 1), ("gpt2", 3), ("relu2", 2)]
    plots = plot_grid(records, tmp_path, "budget")["plots"]
    assert tmp_path / "budget_val_loss_vs_time.png" in plots


def test_the_speedrun_ablation_grid_adds_one_piece_a_run_with_two_seeds_and_even_evaluations():
    """experiments/speedrun.toml: 8 runs x seeds 1 and 2 (each run's seeds side by side, for two
    MPI ranks), a 10-minute budget, an evaluation every 384k training tokens in every run."""
    from pathlib import Path

    from nanollm.experiments import expand_runs, load_grid
    from nanollm.model_config import build_training_model

    grid = load_grid(Path(__file__).parent.parent / "experiments" / "speedrun.toml")
    runs = expand_runs(grid)
    assert [(name, cfg["seed"]) for name, _, cfg in runs][:4] == [("1_nanogpt", 1), ("1_nanogpt", 2),
                                                                    ("2_llama", 1), ("2_llama", 2)]
    assert len(runs) == 16 and {cfg["max_train_seconds"] for _, _, cfg in runs} == {600}
    assert {cfg["eval_interval"] * cfg["batch_size"] * cfg["max_seq_len"] for _, _, cfg in runs} == {384_000}
    last = runs[-1][2]
    assert (last["architecture"], last["qk_norm"], last["logit_softcap"], last["optimizer"]) == ("llama", True, 30.0, "muon")
    for _, _, cfg in runs[::2]:
        assert build_training_model(cfg, 65).num_parameters() > 790_000


def test_experiments_seconds_turns_any_grid_into_a_time_budget(tmp_path):
    from nanollm.cli import main

    grid = tmp_path / "grid.toml"
    grid.write_text('name = "timed"\n[base]\nembedding_dim = 16\nnum_layers = 1\nnum_heads = 2\nmax_seq_len = 16\n'
                    'batch_size = 4\nnum_steps = 100000\n[[runs]]\nname = "only"\n', encoding="utf-8")
    assert main(["experiments", "--grid", str(grid), "--seconds", "0.3", "--quick", "--out", str(tmp_path)]) == 0
    record, = json.loads((tmp_path / "timed_scaling.json").read_text())
    assert record["config"]["max_train_seconds"] == 0.3 and record["history"][-1]["step"] < 100000
