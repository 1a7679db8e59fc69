"""The Llama-style model: RMSNorm, rotary embeddings, SwiGLU, no biases, grouped-query
attention, tied or untied output layer. Its whole-model gradient check is test_model.py's, run
for both architectures; here, what makes it Llama and not GPT-2, and that it trains, saves and
loads."""

import numpy as np
import pytest

from nanollm import GPT, load_checkpoint, train_with_config
from nanollm.model_config import default_ffn_hidden_dim, flops_per_token, parameter_shapes
from nanollm.ops import rope_forward, rope_tables

TINY_LLAMA = dict(vocab_size=7, embedding_dim=8, num_layers=2, ffn_hidden_dim=12, num_heads=4, max_seq_len=5,
                  architecture="llama")


def test_parameter_table_has_no_biases_and_no_learned_positions():
    shapes = parameter_shapes(dict(vocab_size=65, embedding_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                   architecture="llama", tie_embeddings=False))
    f = default_ffn_hidden_dim(32, "llama")
    assert f == 88  # 8 * 32 / 3 = 85.3, rounded up to a multiple of 8
    assert not any(name.endswith(".bias") for name in shapes) and "wpe" not in shapes
    assert shapes["blocks.1.attn.qkv.weight"] == (32, 32 + 2 * 2 * 8)
    assert shapes["blocks.0.mlp.gate.weight"] == shapes["blocks.0.mlp.up.weight"] == (32, f)
    assert shapes["blocks.0.mlp.down.weight"] == (f, 32)
    assert shapes["norm_f.weight"] == (32,) and shapes["lm_head.weight"] == (32, 65)
    per_block = 2 * 32 + 32 * 64 + 32 * 32 + 3 * 32 * f
    assert sum(np.prod(s) for s in shapes.values()) == 65 * 32 + 2 * per_block + 32 + 32 * 65


def test_default_ffn_keeps_gpt2s_mlp_parameter_count():
    for c in (48, 96, 384):
        assert abs(3 * c * default_ffn_hidden_dim(c, "llama") - 2 * c * 4 * c) <= 3 * c * 8


def test_flops_count_three_mlp_matmuls():
    cfg = dict(vocab_size=65, embedding_dim=48, num_layers=2, num_heads=4, ffn_hidden_dim=128, max_seq_len=32)
    gpt2, llama = flops_per_token(cfg, training=False), flops_per_token({**cfg, "architecture": "llama"}, training=False)
    assert llama - gpt2 == 2 * 2 * 48 * 128  # one more (C, F) matmul per layer


def test_initialisation():
    model = GPT(vocab_size=300, embedding_dim=64, num_layers=8, max_seq_len=16, architecture="llama", seed=0)
    p = model.params
    assert (p["blocks.0.norm1.weight"] == 1).all() and (p["norm_f.weight"] == 1).all()
    assert abs(p["blocks.0.mlp.gate.weight"].std() - 0.02) < 0.001
    assert abs(p["blocks.3.mlp.down.weight"].std() - 0.02 / np.sqrt(16)) < 0.0005
    assert abs(p["blocks.3.attn.proj.weight"].std() - 0.02 / np.sqrt(16)) < 0.0005


def test_rotary_attention_scores_depend_only_on_relative_position():
    """q_t . k_s after rotation is a function of t - s: shifting both by 7 changes nothing."""
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(1, 1, 16)), rng.normal(size=(1, 1, 16))
    cos, sin = rope_tables(20, 16, dtype="float64")

    def score(t, s):
        qt = rope_forward(q, cos[t:t + 1], sin[t:t + 1])[0]
        ks = rope_forward(k, cos[s:s + 1], sin[s:s + 1])[0]
        return float((qt * ks).sum())

    assert score(5, 2) == pytest.approx(score(12, 9), rel=1e-12)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), rel=1e-12)  # position 0: no rotation


