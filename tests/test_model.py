"""The whole model: gradient check of every parameter, causality, overfitting, bad input."""

import numpy as np
import pytest

from nanollm import GPT, TransformerLanguageModel, set_seed
from nanollm.gradcheck import check_gradients
from nanollm.optim import adamw_init, adamw_update

TINY = dict(vocab_size=7, embedding_dim=8, num_layers=2, ffn_hidden_dim=12, num_heads=4, max_seq_len=5)


def perturbed_tiny_model(seed=0, **overrides):
    """A float64 tiny model whose parameters are moved well away from the init (gains != 1,
    biases != 0, larger weights), so every path carries a gradient worth checking."""
    model = GPT(**{**TINY, "dtype": "float64", "seed": seed, **overrides})
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p += rng.normal(0.0, 0.3, size=p.shape)
    return model


@pytest.mark.parametrize("architecture, num_kv_heads, tie_embeddings", [
    ("gpt2", 4, True), ("gpt2", 2, False), ("gpt2", 1, True),
    ("llama", 4, True), ("llama", 2, False), ("llama", 1, True),
])
def test_whole_model_gradient_check_every_parameter(backend, architecture, num_kv_heads, tie_embeddings):
    model = perturbed_tiny_model(architecture=architecture, num_kv_heads=num_kv_heads, tie_embeddings=tie_embeddings,
                                 rope_base=50.0)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 7, size=(2, 5))
    targets = rng.integers(0, 7, size=(2, 5))
    targets[0, 1] = -100  # an ignored target on the way
    model.forward(idx, targets)
    grads = model.backward()
    assert list(grads) == list(model.params)
    errors = check_gradients(lambda: model.forward(idx, targets)[1], model.params, grads)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"worst: {worst} {errors[worst]:.2e}; all: {errors}"


def test_gradient_check_with_dropout_and_given_dlogits(backend):
    """Dropout active (same seed each forward: the same masks) and backward(dlogits)."""
    model = perturbed_tiny_model(dropout=0.2)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 7, size=(1, 4))
    dlogits = rng.normal(size=(1, 4, 7))

    def projected():
        model.dropout_rng = np.random.default_rng(123)
        return float(np.sum(model.forward(idx)[0] * dlogits))

    projected()
    grads = model.backward(dlogits)
    errors = check_gradients(projected, {k: model.params[k] for k in ("wte", "wpe", "blocks.1.attn.qkv.weight")},
                             grads)
    assert max(errors.values()) < 1e-6, errors


