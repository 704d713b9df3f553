"""The pure PPO math of rlhf_edu.ppo against docs/implementation_details.md#test-values.

Exact reference numbers are asserted where that page gives them (its KL, GAE and PPO tests);
everything else is checked against a naive version, an identity, or an invariance (padding
contents must never matter).
"""

import pytest
import torch

from rlhf_edu.logprobs import masked_mean, truncate_after_eos
from rlhf_edu.ppo import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    compute_gae_naive,
    explained_variance,
    k2_estimate,
    k3_estimate,
    kl_estimates,
    last_token_index,
    missing_eos_penalty,
    per_token_rewards,
)

F64 = torch.float64


def close(actual, expected, atol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def random_masked_batch(n_rows=20, n_tokens=40, seed=0):
    """Random float64 rewards/values and a response mask with lengths 1..R (some rows full)."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n_rows, n_tokens, generator=g, dtype=F64)  # (B, R)
    values = torch.randn(n_rows, n_tokens, generator=g, dtype=F64)  # (B, R)
    lengths = torch.randint(1, n_tokens + 1, (n_rows,), generator=g)  # (B,)
    lengths[0] = n_tokens
    mask = (torch.arange(n_tokens).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (B, R)
    return rewards, values, mask


# --- 6.2 KL and estimators ---------------------------------------------------------------------


def test_kl_is_zero_when_policy_is_reference():
    logps = torch.randn(3, 5, dtype=F64).log_softmax(-1)  # (B, R)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])  # (B, R)
    scores = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    for k in (kl_estimates, k2_estimate, k3_estimate):
        assert torch.equal(k(logps, logps), torch.zeros_like(logps))
    rewards, non_score = per_token_rewards(scores, logps, logps.clone(), mask, kl_coef=0.1)
    assert torch.equal(non_score, torch.zeros_like(logps))
    expected = torch.zeros_like(logps)
    expected[0, 2], expected[1, 4], expected[2, 0] = scores
    assert torch.equal(rewards, expected)
    reported_kl = (kl_estimates(logps, logps) * mask).sum(1).mean()  # objective/kl
    assert reported_kl == 0


def enumerate_categorical(seed=0, vocab=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, generator=g, dtype=F64)  # (V,)
    ref_logits = torch.randn(vocab, generator=g, dtype=F64)  # (V,)
    return logits, ref_logits


def test_estimator_identities_by_exact_enumeration():
    """E_pi[k1] = E_pi[k3] = KL(pi || ref) and E_pi[k2] >= 0, with fixed values for one written-down
    set-up: torch.Generator().manual_seed(0), then 8 standard-normal float64 logits for pi and 8 for
    ref (`enumerate_categorical`), which give KL(pi || ref) = 0.820821 and E_pi[k2] = 0.888640."""
    logits, ref_logits = enumerate_categorical(seed=0, vocab=8)
    logp, ref_logp = logits.log_softmax(-1), ref_logits.log_softmax(-1)  # (V,)
    p = logp.exp()  # (V,)
    kl = (p * (logp - ref_logp)).sum()  # exact KL(pi || ref)
    close(kl, 0.820821, atol=1e-6)
    close((p * kl_estimates(logp, ref_logp)).sum(), kl, atol=1e-12)
    close((p * k3_estimate(logp, ref_logp)).sum(), kl, atol=1e-12)
    assert (k2_estimate(logp, ref_logp) >= 0).all() and (k3_estimate(logp, ref_logp) >= 0).all()
    close((p * k2_estimate(logp, ref_logp)).sum(), 0.888640, atol=1e-6)
    assert (kl_estimates(logp, ref_logp) < 0).any()  # k1 is negative on some tokens


def test_estimator_gradients_by_exact_enumeration():
    logits, ref_logits = enumerate_categorical(seed=1)
    ref_logp = ref_logits.log_softmax(-1)  # (V,)

    def expected_grad(estimator):
        theta = logits.clone().requires_grad_(True)
        logp = theta.log_softmax(-1)  # (V,)
        # E_{y ~ pi}[grad k(y)]: sampling weights are constants, the gradient flows through k only.
        (logp.exp().detach() * estimator(logp, ref_logp)).sum().backward()
        return theta.grad

    def kl_grad(reverse: bool):
        theta = logits.clone().requires_grad_(True)
        logp = theta.log_softmax(-1)  # (V,)
        if reverse:
            kl = (logp.exp() * (logp - ref_logp)).sum()  # KL(pi || ref)
        else:
            kl = (ref_logp.exp() * (ref_logp - logp)).sum()  # KL(ref || pi)
        kl.backward()
        return theta.grad

    close(expected_grad(kl_estimates), torch.zeros(len(logits)), atol=1e-12)
    close(expected_grad(k2_estimate), kl_grad(reverse=True), atol=1e-12)
    close(expected_grad(k3_estimate), kl_grad(reverse=False), atol=1e-12)
    assert not torch.allclose(kl_grad(reverse=True), kl_grad(reverse=False))


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [
        ([0.98, 0.01, 0.01], [0.01, 0.01, 0.98], 4.4474),
        ([0.49, 0.02, 0.49], [0.01, 0.98, 0.01], 3.7361),
        ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5], 0.0),
    ],
)
def test_full_vocab_kl_examples(p, q, expected):  # E_pi[k1] over the vocabulary
    p, q = torch.tensor(p, dtype=F64), torch.tensor(q, dtype=F64)
    close((p * kl_estimates(p.log(), q.log())).sum(), expected, atol=1e-4)


def test_old_trl_kl_penalty_vectors():
    logps = torch.tensor([[0.5, 0.2, 0.1], [0.6, 0.2, 0.1]], dtype=F64)
    ref = torch.tensor([[0.4, 0.3, 0.0], [0.7, 0.1, 0.3]], dtype=F64)
    close(kl_estimates(logps, ref), [[0.1, -0.1, 0.1], [-0.1, 0.1, -0.2]], atol=1e-12)
    close(kl_estimates(logps, ref).abs(), [[0.1, 0.1, 0.1], [0.1, 0.1, 0.2]], atol=1e-12)
    close(k2_estimate(logps, ref), [[0.005, 0.005, 0.005], [0.005, 0.005, 0.02]], atol=1e-12)
    lr = logps - ref
    close(k3_estimate(logps, ref), torch.exp(-lr) - 1 + lr, atol=1e-15)  # Schulman's k3 form


# --- reward placement and the missing-EOS penalty -----------------------------------------------


def test_score_sits_on_eos_or_last_token():
    eos, pad = 9, 0
    ids = torch.tensor([[3, 4, eos, 5, 6], [3, 4, 5, 6, 7]])  # (B, R): with and without EOS
    _, mask, has_eos = truncate_after_eos(ids, eos, pad)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert last_token_index(mask).tolist() == [2, 4]
    logps = torch.randn(2, 5, dtype=F64)  # (B, R)
    ref = torch.randn(2, 5, dtype=F64)  # (B, R)
    scores = torch.tensor([1.5, -0.5], dtype=F64)
    rewards, non_score = per_token_rewards(scores, logps, ref, mask, kl_coef=0.05)
    close(non_score, -0.05 * (logps - ref) * mask, atol=1e-15)
    close(rewards - non_score, [[0, 0, 1.5, 0, 0], [0, 0, 0, 0, -0.5]], atol=1e-15)
    assert (rewards[0, 3:] == 0).all()
    assert has_eos.tolist() == [True, False]
    penalised = missing_eos_penalty(scores, has_eos, 1.0, "replace")  # (B,)
    close(penalised, [1.5, -1.0])


def test_rewards_ignore_padding_contents():
    rewards_ref, values, mask = random_masked_batch(6, 7)
    logps, ref = rewards_ref, values  # any (B, R) numbers will do
    scores = torch.randn(6, dtype=F64)
    out = per_token_rewards(scores, logps, ref, mask, kl_coef=0.1)
    garbage = torch.where(mask.bool(), logps, torch.full_like(logps, 1e3))  # (B, R)
    out_garbage = per_token_rewards(scores, garbage, ref, mask, kl_coef=0.1)
    for a, b in zip(out, out_garbage):
        assert torch.equal(a, b)


@pytest.mark.parametrize("garbage", [float("inf"), float("-inf"), float("nan")])
def test_rewards_and_gae_ignore_non_finite_padding(garbage):
    """inf or NaN after the EOS (x * mask would make it NaN) leaves rewards, advantages and returns
    exactly as with clean padding, and 0 on the padding."""
    rewards, values, mask = random_masked_batch(6, 7, seed=8)
    scores = torch.randn(6, dtype=F64)
    pad = mask == 0  # (B, R)
    dirty_logps, dirty_values = rewards.masked_fill(pad, garbage), values.masked_fill(pad, garbage)  # (B, R)
    clean = per_token_rewards(scores, rewards, values, mask, kl_coef=0.1)
    dirty = per_token_rewards(scores, dirty_logps, dirty_values, mask, kl_coef=0.1)
    for a, b in zip(clean, dirty):
        assert torch.equal(a, b) and (b[pad] == 0).all()
    adv, ret = compute_gae(rewards.masked_fill(pad, garbage), dirty_values, mask)
    adv_clean, ret_clean = compute_gae(rewards, values, mask)
    assert torch.equal(adv, adv_clean) and torch.equal(ret, ret_clean)
    assert (adv[pad] == 0).all() and (ret[pad] == 0).all()


def test_missing_eos_penalty_modes():
    scores = torch.tensor([0.7, 0.7, -2.0])
    has_eos = torch.tensor([True, False, False])
    close(missing_eos_penalty(scores, has_eos, 1.0, "replace"), [0.7, -1.0, -1.0])
    close(missing_eos_penalty(scores, has_eos, 1.0, "subtract"), [0.7, -0.3, -3.0])
    with pytest.raises(ValueError):
        missing_eos_penalty(scores, has_eos, 1.0, "clip")


# --- 6.3 GAE and returns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lam", "advantages", "returns"),
    [
        (0.95, [0.46575, 0.385, 0.3], [0.96575, 0.985, 1.0]),
        (1.0, [0.5, 0.4, 0.3], [1.0, 1.0, 1.0]),
        (0.0, [0.1, 0.1, 0.3], [0.6, 0.7, 1.0]),
    ],
)
def test_gae_hand_example(lam, advantages, returns):
    rewards = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)  # (1, 3)
    values = torch.tensor([[0.5, 0.6, 0.7]], dtype=F64)  # (1, 3)
    mask = torch.ones(1, 3)
    for gae in (compute_gae, compute_gae_naive):
        adv, ret = gae(rewards, values, mask, gamma=1.0, lam=lam)
        close(adv, [advantages], atol=1e-12)
        close(ret, [returns], atol=1e-12)


def test_gae_with_per_token_kl():
    kl = torch.tensor([[0.2, -0.1, 0.3]], dtype=F64)  # (1, 3), as logp - ref with ref = 0
    mask = torch.ones(1, 3)
    rewards, _ = per_token_rewards(torch.tensor([2.0], dtype=F64), kl, torch.zeros_like(kl), mask, 0.1)
    close(rewards, [[-0.02, 0.01, 1.97]], atol=1e-12)
    values = torch.tensor([[0.5, 0.6, 0.7]], dtype=F64)  # (1, 3)
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(adv, [[1.330675, 1.3165, 1.27]], atol=1e-12)
    close(ret, [[1.830675, 1.9165, 1.97]], atol=1e-12)


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0)])
def test_gae_loop_equals_naive_and_closed_form(gamma, lam):  # random 20 x 40 float64
    rewards, values, mask = random_masked_batch(seed=int(100 * lam))
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    adv_naive, ret_naive = compute_gae_naive(rewards, values, mask, gamma, lam)
    close(adv, adv_naive, atol=1e-10)
    close(ret, ret_naive, atol=1e-10)
    # Closed form A_t = sum_k (gamma lam)^k delta_{t+k} (GAE eq. 16), as an upper-triangular matmul.
    m = mask.to(F64)  # (B, R)
    next_values = torch.cat([values[:, 1:] * m[:, 1:], torch.zeros(len(m), 1, dtype=F64)], 1)  # (B, R)
    deltas = (rewards + gamma * next_values - values) * m  # (B, R)
    steps = torch.arange(m.shape[1])  # (R,)
    gaps = (steps.unsqueeze(0) - steps.unsqueeze(1)).to(F64)  # (R, R): k = j - t
    discount = torch.where(gaps >= 0, (gamma * lam) ** gaps.clamp(min=0), 0.0)  # (R, R)
    close(adv, deltas @ discount.T, atol=1e-10)


def test_gae_ignores_garbage_after_eos():
    rewards, values, mask = random_masked_batch(seed=3)
    adv, ret = compute_gae(rewards, values, mask)
    noisy = torch.randn_like(rewards) * 100  # (B, R)
    pad = mask == 0  # (B, R)
    adv_g, ret_g = compute_gae(rewards.where(~pad, noisy), values.where(~pad, -noisy), mask)
    assert torch.equal(adv, adv_g) and torch.equal(ret, ret_g)
    assert (adv[pad] == 0).all() and (ret[pad] == 0).all()


def test_returns_come_from_unwhitened_advantages():
    rewards, values, mask = random_masked_batch(seed=4)
    adv, ret = compute_gae(rewards, values, mask)
    close(ret, (adv + values) * mask, atol=1e-12)


# --- 6.4 PPO losses and the KL controller --------------------------------------------------------


def test_first_step_is_a_no_op():  # ratio 1
    _, logps, mask = random_masked_batch(4, 6, seed=5)
    advantages = torch.randn(4, 6, dtype=F64)  # (B, R)
    loss, stats = clipped_policy_loss(logps, logps.clone(), advantages, mask, 0.2)
    assert stats == {"policy/clipfrac": 0.0, "policy/approxkl": 0.0}
    close(loss, -masked_mean(advantages, mask), atol=1e-15)


def test_approxkl_is_half_mean_squared_log_ratio():  # the OAI/TRL form
    logps = torch.tensor([[0.2, -0.4, 9.0]], dtype=F64)  # (1, 3); the last token is padding
    mask = torch.tensor([[1, 1, 0]])  # (1, 3)
    _, stats = clipped_policy_loss(logps, torch.zeros_like(logps), torch.ones_like(logps), mask, 0.2)
    assert stats["policy/approxkl"] == pytest.approx(0.5 * (0.04 + 0.16) / 2, abs=1e-12)
    assert stats["policy/clipfrac"] == pytest.approx(0.5, abs=1e-12)  # ratio e^0.2 > 1.2 is clipped


@pytest.mark.parametrize(
    ("advantage", "ratio", "loss", "grad_flows"),
    [
        (1.0, 1.5, -1.2, False),
        (-1.0, 0.5, 0.8, False),
        (-1.0, 1.5, 1.5, True),
        (1.0, 0.5, -0.5, True),
    ],
)
def test_clipped_surrogate_scalar_cases(advantage, ratio, loss, grad_flows):
    logps = torch.tensor([[torch.log(torch.tensor(ratio, dtype=F64))]], requires_grad=True)  # (1, 1)
    old_logps = torch.zeros(1, 1, dtype=F64)  # (1, 1)
    out, stats = clipped_policy_loss(
        logps, old_logps, torch.tensor([[advantage]], dtype=F64), torch.ones(1, 1), clip_range=0.2
    )
    close(out, loss, atol=1e-12)
    out.backward()
    # d(-A * ratio)/d logp = -A * ratio when the unclipped branch is active, 0 when clipped.
    close(logps.grad, [[-advantage * ratio if grad_flows else 0.0]], atol=1e-12)
    assert stats["policy/clipfrac"] == (0.0 if grad_flows else 1.0)


def test_value_clip():
    returns = torch.tensor([[1.0, 1.0]], dtype=F64)  # (1, 2)
    old = torch.zeros(1, 2, dtype=F64)  # (1, 2)
    inside = torch.tensor([[0.1, -0.15]], dtype=F64, requires_grad=True)  # |v - v_old| <= 0.2
    loss, stats = clipped_value_loss(inside, old, returns, torch.ones(1, 2), 0.2)
    close(loss, 0.5 * ((inside - returns) ** 2).mean(), atol=1e-15)
    assert stats["val/clipfrac"] == 0.0
    outside = torch.tensor([[0.5]], dtype=F64, requires_grad=True)  # clipped to 0.2
    loss, stats = clipped_value_loss(outside, old[:, :1], returns[:, :1], torch.ones(1, 1), 0.2)
    close(loss, 0.5 * 0.8**2, atol=1e-12)  # the clipped error dominates
    assert loss >= 0.5 * (0.5 - 1.0) ** 2 and stats["val/clipfrac"] == 1.0
    loss.backward()
    close(outside.grad, [[0.0]], atol=0)
    away = torch.tensor([[-0.5]], dtype=F64, requires_grad=True)  # moved away: unclipped dominates
    loss, _ = clipped_value_loss(away, old[:, :1], returns[:, :1], torch.ones(1, 1), 0.2)
    close(loss, 0.5 * 1.5**2, atol=1e-12)
    loss.backward()
    close(away.grad, [[-1.5]], atol=1e-12)


def test_losses_equal_on_physically_removed_padding():
    _, logps, mask = random_masked_batch(5, 8, seed=6)
    old_logps = logps + 0.3 * torch.randn_like(logps)  # (B, R)
    advantages, values = torch.randn_like(logps), torch.randn_like(logps)  # (B, R)
    old_values, returns = values + 0.4 * torch.randn_like(logps), torch.randn_like(logps)  # (B, R)
    valid = mask.bool()  # (B, R)

    def flat(x):
        return x[valid].unsqueeze(0)  # (1, N): only the response tokens

    pg, pg_stats = clipped_policy_loss(logps, old_logps, advantages, mask, 0.2)
    pg_flat, pg_flat_stats = clipped_policy_loss(
        flat(logps), flat(old_logps), flat(advantages), torch.ones(1, int(valid.sum())), 0.2
    )
    close(pg, pg_flat, atol=1e-12)
    assert pg_stats == pytest.approx(pg_flat_stats, abs=1e-12)
    vf, vf_stats = clipped_value_loss(values, old_values, returns, mask, 0.2)
    vf_flat, vf_flat_stats = clipped_value_loss(
        flat(values), flat(old_values), flat(returns), torch.ones(1, int(valid.sum())), 0.2
    )
    close(vf, vf_flat, atol=1e-12)
    assert vf_stats == pytest.approx(vf_flat_stats, abs=1e-12)
    garbage = logps.where(valid, torch.full_like(logps, 50.0))  # (B, R)
    pg_garbage, _ = clipped_policy_loss(garbage, old_logps, advantages, mask, 0.2)
    close(pg, pg_garbage, atol=1e-12)


@pytest.mark.parametrize(
    ("kl", "expected"),
    [(12.0, 0.151536), (6.0, 0.15), (0.0, 0.148464), (6.6, 0.150768), (1000.0, 0.151536)],
)
def test_adaptive_kl_controller(kl, expected):  # error clipped at 20 %
    ctl = AdaptiveKLController(init_kl_coef=0.15, target=6.0, horizon=10_000)
    assert ctl.update(kl, n_steps=512) == pytest.approx(expected, abs=1e-12)
    assert ctl.kl_coef == pytest.approx(expected, abs=1e-12)


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 512) == 0.05 and ctl.kl_coef == 0.05


def test_explained_variance():
    returns, values, mask = random_masked_batch(4, 6, seed=7)
    close(explained_variance(returns, returns, mask), 1.0, atol=1e-12)
    constant = torch.full_like(returns, float(masked_mean(returns, mask)))  # (B, R)
    close(explained_variance(constant, returns, mask), 0.0, atol=1e-12)
    garbage = values.where(mask.bool(), torch.full_like(values, 1e6))  # (B, R)
    close(
        explained_variance(garbage, returns, mask),
        explained_variance(values, returns, mask),
        atol=1e-12,
    )
    assert explained_variance(values, torch.ones_like(values), mask).isnan()
