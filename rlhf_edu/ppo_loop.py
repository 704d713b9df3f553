"""The PPO loop: rollout, score, KL-penalized rewards, GAE, clipped update (notebook 04_ppo.ipynb).

The numbered steps follow docs/implementation_details.md#ppo-loop and notebook 04's headings:

    1. sample responses from the policy at temperature T (our KV-cached sampler: no top-k/top-p);
    2. old log-probs and values (recomputed with the training forward), reference log-probs at the
       same temperature, the reward model's score of the post-processed response;
    3. per-token rewards: -kl_coef * k1 on every token, the score (after the missing-EOS penalty) on
       the last one;
    4. GAE (gamma 1, lambda 0.95), returns before whitening, advantages whitened over the batch;
    5. clipped policy and value losses, epochs x minibatches x micro-batches;
    6. gradient clipping, Adam step, linear learning-rate decay, KL-coefficient update.

The math lives in `rlhf_edu.ppo`; this module only orchestrates. Deliberate choices:
- The default critic is a zero-initialized value head on the policy's last hidden state (OAI 2019):
  one forward and backward pass serves both losses, faster and lighter than `critic="reward_model"`,
  the separate value network initialized from the reward model (Stiennon et al. 2020, N+), which
  `bench/trl_ppo.py` times beside it. In a few steps neither critic's explained variance leaves 0,
  so the cheaper one is the default where the budget is a laptop.
- `trainable_layers` trains only the top blocks of the policy (a CPU budget choice, like LoRA).
- `policy/entropy` is the sampled-token estimate mean(-log pi(y_t)), not the full-vocabulary entropy,
  and a mean over response tokens: OpenAI's and TRL's `objective/entropy` is the per-response sum,
  mean over responses of sum_t -log pi(y_t), about `response/length` times larger.
- Reward whitening (`whiten_rewards`, off by default) divides by the unbiased std over the whole
  rollout batch's response tokens, once; OpenAI's books tasks whiten each minibatch with the biased
  variance of `tf.nn.moments` (`masked_whiten(..., unbiased=False)` computes that one).
- Every random draw (prompt order, sampling, minibatch shuffles) derives from (seed, step), so a run
  resumed from a checkpoint repeats the uninterrupted run exactly on a CPU.
- Micro-batches are trimmed of all-padding columns before the forward pass (same numbers, less work).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import torch

from rlhf_edu.generation import Samples, SamplingConfig, sample
from rlhf_edu.logprobs import (
    masked_mean,
    masked_sum,
    masked_whiten,
    per_token_logps,
    zero_where_masked,
)
from rlhf_edu.ppo import (
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    missing_eos_penalty,
    per_token_rewards,
)
from rlhf_edu.reward_functions import is_reward_model
from rlhf_edu.training import (
    Stopwatch,
    check_finite,
    clip_and_step,
    trim_padding,
    warn_if_first_ratio_off,
)

if TYPE_CHECKING:
    from rlhf_edu.ppo_trainer import PPOTrainer


@dataclass(frozen=True)
class PPOConfig:
    """PPO settings (defaults explained in docs/implementation_details.md#defaults)."""

    steps: int = 24
    """PPO iterations; each samples one rollout batch and trains on it."""
    batch_size: int = 16
    """Prompts (episodes) per rollout."""
    mini_batch_size: int = 8
    """Episodes per optimizer step; batch_size / mini_batch_size optimizer steps per epoch."""
    micro_batch_size: int = 8
    """Episodes per forward/backward pass (gradient accumulation inside a minibatch)."""
    ppo_epochs: int = 2
    """Passes over each rollout batch (OAI, N+, TRL: 4; fewer suit a CPU)."""
    lr: float = 1e-5
    """Peak Adam learning rate, decayed linearly to 0 over `steps` with no warm-up (OAI, N+)."""
    adam_eps: float = 1e-5
    """Adam epsilon (OAI, N+)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (OpenRLHF; OAI and N+ do not clip)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(64, 0.7, 16))
    """Rollout sampling: the temperature divides the logits of every log-prob."""
    kl_coef: float = 0.05
    """kappa, the weight of the per-token KL penalty (N+: fixed 0.05; OAI: 0.15 adaptive)."""
    kl_target: float | None = None
    """With a target (nats per response), beta follows the adaptive controller; None keeps it fixed."""
    kl_horizon: float = 10_000
    """Episodes over which the adaptive controller moves beta (Ziegler et al.: 10,000)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """Policy ratio clip epsilon."""
    clip_range_value: float = 0.2
    """Value clip."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    whiten_rewards: bool = False
    """Scale the per-token rewards by their std (keeping the mean) before GAE (OAI books tasks)."""
    missing_eos_penalty: float | None = 1.0
    """Lower the score of a response that never emitted EOS by this much (TRL); None: no penalty."""
    missing_eos_mode: str = "subtract"
    """"subtract" (TRL) or "replace" (the score becomes -penalty, OAI / N+)."""
    trainable_layers: int | None = None
    """Train only the top this-many transformer blocks of the policy (and its final norm); None
    trains all. On a CPU the backward pass then stops early: faster steps, less optimizer memory."""
    critic: str = "shared"
    """"shared": a zero-initialized value head on the policy's last hidden state (OAI 2019);
    "reward_model": a separate value network initialized from the reward model (Stiennon et al. 2020)."""
    eval_every: int = 8
    """Gold score, RM score and KL on the fixed eval prompts every this many steps (and at the end)."""
    eval_subset: int | None = None
    """The periodic evaluations use the first this-many eval prompts (None: all of them)."""
    seed: int = 0
    """Prompt order, sampling and minibatch shuffles derive from (seed, step), so a resumed run
    repeats an uninterrupted one."""
    ratio_tolerance: float | None = None
    """Health check: max |ratio - 1| allowed on the first minibatch of a rollout before warning;
    None takes the dtype's (`DeviceSetup.ratio_tolerance`: 1e-4 in fp32 and bf16)."""

    def __post_init__(self):
        if self.batch_size % self.mini_batch_size or self.mini_batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size "
                f"({self.mini_batch_size}), itself a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.critic not in ("shared", "reward_model"):
            raise ValueError(f"critic must be 'shared' or 'reward_model', got {self.critic!r}")
        if self.missing_eos_mode not in ("subtract", "replace"):
            raise ValueError(f"missing_eos_mode must be 'subtract' or 'replace', got {self.missing_eos_mode!r}")
        if self.steps < 1 or self.ppo_epochs < 1 or self.lr < 0 or self.kl_coef < 0:
            raise ValueError("steps and ppo_epochs must be >= 1, lr and kl_coef >= 0")


@dataclass
class Rollout:
    """One batch of episodes with everything the update needs; all (B, R) unless noted."""

    prompts: list[str]
    samples: Samples
    old_logps: torch.Tensor
    ref_logps: torch.Tensor
    old_values: torch.Tensor
    rm_scores: torch.Tensor  # (B,) the reward model's score
    scores: torch.Tensor  # (B,) after the missing-EOS penalty: what the policy is paid
    rewards: torch.Tensor
    non_score_reward: torch.Tensor
    advantages: torch.Tensor  # whitened over the batch's response tokens
    returns: torch.Tensor
    response_mask: torch.Tensor  # samples.response_mask on the models' device
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent sampling (`generate`), computing the frozen blocks (`trunk`), in the policy and
    critic forward (`policy`), the reference (`reference`) and the reward model (`reward`)."""
    trunk: torch.Tensor | None = None
    """(B, P+R, H) the hidden state entering the policy's first trainable block (`rlhf_edu.trunk`),
    None when the trainer runs full forwards."""


# --------------------------------------------------------------------------- one iteration, numbered like notebook 04


def forward(trainer: PPOTrainer, input_ids, attention_mask, context_length, trunk=None):
    """New log-probs and values of the policy and critic: -> (logps (B, R), values (B, R)).
    With `trunk` (B, P+R, H), the policy runs only its trainable blocks on it."""
    T = trainer.config.sampling.temperature
    policy_logps = per_token_logps if trunk is None else partial(trainer.trunk.logps, trunk=trunk)
    with trainer.logps_ctx:
        if trainer.value_head is not None:
            logps, hidden = policy_logps(
                trainer.policy,
                input_ids=input_ids,
                attention_mask=attention_mask,
                context_length=context_length,
                temperature=T,
                return_hidden=True,
            )  # (B, R), (B, R, H)
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                values = trainer.value_head(hidden.float()).squeeze(-1)  # (B, R)
        else:
            logps = policy_logps(
                trainer.policy,
                input_ids=input_ids,
                attention_mask=attention_mask,
                context_length=context_length,
                temperature=T,
            )  # (B, R)
            values = trainer.critic(input_ids, attention_mask, context_length)  # (B, R)
    return logps, values.float()


@torch.no_grad()
def rollout(trainer: PPOTrainer, prompts: list[str], generator: torch.Generator) -> Rollout:
    """Steps 1 to 4: sample, score, per-token rewards, GAE. Returns a Rollout."""
    cfg, step = trainer.config, trainer.step_count
    watch = Stopwatch()
    # 1. Sample from the exact policy at temperature T (no top-k, no top-p).
    samples = sample(
        trainer.policy, trainer.tokenizer, prompts, cfg.sampling, generator=generator, autocast_ctx=trainer.autocast_ctx
    )
    watch.lap("generate")
    ids = samples.input_ids.to(trainer.device)  # (B, P+R)
    mask = samples.attention_mask.to(trainer.device)  # (B, P+R)
    response_mask = samples.response_mask.to(trainer.device)  # (B, R)
    P = samples.context_length
    # 2. Old log-probs and values recomputed with the training forward (so the first ratio is 1),
    #    reference log-probs at the same temperature, and the reward model's score.
    #    With frozen lower blocks, their output (the trunk) is computed once and shared.
    if trainer.trunk.enabled and trainer.trunk_gap is None:
        with trainer.logps_ctx:
            rows = slice(0, cfg.micro_batch_size)
            trainer.trunk_gap = trainer.trunk.check(trainer.policy, ids[rows], mask[rows], P, cfg.sampling.temperature)
        watch.lap("trunk")
    old_logps, old_values, ref_logps, rm_scores, trunks = [], [], [], [], []
    for start in range(0, len(prompts), cfg.micro_batch_size):
        rows = slice(start, start + cfg.micro_batch_size)
        trunk = None
        if trainer.trunk.enabled:
            with trainer.logps_ctx:
                trunk = trainer.trunk.hidden(trainer.policy, ids[rows], mask[rows])  # (b, P+R, H)
            trunks.append(trunk)
            watch.lap("trunk")
        logps, values = trainer.forward(ids[rows], mask[rows], P, trunk)
        old_logps.append(logps)
        old_values.append(values)
        watch.lap("policy")
        with trainer.logps_ctx:
            if trunk is not None and trainer.trunk.shared_with_reference:
                ref_logps.append(
                    trainer.trunk.logps(trainer.reference, trunk, ids[rows], mask[rows], P, cfg.sampling.temperature)
                )
            else:
                ref_logps.append(per_token_logps(trainer.reference, ids[rows], mask[rows], P, cfg.sampling.temperature))
        watch.lap("reference")
        if is_reward_model(trainer.reward_model):
            with trainer.autocast_ctx:
                rm_scores.append(trainer.reward_model(ids[rows], mask[rows]).float())
            watch.lap("reward")
    if not is_reward_model(trainer.reward_model):  # a reward function reads the decoded texts
        scores = trainer.reward_model(prompts, samples.texts, samples.has_eos.tolist())
        rm_scores = [torch.as_tensor(scores, dtype=torch.float32).to(trainer.device)]  # (B,)
        watch.lap("reward")
    old_logps = zero_where_masked(torch.cat(old_logps), response_mask)  # (B, R), 0 on padding
    old_values = zero_where_masked(torch.cat(old_values), response_mask)  # (B, R)
    ref_logps = zero_where_masked(torch.cat(ref_logps), response_mask)  # (B, R)
    rm_scores = torch.cat(rm_scores)  # (B,)
    for name, t in [
        ("the reward-model score", rm_scores),
        ("the policy log-probs", old_logps),
        ("the reference log-probs", ref_logps),
        ("the values", old_values),
    ]:
        check_finite(name, t, step)
    # 3. The score on the last response token, minus beta * k1 on every token.
    scores = rm_scores
    if cfg.missing_eos_penalty is not None:
        scores = missing_eos_penalty(
            rm_scores, samples.has_eos.to(trainer.device), cfg.missing_eos_penalty, cfg.missing_eos_mode
        )  # (B,)
    rewards, non_score_reward = per_token_rewards(
        scores, old_logps, ref_logps, response_mask, trainer.kl_controller.kl_coef
    )  # (B, R), (B, R)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, response_mask, shift_mean=False)  # (B, R), 0 on padding
    # 4. Advantages by GAE (returns before whitening), then whitened over the batch's tokens.
    advantages, returns = compute_gae(rewards, old_values, response_mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, response_mask)  # (B, R), 0 on padding
    check_finite("the advantages", advantages, step)
    return Rollout(
        prompts=prompts,
        samples=samples,
        old_logps=old_logps,
        ref_logps=ref_logps,
        old_values=old_values,
        rm_scores=rm_scores,
        scores=scores,
        rewards=rewards,
        non_score_reward=non_score_reward,
        advantages=advantages,
        returns=returns,
        response_mask=response_mask,
        timings=dict(watch.laps),
        trunk=torch.cat(trunks) if trunks else None,
    )


def update(trainer: PPOTrainer, rollout: Rollout, generator: torch.Generator) -> dict[str, float]:
    """Steps 5 and 6: clipped losses over epochs x minibatches, with gradient accumulation.

    Each micro-batch's token-mean loss is weighted by its share of the minibatch's tokens, so
    accumulating micro-batches gives the same gradient as one pass over the minibatch
    (docs/implementation_details.md#ppo-loop). Returns the means of the loss statistics, plus
    the health check on the first minibatch.
    """
    cfg, step = trainer.config, trainer.step_count
    samples = rollout.samples
    ids = samples.input_ids.to(trainer.device)  # (B, P+R)
    mask = samples.attention_mask.to(trainer.device)  # (B, P+R)
    P = samples.context_length
    B = ids.shape[0]
    stats: dict[str, list[float]] = defaultdict(list)
    first_ratio_dev, first_approxkl, first_dev_sum, first_tokens = 0.0, 0.0, 0.0, 0.0
    trainer.policy.train()
    # 5. Clipped policy and value losses, epochs x shuffled minibatches x micro-batches.
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)  # (B,)
        for mb_start in range(0, B, cfg.mini_batch_size):
            minibatch = order[mb_start : mb_start + cfg.mini_batch_size].to(trainer.device)
            mb_tokens = rollout.response_mask[minibatch].sum()
            for mc_start in range(0, len(minibatch), cfg.micro_batch_size):
                rows = minibatch[mc_start : mc_start + cfg.micro_batch_size]  # (b,)
                input_ids, attention_mask, ctx, R = trim_padding(ids, mask, P, rows)
                r_mask = rollout.response_mask[rows, :R]  # (b, R)
                trunk = None if rollout.trunk is None else rollout.trunk[rows, P - ctx : P + R]
                logps, values = trainer.forward(input_ids, attention_mask, ctx, trunk)  # (b, R), (b, R)
                pg_loss, pg_stats = clipped_policy_loss(
                    logps, rollout.old_logps[rows, :R], rollout.advantages[rows, :R], r_mask, cfg.clip_range
                )
                vf_loss, vf_stats = clipped_value_loss(
                    values, rollout.old_values[rows, :R], rollout.returns[rows, :R], r_mask, cfg.clip_range_value
                )
                loss = pg_loss + cfg.vf_coef * vf_loss
                check_finite("the PPO loss (policy/loss + vf_coef * val/loss)", loss.detach(), step)
                weight = r_mask.sum() / mb_tokens
                trainer.scaler.scale(loss * weight).backward()
                with torch.no_grad():
                    ratio = torch.exp(logps - rollout.old_logps[rows, :R])  # (b, R)
                    ratio_dev = float(zero_where_masked((ratio - 1).abs(), r_mask).max())
                if epoch == 0 and mb_start == 0:  # health check: nothing has changed yet
                    first_ratio_dev = max(first_ratio_dev, ratio_dev)
                    first_approxkl = max(first_approxkl, pg_stats["policy/approxkl"])
                    first_dev_sum += float(masked_sum((ratio - 1).abs(), r_mask))
                    first_tokens += float(r_mask.sum())
                for key, value in {
                    "policy/loss": pg_loss.item(),
                    "val/loss": vf_loss.item(),
                    **pg_stats,
                    **vf_stats,
                    "policy/ratio_mean": float(masked_mean(ratio, r_mask)),
                    "policy/ratio_max": float(zero_where_masked(ratio, r_mask).max()),
                }.items():
                    stats[key].append(value)
            # 6. One optimizer step per minibatch: clip the gradient norm, check it, step.
            grad_norm = clip_and_step(trainer.optimizer, trainer.scaler, trainer.params, cfg.max_grad_norm, step, "PPO")
            stats["policy/grad_norm"].append(float(grad_norm))  # one per optimizer step
    out = {k: (max(v) if k == "policy/ratio_max" else sum(v) / len(v)) for k, v in stats.items()}
    warn_if_first_ratio_off(first_ratio_dev, trainer.ratio_tolerance, step)
    return {
        **out,
        "health/first_ratio_dev": first_ratio_dev,
        "health/first_approxkl": first_approxkl,
        "health/first_ratio_dev_mean": first_dev_sum / max(first_tokens, 1.0),
    }
