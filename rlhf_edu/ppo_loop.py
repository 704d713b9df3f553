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

The math lives in `rlhf_edu.ppo`; this module only orchestrates. Deliberate choices (measured in
notebook 04 and the README):
- The default critic is a zero-initialized value head on the policy's last hidden state (OAI 2019):
  one forward and backward pass serves both losses. Measured at the cpu preset on 2 CPU cores (3
  steps each): 18.0 s per step and 3.4 GB peak RSS, against 22.6 s and 4.6 GB for
  `critic="reward_model"`, the separate value network initialized from the reward model (Stiennon et
  al. 2020, N+). Over those 3 steps the separate critic's explained variance was 0.02, 0.12, 0.00 and
  the zero head's 0.00, -0.00, 0.00: neither critic is informative this early, so the cheaper one is
  the default where the budget is a laptop.
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

import copy
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlhf_edu.generation import Samples, SamplingConfig, sample
from rlhf_edu.logprobs import (
    masked_mean,
    masked_sum,
    masked_whiten,
    per_token_logps,
    position_ids_from_mask,
    zero_where_masked,
)
from rlhf_edu.ppo import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    explained_variance,
    missing_eos_penalty,
    per_token_rewards,
)
from rlhf_edu.store import param_sum
from rlhf_edu.training import (
    check_finite,
    clip_and_step,
    freeze_lower_layers,
    prompts_for_step,
    step_generator,
    trim_padding,
    warn_if_first_ratio_off,
)
from rlhf_edu.trunk import FrozenTrunk


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
    """beta of the per-token KL penalty (N+: fixed 0.05; OAI: 0.15 adaptive)."""
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


def value_head(hidden_size: int) -> torch.nn.Linear:
    """The shared critic: a linear head on the policy's last hidden state, initialized to zero
    (OAI `fc_layer(scale=0)`), so every value starts at 0. Notebook: 04_ppo.ipynb"""
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


