"""PPO (Schulman et al. 2017) with a value head: the clipped objective GRPO uses, but each
token's advantage comes from a learned critic instead of the group's mean.

    results = train_ppo(model, prompts, reward_fn, cfg, tokenizer=tok)

Each step samples rl_group_size responses to each of rl_prompts_per_step prompts (the same
sampler as GRPO), scores each response with ``reward_fn(prompt, completion)`` as a reward on its
last token, and reads the value head (model.add_value_head: a linear layer on the final hidden
state, ops/linear.py's pair) at every response token. GAE (ops/value.py, ppo_gamma, ppo_lam)
turns rewards and values into per-token advantages, whitened over the step's tokens, and
returns. The loss is

    clipped policy loss + rl_beta KL (ops/policy_loss.py)
    + ppo_value_coef clipped value loss (ops/value.py)  - ppo_entropy_coef entropy (ops/logprobs.py)

one backward through the shared trunk: the logits get the policy's and the entropy's
gradients, the values the critic's (model.backward(dlogits=..., dvalues=...)).
"""

import numpy as np

from nanollm import backends
from nanollm.ops.logprobs import entropy_backward, entropy_forward, token_logprobs_backward, token_logprobs_forward
from nanollm.ops.policy_loss import clipped_policy_loss_backward, clipped_policy_loss_forward
from nanollm.ops.value import gae, value_loss_backward, value_loss_forward
from nanollm.posttrain.grpo import attach_logprobs, sample_scored_groups
from nanollm.posttrain.loop import PolicyLoop
from nanollm.posttrain.rollouts import response_logprobs


def ppo_loss_and_backward(loop):
    """Policy + value + entropy for TrainingStep.accumulate; rows carry old_lp, ref_lp,
    advantages (per token), old_values and returns."""
    model, cfg = loop.model, loop.cfg

    def loss_and_backward(rows, targets, dloss):
        logits, _ = model.forward(rows.inputs)
        values = model.values  # (b, L - 1)
        lp, lp_cache = token_logprobs_forward(logits, rows.targets)
        xp = backends.array_module(lp)
        mask = xp.asarray(rows.mask, dtype=lp.dtype)
        as_array = lambda key: xp.asarray(rows.data[key], dtype=lp.dtype)  # noqa: E731
        ref_lp = rows.data.get("ref_lp")
        policy, stats, policy_cache = clipped_policy_loss_forward(
            lp, as_array("old_lp"), None if ref_lp is None else as_array("ref_lp"), as_array("advantages"), mask,
            cfg["rl_clip_low"], cfg["rl_clip_high"], cfg["rl_beta"], "token")
        value, value_cache = value_loss_forward(values, as_array("old_values"), as_array("returns"), mask,
                                                cfg["ppo_value_clip"])
        entropy, entropy_cache = entropy_forward(logits)
        tokens = max(float(mask.sum()), 1.0)
        mean_entropy = (entropy * mask).sum() / tokens
        loss = policy + cfg["ppo_value_coef"] * value - cfg["ppo_entropy_coef"] * mean_entropy
        stats.update(value_loss=float(value), entropy=float(mean_entropy))
        loop.loss_stats.append(stats)
        dlogits = token_logprobs_backward(clipped_policy_loss_backward(dloss, policy_cache), lp_cache)
        if cfg["ppo_entropy_coef"]:
            dlogits = dlogits + entropy_backward(-cfg["ppo_entropy_coef"] * dloss * mask / tokens, entropy_cache)
        dvalues = value_loss_backward(cfg["ppo_value_coef"] * dloss, value_cache)
        del logits
        return loss, model.backward(dlogits=dlogits, dvalues=dvalues), None

    return loss_and_backward


def train_ppo(model, prompts, reward_fn, cfg=None, *, tokenizer, evaluate=None):
    """PPO on ``prompts`` (chat-formatted texts) scored by ``reward_fn(prompt, completion)``; a
    value head is added to the model when it has none. Returns PolicyLoop.run's results."""
    if not prompts:
        raise ValueError("train_ppo needs at least one prompt")
    if not model.value_head:
        model.add_value_head(seed=(cfg or {}).get("seed", 0))
    loop = PolicyLoop(model, cfg, tokenizer=tokenizer)
    cfg = loop.cfg
    encoded = [tokenizer.encode(p, allow_special=True) for p in prompts]

    def make_rows(step, rng):
        rows, rewards, lengths = sample_scored_groups(loop, prompts, encoded, reward_fn, rng)
        rewards = rewards.reshape(-1)
        last = rows.mask.shape[1] - 1 - np.argmax(rows.mask[:, ::-1] > 0, axis=1)  # each response's last target
        token_rewards = np.zeros(rows.targets.shape)
        token_rewards[np.arange(len(rows)), last] = rewards
        # the old policy's log-probabilities and values: one forward pass over the rollouts
        old_lp, old_values = response_logprobs(model, rows, cfg["batch_size"], with_values=True)
        advantages, returns = gae(token_rewards, old_values, rows.mask, cfg["ppo_gamma"], cfg["ppo_lam"])
        counted = rows.mask > 0
        spread = advantages[counted].std() if counted.any() else 0.0
        advantages = np.where(counted, (advantages - advantages[counted].mean()) / (spread + 1e-8), 0.0)
        rows = attach_logprobs(loop, rows, advantages, old_lp).with_data(old_values=old_values, returns=returns)
        stats = {"reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
                 "response_length": float(np.mean(lengths)), "value_mean": float(old_values[counted].mean())}
        return rows, stats

    return loop.run(make_rows, ppo_loss_and_backward(loop), per="token", evaluate=evaluate)