def test_dropout_only_in_training_and_seeded():
    model = GPT(**TINY, dropout=0.5, seed=3)
    idx = np.array([[1, 2, 3, 4]])
    model.dropout_rng = np.random.default_rng(0)
    first = model.forward(idx)[0]
    model.dropout_rng = np.random.default_rng(0)
    np.testing.assert_array_equal(first, model.forward(idx)[0])
    assert not np.allclose(first, model.forward(idx)[0])  # the next masks differ
    model.eval()
    np.testing.assert_array_equal(model.forward(idx)[0], model.forward(idx)[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_causality_later_tokens_never_change_earlier_logits(backend, dtype):
    model = GPT(vocab_size=11, embedding_dim=16, num_layers=2, num_heads=4, num_kv_heads=2,
                max_seq_len=12, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 11, size=(3, 12))
    logits = model.forward(idx)[0]
    for t in range(12):
        changed = idx.copy()
        changed[:, t:] = rng.integers(0, 11, size=(3, 12 - t))
        new_logits = model.forward(changed)[0]
        np.testing.assert_array_equal(new_logits[:, :t], logits[:, :t])


def test_prefix_gives_the_same_logits_as_the_full_sequence():
    model = GPT(vocab_size=11, embedding_dim=16, num_layers=2, max_seq_len=10, dtype="float64", seed=0)
    idx = np.random.default_rng(0).integers(0, 11, size=(2, 10))
    np.testing.assert_allclose(model.forward(idx[:, :4])[0], model.forward(idx)[0][:, :4], rtol=1e-12, atol=1e-12)


def test_grouped_query_attention_equals_multi_head_with_repeated_kv_weights():
    """num_kv_heads=2 of 4 heads computes exactly MHA whose k/v weights repeat each kv head twice."""
    gqa = GPT(vocab_size=9, embedding_dim=8, num_layers=1, num_heads=4, num_kv_heads=2, max_seq_len=6,
              dtype="float64", seed=0)
    mha = GPT(vocab_size=9, embedding_dim=8, num_layers=1, num_heads=4, num_kv_heads=4, max_seq_len=6,
              dtype="float64", seed=1)
    head_dim = 2
    for name, p in gqa.params.items():
        if "attn.qkv" not in name:
            mha.params[name][...] = p
            continue
        q, k, v = p[..., :8], p[..., 8:12], p[..., 12:16]
        repeat = lambda a: np.repeat(a.reshape(*a.shape[:-1], 2, head_dim), 2, axis=-2).reshape(*a.shape[:-1], 8)
        mha.params[name][...] = np.concatenate([q, repeat(k), repeat(v)], axis=-1)
    idx = np.random.default_rng(0).integers(0, 9, size=(2, 6))
    np.testing.assert_allclose(gqa.forward(idx)[0], mha.forward(idx)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float32_and_float64_throughout(dtype):
    model = GPT(**TINY, dtype=dtype, seed=0)
    idx = np.array([[0, 1, 2], [3, 4, 5]])
    logits, loss = model.forward(idx, idx)
    assert logits.dtype == dtype and np.asarray(loss).dtype == dtype
    assert all(g.dtype == dtype for g in model.backward().values())


def test_tiny_model_overfits_one_batch_with_adam(backend):
    set_seed(0)
    model = TransformerLanguageModel(vocab_size=13, embedding_dim=32, num_layers=2, ffn_hidden_dim=64,
                                     max_seq_len=16)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 13, size=(4, 17))
    idx, targets = batch[:, :-1], batch[:, 1:]
    states = {name: adamw_init(p) for name, p in model.params.items()}
    losses = []
    for _ in range(300):
        _, loss = model.forward(idx, targets)
        losses.append(float(loss))
        for name, g in model.backward().items():
            adamw_update(model.params[name], g, states[name], lr=1e-2)
    assert losses[0] > 2.0
    assert losses[-1] < 0.05, f"loss after 300 Adam steps: {losses[-1]:.4f}"


def test_initialisation_follows_gpt2():
    model = GPT(vocab_size=500, embedding_dim=64, num_layers=8, max_seq_len=128, seed=0)
    p = model.params
    assert abs(p["wte"].std() - 0.02) < 0.001
    assert abs(p["blocks.0.mlp.fc.weight"].std() - 0.02) < 0.001
    assert abs(p["blocks.3.attn.proj.weight"].std() - 0.02 / np.sqrt(16)) < 0.0005
    assert abs(p["blocks.3.mlp.proj.weight"].std() - 0.02 / np.sqrt(16)) < 0.0005
    assert (p["ln_f.weight"] == 1).all() and (p["blocks.2.ln1.bias"] == 0).all()
    assert (p["blocks.0.attn.qkv.bias"] == 0).all()


def test_same_seed_same_weights_and_set_seed_governs_unseeded_models():
    a, b = GPT(**TINY, seed=5), GPT(**TINY, seed=5)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    set_seed(9)
    c = GPT(**TINY)
    set_seed(9)
    d = GPT(**TINY)
    assert all(np.array_equal(c.params[k], d.params[k]) for k in c.params)


def test_parameter_table_counts_and_shapes():
    model = TransformerLanguageModel(vocab_size=65, embedding_dim=32, num_layers=2, ffn_hidden_dim=64,
                                     max_seq_len=64)
    c, f, v, t, layers = 32, 64, 65, 64, 2
    per_block = 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + 2 * c + (c * f + f) + (f * c + c)
    assert model.num_parameters() == v * c + t * c + layers * per_block + 2 * c
    assert model.parameter_shapes()["blocks.1.attn.qkv.weight"] == (32, 96)
    table = model.parameter_table()
    assert "blocks.1.mlp.fc.weight" in table and f"{model.num_parameters():,}" in table
    assert GPT is TransformerLanguageModel


def test_grouped_query_attention_shrinks_the_qkv_projection():
    model = GPT(vocab_size=10, embedding_dim=32, num_layers=1, num_heads=8, num_kv_heads=2)
    assert model.params["blocks.0.attn.qkv.weight"].shape == (32, 32 + 2 * 2 * 4)


def test_flops_per_token_counts_every_matmul():
    model = GPT(vocab_size=65, embedding_dim=128, num_layers=4, num_heads=4, max_seq_len=64)
    c, f, t, v = 128, 512, 64, 65
    forward = 4 * (2 * (c * 3 * c + c * c + 2 * c * f) + 4 * c * t) + 2 * c * v
    assert model.flops_per_token(training=False) == forward
    assert model.flops_per_token() == 3 * forward
    assert model.flops_per_token(seq_len=32) < model.flops_per_token()


@pytest.mark.parametrize("idx, message", [
    (np.zeros((1, 6), dtype=np.int64), "6 positions but max_seq_len is 5"),
    (np.array([[1, 7]]), "token id 7 outside the vocabulary [0, 7)"),
    (np.array([[1, -1]]), "token id -1 outside the vocabulary [0, 7)"),
    (np.zeros((1, 3), dtype=np.float32), "integer token ids, got dtype float32"),
    (np.zeros(3, dtype=np.int64), "must be 2-D (batch, time), got shape (3,)"),
    (np.zeros((1, 2, 3), dtype=np.int64), "must be 2-D (batch, time), got shape (1, 2, 3)"),
    (np.zeros((1, 0), dtype=np.int64), "is empty"),
    ([[1, 2]], "integer array of shape (batch, time), got list"),
])
def test_bad_input_is_a_clear_value_error(idx, message):
    model = GPT(**TINY, seed=0)
    with pytest.raises(ValueError) as info:
        model.forward(idx)
    assert message in str(info.value)


def test_bad_targets_are_clear_value_errors():
    model = GPT(**TINY, seed=0)
    idx = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"targets has shape \(1, 2\) but idx has \(1, 3\)"):
        model.forward(idx, np.array([[1, 2]]))
    with pytest.raises(ValueError, match=r"targets holds token id 9 outside the vocabulary \[0, 7\) \(or -100"):
        model.forward(idx, np.array([[1, 9, -100]]))
    model.forward(idx, np.array([[1, -100, -100]]))  # ignored targets are fine


@pytest.mark.parametrize("kwargs, message", [
    (dict(embedding_dim=30, num_heads=4), "embedding_dim=30 is not divisible by num_heads=4"),
    (dict(num_heads=4, num_kv_heads=3), "num_heads=4 is not divisible by num_kv_heads=3"),
    (dict(num_layers=0), "num_layers must be an integer >= 1, got 0"),
    (dict(embedding_dim=32.0), "embedding_dim must be an integer >= 1, got 32.0"),
    (dict(dropout=1.0), "dropout must be a number in [0, 1), got 1.0"),
    (dict(architecture="bert"), "architecture='bert' is not supported"),
    (dict(dtype="float16"), "dtype='float16' is not supported"),
])
def test_bad_configuration_is_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError) as info:
        GPT(vocab_size=7, **kwargs)
    assert message in str(info.value)


def test_backward_before_forward_is_a_clear_error():
    model = GPT(**TINY, seed=0)
    with pytest.raises(RuntimeError, match="needs a forward"):
        model.backward()
    model.forward(np.array([[1, 2]]))
    with pytest.raises(RuntimeError, match="with targets"):
        model.backward()
