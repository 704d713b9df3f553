"""PPO with a KL penalty for language models: the pure math (notebook 04_ppo.ipynb).

Algorithm: Proximal Policy Optimization (Schulman et al. 2017, arXiv 1707.06347, eq. 7) applied to
RLHF as in Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences", arXiv
1909.08593) and Stiennon et al. 2020 (arXiv 2009.01325): the reward-model score minus a per-token KL
penalty to the reference policy, advantages by GAE (Schulman et al. 2016, arXiv 1506.02438, eq. 16),
and an adaptive KL coefficient (Ziegler et al. 2019, section 2.2). Each choice is explained in
docs/implementation_details.md; tests/test_ppo_math.py asserts the values of its
#test-values section.

Everything here is a small pure function of (B, R) response tensors in the layout of
`rlhf_edu.logprobs` (`response_mask` 1 up to and including the first EOS, 0 after). The rollout and
update loop that calls them is `rlhf_edu.ppo_loop`.

Deliberate deviations and choices:
- The score sits on the last real response token (the EOS, or the last token when there is no EOS),
  not on the first pad slot after it as in TRL PPOv2 / N+ (TRL #1893;
  docs/implementation_details.md#kl-penalty).
- Hitting the length limit is treated as terminal: the value bootstrap after the last token is 0
  (docs/implementation_details.md#truncation-and-missing-eos). The missing-EOS penalty is the
  practical fix.
- `missing_eos_penalty` takes one positive `penalty` for both modes: "replace" sets the score to
  -penalty (OAI/N+ `penalty_reward_value = -penalty`), "subtract" lowers it by penalty (TRL).
- approx-KL is the OAI/TRL 0.5 * mean(log_ratio^2), not CleanRL's mean((r - 1) - log r).
- `explained_variance` uses biased variances (CleanRL's np.var); the ratio is unchanged.
- No entropy bonus, no dual clip, no ratio threshold (docs/implementation_details.md#policy-loss).

Legend: B batch, R response tokens.
"""

from __future__ import annotations

import torch

from rlhf_edu.logprobs import last_token_index, masked_mean, masked_var, zero_where_masked

# -------------------------------------------------------------------------------------------------
# 4. KL estimators and KL-penalized per-token rewards (docs/implementation_details.md#kl-penalty)
# -------------------------------------------------------------------------------------------------


