"""PPO's critic: generalised advantage estimation and the clipped value loss.

    advantages, returns = gae(rewards, values, mask, gamma, lam)     # (B, T) each, no gradient
    loss, cache = value_loss_forward(values, old_values, returns, mask, clip)
    dvalues = value_loss_backward(dloss, cache)                       # (B, T)

GAE (Schulman et al. 2016), over the response tokens of each row (mask 1), the value after the
last token being 0 (the episode ends there):

    delta_t = r_t + gamma V_{t+1} - V_t,     A_t = delta_t + gamma lam A_{t+1},     returns_t = A_t + V_t

The clipped value loss keeps the new value within clip of the value at sampling time, as PPO's
reference implementations do:

    V_clip  = old_V + clip(V - old_V, -clip, clip)
    loss    = 0.5 sum_t mask max((V - R)^2, (V_clip - R)^2) / sum_t mask
    d loss / d V = mask (V - R) / sum mask    where the unclipped square is the larger (or equal:
                                               inside the clip range V_clip is V itself)
                   0                           where the clipped one is larger (V_clip is then a
                                               constant, old_V +- clip)

The value head itself is a linear layer on the model's final hidden state (ops/linear.py).
"""

import numpy as np

from nanollm import backends


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """rewards, values, mask (B, T) -> (advantages, returns) (B, T), zero outside the mask."""
    rewards, values, mask = (np.asarray(backends.to_numpy(a), dtype=np.float64) for a in (rewards, values, mask))
    advantages = np.zeros_like(values)
    following_value = np.zeros(values.shape[0])
    following_advantage = np.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        live = mask[:, t] > 0
        delta = rewards[:, t] + gamma * following_value - values[:, t]
        advantage = delta + gamma * lam * following_advantage
        advantages[:, t] = np.where(live, advantage, 0.0)
        following_value = np.where(live, values[:, t], following_value)
        following_advantage = np.where(live, advantage, following_advantage)
    return advantages, (advantages + values) * mask


def value_loss_forward(values, old_values, returns, mask, clip=0.2):
    """values (B, T) of the value head now; old_values and returns (B, T) constants of the batch;
    mask (B, T) -> loss (0-d), cache."""
    xp = backends.array_module(values)
    mask = xp.asarray(mask, dtype=values.dtype)
    clipped = old_values + xp.clip(values - old_values, -clip, clip)
    plain_error, clipped_error = (values - returns) ** 2, (clipped - returns) ** 2
    plain_wins = plain_error >= clipped_error
    count = xp.maximum(mask.sum(), 1.0)
    loss = 0.5 * (mask * xp.maximum(plain_error, clipped_error)).sum() / count
    return loss, (values, returns, plain_wins, mask, count)


def value_loss_backward(dloss, cache):
    """dloss (scalar) -> dvalues (B, T)."""
    values, returns, plain_wins, mask, count = cache
    return dloss * mask * plain_wins * (values - returns) / count