def test_llama_is_causal_and_position_aware():
    model = GPT(vocab_size=11, embedding_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=8,
                architecture="llama", dtype="float64", seed=0)
    idx = np.random.default_rng(0).integers(0, 11, size=(2, 8))
    full = model.forward(idx)[0]
    changed = idx.copy()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    np.testing.assert_allclose(model.forward(changed)[0][:, :5], full[:, :5], rtol=1e-12, atol=1e-12)
    # Without positions, attention is blind to the order of the keys: swapping the first two
    # tokens would leave the last position's logits unchanged. The rotations see the order.
    swapped = idx[:, [1, 0, 2, 3, 4, 5, 6, 7]]
    assert np.abs(model.forward(swapped)[0][:, -1] - full[:, -1]).max() > 1e-4


def test_tiny_llama_overfits_one_batch(backend):
    model = GPT(vocab_size=13, embedding_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=16,
                architecture="llama", seed=0)
    batch = np.random.default_rng(0).integers(0, 13, size=(4, 17))
    result = train_with_config(model, batch.ravel(), {"num_steps": 1, "val_fraction": 0.0, "log_interval": 0})
    assert result["final_loss"] > 2.0
    idx, targets = batch[:, :-1], batch[:, 1:]
    from nanollm.optim import adamw_init, adamw_update
    states = {name: adamw_init(p) for name, p in model.params.items()}
    for _ in range(250):
        model.forward(idx, targets)
        for name, g in model.backward().items():
            adamw_update(model.params[name], g, states[name], lr=1e-2)
    assert float(model.forward(idx, targets)[1]) < 0.05


def test_checkpoint_round_trip_keeps_architecture(tmp_path):
    model = GPT(vocab_size=20, embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=8, architecture="llama",
                tie_embeddings=False, rope_base=500.0, seed=0)
    ids = np.random.default_rng(0).integers(0, 20, size=400)
    train_with_config(model, ids, {"num_steps": 3, "batch_size": 2, "checkpoint_dir": str(tmp_path / "run"),
                                   "log_interval": 0})
    info = load_checkpoint(tmp_path / "run" / "checkpoint_final.npz")
    loaded = info["model"]
    assert loaded.config == model.config
    idx = ids[:8][None, :]
    np.testing.assert_array_equal(loaded.forward(idx)[0], model.forward(idx)[0])
    gpt2 = GPT(vocab_size=20, embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=8, seed=0)
    with pytest.raises(ValueError, match="architecture=llama \\(checkpoint\\) vs gpt2 \\(model\\)"):
        load_checkpoint(tmp_path / "run" / "checkpoint_final.npz", gpt2)
    other_base = GPT(**{**model.config, "rope_base": 10000.0})
    with pytest.raises(ValueError, match="rope_base=500.0 \\(checkpoint\\) vs 10000.0"):
        load_checkpoint(tmp_path / "run" / "checkpoint_final.npz", other_base)


def test_config_keys_must_agree_with_the_model():
    model = GPT(**TINY_LLAMA, seed=0)
    ids = np.arange(200) % 7
    with pytest.raises(ValueError, match="config says architecture=gpt2 but the model has architecture=llama"):
        train_with_config(model, ids, {"architecture": "gpt2", "num_steps": 1})


@pytest.mark.parametrize("kwargs, message", [
    (dict(architecture="mamba"), "architecture='mamba' is not supported; choose one of gpt2, llama"),
    (dict(embedding_dim=12, num_heads=4), "embedding_dim / num_heads must be even; got 12 / 4 = 3"),
    (dict(rope_base=1.0), "rope_base must be a number > 1"),
    (dict(tie_embeddings="yes"), "tie_embeddings must be true or false"),
])
def test_bad_llama_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        GPT(**{**TINY_LLAMA, **kwargs})
    assert message in str(info.value)


def test_resolve_checks_the_new_keys():
    from nanollm.config import resolve
    assert resolve({"architecture": "llama", "rope_base": 500})["rope_base"] == 500.0
    with pytest.raises(ValueError, match="architecture='lama' is not one of gpt2, llama; did you mean 'llama'"):
        resolve({"architecture": "lama"})
    with pytest.raises(ValueError, match="tie_embeddings must be true or false"):
        resolve({"tie_embeddings": 1})
