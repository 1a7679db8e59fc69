"""The KV cache of incremental decoding: every layer's keys and values of the positions seen.

Without it, generating token t+1 recomputes the whole context 0..t through every layer; with
it, each step feeds only the new token, computes its query, key and value, appends the key and
value here, and attends over all of them: the per-token cost no longer grows with the work
already done (attention still reads all t cached keys).

    cache = KVCache.for_model(model, batch=1)
    logits = model.forward(prompt_ids, kv_cache=cache)          # prefill: (1, T) -> (1, T, V)
    logits = model.forward(next_id[None, None], kv_cache=cache)  # then one position at a time

Keys are stored after their rotation (Llama), so a cached key never needs rotating again.
"""

import numpy as np

from nanollm import backends


class KVCache:
    """Buffers keys[l], values[l] (B, H_kv, 1, capacity, hd) per layer and ``length``, the
    number of positions written. The singleton axis is the group axis of ops/attention.py,
    which broadcasts one key/value head over its G query heads."""

    def __init__(self, num_layers, batch, num_kv_heads, head_dim, capacity, dtype, xp=np):
        shape = (batch, num_kv_heads, 1, capacity, head_dim)
        self.keys = [xp.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [xp.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.batch, self.capacity, self.length = batch, capacity, 0

    @classmethod
    def for_model(cls, model, batch=1):
        """A cache for ``model``'s shapes and dtype, as long as its context (max_seq_len)."""
        xp = backends.array_module(model.params["wte"])
        return cls(model.num_layers, batch, model.num_kv_heads, model.head_dim, model.max_seq_len, model.dtype, xp)

    def layer(self, index):
        """What attention_forward's ``past`` takes: (keys, values, start) of one layer."""
        return self.keys[index], self.values[index], self.length

    def reset(self):
        """Forget every position (the buffers are reused)."""
        self.length = 0
