"""nanollm.estimate: sizes, FLOPs and training memory from the config alone, checked against a
real model, the optimizers' real state and the bytes the forward really caches."""

import math
import time
import tracemalloc

import numpy as np
import pytest

from nanollm import backends, optim
from nanollm.config import PRESETS
from nanollm.estimate import (activation_terms, describe_model, format_description,
                              optimizer_state_per_element)
from nanollm.model import TransformerLanguageModel
from nanollm.model_config import complete_model_config, flops_per_token, parameter_shapes

GPT2 = {key: PRESETS["gpt2-124m"][key] for key in ("vocab_size", "embedding_dim", "num_layers", "num_heads",
                                                   "ffn_hidden_dim", "max_seq_len", "dropout")}
SMALL = dict(vocab_size=65, embedding_dim=32, num_layers=3, num_heads=4, num_kv_heads=2, ffn_hidden_dim=48,
             max_seq_len=16)


def _base(array):
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def cached_activation_bytes(model, cache=None):
    """Bytes of every distinct buffer reachable from model._cache (or ``cache``): views resolved
    to their base and counted once; the parameters (the caches refer to the weights) are not
    activations."""
    parameters = {id(_base(p)) for p in model.params.values()}
    buffers = {}

    def walk(obj):
        if isinstance(obj, np.ndarray):
            base = _base(obj)
            if id(base) not in parameters:
                buffers[id(base)] = base.nbytes
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                walk(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item)

    walk(model._cache if cache is None else cache)
    return sum(buffers.values())


def test_gpt2_small_has_124m_parameters_and_prints_them():
    description = describe_model(GPT2, batch_size=12)
    assert description["total_parameters"] == 124_439_808
    text = format_description(description)
    assert "124,439,808" in text
    assert "x 12 blocks" in text and "blocks.0.mlp.fc.weight" in text and "blocks.1." not in text
    assert "7,087,872" in text  # one block
    assert "adamw" in text and "float32" in text and "GiB" in text


def test_describing_gpt2_allocates_nothing_gpt2_sized():
    tracemalloc.start()
    started = time.perf_counter()
    try:
        description = describe_model(GPT2, batch_size=12, seq_len=1024)
        format_description(description)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    assert time.perf_counter() - started < 1.0
    assert description["memory_bytes"]["parameters"] == 124_439_808 * 4


def test_matches_a_real_model_parameter_by_parameter():
    model = TransformerLanguageModel(**SMALL, seed=0)
    description = describe_model(model.config, batch_size=2)
    assert description["total_parameters"] == model.num_parameters()
    assert list(description["parameters"]) == list(model.params)
    for name, p in model.params.items():
        assert tuple(description["parameters"][name]["shape"]) == p.shape
        assert description["parameters"][name]["count"] == p.size
    assert parameter_shapes(model.config) == model.parameter_shapes()


def test_flops_agree_with_the_model():
    model = TransformerLanguageModel(**SMALL, seed=0)
    description = describe_model(model.config, batch_size=3, seq_len=8, grad_accum_steps=2)
    assert description["flops_per_token"] == {"forward": model.flops_per_token(seq_len=8, training=False),
                                              "training": model.flops_per_token(seq_len=8)}
    assert description["tokens_per_step"] == 3 * 8 * 2
    assert description["flops_per_step"] == model.flops_per_token(seq_len=8) * 3 * 8 * 2
    assert flops_per_token(model.config) == model.flops_per_token()


def test_batch_shards_count_one_more_set_of_gradients():
    one = describe_model(SMALL, batch_size=4)
    two = describe_model(SMALL, batch_size=4, batch_shards=2)
    assert two["memory_bytes"]["gradients"] == 2 * one["memory_bytes"]["gradients"]
    assert two["memory_bytes"]["total"] - one["memory_bytes"]["total"] == one["memory_bytes"]["gradients"]
    assert "2 batch shards' own" in format_description(two) and "batch shards" not in format_description(one)
    with pytest.raises(ValueError, match="batch_shards must be an integer >= 1"):
        describe_model(SMALL, batch_size=4, batch_shards=0)


def test_partial_configs_take_the_model_defaults_and_its_validation():
    partial = {"vocab_size": 10, "embedding_dim": 32, "num_heads": 8, "ffn_hidden_dim": None, "num_kv_heads": None}
    complete = complete_model_config(partial)
    assert complete == TransformerLanguageModel(**partial, seed=0).config
    assert complete["ffn_hidden_dim"] == 128 and complete["num_kv_heads"] == 8
    resolved = {"vocab_size": 10, "embedding_dim": 32, "num_heads": 8, "dropout": None, "dtype": None,
                "max_seq_len": None}  # the model keys of a resolved training config: None = the model's
    assert describe_model(resolved, batch_size=1)["total_parameters"] == \
        TransformerLanguageModel(vocab_size=10, embedding_dim=32, num_heads=8, seed=0).num_parameters()
    with pytest.raises(ValueError, match="not divisible by num_heads=5"):
        describe_model({"vocab_size": 10, "embedding_dim": 32, "num_heads": 5}, batch_size=1)
    with pytest.raises(ValueError, match="unknown model config keys"):
        describe_model({"vocab_size": 10, "batch_size": 4}, batch_size=1)
    with pytest.raises(ValueError, match="seq_len=32 exceeds"):
        describe_model({"vocab_size": 10, "max_seq_len": 16}, batch_size=1, seq_len=32)


