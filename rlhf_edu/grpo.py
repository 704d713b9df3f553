"""GRPO, Dr GRPO and RLOO: policy gradients with a group baseline instead of a critic.

Algorithms (docs/implementation_details.md#grpo-dr-grpo-and-rloo):
- GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300): sample K responses per prompt, and
  give every token of response i the advantage A_i = (r_i - mean(r)) / (std(r) + 1e-4) over its
  group; the PPO clipped surrogate per token, averaged per response, then over responses.
- Dr GRPO (Liu et al. 2025, arXiv 2503.20783): A_i = r_i - mean(r) (no std division: no
  question-difficulty bias) and the token losses summed and divided by a constant, B * L_max (no
  1 / |o_i|: no length bias).
- RLOO (Ahmadian et al. 2024, arXiv 2402.14740): A_i = r_i - mean of the other K - 1 rewards,
  = K / (K - 1) * (r_i - mean(r)); with one update per batch this is REINFORCE with a leave-one-out
  baseline (token losses summed, as the sequence log-prob gradient is).

The steps, numbered as in the notebook and the code below:

    1. sample K responses per prompt from the exact policy at temperature T;
    2. score them (missing-EOS penalty first); old and reference log-probs with the training forward;
    3. advantages within each group, from the scores, minus kl_coef * the group-centred summed k1
       by default (`kl_penalized_advantages`);
    4. the per-token clipped loss (plus the k2/k3 term if chosen), aggregated;
    5. epochs x minibatches x micro-batches, gradient clipping, Adam, linear learning-rate decay.

The KL to the reference. The original GRPO adds beta * k3 per
token to the loss; k3's expected gradient is that of the FORWARD KL(ref || pi), not the reverse
KL(pi || ref) that RLHF means. The default here, `kl_penalty="k1_reward"`, subtracts kl_coef times
the summed k1 = log pi - log pi_ref from each response's score before the advantages (TRL's RLOO):
the score-function gradient of that is the gradient of the sequence-level reverse
KL, unbiased. GRPO's std division then applies to the score part only (see the deviations). The
options "k2_loss" (0.5 * k1^2 per token in the loss: on samples of pi, the
gradient of the reverse KL of each token's distribution at the visited prefixes, the same gradient
as TRL's bias-corrected k3) and "k3_loss" (the original GRPO) let a notebook show the difference;
tests/test_grpo.py checks all three gradients by exact enumeration on one token
(docs/implementation_details.md#kl-in-grpo).

Deliberate choices and deviations:
- Old log-probs are recomputed with the training forward (as `ppo_loop.rollout`), so
  the first minibatch's ratio is 1; with `epochs=1` and one minibatch GRPO is exactly REINFORCE
  with a group baseline.
- The missing-EOS penalty of PPO (`ppo.missing_eos_penalty`) is applied to the score first; DAPO's
  masking of truncated responses is not implemented.
- RLOO uses the per-token clipped surrogate summed over tokens, not TRL's sequence-level ratio.
- The group std is the unbiased one (TRL); a group of identical scores gets A = 0, not NaN.
- With "k1_reward", GRPO standardizes the scores alone and adds the KL term unscaled:
  A_i = (s_i - mean s) / (std s + 1e-4) - kl_coef * (KL_i - mean KL). Standardizing
  r = s - kl_coef * KL as a whole (the literal reading; TRL's GRPO has no k1 in the reward) divides
  the KL by the group's std: in a group whose scores tie, that std is kl_coef times the KL's own
  spread, and the KL's sampling noise comes out as advantages of size 1 whatever kl_coef is, in
  groups `objective/frac_zero_std` counts as carrying no signal. Here kl_coef weighs the KL the same
  in every group. Dr GRPO and RLOO divide by nothing, so for them the two readings are the same.
- Every random draw derives from (seed, step), like PPOTrainer. No checkpoints or resume.
- `policy/entropy` is a mean over response tokens of -log pi(y_t), as in PPOTrainer, not the
  per-response sum that OpenAI's and TRL's `objective/entropy` log.

The reward is any callable `reward_fn(prompts, texts, eos_flags) -> (B,) scores`, a program (the
tests count a letter), or the course's reward model through `reward_model_scorer`, which scores the
sampled token ids as PPO does (not the decoded text re-tokenized, which can differ).

The loop that runs these steps is `rlhf_edu/grpo_loop.py` (one iteration) with
`rlhf_edu/grpo_trainer.py` (state, loop, checkpoints).

Notebook: 06_dpo_grpo.ipynb. Legend: G groups (prompts), K responses per group, B = G * K,
R response tokens.
"""

