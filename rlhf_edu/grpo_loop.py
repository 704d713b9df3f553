"""The GRPO / Dr GRPO / RLOO loop: `GRPOConfig`, `GroupRollout`, and one iteration as module-level
steps a reader follows top to bottom (notebook 06's "Train GRPO"):

    1. sample K responses per prompt from the policy at temperature T (`rollout`);
    2. score them (missing-EOS penalty first), old and reference log-probs (`rollout`);
    3. advantages within each group, minus kl_coef * the summed k1 by default (`rollout`);
    4. the clipped surrogate (plus the KL term in the loss forms), aggregated (`micro_batch_loss`);
    5. epochs x minibatches x micro-batches, one clipped optimizer step per minibatch (`update`).

The math (group advantages, the KL term, the clipped surrogate and its aggregation) lives in
`rlhf_edu/grpo.py`, whose docstring gives the algorithms and the deviations; the state one run
carries between iterations, the loop and its checkpoints live in `rlhf_edu/grpo_trainer.py`.

Notebook: 06_dpo_grpo.ipynb. Legend: G groups (prompts), K responses per group, B = G * K,
R response tokens.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from rlhf_edu.generation import Samples, SamplingConfig, sample
from rlhf_edu.grpo import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_PENALTIES,
    aggregate_loss,
    clipped_surrogate,
    kl_loss_per_token,
    kl_penalized_advantages,
    sequence_kl,
)
from rlhf_edu.logprobs import masked_mean, per_token_logps, zero_where_masked
from rlhf_edu.ppo import missing_eos_penalty
from rlhf_edu.reward_functions import RewardModelScorer
from rlhf_edu.training import (
    Stopwatch,
    check_finite,
    clip_and_step,
    trim_padding,
    warn_if_first_ratio_off,
)

if TYPE_CHECKING:
    from rlhf_edu.grpo_trainer import GRPOTrainer

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO / Dr GRPO / RLOO settings (docs/implementation_details.md#grpo-dr-grpo-and-rloo)."""

    steps: int = 16
    """Iterations; each samples `group_size` responses for each of `prompts_per_step` prompts."""
    prompts_per_step: int = 4
    """Prompts (groups, G) per iteration."""
    group_size: int = 4
    """Responses per prompt (K >= 2; TRL GRPO: 8, RLOO: 2)."""
    mini_batch_size: int = 8
    """Responses per optimizer step; G * K must be a multiple of it."""
    micro_batch_size: int = 8
    """Responses per forward/backward pass (gradient accumulation inside a minibatch)."""
    epochs: int = 1
    """Passes over each batch (TRL `num_iterations`: 1). With 1 epoch and 1 minibatch the ratio is
    always 1 and the clip never acts."""
    lr: float = 1e-5
    """Peak Adam learning rate, decayed linearly to 0 over `steps`, no warm-up (as PPOConfig)."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(64, 0.7, 16))
    """How responses are sampled; the temperature divides the logits of every log-prob. TRL GRPO
    samples at 1.0; 0.7 keeps the comparison with the course's PPO fair."""
    advantage: str = "grpo"
    """"grpo" (group mean and std), "dr_grpo" (group mean only) or "rloo" (leave-one-out mean)."""
    loss_aggregation: str | None = None
    """"sequence_mean", "token_mean" or "token_sum"; None takes the algorithm's own: sequence_mean
    for grpo, token_sum for dr_grpo and rloo (see `aggregate_loss`)."""
    kl_coef: float = 0.05
    """Weight of the KL to the reference (GRPO paper: 0.04 with k3; TRL now 0.0; the course's PPO 0.05)."""
    kl_penalty: str = "k1_reward"
    """"k1_reward" (summed k1 subtracted from the score: reverse-KL gradient, the default),
    "k2_loss" (per-token k2 in the loss: reverse-KL gradient on-policy) or "k3_loss" (original
    GRPO: forward-KL gradient)."""
    clip_range: float = 0.2
    """Ratio clip epsilon."""
    missing_eos_penalty: float | None = 1.0
    """Lower the score of a response that never emitted EOS by this much; None: no penalty."""
    missing_eos_mode: str = "subtract"
    """"subtract" (TRL) or "replace" (the score becomes -penalty, OAI / N+)."""
    trainable_layers: int | None = None
    """Train only the top this-many transformer blocks (and the final norm); None trains all."""
    seed: int = 0
    """Prompt order, sampling and minibatch shuffles derive from (seed, step)."""
    ratio_tolerance: float | None = None
    """Health check: max |ratio - 1| allowed on the first minibatch of an update before warning;
    None takes the dtype's (`DeviceSetup.ratio_tolerance`: 1e-4 in fp32 and bf16)."""

    def __post_init__(self):
        for name, allowed in [
            ("advantage", ADVANTAGES),
            ("loss_aggregation", (None, *AGGREGATIONS)),
            ("kl_penalty", KL_PENALTIES),
            ("missing_eos_mode", ("subtract", "replace")),
        ]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a baseline needs two responses), got {self.group_size}")
        if self.batch_size % self.mini_batch_size or self.mini_batch_size % self.micro_batch_size:
            raise ValueError(
                f"prompts_per_step * group_size ({self.batch_size}) must be a multiple of "
                f"mini_batch_size ({self.mini_batch_size}), itself a multiple of micro_batch_size "
                f"({self.micro_batch_size})"
            )
        if self.steps < 1 or self.epochs < 1 or self.prompts_per_step < 1:
            raise ValueError("steps, epochs and prompts_per_step must be >= 1")
        if self.lr < 0 or self.kl_coef < 0:
            raise ValueError(f"lr and kl_coef must be >= 0, got {self.lr}, {self.kl_coef}")

    @property
    def batch_size(self) -> int:
        """Responses per iteration, B = G * K."""
        return self.prompts_per_step * self.group_size

    @property
    def aggregation(self) -> str:
        """The loss aggregation in use: `loss_aggregation`, or the algorithm's own."""
        if self.loss_aggregation is not None:
            return self.loss_aggregation
        return "sequence_mean" if self.advantage == "grpo" else "token_sum"


