"""The post-training ops: each backward gradient-checked in float64, and each loss (value and
gradients) equal to a PyTorch autograd version of TRL's published formula to 1e-10."""

import numpy as np
import pytest

from nanollm.gradcheck import check_gradients
from nanollm.ops.dpo import dpo_loss_backward, dpo_loss_forward
from nanollm.ops.logprobs import entropy_backward, entropy_forward, token_logprobs_backward, token_logprobs_forward
from nanollm.ops.policy_loss import clipped_policy_loss_backward, clipped_policy_loss_forward, group_advantages
from nanollm.ops.value import gae, value_loss_backward, value_loss_forward


def batch(seed=0, b=3, t=5, v=7):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((b, t, v)) * 2
    tokens = rng.integers(0, v, size=(b, t))
    mask = (rng.random((b, t)) < 0.7).astype(np.float64)
    mask[:, 0] = 1.0  # every response has a token
    return rng, logits, tokens, mask


def assert_checked(errors):
    assert max(errors.values()) < 1e-6, errors


# ----------------------------------------------------------------------------- gradient checks


def test_token_logprobs_gradient_check():
    rng, logits, tokens, _ = batch()
    weights = rng.standard_normal(tokens.shape)
    lp, cache = token_logprobs_forward(logits, tokens)
    np.testing.assert_allclose(np.exp(lp), np.exp(logits - logits.max(-1, keepdims=True))[
        np.arange(3)[:, None], np.arange(5), tokens] / np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
    dlogits = token_logprobs_backward(weights, cache)
    assert_checked(check_gradients(lambda: (token_logprobs_forward(logits, tokens)[0] * weights).sum(),
                                   {"logits": logits}, {"logits": dlogits}))


def test_entropy_gradient_check():
    rng, logits, _, _ = batch(1)
    weights = rng.standard_normal(logits.shape[:2])
    entropy, cache = entropy_forward(logits)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(entropy, -(p * np.log(p)).sum(-1), rtol=1e-12)
    assert_checked(check_gradients(lambda: (entropy_forward(logits)[0] * weights).sum(), {"logits": logits},
                                   {"logits": entropy_backward(weights, cache)}))


@pytest.mark.parametrize("normalisation", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_clipped_policy_loss_gradient_check(normalisation, beta):
    rng, _, _, mask = batch(2)
    lp = rng.standard_normal(mask.shape) * 0.5 - 2
    old_lp = lp + rng.standard_normal(mask.shape) * 0.3  # ratios on both sides of the clip range
    ref_lp = lp + rng.standard_normal(mask.shape) * 0.3
    advantages = rng.standard_normal(mask.shape[0])

    def loss():
        return clipped_policy_loss_forward(lp, old_lp, ref_lp, advantages, mask, 0.2, 0.28, beta, normalisation)[0]

    value, stats, cache = clipped_policy_loss_forward(lp, old_lp, ref_lp, advantages, mask, 0.2, 0.28, beta,
                                                      normalisation)
    assert 0 < stats["clip_fraction"] < 1  # both branches are exercised
    assert_checked(check_gradients(loss, {"lp": lp}, {"lp": clipped_policy_loss_backward(1.0, cache)}))


def test_dpo_loss_gradient_check():
    rng = np.random.default_rng(3)
    lp_c, lp_r, ref_c, ref_r = (rng.standard_normal(6) * 3 - 10 for _ in range(4))
    _, stats, cache = dpo_loss_forward(lp_c, lp_r, ref_c, ref_r, beta=0.5)
    d_chosen, d_rejected = dpo_loss_backward(1.0, cache)
    assert_checked(check_gradients(lambda: dpo_loss_forward(lp_c, lp_r, ref_c, ref_r, 0.5)[0],
                                   {"c": lp_c, "r": lp_r}, {"c": d_chosen, "r": d_rejected}))


def test_value_loss_gradient_check():
    rng, _, _, mask = batch(4)
    values = rng.standard_normal(mask.shape)
    old_values = values + rng.standard_normal(mask.shape) * 0.3
    returns = rng.standard_normal(mask.shape)
    _, cache = value_loss_forward(values, old_values, returns, mask, clip=0.2)
    assert_checked(check_gradients(lambda: value_loss_forward(values, old_values, returns, mask, 0.2)[0],
                                   {"values": values}, {"values": value_loss_backward(1.0, cache)}))


def test_group_advantages_and_gae_by_hand():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    a = group_advantages(rewards)
    np.testing.assert_allclose(a[0], (rewards[0] - 0.5) / (np.std(rewards[0], ddof=1) + 1e-4))
    np.testing.assert_array_equal(a[1], 0.0)  # equal rewards teach nothing
    np.testing.assert_array_equal(group_advantages(rewards, scale=False)[0], [0.5, -0.5, -0.5, 0.5])
    # one row, reward 1 on its last token, values v: with gamma = lam = 1, A_t = 1 - v_t
    values = np.array([[0.2, 0.4, 0.6, 9.0]])
    mask = np.array([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(np.array([[0.0, 0.0, 1.0, 0.0]]), values, mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(advantages, [[0.8, 0.6, 0.4, 0.0]])
    np.testing.assert_allclose(returns, [[1.0, 1.0, 1.0, 0.0]])
    advantages, _ = gae(np.array([[0.0, 0.0, 1.0, 0.0]]), values, mask, gamma=0.9, lam=0.5)
    delta = [0.9 * 0.4 - 0.2, 0.9 * 0.6 - 0.4, 1.0 - 0.6]
    np.testing.assert_allclose(advantages[0, :3], [delta[0] + 0.45 * (delta[1] + 0.45 * delta[2]),
                                                   delta[1] + 0.45 * delta[2], delta[2]])


# ----------------------------------------------------------------------------- against PyTorch


def torch_or_skip():
    return pytest.importorskip("torch", reason="the PyTorch references need torch")


@pytest.mark.parametrize("normalisation", ["token", "sequence"])
def test_grpo_loss_equals_trls_formula_in_pytorch(normalisation):
    """TRL's GRPOTrainer._compute_loss: coef_1 = exp(lp - old), coef_2 = clamp(coef_1, 1 - eps_low,
    1 + eps_high), per_token_loss = -min(coef_1 A, coef_2 A) + beta (exp(ref - lp) - (ref - lp) - 1);
    loss_type "dapo" sums over every token / their count, "grpo" averages per sequence first."""
    torch = torch_or_skip()
    rng, logits, tokens, mask = batch(5)
    old_lp = token_logprobs_forward(logits + rng.standard_normal(logits.shape) * 0.3, tokens)[0]
    ref_lp = token_logprobs_forward(logits + rng.standard_normal(logits.shape) * 0.3, tokens)[0]
    rewards = rng.random((1, 3))
    advantages = group_advantages(rewards)[0]
    beta, eps_low, eps_high = 0.04, 0.2, 0.28

    lp, lp_cache = token_logprobs_forward(logits, tokens)
    loss, _, cache = clipped_policy_loss_forward(lp, old_lp, ref_lp, advantages, mask, eps_low, eps_high, beta,
                                                 normalisation)
    dlogits = token_logprobs_backward(clipped_policy_loss_backward(1.0, cache), lp_cache)

    t_logits = torch.tensor(logits, requires_grad=True)
    t_lp = torch.log_softmax(t_logits, -1).gather(-1, torch.tensor(tokens)[..., None])[..., 0]
    t_old, t_ref, t_mask = torch.tensor(old_lp), torch.tensor(ref_lp), torch.tensor(mask)
    t_rewards = torch.tensor(rewards)
    t_adv = ((t_rewards - t_rewards.mean(1, keepdim=True)) / (t_rewards.std(1, keepdim=True) + 1e-4))[0][:, None]
    coef_1 = torch.exp(t_lp - t_old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(coef_1 * t_adv, coef_2 * t_adv)
    per_token = per_token + beta * (torch.exp(t_ref - t_lp) - (t_ref - t_lp) - 1)
    if normalisation == "token":
        t_loss = (per_token * t_mask).sum() / t_mask.sum()
    else:
        t_loss = ((per_token * t_mask).sum(-1) / t_mask.sum(-1)).mean()
    t_loss.backward()
    assert abs(float(loss) - t_loss.item()) < 1e-10
    np.testing.assert_allclose(dlogits, t_logits.grad.numpy(), rtol=0, atol=1e-10)


def test_ppo_value_entropy_and_dpo_equal_their_pytorch_formulas():
    torch = torch_or_skip()
    rng, logits, tokens, mask = batch(6)
    values = rng.standard_normal(mask.shape)
    old_values = values + rng.standard_normal(mask.shape) * 0.3
    returns = rng.standard_normal(mask.shape)
    loss, cache = value_loss_forward(values, old_values, returns, mask, clip=0.2)
    t_v = torch.tensor(values, requires_grad=True)
    t_old, t_ret, t_mask = (torch.tensor(a) for a in (old_values, returns, mask))
    clipped = t_old + torch.clamp(t_v - t_old, -0.2, 0.2)  # TRL's PPOTrainer: vpredclipped
    t_loss = 0.5 * (torch.max((t_v - t_ret) ** 2, (clipped - t_ret) ** 2) * t_mask).sum() / t_mask.sum()
    t_loss.backward()
    assert abs(float(loss) - t_loss.item()) < 1e-10
    np.testing.assert_allclose(value_loss_backward(1.0, cache), t_v.grad.numpy(), atol=1e-10)

    weights = rng.standard_normal(mask.shape)
    entropy, cache = entropy_forward(logits)
    t_logits = torch.tensor(logits, requires_grad=True)
    t_entropy = torch.distributions.Categorical(logits=t_logits).entropy()
    (t_entropy * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(entropy, t_entropy.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(entropy_backward(weights, cache), t_logits.grad.numpy(), atol=1e-10)

    lp_c, lp_r, ref_c, ref_r = (rng.standard_normal(4) * 3 - 10 for _ in range(4))
    loss, _, cache = dpo_loss_forward(lp_c, lp_r, ref_c, ref_r, beta=0.1)
    t_c, t_r = torch.tensor(lp_c, requires_grad=True), torch.tensor(lp_r, requires_grad=True)
    logits_dpo = (t_c - t_r) - (torch.tensor(ref_c) - torch.tensor(ref_r))  # TRL's DPO, loss_type "sigmoid"
    t_loss = -torch.nn.functional.logsigmoid(0.1 * logits_dpo).mean()
    t_loss.backward()
    assert abs(float(loss) - t_loss.item()) < 1e-10
    d_c, d_r = dpo_loss_backward(1.0, cache)
    np.testing.assert_allclose(d_c, t_c.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(d_r, t_r.grad.numpy(), atol=1e-10)
