"""Activation checkpointing: block inputs kept, blocks recomputed in the backward, the same
gradients bit for bit, and the memory nanollm info predicts for it."""

import numpy as np
import pytest

from nanollm import GPT, train_with_config
from nanollm.estimate import activation_terms
from nanollm.gradcheck import check_gradients
from nanollm.model import BlockCheckpoint

SHAPE = dict(vocab_size=11, embedding_dim=16, num_layers=3, num_heads=4, max_seq_len=8)


def loss_and_gradients(model, idx, targets, checkpointing, dropout_seed=5):
    model.activation_checkpointing = checkpointing
    model.dropout_rng = np.random.default_rng(dropout_seed)
    loss = model.forward(idx, targets)[1]
    return loss, model.backward(), model.dropout_rng.bit_generator.state


@pytest.mark.parametrize("settings", [
    dict(architecture="gpt2"),
    dict(architecture="gpt2", dropout=0.2, num_kv_heads=2),
    dict(architecture="llama", dropout=0.1, tie_embeddings=False),
    dict(architecture="llama", qk_norm=True, mlp_activation="relu2", logit_softcap=5.0),
])
@pytest.mark.parametrize("lora", [False, True])
def test_gradients_are_bit_identical_to_the_stored_path(backend, settings, lora):
    model = GPT(**SHAPE, seed=0, **settings)
    if lora:
        model.add_lora(rank=2, dropout=0.1, targets=["q", "v", "mlp"], seed=1)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    stored_loss, stored, stored_state = loss_and_gradients(model, idx, targets, False)
    loss, grads, state = loss_and_gradients(model, idx, targets, True)
    assert loss == stored_loss and list(grads) == list(stored)
    for name in grads:
        np.testing.assert_array_equal(grads[name], stored[name], err_msg=name)
    assert state == stored_state  # the dropout stream ends where it would have: later steps draw the same masks
    assert all(isinstance(c, BlockCheckpoint) for c in model._cache[4])  # only the inputs were kept


def test_whole_model_gradient_check_with_checkpointing(backend):
    model = GPT(**SHAPE, architecture="llama", dtype="float64", seed=0, rope_base=50.0)
    model.activation_checkpointing = True
    rng = np.random.default_rng(1)
    for p in model.params.values():
        p += rng.normal(0.0, 0.3, size=p.shape)
    idx, targets = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    model.forward(idx, targets)
    grads = model.backward()
    errors = check_gradients(lambda: model.forward(idx, targets)[1], model.params, grads)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_training_with_checkpointing_ends_with_the_same_weights(optimizer):
    tokens = np.random.default_rng(0).integers(0, 11, 2000)
    cfg = {"num_steps": 6, "batch_size": 4, "optimizer": optimizer, "learning_rate": 0.05, "dropout": 0.1,
           "log_interval": 0, "eval_interval": 0, "val_fraction": 0.0}
    stored = GPT(**SHAPE, seed=3)
    train_with_config(stored, tokens, cfg)
    checkpointed = GPT(**SHAPE, seed=3)
    train_with_config(checkpointed, tokens, {**cfg, "activation_checkpointing": True})
    assert checkpointed.activation_checkpointing
    for name, p in stored.params.items():
        np.testing.assert_array_equal(checkpointed.params[name], p, err_msg=name)


def test_the_estimate_counts_the_kept_inputs_and_one_recomputed_block(backend):
    from test_estimate import cached_activation_bytes

    config = dict(SHAPE, num_layers=4, architecture="gpt2", dtype="float32")
    model = GPT(**config, seed=0)
    model.activation_checkpointing = True
    rng = np.random.default_rng(0)
    model.forward(rng.integers(0, 11, (3, 8)), rng.integers(0, 11, (3, 8)))
    first = model._cache[4][0]
    # at the backward's peak: the kept inputs and the rest of the cache, plus one block's cache (its input is kept)
    measured = (cached_activation_bytes(model) + cached_activation_bytes(model, model._recompute_block(first))
                - first.x.nbytes)
    assert sum(activation_terms(config, 3, 8, checkpointing=True).values()) == measured
    full, saved = activation_terms(config, 3, 8), activation_terms(config, 3, 8, checkpointing=True)
    assert saved["blocks"] + saved["attention_probs"] < (full["blocks"] + full["attention_probs"]) / 2
    assert saved["logits"] == full["logits"]
