"""DPO (Rafailov et al. 2023): preference pairs teach the policy directly, no reward model and
no sampling; the frozen reference (the starting weights) keeps it near where it started.

    results = train_dpo(model, pairs, cfg, tokenizer=tok)

pairs: [{"prompt": str, "chosen": str, "rejected": str}] (the prompt with the chat template
applied; each answer with its closing <|endoftext|>), or a JSON Lines path of them. Each step
draws batch_size... pairs with the run's stream: rl_prompts_per_step pairs, two rows each, and
minimises ops/dpo.py's -log sigmoid(dpo_beta ((lp_c - ref_c) - (lp_r - ref_r))), lp a response's
summed token log-probabilities.
"""

import numpy as np

from nanollm import backends
from nanollm.ops.dpo import dpo_loss_backward, dpo_loss_forward
from nanollm.ops.logprobs import token_logprobs_backward, token_logprobs_forward
from nanollm.posttrain.loop import PolicyLoop
from nanollm.posttrain.rollouts import Rows, response_logprobs
from nanollm.textfiles import read_json_lines


def read_pairs(path):
    """DPO pairs from JSON Lines, one {"prompt", "chosen", "rejected"} (strings) per line."""
    pairs = []
    for number, record in read_json_lines(path):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("prompt", "chosen",
                                                                                             "rejected")):
            raise ValueError(f"{path} line {number}: a pair is {{\"prompt\": str, \"chosen\": str, \"rejected\": str}}")
        pairs.append(record)
    return pairs


def pair_rows(pairs, tokenizer, max_seq_len):
    """Rows [chosen_0, rejected_0, chosen_1, ...] of the pairs, responses masked in."""
    sequences, prompt_lengths, lengths = [], [], []
    for pair in pairs:
        prompt = tokenizer.encode(pair["prompt"], allow_special=True)
        for answer in (pair["chosen"], pair["rejected"]):
            ids = tokenizer.encode(answer, allow_special=True)
            if len(prompt) + len(ids) > max_seq_len + 1:
                raise ValueError(f"a prompt and answer of {len(prompt) + len(ids)} tokens do not fit in "
                                 f"max_seq_len={max_seq_len} + 1")
            sequences.append(prompt + ids)
            prompt_lengths.append(len(prompt))
            lengths.append(len(ids))
    width = max(len(s) for s in sequences)
    padded = np.zeros((len(sequences), width), dtype=np.int64)
    for row, sequence in zip(padded, sequences):
        row[:len(sequence)] = sequence
    return Rows.of(padded, prompt_lengths, lengths)


def train_dpo(model, pairs, cfg=None, *, tokenizer, evaluate=None):
    """DPO on ``pairs`` (a list, or a JSON Lines path for read_pairs). Returns PolicyLoop.run's
    results; records hold loss, reward_accuracy (margin > 0) and margin."""
    if isinstance(pairs, (str, bytes)) or hasattr(pairs, "__fspath__"):
        pairs = read_pairs(pairs)
    loop = PolicyLoop(model, cfg, tokenizer=tokenizer, needs_reference=True)
    cfg = loop.cfg
    if cfg["batch_size"] % 2:
        raise ValueError(f"DPO's micro-batches hold pairs (two rows each): batch_size must be even, got "
                         f"{cfg['batch_size']}")

    def make_rows(step, rng):
        chosen = rng.choice(len(pairs), size=min(cfg["rl_prompts_per_step"], len(pairs)), replace=False)
        rows = pair_rows([pairs[i] for i in chosen], tokenizer, model.max_seq_len)
        reference = response_logprobs(loop.reference, rows, cfg["batch_size"])
        return rows.with_data(ref_sum=(reference * rows.mask).sum(axis=1)), {}

    def loss_and_backward(rows, targets, dloss):
        logits, _ = model.forward(rows.inputs)
        lp, lp_cache = token_logprobs_forward(logits, rows.targets)
        xp = backends.array_module(lp)
        mask = xp.asarray(rows.mask, dtype=lp.dtype)
        sums = (lp * mask).sum(axis=1)  # (2P,) chosen, rejected, chosen, ...
        ref = xp.asarray(rows.data["ref_sum"], dtype=lp.dtype)
        loss, stats, cache = dpo_loss_forward(sums[0::2], sums[1::2], ref[0::2], ref[1::2], cfg["dpo_beta"])
        loop.loss_stats.append(stats)
        d_chosen, d_rejected = dpo_loss_backward(dloss, cache)
        d_sums = xp.empty_like(sums)
        d_sums[0::2], d_sums[1::2] = d_chosen, d_rejected
        dlogits = token_logprobs_backward(d_sums[:, None] * mask, lp_cache)
        del logits
        return loss, model.backward(dlogits=dlogits), None

    return loop.run(make_rows, loss_and_backward, per="row", evaluate=evaluate)
