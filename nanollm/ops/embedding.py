"""Embedding lookup: token embeddings (wte) and learned positional embeddings (wpe) alike.

Forward picks rows of a table; backward scatter-adds the upstream gradient back into those
rows, so a token that appears twice collects both gradients.
"""

from nanollm import backends


def embedding_forward(ids, table):
    """ids (...) int, table (num_embeddings, C) -> out (..., C) = table[ids]."""
    ids = backends.array_module(table).asarray(ids)  # a list of ids works in the backward too
    out = table[ids]
    cache = (ids, table.shape[0])
    return out, cache


def embedding_backward(dout, cache):
    """dout (..., C) -> dtable (num_embeddings, C)."""
    ids, num_embeddings = cache
    channels = dout.shape[-1]
    return backends.current().embedding_backward(dout.reshape(-1, channels), ids.reshape(-1), num_embeddings)
