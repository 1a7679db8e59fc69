"""Sampling text from a trained model: temperature, top-k and top-p (nucleus) sampling."""

import numpy as np


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


def generate_ids(model, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
    """Extend the list of token ids by ``max_new_tokens`` sampled ids (the model is put in eval
    mode). The context fed to the model is cropped to its last max_seq_len ids."""
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
    with model.evaluating():
        for _ in range(max_new_tokens):
            context = np.asarray(ids[-model.max_seq_len:], dtype=np.int64)[None, :]  # (1, T)
            logits, _ = model.forward(context)
            ids.append(_sample_next(np.asarray(logits[0, -1], dtype=np.float64), rng, temperature, top_k, top_p))
    return ids


def generate_text(model, tokenizer, prompt, max_length=100, temperature=1.0, top_k=None, top_p=None, seed=None):
    """The prompt followed by ``max_length`` new tokens, decoded to text.

    temperature 0 is greedy; the same seed gives the same text."""
    ids = generate_ids(model, tokenizer.encode(prompt), max_length, temperature, top_k, top_p, seed)
    return tokenizer.decode(ids)