from __future__ import annotations

import torch

from rlhf_edu.logprobs import masked_mean, masked_sum
from rlhf_edu.ppo import k2_estimate, k3_estimate, kl_estimates

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
AGGREGATIONS = ("sequence_mean", "token_mean", "token_sum")
KL_PENALTIES = ("k1_reward", "k2_loss", "k3_loss")


# --------------------------------------------------------------------------- 3. group advantages


def group_advantages(rewards: torch.Tensor, scale: str = "std", eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages within each group: rewards (G, K) -> (G, K).

    scale "std" (GRPO): (r - mean) / (std + eps), with the unbiased std, so each group has mean 0
    and std about 1; r = [1, 3, 2, 6] gives [-0.925777, 0, -0.462889, 1.388666]. scale "none"
    (Dr GRPO): r - mean. A group of identical rewards gives 0 (no signal, no NaN).

    Notebook: 06_dpo_grpo.ipynb
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (G, K) with K >= 2 responses per group, got {tuple(rewards.shape)}")
    centered = rewards - rewards.mean(dim=1, keepdim=True)  # (G, K)
    if scale == "none":
        return centered
    if scale != "std":
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    return centered / (rewards.std(dim=1, keepdim=True) + eps)  # (G, K); std is (G, 1), unbiased


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO advantages: each reward minus the mean of the OTHER K - 1 in its group, (G, K) -> (G, K).

        A_i = r_i - (sum_j r_j - r_i) / (K - 1) = K / (K - 1) * (r_i - mean(r))

    The baseline does not depend on r_i, so the gradient stays unbiased (Ahmadian et al. 2024).
    r = [1, 3, 2, 6] gives [-2.666667, 0, -1.333333, 4].

    Notebook: 06_dpo_grpo.ipynb
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (G, K) with K >= 2 responses per group, got {tuple(rewards.shape)}")
    K = rewards.shape[1]
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (K - 1)  # (G, K) leave-one-out mean
    return rewards - baseline  # (G, K)


def kl_penalized_advantages(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, advantage: str = "grpo"
) -> torch.Tensor:
    """Advantages of the KL-penalized reward r = score - kl_coef * KL, within each group.

    scores, kl (G, K), kl the summed k1 of each response (`sequence_kl`) -> (G, K):

        grpo:     A_i = (s_i - mean s) / (std s + 1e-4) - kl_coef * (KL_i - mean KL)
        dr_grpo:  A_i = (s_i - mean s) - kl_coef * (KL_i - mean KL)     = r_i - mean r
        rloo:     the leave-one-out advantages of r (`rloo_advantages`), linear in r too

    GRPO's std comes from the scores alone (a deliberate deviation, see the module docstring): a
    group whose scores tie gets only -kl_coef * (KL_i - mean KL), not its KL noise standardized to
    size 1. kl_coef 0 gives the plain advantages of the scores.

    Notebook: 06_dpo_grpo.ipynb
    """
    if advantage == "rloo":
        return rloo_advantages(scores) - kl_coef * rloo_advantages(kl)  # (G, K)
    if advantage not in ("grpo", "dr_grpo"):
        raise ValueError(f"advantage must be one of {ADVANTAGES}, got {advantage!r}")
    score_advantages = group_advantages(scores, "std" if advantage == "grpo" else "none")  # (G, K)
    return score_advantages - kl_coef * group_advantages(kl, "none")  # (G, K)


def zero_std_groups(scores: torch.Tensor) -> torch.Tensor:
    """Groups whose scores are all equal: scores (G, K) -> (G,) bool. Their score advantage is 0
    (no signal, docs/implementation_details.md#grpo-dr-grpo-and-rloo); `objective/frac_zero_std`
    is their share."""
    return (scores == scores[:, :1]).all(dim=1)  # (G,)


# ------------------------------------------------- the KL term: in the reward (step 3) or the loss (step 4)


def sequence_kl(logps: torch.Tensor, ref_logps: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The k1 estimate of each response's KL, sum_t (log pi - log pi_ref) over its tokens:
    logps, ref_logps, response_mask (B, R) -> (B,) nats per response, detached (no gradient flows
    through a KL in the reward).

    Notebook: 06_dpo_grpo.ipynb
    """
    return masked_sum(kl_estimates(logps, ref_logps), response_mask.to(logps.dtype), dim=1).detach()  # (B,)


def kl_shaped_scores(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Scores minus the sequence KL estimate: score - kl_coef * sum_t (log pi - log pi_ref).

    scores (B,), logps, ref_logps, response_mask (B, R) -> (B,). The default KL of this module
    (k1 in the reward, docs/implementation_details.md#kl-in-grpo): through the advantages its
    policy-gradient is the gradient of -kl_coef * KL(pi || ref). No gradient flows through it.

    Notebook: 06_dpo_grpo.ipynb
    """
    return scores - kl_coef * sequence_kl(logps, ref_logps, response_mask)  # (B,)


def kl_loss_per_token(logps: torch.Tensor, ref_logps: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """The per-token KL term added to the loss: logps, ref_logps (B, R) -> (B, R).

    "k2_loss": 0.5 * (log pi - log pi_ref)^2, whose expected gradient on samples of pi is that of
    the reverse KL(pi || ref) of the token's distribution (TRL's bias-corrected k3 has the same).
    "k3_loss": exp(ref - logp) - (ref - logp) - 1 (original GRPO), whose expected gradient is that
    of the forward KL(ref || pi) (docs/implementation_details.md#kl-estimators, TRL #4967).

    Notebook: 06_dpo_grpo.ipynb
    """
    if kl_penalty == "k2_loss":
        return k2_estimate(logps, ref_logps)  # (B, R)
    if kl_penalty == "k3_loss":
        return k3_estimate(logps, ref_logps)  # (B, R)
    raise ValueError(f"kl_penalty for the loss must be 'k2_loss' or 'k3_loss', got {kl_penalty!r}")


# --------------------------------------------------------------------------- 4. the policy loss


def clipped_surrogate(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip_range: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate with one advantage per response (the GRPO objective, negated).

        ratio_t = exp(logp_t - old_logp_t)
        l_t = max(-A * ratio_t, -A * clip(ratio_t, 1 - eps, 1 + eps))

    logps, old_logps (B, R), advantages (B,) -> (per-token loss (B, R), clipped (B, R) bool, True
    where the clipped branch is the larger). Not masked: `aggregate_loss` applies the mask.

    Notebook: 06_dpo_grpo.ipynb
    """
    ratio = torch.exp(logps - old_logps)  # (B, R)
    A = advantages.unsqueeze(1).to(logps.dtype)  # (B, 1), the same for every token of a response
    unclipped = -A * ratio  # (B, R)
    clipped = -A * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, R)
    return torch.max(unclipped, clipped), clipped > unclipped


def aggregate_loss(
    per_token_loss: torch.Tensor, response_mask: torch.Tensor, aggregation: str, max_tokens: int | None = None
) -> torch.Tensor:
    """Per-token losses (B, R) -> a scalar, three ways (TRL `loss_type`):

    - "sequence_mean" (GRPO): mean over responses of each response's token mean. A token of a long
      response weighs 1 / |o_i|: long wrong answers are penalized less (a length bias).
    - "token_mean" (DAPO, TRL's default): sum over all tokens / number of tokens.
    - "token_sum" (Dr GRPO, and RLOO's REINFORCE): sum over all tokens / (B * max_tokens), a
      constant, so every token weighs the same.

    Notebook: 06_dpo_grpo.ipynb
    """
    mask = response_mask.to(per_token_loss.dtype)  # (B, R)
    if aggregation == "sequence_mean":
        return masked_mean(per_token_loss, mask, dim=1).mean()
    if aggregation == "token_mean":
        return masked_mean(per_token_loss, mask)
    if aggregation == "token_sum":
        if max_tokens is None or max_tokens < 1:
            raise ValueError("aggregation 'token_sum' needs max_tokens, the response token budget")
        return masked_sum(per_token_loss, mask) / (per_token_loss.shape[0] * max_tokens)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