class ValueModel(torch.nn.Module):
    """The separate critic: a copy of the reward model's backbone and head, read at every response
    position instead of only the last (Stiennon et al. 2020; N+ `critic = from_pretrained(rm)`).

    values(input_ids, attention_mask, P) -> (B, R) fp32, V_t read at the hidden state that predicts
    response token t (the same positions as the policy's logits,
    docs/implementation_details.md#values-and-the-critic).
    Notebook: 04_ppo.ipynb
    """

    def __init__(self, reward_model: torch.nn.Module):
        super().__init__()
        self.backbone = copy.deepcopy(reward_model.backbone)
        self.head = copy.deepcopy(reward_model.head)
        self.register_buffer("gain", reward_model.gain.detach().clone())
        self.register_buffer("bias", reward_model.bias.detach().clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state[:, context_length - 1 : -1]  # (B, R, H)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.gain * self.head(hidden.float()).squeeze(-1) + self.bias  # (B, R)


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


class PPOTrainer:
    """PPO against a learned reward model with a per-token KL penalty to a frozen reference.

    `policy` trains in place; `reference` (the SFT policy) and `reward_model` stay frozen. `step()`
    runs one iteration and returns its metrics as a flat dict; `train()` loops with a tqdm bar, a
    live plot and checkpoints; `save_checkpoint` / `load_checkpoint` resume a run to the same
    result on a CPU. Notebook: 04_ppo.ipynb
    """

    def __init__(
        self,
        policy,
        reference,
        reward_model,
        tokenizer,
        train_prompts: list[str],
        config: PPOConfig = PPOConfig(),
        *,
        eval_prompts: list[str] | None = None,
        eval_sampling: SamplingConfig | None = None,
        setup=None,
    ):
        from rlhf_edu.models import autocast, device_setup, disable_dropout, logps_autocast

        if not train_prompts:
            raise ValueError("PPOTrainer needs at least one training prompt")
        self.policy, self.reference, self.reward_model = policy, reference, reward_model
        self.tokenizer, self.config = tokenizer, config
        self.train_prompts = list(train_prompts)
        self.eval_prompts = list(eval_prompts or [])
        self.eval_sampling = eval_sampling or config.sampling
        self.setup = setup or device_setup()
        self.autocast_ctx = autocast(self.setup)
        self.logps_ctx = logps_autocast(self.setup)  # fp32 under bf16: the ratio and KL need it
        self.ratio_tolerance = self.setup.ratio_tolerance if config.ratio_tolerance is None else config.ratio_tolerance
        self.device = next(policy.parameters()).device
        for model in (policy, reference, reward_model):
            disable_dropout(model)
        for model in (reference, reward_model):
            model.eval()
            model.requires_grad_(False)

        freeze_lower_layers(policy, config.trainable_layers)
        self.trunk = FrozenTrunk(policy, config.trainable_layers, reference)
        self.trunk_gap: float | None = None  # FrozenTrunk.check on the first rollout
        policy.train()
        hidden_size = policy.config.hidden_size
        if config.critic == "shared":
            self.value_head, self.critic = value_head(hidden_size).to(self.device), None
            value_params = list(self.value_head.parameters())
        else:
            self.value_head, self.critic = None, ValueModel(reward_model).to(self.device)
            freeze_lower_layers(self.critic, config.trainable_layers)
            self.critic.train()
            value_params = [p for p in self.critic.parameters() if p.requires_grad]
        self.params = [p for p in policy.parameters() if p.requires_grad] + value_params
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, eps=config.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: max(0.0, 1.0 - s / config.steps),  # linear decay, no warm-up
        )
        self.scaler = torch.amp.GradScaler(self.setup.device, enabled=self.setup.grad_scaler)
        self.kl_controller = (
            AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.kl_target is not None
            else FixedKLController(config.kl_coef)
        )
        self.step_count = 0
        self.history: list[dict] = []

    # ---------------------------------------------------------------- pieces of one iteration

    def prompts_for_step(self, step: int) -> list[str]:
        """The batch of prompts of iteration `step`: a seeded shuffle per pass over the prompts."""
        return prompts_for_step(self.train_prompts, step, self.config.batch_size, self.config.seed)

    def generator_for_step(self, step: int) -> torch.Generator:
        """The random generator of iteration `step` (sampling, then minibatch shuffles)."""
        return step_generator(self.config.seed, step)

    def fingerprint(self) -> list[float]:
        """Sums of the reference's and the reward model's weights: a resumed run must use the same."""
        return [param_sum(m) for m in (self.reference, self.reward_model)]

    def forward(self, input_ids, attention_mask, context_length, trunk=None):
        """New log-probs and values of the policy and critic: -> (logps (B, R), values (B, R)).
        With `trunk` (B, P+R, H), the policy runs only its trainable blocks on it."""
        T = self.config.sampling.temperature
        policy_logps = per_token_logps if trunk is None else partial(self.trunk.logps, trunk=trunk)
        with self.logps_ctx:
            if self.value_head is not None:
                logps, hidden = policy_logps(
                    self.policy,
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    context_length=context_length,
                    temperature=T,
                    return_hidden=True,
                )  # (B, R), (B, R, H)
                with torch.autocast(device_type=hidden.device.type, enabled=False):
                    values = self.value_head(hidden.float()).squeeze(-1)  # (B, R)
            else:
                logps = policy_logps(
                    self.policy,
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    context_length=context_length,
                    temperature=T,
                )  # (B, R)
                values = self.critic(input_ids, attention_mask, context_length)  # (B, R)
        return logps, values.float()

    @torch.no_grad()
    def rollout(self, prompts: list[str], generator: torch.Generator) -> Rollout:
        """Steps 1 to 4: sample, score, per-token rewards, GAE. Returns a Rollout."""
        cfg, step = self.config, self.step_count
        timings = defaultdict(float)
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] += now - clock
            clock = now

        # 1. Sample from the exact policy at temperature T (no top-k, no top-p).
        samples = sample(
            self.policy, self.tokenizer, prompts, cfg.sampling, generator=generator, autocast_ctx=self.autocast_ctx
        )
        lap("generate")
        ids = samples.input_ids.to(self.device)  # (B, P+R)
        mask = samples.attention_mask.to(self.device)  # (B, P+R)
        response_mask = samples.response_mask.to(self.device)  # (B, R)
        P = samples.context_length
        # 2. Old log-probs and values recomputed with the training forward (so the first ratio is 1),
        #    reference log-probs at the same temperature, and the reward model's score.
        #    With frozen lower blocks, their output (the trunk) is computed once and shared.
        if self.trunk.enabled and self.trunk_gap is None:
            with self.logps_ctx:
                rows = slice(0, cfg.micro_batch_size)
                self.trunk_gap = self.trunk.check(self.policy, ids[rows], mask[rows], P, cfg.sampling.temperature)
            lap("trunk")
        old_logps, old_values, ref_logps, rm_scores, trunks = [], [], [], [], []
        for start in range(0, len(prompts), cfg.micro_batch_size):
            rows = slice(start, start + cfg.micro_batch_size)
            trunk = None
            if self.trunk.enabled:
                with self.logps_ctx:
                    trunk = self.trunk.hidden(self.policy, ids[rows], mask[rows])  # (b, P+R, H)
                trunks.append(trunk)
                lap("trunk")
            logps, values = self.forward(ids[rows], mask[rows], P, trunk)
            old_logps.append(logps)
            old_values.append(values)
            lap("policy")
            with self.logps_ctx:
                if trunk is not None and self.trunk.shared_with_reference:
                    ref_logps.append(
                        self.trunk.logps(self.reference, trunk, ids[rows], mask[rows], P, cfg.sampling.temperature)
                    )
                else:
                    ref_logps.append(
                        per_token_logps(self.reference, ids[rows], mask[rows], P, cfg.sampling.temperature)
                    )
            lap("reference")
            with self.autocast_ctx:
                rm_scores.append(self.reward_model(ids[rows], mask[rows]).float())
                lap("reward")
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
                rm_scores, samples.has_eos.to(self.device), cfg.missing_eos_penalty, cfg.missing_eos_mode
            )  # (B,)
        rewards, non_score_reward = per_token_rewards(
            scores, old_logps, ref_logps, response_mask, self.kl_controller.kl_coef
        )  # (B, R), (B, R)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, response_mask, shift_mean=False)  # (B, R), 0 on padding
        # 4. Advantages by GAE (returns before whitening), then whitened over the batch's tokens.
        advantages, returns = compute_gae(rewards, old_values, response_mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, response_mask)  # (B, R), 0 on padding
        check_finite("the advantages", advantages, step)
        return Rollout(
            prompts,
            samples,
            old_logps,
            ref_logps,
            old_values,
            rm_scores,
            scores,
            rewards,
            non_score_reward,
            advantages,
            returns,
            response_mask,
            timings=dict(timings),
            trunk=torch.cat(trunks) if trunks else None,
        )

    def update(self, rollout: Rollout, generator: torch.Generator) -> dict[str, float]:
        """Steps 5 and 6: clipped losses over epochs x minibatches, with gradient accumulation.

        Each micro-batch's token-mean loss is weighted by its share of the minibatch's tokens, so
        accumulating micro-batches gives the same gradient as one pass over the minibatch
        (docs/implementation_details.md#ppo-loop). Returns the means of the loss statistics, plus
        the health check on the first minibatch.
        """
        cfg, step = self.config, self.step_count
        samples = rollout.samples
        ids = samples.input_ids.to(self.device)  # (B, P+R)
        mask = samples.attention_mask.to(self.device)  # (B, P+R)
        P = samples.context_length
        B = ids.shape[0]
        stats: dict[str, list[float]] = defaultdict(list)
        first_ratio_dev, first_approxkl, first_dev_sum, first_tokens = 0.0, 0.0, 0.0, 0.0
        self.policy.train()
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=generator)  # (B,)
            for mb_start in range(0, B, cfg.mini_batch_size):
                minibatch = order[mb_start : mb_start + cfg.mini_batch_size].to(self.device)
                mb_tokens = rollout.response_mask[minibatch].sum()
                for mc_start in range(0, len(minibatch), cfg.micro_batch_size):
                    rows = minibatch[mc_start : mc_start + cfg.micro_batch_size]  # (b,)
                    input_ids, attention_mask, ctx, R = trim_padding(ids, mask, P, rows)
                    r_mask = rollout.response_mask[rows, :R]  # (b, R)
                    trunk = None if rollout.trunk is None else rollout.trunk[rows, P - ctx : P + R]
                    logps, values = self.forward(input_ids, attention_mask, ctx, trunk)  # (b, R), (b, R)
                    pg_loss, pg_stats = clipped_policy_loss(
                        logps, rollout.old_logps[rows, :R], rollout.advantages[rows, :R], r_mask, cfg.clip_range
                    )
                    vf_loss, vf_stats = clipped_value_loss(
                        values, rollout.old_values[rows, :R], rollout.returns[rows, :R], r_mask, cfg.clip_range_value
                    )
                    loss = pg_loss + cfg.vf_coef * vf_loss
                    check_finite("the PPO loss (policy/loss + vf_coef * val/loss)", loss.detach(), step)
                    weight = r_mask.sum() / mb_tokens
                    self.scaler.scale(loss * weight).backward()
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
                grad_norm = clip_and_step(self.optimizer, self.scaler, self.params, cfg.max_grad_norm, step, "PPO")
                stats["policy/grad_norm"].append(float(grad_norm))  # one per optimizer step
        out = {k: (max(v) if k == "policy/ratio_max" else sum(v) / len(v)) for k, v in stats.items()}
        warn_if_first_ratio_off(first_ratio_dev, self.ratio_tolerance, step)
        return {
            **out,
            "health/first_ratio_dev": first_ratio_dev,
            "health/first_approxkl": first_approxkl,
            "health/first_ratio_dev_mean": first_dev_sum / max(first_tokens, 1.0),
        }

    def evaluate(self) -> dict[str, float]:
        """Gold score, RM score, KL to the reference and length on the fixed eval prompts (the
        first `config.eval_subset` of them)."""
        rows = self.evaluate_rows(prompts=self.eval_prompts[: self.config.eval_subset])
        return {
            "eval/gold": sum(r["gold"] for r in rows) / len(rows),
            "eval/rm": sum(r["rm"] for r in rows) / len(rows),
            "eval/kl": sum(r["kl"] for r in rows) / len(rows),
            "eval/length": sum(r["tokens"] for r in rows) / len(rows),
        }

    def evaluate_rows(self, model=None, prompts: list[str] | None = None) -> list[dict]:
        """Rows {prompt, response, gold, rm, kl, ...} of `model` (default: the policy) on `prompts`
        (default: all eval prompts), drawn with the eval seed so every checkpoint answers with the
        same randomness."""
        from rlhf_edu.metrics import evaluate_policy

        prompts = self.eval_prompts if prompts is None else prompts
        if not prompts:
            raise ValueError("PPOTrainer was built without eval_prompts")
        model = model or self.policy
        was_training = model.training
        model.eval()
        rows = evaluate_policy(
            model,
            self.tokenizer,
            prompts,
            self.eval_sampling,
            seed=self.config.seed,
            autocast_ctx=self.autocast_ctx,
            reference=self.reference,
            reward_model=self.reward_model,
        )
        model.train(was_training)
        return rows

    # ---------------------------------------------------------------- one iteration and the loop

    def step(self, keep_rollout: bool = False):
        """One PPO iteration: rollout, update, KL-coefficient update. Returns the metrics dict
        (and the Rollout with keep_rollout=True)."""
        cfg, step = self.config, self.step_count
        t0 = time.perf_counter()
        generator = self.generator_for_step(step)
        rollout = self.rollout(self.prompts_for_step(step), generator)
        t_rollout = time.perf_counter() - t0
        mask = rollout.response_mask.to(rollout.old_logps.dtype)  # (B, R)
        kl = masked_sum(rollout.old_logps - rollout.ref_logps, mask, dim=1)  # (B,) nats per response
        metrics = {
            "step": step + 1,
            "objective/score": float(rollout.rm_scores.mean()),
            "objective/score_penalized": float(rollout.scores.mean()),
            "objective/kl": float(kl.mean()),
            "objective/non_score_reward": float(masked_sum(rollout.non_score_reward, mask, dim=1).mean()),
            "objective/kl_coef": self.kl_controller.kl_coef,
            "policy/entropy": float(-masked_mean(rollout.old_logps, mask)),
            "val/explained_variance": float(explained_variance(rollout.old_values, rollout.returns, mask)),
            "response/length": float(mask.sum(dim=1).mean()),
            "response/eos_fraction": float(rollout.samples.has_eos.float().mean()),
            "ref/perplexity": float(torch.exp(-masked_mean(rollout.ref_logps, mask))),
        }
        metrics["objective/rlhf_reward"] = metrics["objective/score_penalized"] + metrics["objective/non_score_reward"]
        metrics.update(self.update(rollout, generator))
        metrics["policy/lr"] = self.scheduler.get_last_lr()[0]  # the lr this step's updates used
        self.scheduler.step()
        self.kl_controller.update(metrics["objective/kl"], cfg.batch_size)
        if metrics["objective/kl"] < -1.0:
            warnings.warn(
                f"PPO step {step}: objective/kl = {metrics['objective/kl']:.2f} nats is negative: the "
                f"samples do not come from the policy that is scored (a logits processor, top-k, or a "
                f"temperature mismatch between sampling and log-probs?)",
                stacklevel=2,
            )
        metrics["time/rollout_s"] = t_rollout
        metrics["time/step_s"] = time.perf_counter() - t0
        metrics.update({f"time/{name}_s": seconds for name, seconds in rollout.timings.items()})
        metrics["time/update_s"] = metrics["time/step_s"] - t_rollout
        if self.trunk_gap is not None:
            metrics["health/trunk_gap"] = self.trunk_gap
        metrics["time/tokens_per_s"] = float(mask.sum()) / max(rollout.timings.get("generate", 0.0), 1e-9)
        self.step_count += 1
        if self.eval_prompts and (self.step_count % cfg.eval_every == 0 or self.step_count == cfg.steps):
            metrics.update(self.evaluate())
        self.history.append(metrics)
        return (metrics, rollout) if keep_rollout else metrics

    def train(
        self,
        steps: int | None = None,
        *,
        live_plot=None,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
    ) -> list[dict]:
        """Run until `steps` iterations in total (default `config.steps`); returns the history.

        With `checkpoint_dir`, a checkpoint is written every `checkpoint_every` steps and at the end.
        """
        steps = self.config.steps if steps is None else steps
        if live_plot is not None:  # a resumed run shows its past too
            for metrics in self.history:
                live_plot.update(metrics["step"], metrics)
        bar = tqdm(total=steps, initial=self.step_count, desc="PPO", disable=not progress)
        while self.step_count < steps:
            metrics = self.step()
            bar.update(1)
            bar.set_postfix({"score": f"{metrics['objective/score']:+.2f}", "kl": f"{metrics['objective/kl']:.2f}"})
            if live_plot is not None:
                live_plot.update(self.step_count, metrics, force=self.step_count == steps)
            if checkpoint_dir is not None and (
                self.step_count == steps or (checkpoint_every and self.step_count % checkpoint_every == 0)
            ):
                self.save_checkpoint(checkpoint_dir)
        bar.close()
        return self.history

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, out_dir: str | Path) -> Path:
        """The policy (save_pretrained, safetensors), the critic (safetensors), and the optimizer,
        scheduler, scaler and trainer state. Written to a temporary folder and swapped in with two
        renames (`checkpoints.save_training_checkpoint`), so a run killed at any moment leaves one complete
        checkpoint."""
        from safetensors.torch import save_file

        from rlhf_edu.checkpoints import save_training_checkpoint

        def write_weights(folder: Path) -> None:
            self.policy.save_pretrained(folder / "policy", safe_serialization=True)
            self.tokenizer.save_pretrained(folder / "policy")
            critic = self.value_head if self.value_head is not None else self.critic
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in critic.state_dict().items()}, str(folder / CRITIC_FILE)
            )

        return save_training_checkpoint(
            out_dir,
            write_weights,
            self.optimizer,
            self.scheduler,
            self.scaler,
            {
                "step": self.step_count,
                "kl_coef": self.kl_controller.kl_coef,
                "config": _config_dict(self.config),
                "fingerprint": self.fingerprint(),
                "history": self.history,
            },
        )

    def load_checkpoint(self, out_dir: str | Path) -> None:
        """Restore what `save_checkpoint` wrote into this trainer (built with the same config)."""
        import json

        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        from rlhf_edu.checkpoints import find_checkpoint

        out_dir = Path(out_dir)
        if find_checkpoint(out_dir) is None:
            raise FileNotFoundError(f"no PPO checkpoint in {out_dir} (missing trainer_state.json)")
        state_path = out_dir / "trainer_state.json"
        state = json.loads(state_path.read_text())
        if state["config"] != _config_dict(self.config):
            raise ValueError(
                f"the checkpoint in {out_dir} was written with another PPOConfig; build the trainer "
                f"with the same config to resume it"
            )
        if any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(state["fingerprint"], self.fingerprint())):
            raise ValueError(
                f"the checkpoint in {out_dir} was trained against another reference policy or reward "
                f"model; delete it to start over"
            )
        saved = AutoModelForCausalLM.from_pretrained(out_dir / "policy", dtype=torch.float32)
        self.policy.load_state_dict(saved.state_dict())
        critic = self.value_head if self.value_head is not None else self.critic
        critic.load_state_dict(load_file(str(out_dir / CRITIC_FILE)))
        opt = torch.load(out_dir / "optimizer.pt", weights_only=True, map_location=self.device)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        self.scaler.load_state_dict(opt["scaler"])
        self.kl_controller.kl_coef = state["kl_coef"]
        self.step_count = state["step"]
        self.history = state["history"]


CRITIC_FILE = "critic.safetensors"


def _config_dict(config: PPOConfig) -> dict:
    import json

    return json.loads(json.dumps(asdict(config)))


def train_ppo(
    policy,
    reference,
    reward_model,
    tokenizer,
    train_prompts: list[str],
    config: PPOConfig = PPOConfig(),
    **kwargs,
) -> PPOTrainer:
    """Build a PPOTrainer and run `config.steps` iterations; returns the trainer (its `history`
    holds one metrics dict per step). Keyword arguments go to PPOTrainer (`eval_prompts`,
    `eval_sampling`, `setup`) or to `PPOTrainer.train` (`live_plot`, `progress`, `checkpoint_dir`,
    `checkpoint_every`). Notebook: 04_ppo.ipynb
    """
    train_keys = {"live_plot", "progress", "checkpoint_dir", "checkpoint_every"}
    train_kwargs = {k: v for k, v in kwargs.items() if k in train_keys}
    trainer = PPOTrainer(
        policy,
        reference,
        reward_model,
        tokenizer,
        train_prompts,
        config,
        **{k: v for k, v in kwargs.items() if k not in train_keys},
    )
    trainer.train(**train_kwargs)
    return trainer
