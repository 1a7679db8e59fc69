"""Rollouts: a prompt's group of sampled responses, and the rows the policy losses train on.

    group = sample_group(model, prompt_ids, size, max_new_tokens, rng, temperature, top_k, stop_id)
    rows = Rows.of(sequences, prompt_lengths, response_lengths)     # (R, L) ids -> inputs/targets/mask

A group is sampled as one batch of ``size`` identical prompts through one KV cache, so a group
of 8 costs about what one sequence costs in Python overhead. Every random draw comes from
``rng`` (the run's generator), so a resumed run samples exactly what the uninterrupted run did.
A response ends after its stop token (the chat template's <|endoftext|>) or at max_new_tokens.

Rows hold the sequences a loss needs, shifted for next-token prediction:

    inputs  (R, L - 1)   sequence[:, :-1]
    targets (R, L - 1)   sequence[:, 1:]
    mask    (R, L - 1)   1 where the target is a response token (the stop token included), 0 on
                         the prompt and the padding after a short response
"""

import numpy as np

from nanollm import backends
from nanollm.kv_cache import KVCache
from nanollm.ops.cross_entropy import IGNORE_INDEX
from nanollm.ops.logprobs import token_logprobs_forward

PAD_ID = 0  # any id: padding is masked out of every loss


def _sample(logits, rng, temperature, top_k):
    """logits (G, V) float64 -> one id per row: argmax at temperature 0, else a draw from the
    softmax of logits / temperature over the top_k ids (inverse CDF with one uniform per row)."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random(len(logits))[:, None] * cumulative[:, -1:]
    return np.minimum((cumulative <= draws).sum(axis=-1), logits.shape[-1] - 1)


def sample_group(model, prompt_ids, size, max_new_tokens, rng, temperature=1.0, top_k=None, stop_id=None):
    """``size`` responses to one prompt: (sequences (size, P + N) int64, response lengths (size,)),
    N <= max_new_tokens the longest response; a response's length counts its stop token, and
    what follows it in its row is PAD_ID. The model is put in eval mode for the sampling."""
    prompt_ids = [int(i) for i in prompt_ids]
    room = model.max_seq_len - len(prompt_ids)
    if room < 1:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens, no room for a response within max_seq_len="
                         f"{model.max_seq_len}; use shorter prompts or a model with a longer context")
    new_tokens = min(max_new_tokens, room)
    cache = KVCache.for_model(model, batch=size)
    sequences = np.full((size, len(prompt_ids) + new_tokens), PAD_ID, dtype=np.int64)
    sequences[:, :len(prompt_ids)] = prompt_ids
    lengths = np.full(size, new_tokens, dtype=np.int64)
    done = np.zeros(size, dtype=bool)
    feed = np.tile(np.asarray(prompt_ids, dtype=np.int64), (size, 1))  # (G, P): the prefill
    with model.evaluating():
        for step in range(new_tokens):
            logits, _ = model.forward(feed, kv_cache=cache)
            last = backends.to_numpy(logits[:, -1]).astype(np.float64)  # (G, V)
            chosen = _sample(last, rng, temperature, top_k)
            sequences[~done, len(prompt_ids) + step] = chosen[~done]
            if stop_id is not None:
                stopping = ~done & (chosen == stop_id)
                lengths[stopping] = step + 1
                done |= stopping
                if done.all():
                    break
            feed = chosen[:, None]
    longest = int(lengths.max())
    return sequences[:, :len(prompt_ids) + longest], lengths


class Rows:
    """Sequences prepared for a policy loss (see the module docstring), plus per-row data the
    trainer attaches (old and reference log-probs, advantages) with ``with_data``."""

    def __init__(self, inputs, targets, mask, data=None):
        self.inputs, self.targets, self.mask = inputs, targets, mask  # (R, L - 1) each
        self.data = data or {}

    @classmethod
    def of(cls, sequences, prompt_lengths, response_lengths):
        """Rows of padded sequences (R, L): row r's response is response_lengths[r] tokens after
        its prompt_lengths[r] prompt tokens."""
        sequences = np.asarray(sequences, dtype=np.int64)
        positions = np.arange(sequences.shape[1] - 1)[None, :]  # target t is sequence position t + 1
        starts = np.asarray(prompt_lengths)[:, None] - 1
        mask = (positions >= starts) & (positions < starts + np.asarray(response_lengths)[:, None])
        return cls(sequences[:, :-1], sequences[:, 1:], mask.astype(np.float64))

    def __len__(self):
        return len(self.inputs)

    def select(self, index):
        """The rows ``index`` (a slice or an index array), their data too."""
        return Rows(self.inputs[index], self.targets[index], self.mask[index],
                    {key: value[index] for key, value in self.data.items()})

    def with_data(self, **data):
        self.data.update(data)
        return self

    def counting_targets(self, per="token"):
        """Targets for TrainingStep.accumulate, which weighs each micro-batch by its targets that
        are not IGNORE_INDEX: the response tokens (a loss averaged over tokens), or one per row
        (per="row": a loss averaged over rows, such as DPO's over pairs)."""
        counting = np.full(self.targets.shape, IGNORE_INDEX, dtype=np.int64)
        if per == "row":
            counting[:, 0] = 0
        else:
            counting[self.mask > 0] = 0
        return counting


def response_logprobs(model, rows, batch_size=16, with_values=False):
    """Log-probabilities (R, L - 1) of the rows' targets under ``model`` in eval mode, on the
    host, float64: the old policy's at sampling time, or the frozen reference's. with_values:
    (log-probabilities, the value head's estimates (R, L - 1)) from the same forward passes."""
    out = np.zeros(rows.targets.shape, dtype=np.float64)
    values = np.zeros(rows.targets.shape, dtype=np.float64) if with_values else None
    with model.evaluating():
        for begin in range(0, len(rows), batch_size):
            part = slice(begin, begin + batch_size)
            logits, _ = model.forward(rows.inputs[part])
            lp, _ = token_logprobs_forward(logits, rows.targets[part])
            out[part] = backends.to_numpy(lp)
            if with_values:
                values[part] = backends.to_numpy(model.values)
    return (out, values) if with_values else out