@pytest.mark.parametrize("optimizer, momentum", [("adam", 0.0), ("adamw", 0.0), ("lion", 0.0), ("sgd", 0.0),
                                                 ("sgd", 0.9), ("sophia", 0.0)])
def test_optimizer_state_counts_what_optim_keeps(optimizer, momentum):
    param = np.ones((3, 4), dtype=np.float32)
    state = optim.OPTIMIZERS[optimizer].init(param)
    if optimizer == "sgd":  # the momentum buffer appears at the first step
        optim.sgd_update(param, np.ones_like(param), state, lr=0.1, momentum=momentum)
    kept = sum(1 for value in state.values() if isinstance(value, np.ndarray) and value.shape == param.shape)
    assert optimizer_state_per_element(optimizer, momentum) == kept
    memory = describe_model(SMALL, batch_size=1, optimizer=optimizer, momentum=momentum)["memory_bytes"]
    assert memory["optimizer_state"] == kept * memory["parameters"]


def test_memory_follows_dtype_and_accumulation():
    single = describe_model(SMALL, batch_size=2)["memory_bytes"]
    double = describe_model(SMALL, batch_size=2, dtype="float64")["memory_bytes"]
    accumulated = describe_model(SMALL, batch_size=2, grad_accum_steps=4)["memory_bytes"]
    assert single["parameters"] == 4 * sum(math.prod(s) for s in parameter_shapes(SMALL).values())
    assert double["parameters"] == 2 * single["parameters"]
    assert accumulated["gradients"] == 2 * single["gradients"]
    assert accumulated["activations"] == single["activations"]
    assert single["total"] == sum(v for k, v in single.items() if k != "total")


ACTIVATION_CASES = [  # (model config, B, T)
    (dict(vocab_size=50, embedding_dim=16, num_layers=2, num_heads=4, max_seq_len=8, dtype="float32"), 2, 8),
    (dict(vocab_size=101, embedding_dim=24, num_layers=1, num_heads=6, num_kv_heads=2, max_seq_len=20,
          dropout=0.1, dtype="float64"), 3, 16),
    (dict(vocab_size=300, embedding_dim=32, num_layers=3, ffn_hidden_dim=40, num_heads=4, num_kv_heads=1,
          max_seq_len=32, dropout=0.2, dtype="float32"), 1, 32),
    (dict(vocab_size=7, embedding_dim=8, num_layers=2, num_heads=2, max_seq_len=5, dtype="float64"), 4, 5),
    (dict(vocab_size=50, embedding_dim=16, num_layers=2, num_heads=4, max_seq_len=8, architecture="llama",
          dtype="float32"), 2, 8),
    (dict(vocab_size=101, embedding_dim=24, num_layers=1, num_heads=6, num_kv_heads=2, max_seq_len=20,
          dropout=0.1, architecture="llama", tie_embeddings=False, dtype="float64"), 3, 16),
    (dict(vocab_size=60, embedding_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=8,  # the speedrun's
          mlp_activation="relu2", qk_norm=True, logit_softcap=15.0, dtype="float32"), 2, 8),
    (dict(vocab_size=60, embedding_dim=16, num_layers=2, num_heads=4, max_seq_len=8, architecture="llama",
          mlp_activation="relu2", qk_norm=True, logit_softcap=15.0, tie_embeddings=False, dtype="float64"), 2, 8),
]


@pytest.mark.parametrize("backend_name", ["numpy", "numba", "cython"])
@pytest.mark.parametrize("config, batch, time_steps", ACTIVATION_CASES)
@pytest.mark.parametrize("fused", [False, True])
def test_activation_estimate_matches_what_the_forward_caches(backend_name, config, batch, time_steps, fused):
    reason = backends.available()[backend_name]
    if reason is not None:
        pytest.skip(reason)
    previous = backends.current_name()
    backends.use(backend_name)
    try:
        model = TransformerLanguageModel(**config, seed=0)
        model.fused_attention = fused
        rng = np.random.default_rng(0)
        idx = rng.integers(0, config["vocab_size"], size=(batch, time_steps))
        targets = rng.integers(0, config["vocab_size"], size=(batch, time_steps))
        model.forward(idx, targets)
        measured = cached_activation_bytes(model)
    finally:
        backends.use(previous)
    estimated = describe_model(config, batch_size=batch, seq_len=time_steps,
                               fused_attention=fused)["memory_bytes"]["activations"]
    assert estimated == sum(activation_terms(config, batch, time_steps, fused_attention=fused).values()) == measured
