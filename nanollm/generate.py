"""Sampling text from a trained model: temperature, top-k and top-p (nucleus) sampling.

Generation decodes incrementally with a KV cache (nanollm.kv_cache): the prompt is fed once,
then each new token alone. Once the text outgrows the model's context (max_seq_len), each step
recomputes the last max_seq_len tokens from scratch, exactly as decoding without the cache
does, so the cache never changes which tokens come out (greedy output is identical).
"""

import numpy as np

from nanollm import backends
from nanollm.kv_cache import KVCache


def _sample_next(logits, rng, temperature, top_k, top_p):
    """logits (V,) float64 -> one token id."""
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if top_k is not None and top_k < logits.size:
        kth_largest = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth_largest, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < top_p  # always keeps the most likely token
        trimmed = np.zeros_like(probs)
        trimmed[order[keep]] = probs[order[keep]]
        probs = trimmed / trimmed.sum()
    return int(rng.choice(probs.size, p=probs))


def generate_ids(model, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                 use_cache=True):
    """Extend the list of token ids by ``max_new_tokens`` sampled ids (the model is put in eval
    mode). The context fed to the model is cropped to its last max_seq_len ids.

    use_cache: decode with a KV cache (the default); False recomputes the whole context for
    every token (the reference the cache is tested against, and the baseline of its speed-up)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if len(ids) == 0:
        raise ValueError("generation needs a prompt of at least one token")
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in ids]
    cache = KVCache.for_model(model, batch=1) if use_cache else None
    with model.evaluating():
        for _ in range(max_new_tokens):
            if cache is not None and 0 < cache.length < model.max_seq_len:
                new = ids[cache.length:]  # the last sampled token: ids[:cache.length] are cached
            else:  # the first step, no cache, or a full context: the last max_seq_len ids afresh
                # (a full cache would have to shift every position, which changes the keys)
                new = ids[-model.max_seq_len:]
                if cache is not None:
                    cache.reset()
            logits, _ = model.forward(np.asarray(new, dtype=np.int64)[None, :], kv_cache=cache)  # (1, T, V)
            last = backends.to_numpy(logits[0, -1]).astype(np.float64)  # (V,)
            ids.append(_sample_next(last, rng, temperature, top_k, top_p))
    return ids


def generate_text(model, tokenizer, prompt, max_length=100, temperature=1.0, top_k=None, top_p=None, seed=None,
                  use_cache=True):
    """The prompt followed by ``max_length`` new tokens, decoded to text.

    temperature 0 is greedy; the same seed gives the same text, with or without the KV cache."""
    ids = generate_ids(model, tokenizer.encode(prompt), max_length, temperature, top_k, top_p, seed, use_cache)
    return tokenizer.decode(ids)