def kl_estimates(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(y_t) - log pi_ref(y_t) at each sampled token (Schulman, "Approximating KL").

    logps, ref_logps (B, R) -> k1 (B, R). Unbiased for KL(pi || ref) under samples from pi, but can
    be negative per token. This is the estimate that goes into the PPO reward (see
    docs/implementation_details.md#kl-penalty) and into the reported `objective/kl`. Padding
    entries are not masked here.

    Notebook: 04_ppo.ipynb
    """
    return logps - ref_logps  # (B, R)


def k2_estimate(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi - log pi_ref)^2: biased, >= 0, low variance (old TRL "mse").

    logps, ref_logps (B, R) -> (B, R).

    Notebook: 04_ppo.ipynb
    """
    return 0.5 * (logps - ref_logps) ** 2  # (B, R)


def k3_estimate(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1: unbiased for KL(pi || ref) and >= 0 pointwise.

    logps, ref_logps (B, R) -> (B, R). Written with log_ratio = logp - ref_logp it is
    exp(-log_ratio) - 1 + log_ratio (docs/implementation_details.md#kl-estimators). As a *loss*
    (GRPO) its expected gradient is that of the forward KL(ref || pi), not the reverse one.

    Notebook: 04_ppo.ipynb
    """
    ref_minus_logp = ref_logps - logps  # (B, R)
    return torch.exp(ref_minus_logp) - ref_minus_logp - 1.0  # (B, R)


def per_token_rewards(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: r_t = -kl_coef * k1_t, plus the RM score on the last response token.

        r_t = -beta * (log pi(y_t) - log pi_ref(y_t)) + [t == T_eos] * score

    (Ziegler et al. 2019 eq. 2, spread over tokens as in OAI `compute_rewards`;
    docs/implementation_details.md#kl-penalty.) scores (B,), logps, ref_logps, response_mask
    (B, R) -> (rewards (B, R), non_score_reward (B, R)), both 0 on padding.

    Notebook: 04_ppo.ipynb
    """
    non_score_reward = zero_where_masked(-kl_coef * kl_estimates(logps, ref_logps), response_mask)  # (B, R)
    last = last_token_index(response_mask)  # (B,)
    score_at_eos = torch.zeros_like(non_score_reward)  # (B, R)
    score_at_eos.scatter_(1, last.unsqueeze(1), scores.to(logps.dtype).unsqueeze(1))  # (B, R)
    rewards = non_score_reward + score_at_eos  # (B, R); the last token is never padding
    return rewards, non_score_reward


def missing_eos_penalty(
    scores: torch.Tensor, has_eos: torch.Tensor, penalty: float, mode: str = "replace"
) -> torch.Tensor:
    """Penalise responses that never produced EOS (the "EOS trick").

    scores (B,), has_eos (B,) bool -> (B,). `penalty` is a positive magnitude:
    - mode "replace" (OAI, N+): score := -penalty, i.e. penalty_reward_value = -penalty;
    - mode "subtract" (TRL `missing_eos_penalty`): score := score - penalty.
    Rows with an EOS keep their score.

    Notebook: 04_ppo.ipynb
    """
    if mode == "replace":
        penalised = torch.full_like(scores, -penalty)  # (B,)
    elif mode == "subtract":
        penalised = scores - penalty  # (B,)
    else:
        raise ValueError(f"mode must be 'replace' or 'subtract', got {mode!r}")
    return torch.where(has_eos, scores, penalised)  # (B,)


# -------------------------------------------------------------------------------------------------
# 5. Advantages and returns by GAE (docs/implementation_details.md#gae)
# -------------------------------------------------------------------------------------------------


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, one backward pass over the response tokens.

        delta_t = r_t + gamma * V_{t+1} - V_t                  (GAE eq. 16, Schulman et al. 2016)
        A_t = delta_t + gamma * lam * A_{t+1}
        returns_t = A_t + V_t                     (before any advantage whitening)

    rewards, values, response_mask (B, R) -> (advantages (B, R), returns (B, R)). Rewards and values
    are zeroed after the last response token, so V after it is 0: the episode is terminal at EOS and
    at the length limit (docs/implementation_details.md#truncation-and-missing-eos). Both outputs
    are 0 on padding.

    Notebook: 04_ppo.ipynb
    """
    rewards = zero_where_masked(rewards, response_mask)  # (B, R), even inf or NaN on padding -> 0
    values = zero_where_masked(values, response_mask)  # (B, R)
    n_tokens = rewards.shape[1]
    next_advantage = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}, 0 after the last token
    next_value = torch.zeros_like(values[:, 0])  # (B,) V_{t+1}, the bootstrap is 0
    advantages_reversed = []
    for t in reversed(range(n_tokens)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        next_advantage = delta + gamma * lam * next_advantage  # (B,)
        advantages_reversed.append(next_advantage)
        next_value = values[:, t]  # (B,)
    advantages = zero_where_masked(torch.stack(advantages_reversed[::-1], dim=1), response_mask)  # (B, R)
    returns = zero_where_masked(advantages + values, response_mask)  # (B, R)
    return advantages, returns


def compute_gae_naive(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE as a plain Python double loop over rows and tokens, for checking `compute_gae`.

    Same contract: (B, R) inputs -> (advantages (B, R), returns (B, R)). Each row stops at its own
    last response token: A_t = sum_{k >= 0} (gamma * lam)^k * delta_{t+k} over valid tokens only.

    Notebook: 04_ppo.ipynb
    """
    n_rows = rewards.shape[0]
    advantages = torch.zeros_like(values)  # (B, R)
    returns = torch.zeros_like(values)  # (B, R)
    for b in range(n_rows):
        length = int(response_mask[b].sum())
        running = 0.0
        for t in reversed(range(length)):
            next_value = float(values[b, t + 1]) if t + 1 < length else 0.0
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            running = delta + gamma * lam * running
            advantages[b, t] = running
            returns[b, t] = running + float(values[b, t])
    return advantages, returns


# -------------------------------------------------------------------------------------------------
# 6. PPO losses (docs/implementation_details.md#policy-loss and #value-loss)
# -------------------------------------------------------------------------------------------------


def clipped_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017 eq. 7), negated and token-level masked-mean.

        ratio_t = exp(logp_t - old_logp_t)
        loss = mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))

    logps, old_logps, advantages, response_mask (B, R) -> (scalar loss, stats). Stats:
    `policy/clipfrac`, the share of tokens where the clipped branch is the max;
    `policy/approxkl` = 0.5 * mean((logp - old_logp)^2) (OAI/TRL;
    docs/implementation_details.md#policy-loss).

    Notebook: 04_ppo.ipynb
    """
    log_ratio = logps - old_logps  # (B, R)
    ratio = torch.exp(log_ratio)  # (B, R)
    pg_unclipped = -advantages * ratio  # (B, R)
    pg_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, R)
    loss = masked_mean(torch.max(pg_unclipped, pg_clipped), response_mask)
    with torch.no_grad():
        clipfrac = masked_mean((pg_clipped > pg_unclipped).to(logps.dtype), response_mask)
        approxkl = 0.5 * masked_mean(log_ratio**2, response_mask)
    return loss, {"policy/clipfrac": clipfrac.item(), "policy/approxkl": approxkl.item()}


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range_value: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (OAI lm-human-preferences, TRL, N+).

        V_clip = clip(V, V_old - c, V_old + c)
        loss = 0.5 * mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)

    values, old_values, returns, response_mask (B, R) -> (scalar loss, stats with `val/clipfrac`,
    the share of tokens where the clipped error is the larger one).

    Notebook: 04_ppo.ipynb
    """
    delta = torch.clamp(values - old_values, -clip_range_value, clip_range_value)  # (B, R)
    values_clipped = old_values + delta  # (B, R)
    err_unclipped = (values - returns) ** 2  # (B, R)
    err_clipped = (values_clipped - returns) ** 2  # (B, R)
    loss = 0.5 * masked_mean(torch.max(err_unclipped, err_clipped), response_mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err_unclipped).to(values.dtype), response_mask)
    return loss, {"val/clipfrac": clipfrac.item()}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over masked tokens (biased variances, as CleanRL).

    values, returns, mask (B, R) -> scalar. 1 is a perfect critic, 0 no better than a constant,
    negative worse; NaN when the returns have zero variance.

    Notebook: 04_ppo.ipynb
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    if var_returns == 0:
        return torch.tensor(float("nan"), dtype=values.dtype)
    return 1.0 - var_residual / var_returns


# -------------------------------------------------------------------------------------------------
# 7. KL coefficient controllers (docs/implementation_details.md#adaptive-kl)
# -------------------------------------------------------------------------------------------------


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (section 2.2), as in OAI / old TRL / OpenRLHF.

        e = clip(KL / target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n_steps / horizon)

    `current_kl` is in nats per sequence (`objective/kl`); `n_steps` is the
    number of episodes in the batch. Call `update` once per PPO iteration, after training.

    Notebook: 04_ppo.ipynb
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        self.kl_coef = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move kl_coef towards the KL target by at most 20 % * n_steps / horizon; returns it."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + proportional_error * n_steps / self.horizon
        return self.kl_coef


class FixedKLController:
    """A constant KL coefficient (N+, TRL PPOv2); `update` changes nothing.

    Notebook: 04_ppo.ipynb
    """

    def __init__(self, kl_coef: float) -> None:
        self.kl_coef = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        """Return the fixed kl_coef."""
        return self.kl_coef
