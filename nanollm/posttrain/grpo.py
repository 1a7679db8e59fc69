"""GRPO (Shao et al. 2024, DeepSeekMath): a policy gradient without a critic, where each
response's advantage is its reward relative to the other responses to the same prompt.

    results = train_grpo(model, prompts, reward_fn, cfg, tokenizer=tok)            # online
    results = train_grpo_offline(model, groups, cfg, tokenizer=tok)                 # given groups

Online, each step samples rl_group_size responses to each of rl_prompts_per_step prompts
(drawn from ``prompts``, the chat-formatted prompt texts) with the current policy, scores them
with ``reward_fn(prompt, completion) -> float``, turns the rewards into group advantages
(ops/policy_loss.group_advantages) and takes rl_inner_epochs optimizer steps on the clipped
objective with the KL penalty to the reference (ops/policy_loss.py), every response token a
term of the loss (rl_normalisation="token", DAPO's form) or every response one (="sequence").

Offline, the groups are given: {"prompt": str, "responses": [str, ...], "rewards": [float, ...]}
per line of a JSON Lines file (read_groups); the old policy is the model at each step's start.
"""

import numpy as np

from nanollm import backends
from nanollm.ops.logprobs import entropy_forward, token_logprobs_backward, token_logprobs_forward
from nanollm.ops.policy_loss import clipped_policy_loss_backward, clipped_policy_loss_forward, group_advantages
from nanollm.posttrain.loop import PolicyLoop
from nanollm.posttrain.rollouts import Rows, response_logprobs, sample_group
from nanollm.textfiles import read_json_lines

END_OF_TEXT = "<|endoftext|>"


def policy_loss_and_backward(loop):
    """The clipped-objective micro-batch function for TrainingStep.accumulate: rows carry
    old_lp, ref_lp (or None) and advantages in their data."""
    model, cfg = loop.model, loop.cfg

    def loss_and_backward(rows, targets, dloss):
        logits, _ = model.forward(rows.inputs)  # (b, L - 1, V)
        lp, lp_cache = token_logprobs_forward(logits, rows.targets)
        xp = backends.array_module(lp)
        mask = xp.asarray(rows.mask, dtype=lp.dtype)
        ref_lp = rows.data.get("ref_lp")
        loss, stats, cache = clipped_policy_loss_forward(
            lp, xp.asarray(rows.data["old_lp"], dtype=lp.dtype),
            None if ref_lp is None else xp.asarray(ref_lp, dtype=lp.dtype),
            xp.asarray(rows.data["advantages"], dtype=lp.dtype), mask, cfg["rl_clip_low"], cfg["rl_clip_high"],
            cfg["rl_beta"], "token" if cfg["rl_normalisation"] == "token" else "sequence")
        entropy, _ = entropy_forward(logits)  # a statistic only: no gradient flows through it
        stats["entropy"] = float((entropy * mask).sum() / max(float(mask.sum()), 1.0))
        loop.loss_stats.append(stats)
        dlogits = token_logprobs_backward(clipped_policy_loss_backward(dloss, cache), lp_cache)
        del logits
        return loss, model.backward(dlogits=dlogits), None

    return loss_and_backward


def _counting(cfg):
    """What a micro-batch's loss is a mean over, so that accumulation weighs it right."""
    return "token" if cfg["rl_normalisation"] == "token" else "row"


def attach_logprobs(loop, rows, advantages, old_lp=None):
    """rows + the old policy's (given, or computed here) and the reference's log-probabilities
    and the advantages."""
    if old_lp is None:
        old_lp = response_logprobs(loop.model, rows, loop.cfg["batch_size"])
    ref_lp = (response_logprobs(loop.reference, rows, loop.cfg["batch_size"])
              if loop.reference is not None and loop.cfg["rl_beta"] else None)
    return rows.with_data(old_lp=old_lp, advantages=np.asarray(advantages, dtype=np.float64),
                          **({"ref_lp": ref_lp} if ref_lp is not None else {}))


def _encode_prompt(tokenizer, prompt):
    return tokenizer.encode(prompt, allow_special=True)


def train_grpo(model, prompts, reward_fn, cfg=None, *, tokenizer, evaluate=None):
    """Online GRPO on ``prompts`` (prompt texts, the chat template applied) scored by
    ``reward_fn(prompt, completion) -> float``. evaluate(model) -> {name: figure} is recorded at
    eval_interval. Returns the results dict of PolicyLoop.run."""
    if not prompts:
        raise ValueError("train_grpo needs at least one prompt")
    loop = PolicyLoop(model, cfg, tokenizer=tokenizer)
    cfg = loop.cfg
    encoded = [_encode_prompt(tokenizer, p) for p in prompts]

    def make_rows(step, rng):
        rows, rewards, lengths = sample_scored_groups(loop, prompts, encoded, reward_fn, rng)  # rewards (prompts, group)
        advantages = group_advantages(rewards, scale=cfg["rl_scale_rewards"]).reshape(-1)
        stats = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                 "response_length": float(np.mean(lengths))}
        return attach_logprobs(loop, rows, advantages), stats

    return loop.run(make_rows, policy_loss_and_backward(loop), per=_counting(cfg), evaluate=evaluate)


