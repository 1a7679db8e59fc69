"""Incremental decoding with a KV cache: the same logits as recomputing the whole context, and
so the same generated tokens, for both architectures, past the end of the context too."""

import numpy as np
import pytest

from nanollm import GPT
from nanollm.generate import generate_ids
from nanollm.kv_cache import KVCache


def sharp_model(architecture, dtype="float32", max_seq_len=24, seed=0):
    """A random model with weights scaled up, so its next-token distributions are far from
    uniform and greedy decoding follows a path of its own rather than ties."""
    model = GPT(vocab_size=40, embedding_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                max_seq_len=max_seq_len, architecture=architecture, dtype=dtype, seed=seed)
    for p in model.params.values():
        p *= 4
    return model


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_cached_logits_equal_the_full_forward(backend, architecture):
    model = sharp_model(architecture, dtype="float64")
    idx = np.random.default_rng(0).integers(0, 40, size=(3, 20))
    full = model.forward(idx)[0]
    cache = KVCache.for_model(model, batch=3)
    pieces = [model.forward(idx[:, a:b], kv_cache=cache)[0] for a, b in ((0, 7), (7, 8), (8, 15), (15, 20))]
    assert cache.length == 20
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_greedy_generation_is_identical_with_and_without_the_cache(architecture, dtype):
    """60 new tokens from a 24-token context: the last 40 of them run past max_seq_len, where
    both paths crop to the last 24 tokens."""
    model = sharp_model(architecture, dtype)
    prompt = [3, 1, 4, 1, 5]
    cached = generate_ids(model, prompt, 60, temperature=0)
    recomputed = generate_ids(model, prompt, 60, temperature=0, use_cache=False)
    assert cached == recomputed
    assert len(set(cached[5:])) > 3  # a real path, not one repeated token


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_sampling_with_a_seed_is_identical_with_and_without_the_cache(architecture):
    model = sharp_model(architecture, dtype="float64")
    kwargs = dict(temperature=0.9, top_k=10, top_p=0.95, seed=7)
    assert generate_ids(model, [2, 7], 40, **kwargs) == generate_ids(model, [2, 7], 40, use_cache=False, **kwargs)


def test_a_prompt_longer_than_the_context_is_cropped_the_same_way():
    model = sharp_model("llama", max_seq_len=8)
    prompt = list(np.random.default_rng(1).integers(0, 40, size=20))
    assert generate_ids(model, prompt, 5, temperature=0) == generate_ids(model, prompt, 5, temperature=0,
                                                                       use_cache=False)


def test_no_backward_after_a_cached_forward_and_clear_cache_errors():
    model = sharp_model("gpt2", max_seq_len=6)
    cache = KVCache.for_model(model, batch=1)
    model.forward(np.array([[1, 2, 3, 4]]), kv_cache=cache)
    with pytest.raises(RuntimeError, match="needs a forward\\(\\) first \\(one without a kv_cache\\)"):
        model.backward()
    with pytest.raises(ValueError, match="adds 3 positions to the 4 in the KV cache but max_seq_len is 6"):
        model.forward(np.array([[1, 2, 3]]), kv_cache=cache)
    with pytest.raises(ValueError, match="the KV cache holds a batch of 1 but idx has 2 rows"):
        model.forward(np.array([[1], [2]]), kv_cache=cache)
    cache.reset()
    assert model.forward(np.array([[1, 2, 3, 4, 5, 6]]), kv_cache=cache)[0].shape == (1, 6, 40)


def test_generation_bench_prints_both_speeds_and_checks_the_tokens(capsys):
    from nanollm.tools.generation_bench import main

    main(["--preset", "nano", "--new-tokens", "6", "--prompt-tokens", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("greedy generation of 6 tokens after a 3-token prompt")
    for arch, line in zip(("gpt2", "llama"), lines[1:]):
        assert line.startswith(arch) and "KV cache" in line and "speed-up" in line and "identical tokens" in line
