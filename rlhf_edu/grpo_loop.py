"""The GRPO / Dr GRPO / RLOO trainer: `GRPOConfig`, `GRPOTrainer`, `train_grpo`.

The math (group advantages, the KL term, the clipped surrogate and its aggregation) lives in
`rlhf_edu/grpo.py`, whose docstring gives the algorithms, the numbered steps and the deviations;
this module only orchestrates them: sample K responses per prompt, score, log-probs, advantages,
epochs x minibatches x micro-batches of updates.

Notebook: 06_dpo_grpo.ipynb. Legend: G groups (prompts), K responses per group, B = G * K,
R response tokens.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

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
    zero_std_groups,
)
from rlhf_edu.logprobs import masked_mean, masked_sum, per_token_logps, zero_where_masked
from rlhf_edu.ppo import missing_eos_penalty
from rlhf_edu.reward_functions import RewardModelScorer
from rlhf_edu.training import (
    check_finite,
    clip_and_step,
    freeze_lower_layers,
    linear_schedule,
    prompts_for_step,
    step_generator,
    trim_padding,
    warn_if_first_ratio_off,
)

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


# --------------------------------------------------------------------------- the trainer


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


class GRPOTrainer:
    """GRPO / Dr GRPO / RLOO against any `reward_fn(prompts, texts, eos_flags) -> (B,)` scores, or a
    reward model through `reward_model_scorer` (scored on the sampled tokens, as in PPO).

    `policy` trains in place; `reference` (the SFT policy) stays frozen. `step()` runs one
    iteration and returns a flat metrics dict; `train()` loops. Notebook: 06_dpo_grpo.ipynb
    """

    def __init__(
        self,
        policy,
        reference,
        reward_fn,
        tokenizer,
        train_prompts: list[str],
        config: GRPOConfig = GRPOConfig(),
        *,
        setup=None,
    ):
        from rlhf_edu.devices import policy_gradient_precision
        from rlhf_edu.models import disable_dropout

        if not train_prompts:
            raise ValueError("GRPOTrainer needs at least one training prompt")
        self.policy, self.reference, self.reward_fn = policy, reference, reward_fn
        self.tokenizer, self.config = tokenizer, config
        self.train_prompts = list(train_prompts)
        self.setup, self.autocast_ctx, self.logps_ctx, self.ratio_tolerance = policy_gradient_precision(setup, config)
        self.device = next(policy.parameters()).device
        for model in (policy, reference):
            disable_dropout(model)
        reference.eval()
        reference.requires_grad_(False)
        freeze_lower_layers(policy, config.trainable_layers)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, eps=config.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: linear_schedule(s, 0, config.steps),  # linear decay, no warm-up
        )
        self.scaler = torch.amp.GradScaler(self.setup.device, enabled=self.setup.grad_scaler)
        self.step_count = 0
        self.history: list[dict] = []

    def forward(self, model, input_ids, attention_mask, context_length) -> torch.Tensor:
        """Per-token log-probs at the sampling temperature: (B, P+R) -> (B, R) fp32."""
        T = self.config.sampling.temperature
        with self.logps_ctx:
            return per_token_logps(model, input_ids, attention_mask, context_length, T)

    @torch.no_grad()
    def rollout(self, prompts: list[str], generator: torch.Generator) -> GroupRollout:
        """Steps 1 to 3: sample K responses per prompt, score them, group advantages."""
        cfg, step, K = self.config, self.step_count, self.config.group_size
        # 1. K samples per prompt from the exact policy at temperature T, rows group-major.
        repeated = [p for p in prompts for _ in range(K)]
        samples = sample(
            self.policy, self.tokenizer, repeated, cfg.sampling, generator=generator, autocast_ctx=self.autocast_ctx
        )
        ids, mask = samples.input_ids.to(self.device), samples.attention_mask.to(self.device)  # (B, P+R)
        response_mask = samples.response_mask.to(self.device)  # (B, R)
        # 2. Scores (missing-EOS penalty first); old log-probs with the training forward (ratio 1 on
        #    the first minibatch) and reference log-probs, at the same temperature.
        if isinstance(self.reward_fn, RewardModelScorer):  # the sampled tokens, as PPO scores them
            raw_scores = self.reward_fn.score_samples(ids, mask)  # (B,)
        else:  # a program reads the texts
            raw_scores = self.reward_fn(repeated, samples.texts, samples.has_eos.tolist())
        raw_scores = torch.as_tensor(raw_scores, dtype=torch.float32).to(self.device)  # (B,)
        if raw_scores.shape != (len(repeated),):
            raise ValueError(f"reward_fn returned shape {tuple(raw_scores.shape)}, expected ({len(repeated)},)")
        check_finite("the reward_fn scores", raw_scores, step, "GRPO")
        scores = raw_scores
        if cfg.missing_eos_penalty is not None:
            has_eos = samples.has_eos.to(self.device)  # (B,)
            scores = missing_eos_penalty(raw_scores, has_eos, cfg.missing_eos_penalty, cfg.missing_eos_mode)
        old_logps, ref_logps = [], []
        for start in range(0, len(repeated), cfg.micro_batch_size):
            rows = slice(start, start + cfg.micro_batch_size)
            old_logps.append(self.forward(self.policy, ids[rows], mask[rows], samples.context_length))
            ref_logps.append(self.forward(self.reference, ids[rows], mask[rows], samples.context_length))
        old_logps = zero_where_masked(torch.cat(old_logps), response_mask)  # (B, R), 0 on padding
        ref_logps = zero_where_masked(torch.cat(ref_logps), response_mask)  # (B, R)
        check_finite("the policy log-probs", old_logps, step, "GRPO")
        check_finite("the reference log-probs", ref_logps, step, "GRPO")
        # 3. Advantages within each group from the scores, minus kl_coef * the group-centred summed
        #    k1 by default; GRPO's std division scales the scores only (`kl_penalized_advantages`).
        kl_coef = cfg.kl_coef if cfg.kl_penalty == "k1_reward" else 0.0  # the loss forms add theirs at 4
        kl = sequence_kl(old_logps, ref_logps, response_mask)  # (B,) nats per response
        rewards = scores - kl_coef * kl  # (B,)
        advantages = kl_penalized_advantages(scores.view(-1, K), kl.view(-1, K), kl_coef, cfg.advantage)  # (G, K)
        advantages = advantages.reshape(-1)  # (B,)
        check_finite("the advantages", advantages, step, "GRPO")
        return GroupRollout(
            repeated, samples, ids, mask, old_logps, ref_logps, raw_scores, scores, rewards, advantages, response_mask
        )

    def micro_batch_loss(self, rollout: GroupRollout, rows: torch.Tensor):
        """Step 4: the loss of the responses `rows` (b,), aggregated over them alone.

        Returns (loss, logps (b, R), old_logps (b, R), clipped (b, R), response_mask (b, R)), R
        trimmed to the longest of these responses.
        """
        cfg, P = self.config, rollout.samples.context_length
        input_ids, attention_mask, ctx, R = trim_padding(rollout.input_ids, rollout.attention_mask, P, rows)
        r_mask = rollout.response_mask[rows, :R]  # (b, R)
        logps = self.forward(self.policy, input_ids, attention_mask, ctx)  # (b, R)
        old_logps = rollout.old_logps[rows, :R]  # (b, R)
        per_token, clipped = clipped_surrogate(logps, old_logps, rollout.advantages[rows], cfg.clip_range)
        if cfg.kl_penalty != "k1_reward":
            kl_term = kl_loss_per_token(logps, rollout.ref_logps[rows, :R], cfg.kl_penalty)  # (b, R)
            per_token = per_token + cfg.kl_coef * kl_term  # (b, R)
        loss = aggregate_loss(per_token, r_mask, cfg.aggregation, cfg.sampling.max_new_tokens)
        return loss, logps.detach(), old_logps, clipped, r_mask

    def update(self, rollout: GroupRollout, generator: torch.Generator) -> dict[str, float]:
        """Step 5: epochs x minibatches x micro-batches. Each micro-batch's loss is weighted by its
        share of the minibatch (of responses, or of tokens for token_mean), so accumulating
        micro-batches gives the same gradient as one pass over the minibatch."""
        cfg, step = self.config, self.step_count
        B = rollout.response_mask.shape[0]
        stats: dict[str, list[float]] = defaultdict(list)
        first_ratio_dev = 0.0
        self.policy.train()
        for epoch in range(cfg.epochs):
            order = torch.randperm(B, generator=generator)  # (B,)
            for mb_start in range(0, B, cfg.mini_batch_size):
                minibatch = order[mb_start : mb_start + cfg.mini_batch_size].to(self.device)  # (mb,)
                mb_tokens = rollout.response_mask[minibatch].sum()
                mb_loss = 0.0
                for mc_start in range(0, len(minibatch), cfg.micro_batch_size):
                    rows = minibatch[mc_start : mc_start + cfg.micro_batch_size]  # (b,)
                    loss, logps, old_logps, clipped, r_mask = self.micro_batch_loss(rollout, rows)
                    check_finite("the GRPO loss", loss.detach(), step, "GRPO")
                    token_mean = cfg.aggregation == "token_mean"
                    share = r_mask.sum() / mb_tokens if token_mean else len(rows) / len(minibatch)
                    self.scaler.scale(loss * share).backward()
                    mb_loss += float(loss.detach()) * float(share)
                    log_ratio = logps - old_logps  # (b, R)
                    ratio_dev = float(zero_where_masked((log_ratio.exp() - 1).abs(), r_mask).max())
                    if epoch == 0 and mb_start == 0:  # health check: nothing has changed yet
                        first_ratio_dev = max(first_ratio_dev, ratio_dev)
                    stats["policy/clipfrac"].append(float(masked_mean(clipped.float(), r_mask)))
                    stats["policy/approxkl"].append(float(0.5 * masked_mean(log_ratio**2, r_mask)))
                    stats["policy/ratio_max"].append(float(zero_where_masked(log_ratio.exp(), r_mask).max()))
                grad_norm = clip_and_step(self.optimizer, self.scaler, self.params, cfg.max_grad_norm, step, "GRPO")
                stats["policy/loss"].append(mb_loss)
                stats["policy/grad_norm"].append(float(grad_norm))
        out = {k: (max(v) if k == "policy/ratio_max" else sum(v) / len(v)) for k, v in stats.items()}
        warn_if_first_ratio_off(first_ratio_dev, self.ratio_tolerance, step, "GRPO")
        return {**out, "health/first_ratio_dev": first_ratio_dev}

    def step(self, keep_rollout: bool = False):
        """One iteration: rollout, update. Returns the metrics dict (and the rollout with
        keep_rollout=True). Keys as PPOTrainer's where they mean the same (`objective/score`,
        `objective/kl`, `policy/entropy`, `policy/clipfrac`, `policy/approxkl`, `response/length`,
        ...), plus `loss` (mean over optimizer steps) and `objective/frac_zero_std`, the share of
        groups whose scores are all equal: their score advantage is 0, only the KL term moves them."""
        cfg, step = self.config, self.step_count
        t0 = time.perf_counter()
        generator = step_generator(cfg.seed, step)
        prompts = prompts_for_step(self.train_prompts, step, cfg.prompts_per_step, cfg.seed)
        rollout = self.rollout(prompts, generator)
        mask = rollout.response_mask.to(rollout.old_logps.dtype)  # (B, R)
        kl = masked_sum(rollout.old_logps - rollout.ref_logps, mask, dim=1)  # (B,) nats per response
        grouped = rollout.scores.view(-1, cfg.group_size)  # (G, K)
        metrics = {
            "step": step + 1,
            "objective/score": float(rollout.raw_scores.mean()),
            "objective/score_penalized": float(rollout.scores.mean()),
            "objective/kl": float(kl.mean()),
            "objective/rlhf_reward": float((rollout.scores - cfg.kl_coef * kl).mean()),
            "objective/frac_zero_std": float(zero_std_groups(grouped).float().mean()),
            "policy/entropy": float(-masked_mean(rollout.old_logps, mask)),
            "response/length": float(mask.sum(dim=1).mean()),
            "response/eos_fraction": float(rollout.samples.has_eos.float().mean()),
        }
        metrics.update(self.update(rollout, generator))
        metrics["policy/lr"] = self.scheduler.get_last_lr()[0]  # the lr this step's updates used
        self.scheduler.step()
        metrics["time/step_s"] = time.perf_counter() - t0
        self.step_count += 1
        self.history.append(metrics)
        return (metrics, rollout) if keep_rollout else metrics

    def train(self, steps: int | None = None, *, on_step=None, progress: bool = True) -> list[dict]:
        """Run until `steps` iterations in total (default `config.steps`); returns the history.
        `on_step(step, metrics)` is called after each step (a `plots.LivePlot` fits)."""
        steps = self.config.steps if steps is None else steps
        bar = tqdm(total=steps, initial=self.step_count, desc=self.config.advantage.upper(), disable=not progress)
        while self.step_count < steps:
            metrics = self.step()
            bar.update(1)
            bar.set_postfix({"score": f"{metrics['objective/score']:+.2f}", "kl": f"{metrics['objective/kl']:.2f}"})
            if on_step is not None:
                on_step(self.step_count, metrics)
        bar.close()
        return self.history


def train_grpo(
    policy,
    reference,
    reward_fn,
    tokenizer,
    train_prompts: list[str],
    config: GRPOConfig = GRPOConfig(),
    *,
    setup=None,
    on_step=None,
    progress: bool = True,
) -> GRPOTrainer:
    """Build a GRPOTrainer and run `config.steps` iterations; returns the trainer (its `history`
    holds one metrics dict per step). Notebook: 06_dpo_grpo.ipynb"""
    trainer = GRPOTrainer(policy, reference, reward_fn, tokenizer, train_prompts, config, setup=setup)
    trainer.train(on_step=on_step, progress=progress)
    return trainer
