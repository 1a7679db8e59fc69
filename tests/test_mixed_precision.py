"""Mixed precision (dtype float16 / bfloat16): half-precision compute, float32 master weights,
dynamic loss scaling for float16. The GPU is where it pays; here the NumPy reference backend
runs the same code on the CPU (slowly: NumPy has no half-precision BLAS)."""

import functools
import importlib.util

import numpy as np
import pytest

from nanollm import TransformerLanguageModel, train_with_config
from nanollm import step as step_module
from nanollm.precision import LossScaler, compute_dtype



def tiny_model(vocab_size):
    return TransformerLanguageModel(vocab_size, embedding_dim=16, num_layers=1, num_heads=2, ffn_hidden_dim=32,
                                    max_seq_len=16, seed=0)


CFG = {"backend": "numpy", "batch_size": 4, "num_steps": 30, "learning_rate": 3e-3, "log_interval": 10,
       "eval_interval": 0, "val_fraction": 0.0}


def test_float16_trains_float32_master_weights_close_to_a_float32_run(ids_and_vocab):
    ids, vocab = ids_and_vocab
    full, half = tiny_model(vocab), tiny_model(vocab)
    reference = train_with_config(full, ids, {**CFG, "dtype": "float32"})
    results = train_with_config(half, ids, {**CFG, "dtype": "float16"})
    assert all(p.dtype == np.float32 for p in half.params.values())  # the master copy
    assert half.dtype == "float32" and results["config"]["dtype"] == "float16"
    assert results["history"][-1]["loss_scale"] == 2.0**16 and results["history"][-1]["skipped_steps"] == 0
    assert results["final_loss"] < results["history"][0]["loss"] - 0.3  # it learns
    assert results["final_loss"] == pytest.approx(reference["final_loss"], abs=0.02)  # as float32 does
    assert results["final_loss"] != reference["final_loss"]  # but it did compute in float16


def test_an_overflowing_loss_scale_skips_the_step_and_halves(ids_and_vocab, monkeypatch):
    ids, vocab = ids_and_vocab
    monkeypatch.setattr(step_module, "LossScaler", functools.partial(LossScaler, scale=2.0**40))
    model = tiny_model(vocab)
    before = {name: p.copy() for name, p in model.params.items()}
    results = train_with_config(model, ids, {**CFG, "dtype": "float16", "num_steps": 3, "log_interval": 1})
    # 2^40 times the loss's gradient is Inf in float16 (max 65504): no step updates anything
    assert [r["skipped_steps"] for r in results["history"]] == [1, 2, 3]
    assert [r["loss_scale"] for r in results["history"]] == [2.0**39, 2.0**38, 2.0**37]
    assert not results["diverged"] and results["steps"] == 3
    for name, p in before.items():
        np.testing.assert_array_equal(model.params[name], p, err_msg=name)


def test_the_loss_scaler_halves_on_overflow_and_doubles_after_good_steps():
    scaler = LossScaler(np, scale=8.0, growth_interval=3)
    for overflow, scale, good in [(False, 8, 1), (False, 8, 2), (False, 16, 0), (True, 8, 0), (False, 8, 1)]:
        scaler.update(np.asarray(overflow))
        assert (float(scaler.scale), int(scaler.good_steps)) == (scale, good)
    assert scaler.state() == {"loss_scale": 8.0, "loss_scale_good_steps": 1}


def test_a_resumed_float16_run_ends_bit_for_bit_where_an_uninterrupted_one_does(ids_and_vocab, tmp_path,
                                                                                  monkeypatch):
    ids, vocab = ids_and_vocab
    # a scale that overflows once at the start, then grows back every 2 good steps: the
    # checkpoint must carry the scale and its counter for the resumed run to match
    monkeypatch.setattr(step_module, "LossScaler", functools.partial(LossScaler, scale=2.0**24, growth_interval=2))
    cfg = {**CFG, "dtype": "float16", "num_steps": 8, "checkpoint_interval": 3, "log_interval": 1}
    whole = tiny_model(vocab)
    uninterrupted = train_with_config(whole, ids, {**cfg, "checkpoint_dir": str(tmp_path / "whole")})
    assert uninterrupted["history"][-1]["skipped_steps"] >= 1
    resumed = tiny_model(vocab)
    results = train_with_config(resumed, ids, {**cfg, "checkpoint_dir": str(tmp_path / "whole"),
                                               "resume_from": str(tmp_path / "whole" / "checkpoint_step_3.npz")})
    assert results["final_loss"] == uninterrupted["final_loss"]
    assert results["history"][-1]["loss_scale"] == uninterrupted["history"][-1]["loss_scale"]
    for name, p in whole.params.items():
        np.testing.assert_array_equal(resumed.params[name], p, err_msg=name)


@pytest.mark.skipif(importlib.util.find_spec("ml_dtypes") is None,
                    reason="bfloat16 needs ml_dtypes (pip install ml_dtypes, or the [gpu] extra)")
def test_bfloat16_trains_with_float32_master_weights(ids_and_vocab):
    ids, vocab = ids_and_vocab
    model = tiny_model(vocab)
    results = train_with_config(model, ids, {**CFG, "dtype": "bfloat16"})
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert "loss_scale" not in results["history"][-1]  # bfloat16 has float32's range: no scaling
    assert results["final_loss"] < results["history"][0]["loss"] - 0.3


def test_half_precision_on_a_compiled_cpu_backend_is_a_clear_error(ids_and_vocab):
    ids, vocab = ids_and_vocab
    with pytest.raises(ValueError, match=r"dtype=float16 computes in half precision, which the numba backend does "
                                         r"not support: set backend=cupy"):
        train_with_config(tiny_model(vocab), ids, {**CFG, "backend": "numba", "dtype": "float16"})


def test_compute_dtype_names():
    assert compute_dtype("float16") == np.float16
    with pytest.raises(ValueError, match="not a half-precision dtype"):
        compute_dtype("float8")
