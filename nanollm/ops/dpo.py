"""Direct Preference Optimization's loss (Rafailov et al. 2023) on sequence log-probabilities.

    loss, stats, cache = dpo_loss_forward(lp_chosen, lp_rejected, ref_chosen, ref_rejected, beta)
    d_chosen, d_rejected = dpo_loss_backward(dloss, cache)        # (P,) each

For P preference pairs, each lp the sum of a response's token log-probabilities (the chosen
answer's and the rejected one's, under the policy and under the frozen reference):

    margin_p = beta ((lp_chosen - ref_chosen) - (lp_rejected - ref_rejected))
    loss     = mean_p -log sigmoid(margin_p) = mean_p softplus(-margin_p)

    d loss / d lp_chosen_p   = -beta sigmoid(-margin_p) / P
    d loss / d lp_rejected_p = +beta sigmoid(-margin_p) / P

TRL's DPOTrainer (loss_type "sigmoid") computes the same; the reward accuracy (margin > 0) and
the mean margin / beta are its usual statistics.
"""

from nanollm import backends


def _sigmoid(x, xp):
    """1 / (1 + exp(-x)), without overflow for large |x|."""
    positive = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + positive), positive / (1.0 + positive))


def dpo_loss_forward(lp_chosen, lp_rejected, ref_chosen, ref_rejected, beta=0.1):
    """(P,) sequence log-probabilities of each pair's chosen and rejected responses, under the
    policy and the reference -> loss (0-d), stats {reward_accuracy, margin}, cache."""
    xp = backends.array_module(lp_chosen)
    margin = beta * ((lp_chosen - ref_chosen) - (lp_rejected - ref_rejected))  # (P,)
    loss = (xp.logaddexp(0.0, -margin)).mean()  # softplus(-margin) = -log sigmoid(margin)
    stats = {"reward_accuracy": float((margin > 0).mean()), "margin": float(margin.mean() / beta)}
    return loss, stats, (margin, beta)


def dpo_loss_backward(dloss, cache):
    """dloss (scalar) -> (d lp_chosen, d lp_rejected), (P,) each."""
    margin, beta = cache
    xp = backends.array_module(margin)
    d_margin = -dloss * _sigmoid(-margin, xp) / margin.shape[0]
    return beta * d_margin, -beta * d_margin
