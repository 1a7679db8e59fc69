"""LoRA: the adapter op's gradient check, a frozen base with adapters as the only trainable
parameters (and the only optimizer state), adapters saved and loaded alone, and merging them
into the weights without changing the logits."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanollm import GPT, load_checkpoint, train_with_config
from nanollm.checkpoint import load_adapters, save_adapters, save_checkpoint
from nanollm.gradcheck import check_gradients, check_op_gradients
from nanollm.lora import check_lora_config
from nanollm.ops.lora import lora_backward, lora_forward

ALL_TARGETS = ["q", "k", "v", "o", "mlp"]


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 6), st.integers(1, 4), st.integers(1, 6),
       st.sampled_from([0.0, 0.3]), st.integers(0, 2**16))
def test_lora_op_gradient_check(backend, b, t, c_in, rank, c_out, dropout, seed):
    rng = np.random.default_rng(seed)
    inputs = dict(x=rng.normal(size=(b, t, c_in)), a=rng.normal(size=(c_in, rank)), b=rng.normal(size=(rank, c_out)))

    def forward(x, a, b):  # the same dropout mask every call
        return lora_forward(x, a, b, scale=1.7, dropout=dropout, rng=np.random.default_rng(seed))

    errors = check_op_gradients(forward, lora_backward, inputs, ("x", "a", "b"), seed)
    assert max(errors.values()) < 1e-6, errors


def adapted_tiny_model(architecture, targets=ALL_TARGETS, dropout=0.0, seed=0):
    """A float64 tiny model with adapters whose B is not zero (so every path carries gradient)."""
    model = GPT(vocab_size=9, embedding_dim=8, num_layers=2, ffn_hidden_dim=12, num_heads=4, num_kv_heads=2,
                max_seq_len=6, architecture=architecture, dtype="float64", seed=seed)
    model.add_lora(rank=3, alpha=6.0, dropout=dropout, targets=targets, seed=1)
    rng = np.random.default_rng(seed)
    for name in model.trainable:
        model.params[name] += rng.normal(0.0, 0.3, size=model.params[name].shape)
    return model


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_whole_model_gradient_check_of_the_adapters(backend, architecture, dropout):
    model = adapted_tiny_model(architecture, dropout=dropout)
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 9, size=(2, 6)), rng.integers(0, 9, size=(2, 6))

    def loss():
        model.dropout_rng = np.random.default_rng(5)  # the same masks every call
        return model.forward(idx, targets)[1]

    loss()
    grads = model.backward()
    assert list(grads) == model.trainable and all(".lora_" in name for name in grads)
    assert len(grads) == 2 * 2 * (3 + 1 + (3 if architecture == "llama" else 2))  # 2 blocks, A and B each
    errors = check_gradients(loss, {name: model.params[name] for name in grads}, grads)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"worst: {worst} {errors[worst]:.2e}"


def test_fresh_adapters_leave_the_logits_unchanged_and_merging_keeps_them():
    model = GPT(vocab_size=30, embedding_dim=16, num_layers=2, num_heads=4, max_seq_len=8, architecture="llama",
                dtype="float64", seed=0)
    idx = np.random.default_rng(0).integers(0, 30, size=(2, 8))
    before = model.forward(idx)[0]
    model.add_lora(rank=4, alpha=8.0, targets=ALL_TARGETS)
    np.testing.assert_array_equal(model.forward(idx)[0], before)  # B = 0
    for name in model.trainable:
        model.params[name] += np.random.default_rng(1).normal(0.0, 0.2, size=model.params[name].shape)
    adapted = model.forward(idx)[0]
    assert np.abs(adapted - before).max() > 1e-3
    model.merge_lora()
    assert model.lora is None and not any(".lora_" in name for name in model.params)
    np.testing.assert_allclose(model.forward(idx)[0], adapted, rtol=1e-12, atol=1e-12)
    assert model.trainable == list(model.params)


def test_training_moves_only_the_adapters_and_keeps_only_their_optimizer_state(tmp_path):
    base = GPT(vocab_size=20, embedding_dim=16, num_layers=2, num_heads=2, max_seq_len=8, seed=0)
    frozen = {name: p.copy() for name, p in base.params.items()}
    ids = np.random.default_rng(0).integers(0, 20, size=600)
    result = train_with_config(base, ids, {"num_steps": 20, "batch_size": 4, "learning_rate": 1e-2, "lora_rank": 2,
                                           "lora_targets": ["q", "v", "mlp"], "checkpoint_dir": str(tmp_path / "run"),
                                           "log_interval": 0})
    for name, p in frozen.items():
        np.testing.assert_array_equal(base.params[name], p, err_msg=name)
    assert any(np.abs(base.params[name]).max() > 0 for name in base.trainable if name.endswith("lora_B"))
    checkpoint = np.load(result["checkpoints"]["final"])
    optimizer_names = {key.split("/")[1] for key in checkpoint.files if key.startswith("optim/")}
    assert optimizer_names == set(base.trainable)
    adapters_file = tmp_path / "run" / "adapters_final.npz"
    assert result["checkpoints"]["adapters"] == str(adapters_file)
    assert adapters_file.stat().st_size < 0.2 * (tmp_path / "run" / "checkpoint_final.npz").stat().st_size
    loaded = load_checkpoint(result["checkpoints"]["final"])["model"]  # the checkpoint rebuilds the adapters
    idx = ids[:8][None, :]
    np.testing.assert_array_equal(loaded.forward(idx)[0], base.forward(idx)[0])


def test_adapters_save_and_load_alone_onto_the_base_model(tmp_path):
    model = adapted_tiny_model("gpt2", targets=["q", "o"])
    base_params = {name: p.copy() for name, p in model.params.items() if ".lora_" not in name}
    path = save_adapters(tmp_path / "adapters.npz", model)
    fresh = GPT(**{**model.config, "lora": None})
    for name, p in base_params.items():
        fresh.params[name][...] = p
    metadata = load_adapters(path, fresh)
    assert metadata["lora"] == model.lora == fresh.lora
    idx = np.array([[1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(fresh.forward(idx)[0], model.forward(idx)[0])
    other = GPT(vocab_size=9, embedding_dim=16, num_layers=2, num_heads=4, max_seq_len=6, dtype="float64")
    with pytest.raises(ValueError, match="different base model: embedding_dim=8 \\(adapters\\) vs 16"):
        load_adapters(path, other)
    with pytest.raises(ValueError, match="the model has no LoRA adapters to save"):
        save_adapters(tmp_path / "none.npz", other)
    save_checkpoint(tmp_path / "checkpoint.npz", fresh)
    with pytest.raises(ValueError, match="is not a LoRA adapter file"):
        load_adapters(tmp_path / "checkpoint.npz", fresh)


@pytest.mark.parametrize("lora, message", [
    ({"rank": 0}, "lora_rank must be an integer >= 1"),
    ({"rank": 4, "alpha": 0}, "lora_alpha must be a number > 0"),
    ({"rank": 4, "dropout": 1.0}, "lora_dropout must be a number in [0, 1)"),
    ({"rank": 4, "targets": ["q", "ffn"]}, "lora_targets ['q', 'ffn'] must be a non-empty list of q, k, v, o, mlp"),
])
def test_bad_lora_settings_are_clear_errors(lora, message):
    with pytest.raises(ValueError) as info:
        check_lora_config(lora)
    assert message in str(info.value)


def test_config_keys_are_checked_and_a_mismatched_model_is_refused():
    from nanollm.config import resolve
    with pytest.raises(ValueError, match="lora_targets must be a non-empty list of q, k, v, o, mlp, got \\['x'\\]"):
        resolve({"lora_targets": ["x"]})
    model = GPT(vocab_size=9, embedding_dim=8, num_layers=1, num_heads=2, max_seq_len=6).add_lora(rank=2)
    with pytest.raises(ValueError, match="the model has LoRA adapters .* but the config asks for"):
        train_with_config(model, np.arange(300) % 9, {"lora_rank": 4, "num_steps": 1})
    with pytest.raises(ValueError, match="has LoRA adapters already"):
        model.add_lora(rank=2)


def test_trainable_fraction_is_small():
    model = GPT(vocab_size=65, embedding_dim=128, num_layers=4, num_heads=4, max_seq_len=64)
    total = model.num_parameters()
    model.add_lora(rank=8, targets=["q", "v"])
    adapters = sum(model.params[name].size for name in model.trainable)
    assert adapters == 4 * 2 * (128 * 8 + 8 * 128)
    assert adapters / total < 0.05