# --------------------------------------------------------------------------- one iteration, numbered like notebook 06


@dataclass
class GroupRollout:
    """One batch of G groups of K responses, rows group-major (row g * K + k); all (B, R) unless noted."""

    prompts: list[str]  # (B,) each prompt K times in a row
    samples: Samples  # on the CPU
    input_ids: torch.Tensor  # (B, P+R) samples.input_ids on the policy's device
    attention_mask: torch.Tensor  # (B, P+R)
    old_logps: torch.Tensor
    ref_logps: torch.Tensor
    raw_scores: torch.Tensor  # (B,) what reward_fn returned
    scores: torch.Tensor  # (B,) after the missing-EOS penalty
    rewards: torch.Tensor  # (B,) the score minus kl_coef * KL with k1_reward: what each response is paid
    advantages: torch.Tensor  # (B,) one per response, shared by its tokens
    response_mask: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent sampling (`generate`), scoring (`reward`) and in the policy and reference
    forwards (`logps`)."""


def forward(trainer: GRPOTrainer, model, input_ids, attention_mask, context_length) -> torch.Tensor:
    """Per-token log-probs at the sampling temperature: (B, P+R) -> (B, R) fp32."""
    T = trainer.config.sampling.temperature
    with trainer.logps_ctx:
        return per_token_logps(model, input_ids, attention_mask, context_length, T)


@torch.no_grad()
def rollout(trainer: GRPOTrainer, prompts: list[str], generator: torch.Generator) -> GroupRollout:
    """Steps 1 to 3: sample K responses per prompt, score them, group advantages."""
    cfg, step, K = trainer.config, trainer.step_count, trainer.config.group_size
    watch = Stopwatch()
    # 1. K samples per prompt from the exact policy at temperature T, rows group-major.
    repeated = [p for p in prompts for _ in range(K)]
    samples = sample(
        trainer.policy,
        trainer.tokenizer,
        repeated,
        cfg.sampling,
        generator=generator,
        autocast_ctx=trainer.autocast_ctx,
    )
    watch.lap("generate")
    ids, mask = samples.input_ids.to(trainer.device), samples.attention_mask.to(trainer.device)  # (B, P+R)
    response_mask = samples.response_mask.to(trainer.device)  # (B, R)
    # 2. Scores (missing-EOS penalty first); old log-probs with the training forward (ratio 1 on
    #    the first minibatch) and reference log-probs, at the same temperature.
    if isinstance(trainer.reward_fn, RewardModelScorer):  # the sampled tokens, as PPO scores them
        raw_scores = trainer.reward_fn.score_samples(ids, mask)  # (B,)
    else:  # a program reads the texts
        raw_scores = trainer.reward_fn(repeated, samples.texts, samples.has_eos.tolist())
    raw_scores = torch.as_tensor(raw_scores, dtype=torch.float32).to(trainer.device)  # (B,)
    if raw_scores.shape != (len(repeated),):
        raise ValueError(f"reward_fn returned shape {tuple(raw_scores.shape)}, expected ({len(repeated)},)")
    check_finite("the reward_fn scores", raw_scores, step, "GRPO")
    watch.lap("reward")
    scores = raw_scores
    if cfg.missing_eos_penalty is not None:
        has_eos = samples.has_eos.to(trainer.device)  # (B,)
        scores = missing_eos_penalty(raw_scores, has_eos, cfg.missing_eos_penalty, cfg.missing_eos_mode)
    old_logps, ref_logps = [], []
    for start in range(0, len(repeated), cfg.micro_batch_size):
        rows = slice(start, start + cfg.micro_batch_size)
        old_logps.append(trainer.forward(trainer.policy, ids[rows], mask[rows], samples.context_length))
        ref_logps.append(trainer.forward(trainer.reference, ids[rows], mask[rows], samples.context_length))
    old_logps = zero_where_masked(torch.cat(old_logps), response_mask)  # (B, R), 0 on padding
    ref_logps = zero_where_masked(torch.cat(ref_logps), response_mask)  # (B, R)
    check_finite("the policy log-probs", old_logps, step, "GRPO")
    check_finite("the reference log-probs", ref_logps, step, "GRPO")
    watch.lap("logps")
    # 3. Advantages within each group from the scores, minus kl_coef * the group-centred summed
    #    k1 by default; GRPO's std division scales the scores only (`kl_penalized_advantages`).
    kl_coef = cfg.kl_coef if cfg.kl_penalty == "k1_reward" else 0.0  # the loss forms add theirs at 4
    kl = sequence_kl(old_logps, ref_logps, response_mask)  # (B,) nats per response
    rewards = scores - kl_coef * kl  # (B,)
    advantages = kl_penalized_advantages(scores.view(-1, K), kl.view(-1, K), kl_coef, cfg.advantage)  # (G, K)
    advantages = advantages.reshape(-1)  # (B,)
    check_finite("the advantages", advantages, step, "GRPO")
    return GroupRollout(
        prompts=repeated,
        samples=samples,
        input_ids=ids,
        attention_mask=mask,
        old_logps=old_logps,
        ref_logps=ref_logps,
        raw_scores=raw_scores,
        scores=scores,
        rewards=rewards,
        advantages=advantages,
        response_mask=response_mask,
        timings=dict(watch.laps),
    )


def micro_batch_loss(trainer: GRPOTrainer, rollout: GroupRollout, rows: torch.Tensor):
    """Step 4: the loss of the responses `rows` (b,), aggregated over them alone.

    Returns (loss, logps (b, R), old_logps (b, R), clipped (b, R), response_mask (b, R)), R
    trimmed to the longest of these responses.
    """
    cfg, P = trainer.config, rollout.samples.context_length
    input_ids, attention_mask, ctx, R = trim_padding(rollout.input_ids, rollout.attention_mask, P, rows)
    r_mask = rollout.response_mask[rows, :R]  # (b, R)
    logps = trainer.forward(trainer.policy, input_ids, attention_mask, ctx)  # (b, R)
    old_logps = rollout.old_logps[rows, :R]  # (b, R)
    per_token, clipped = clipped_surrogate(logps, old_logps, rollout.advantages[rows], cfg.clip_range)
    if cfg.kl_penalty != "k1_reward":
        kl_term = kl_loss_per_token(logps, rollout.ref_logps[rows, :R], cfg.kl_penalty)  # (b, R)
        per_token = per_token + cfg.kl_coef * kl_term  # (b, R)
    loss = aggregate_loss(per_token, r_mask, cfg.aggregation, cfg.sampling.max_new_tokens)
    return loss, logps.detach(), old_logps, clipped, r_mask


def update(trainer: GRPOTrainer, rollout: GroupRollout, generator: torch.Generator) -> dict[str, float]:
    """Step 5: epochs x minibatches x micro-batches. Each micro-batch's loss is weighted by its
    share of the minibatch (of responses, or of tokens for token_mean), so accumulating
    micro-batches gives the same gradient as one pass over the minibatch."""
    cfg, step = trainer.config, trainer.step_count
    B = rollout.response_mask.shape[0]
    stats: dict[str, list[float]] = defaultdict(list)
    first_ratio_dev = 0.0
    trainer.policy.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(B, generator=generator)  # (B,)
        for mb_start in range(0, B, cfg.mini_batch_size):
            minibatch = order[mb_start : mb_start + cfg.mini_batch_size].to(trainer.device)  # (mb,)
            mb_tokens = rollout.response_mask[minibatch].sum()
            mb_loss = 0.0
            for mc_start in range(0, len(minibatch), cfg.micro_batch_size):
                rows = minibatch[mc_start : mc_start + cfg.micro_batch_size]  # (b,)
                loss, logps, old_logps, clipped, r_mask = micro_batch_loss(trainer, rollout, rows)
                check_finite("the GRPO loss", loss.detach(), step, "GRPO")
                token_mean = cfg.aggregation == "token_mean"
                share = r_mask.sum() / mb_tokens if token_mean else len(rows) / len(minibatch)
                trainer.scaler.scale(loss * share).backward()
                mb_loss += float(loss.detach()) * float(share)
                log_ratio = logps - old_logps  # (b, R)
                ratio_dev = float(zero_where_masked((log_ratio.exp() - 1).abs(), r_mask).max())
                if epoch == 0 and mb_start == 0:  # health check: nothing has changed yet
                    first_ratio_dev = max(first_ratio_dev, ratio_dev)
                stats["policy/clipfrac"].append(float(masked_mean(clipped.float(), r_mask)))
                stats["policy/approxkl"].append(float(0.5 * masked_mean(log_ratio**2, r_mask)))
                stats["policy/ratio_max"].append(float(zero_where_masked(log_ratio.exp(), r_mask).max()))
            grad_norm = clip_and_step(
                trainer.optimizer, trainer.scaler, trainer.params, cfg.max_grad_norm, step, "GRPO"
            )
            stats["policy/loss"].append(mb_loss)
            stats["policy/grad_norm"].append(float(grad_norm))
    out = {k: (max(v) if k == "policy/ratio_max" else sum(v) / len(v)) for k, v in stats.items()}
    warn_if_first_ratio_off(first_ratio_dev, trainer.ratio_tolerance, step, "GRPO")
    return {**out, "health/first_ratio_dev": first_ratio_dev}