def sample_scored_groups(loop, prompts, encoded, reward_fn, rng):
    """rl_prompts_per_step prompts drawn with ``rng``, rl_group_size responses sampled to each
    and scored: (rows, rewards (prompts, group), response lengths). What GRPO and PPO share."""
    cfg, model, tokenizer = loop.cfg, loop.model, loop.tokenizer
    stop_id = tokenizer.special_tokens.get(END_OF_TEXT)
    chosen = rng.choice(len(prompts), size=min(cfg["rl_prompts_per_step"], len(prompts)), replace=False)
    sequences, prompt_lengths, lengths, rewards = [], [], [], []
    for index in chosen:
        group, group_lengths = sample_group(model, encoded[index], cfg["rl_group_size"], cfg["rl_max_new_tokens"],
                                            rng, cfg["rl_temperature"], cfg["rl_top_k"], stop_id)
        start = len(encoded[index])
        rewards.append([float(reward_fn(prompts[index], tokenizer.decode(row[start:start + n])))
                        for row, n in zip(group, group_lengths)])
        sequences.extend(group)
        prompt_lengths += [start] * len(group)
        lengths.extend(group_lengths)
    return Rows.of(_pad(sequences), prompt_lengths, lengths), np.asarray(rewards), lengths


def _pad(sequences):
    """Sequences of different lengths -> one (R, L) array, padded on the right (masked out later)."""
    width = max(len(s) for s in sequences)
    out = np.zeros((len(sequences), width), dtype=np.int64)
    for row, sequence in zip(out, sequences):
        row[:len(sequence)] = sequence
    return out


def read_groups(path):
    """Offline GRPO's groups from JSON Lines: {"prompt": str, "responses": [str], "rewards": [float]}
    per line, every group the same size; a one-line error naming the line for anything else."""
    groups = []
    for number, record in read_json_lines(path):
        responses, rewards = (record.get("responses"), record.get("rewards")) if isinstance(record, dict) else (None, None)
        if (not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not isinstance(responses, list)
                or not isinstance(rewards, list) or len(responses) != len(rewards) or len(responses) < 2
                or not all(isinstance(r, str) for r in responses)
                or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rewards)):
            raise ValueError(f"{path} line {number}: a group is {{\"prompt\": str, \"responses\": [str, ...], "
                             "\"rewards\": [number, ...]}} with as many rewards as responses (at least 2)")
        groups.append(record)
    if len({len(g["responses"]) for g in groups}) > 1:
        raise ValueError(f"{path}: every group needs the same number of responses (found "
                         f"{sorted({len(g['responses']) for g in groups})})")
    return groups


def train_grpo_offline(model, groups, cfg=None, *, tokenizer, evaluate=None):
    """GRPO on given groups (a list, or a JSON Lines path for read_groups): each step takes
    rl_prompts_per_step groups, drawn with the run's stream."""
    if isinstance(groups, (str, bytes)) or hasattr(groups, "__fspath__"):
        groups = read_groups(groups)
    loop = PolicyLoop(model, cfg, tokenizer=tokenizer)
    cfg = loop.cfg

    def make_rows(step, rng):
        chosen = rng.choice(len(groups), size=min(cfg["rl_prompts_per_step"], len(groups)), replace=False)
        sequences, prompt_lengths, lengths, rewards = [], [], [], []
        for index in chosen:
            prompt = _encode_prompt(tokenizer, groups[index]["prompt"])
            for response in groups[index]["responses"]:
                answer = tokenizer.encode(response, allow_special=True)
                sequences.append(prompt + answer)
                prompt_lengths.append(len(prompt))
                lengths.append(len(answer))
            rewards.append([float(r) for r in groups[index]["rewards"]])
        if max(len(s) for s in sequences) > model.max_seq_len + 1:
            raise ValueError(f"a prompt and response are longer than max_seq_len={model.max_seq_len} + 1 tokens")
        rows = Rows.of(_pad(sequences), prompt_lengths, lengths)
        rewards = np.asarray(rewards)
        advantages = group_advantages(rewards, scale=cfg["rl_scale_rewards"]).reshape(-1)
        stats = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                 "response_length": float(np.mean(lengths))}
        return attach_logprobs(loop, rows, advantages), stats

    return loop.run(make_rows, policy_loss_and_backward(loop), per=_counting(cfg), evaluate=evaluate)
