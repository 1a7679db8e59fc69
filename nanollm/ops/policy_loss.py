"""The clipped policy-gradient objective of GRPO and PPO, with a KL penalty to a frozen
reference, on per-token log-probabilities (ops/logprobs.py makes them from logits).

    A = group_advantages(rewards (N, G))                          # GRPO: (R - mean_group) / (std_group + eps)
    loss, stats, cache = clipped_policy_loss_forward(lp, old_lp, ref_lp, advantages, mask, ...)
    dlp = clipped_policy_loss_backward(dloss, cache)              # (B, T)

Per token t of a response (mask 1; prompt and padding 0), with r = exp(lp - old_lp):

    objective_t = min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)              (PPO's clipped surrogate)
    kl_t        = exp(ref_lp - lp) - (ref_lp - lp) - 1                         (the k3 estimator, >= 0)
    loss_t      = -objective_t + beta kl_t

    "token":    loss = sum_t mask loss_t / sum_t mask          over the whole batch (DAPO; TRL's "dapo")
    "sequence": loss = mean_b (sum_t mask loss_bt / sum_t mask_bt)            (GRPO's paper; TRL's "grpo")

The derivative, written once (lp is the only input with a gradient; old_lp, ref_lp and A are
constants of the batch):

    d objective_t / d lp = r A   where the unclipped term is the minimum (or both are equal),
                           0     where the clipped term is smaller (the ratio left the trust region
                                 in the direction A pushes it: the token's gradient is switched off)
    d kl_t / d lp        = 1 - exp(ref_lp - lp)
    d loss / d lp_bt     = mask_bt w_bt (-d objective_t / d lp + beta d kl_t / d lp)

with w the normalisation's weight of a token (1 / sum mask, or 1 / (B sum_t mask_bt)).
The same formulas as TRL's GRPOTrainer._compute_loss (and tests/test_posttrain_ops.py checks
them against PyTorch autograd to 1e-10 in float64).
"""

from nanollm import backends

NORMALISATIONS = ("token", "sequence")


def group_advantages(rewards, scale=True, eps=1e-4):
    """rewards (N, G): G responses to each of N prompts -> advantages (N, G).

    A = R - mean over the group, divided by (std over the group + eps) when scale (GRPO; the std is
    the sample one, as torch.std and TRL); scale=False keeps R - mean (Dr. GRPO's unscaled form).
    A group whose rewards are all equal gets 0: it teaches nothing."""
    xp = backends.array_module(rewards)
    rewards = xp.asarray(rewards, dtype=xp.float64)
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    if not scale:
        return centred
    std = rewards.std(axis=1, ddof=1, keepdims=True) if rewards.shape[1] > 1 else xp.zeros_like(centred[:, :1])
    return centred / (std + eps)


def _token_weights(mask, normalisation):
    """(B, T) weights that turn a per-token loss into the batch's loss (see the module docstring)."""
    xp = backends.array_module(mask)
    mask = mask.astype(xp.float64)
    if normalisation == "token":
        return mask / max(float(mask.sum()), 1.0)
    if normalisation == "sequence":
        per_sequence = xp.maximum(mask.sum(axis=1, keepdims=True), 1.0)  # (B, 1)
        return mask / per_sequence / mask.shape[0]
    raise ValueError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}")


def clipped_policy_loss_forward(lp, old_lp, ref_lp, advantages, mask, eps_low=0.2, eps_high=0.2, beta=0.0,
                                normalisation="token"):
    """lp, old_lp, ref_lp (B, T) log-probabilities of the sampled tokens under the policy now, when
    sampling, and the frozen reference (ref_lp None: no KL term); advantages (B,) per response or
    (B, T) per token; mask (B, T) 1 on the response tokens that count. -> loss (0-d), stats
    {clip_fraction, kl, ratio_mean} (floats), cache."""
    xp = backends.array_module(lp)
    mask = xp.asarray(mask)
    advantages = xp.asarray(advantages, dtype=lp.dtype)
    if advantages.ndim == 1:
        advantages = advantages[:, None]  # (B, 1): one advantage for every token of a response
    weights = _token_weights(mask, normalisation).astype(lp.dtype)  # (B, T)
    ratio = xp.exp(lp - old_lp)
    unclipped = ratio * advantages
    clipped = xp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    objective = xp.minimum(unclipped, clipped)
    open_ = unclipped <= clipped  # where the gradient flows (ties: both terms are r A)
    loss_t = -objective
    kl = None
    if ref_lp is not None and beta:
        kl = xp.exp(ref_lp - lp) - (ref_lp - lp) - 1.0
        loss_t = loss_t + beta * kl
    loss = (weights * loss_t).sum()
    counted = xp.maximum(mask.sum(), 1)
    stats = {"clip_fraction": float(((~open_) & (mask > 0)).sum() / counted),
             "kl": float((kl * mask).sum() / counted) if kl is not None else 0.0,
             "ratio_mean": float((ratio * mask).sum() / counted)}
    cache = (lp, ref_lp, ratio, advantages, open_, weights, beta)
    return loss, stats, cache


def clipped_policy_loss_backward(dloss, cache):
    """dloss (scalar) -> dlp (B, T)."""
    lp, ref_lp, ratio, advantages, open_, weights, beta = cache
    xp = backends.array_module(lp)
    dlp = -xp.where(open_, ratio * advantages, 0.0)
    if ref_lp is not None and beta:
        dlp = dlp + beta * (1.0 - xp.exp(ref_lp - lp))
    return (dloss * weights * dlp).astype(lp.dtype)
