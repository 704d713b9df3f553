"""The GRPO trainer: the state one run carries between iterations (models, optimizer, scheduler,
history), one iteration (`step`: `grpo_loop.rollout` then `grpo_loop.update`), the loop with its
progress bar, live plot and checkpoints, and `train_grpo`. Notebook: 06_dpo_grpo.ipynb
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch

from rlhf_edu import grpo_loop
from rlhf_edu.checkpoints import (
    load_causal_lm_weights,
    resume_training,
    rows_fingerprint,
    save_checkpoint,
    save_training_checkpoint,
)
from rlhf_edu.grpo import zero_std_groups
from rlhf_edu.grpo_loop import GroupRollout, GRPOConfig
from rlhf_edu.logprobs import masked_mean, masked_sum
from rlhf_edu.store import jsonable, param_sum
from rlhf_edu.training import (
    freeze_lower_layers,
    linear_schedule,
    prompts_for_step,
    run_iterations,
    step_generator,
    step_timings,
)


class GRPOTrainer:
    """GRPO / Dr GRPO / RLOO against any `reward_fn(prompts, texts, eos_flags) -> (B,)` scores, or a
    reward model through `reward_model_scorer` (scored on the sampled tokens, as in PPO).

    `policy` trains in place; `reference` (the SFT policy) stays frozen. `step()` runs one
    iteration and returns a flat metrics dict; `train()` loops, with checkpoints in `checkpoint_dir`
    that a later call resumes from. Notebook: 06_dpo_grpo.ipynb
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

    # ---------------------------------------------------------------- pieces of one iteration

    def prompts_for_step(self, step: int) -> list[str]:
        """The G prompts of iteration `step`: a seeded shuffle per pass over the prompts."""
        return prompts_for_step(self.train_prompts, step, self.config.prompts_per_step, self.config.seed)

    def forward(self, model, input_ids, attention_mask, context_length) -> torch.Tensor:
        """Per-token log-probs of `model` at the sampling temperature (`grpo_loop.forward`)."""
        return grpo_loop.forward(self, model, input_ids, attention_mask, context_length)

    def rollout(self, prompts: list[str], generator: torch.Generator) -> GroupRollout:
        """Steps 1 to 3 (`grpo_loop.rollout`): sample K per prompt, score, group advantages."""
        return grpo_loop.rollout(self, prompts, generator)

    def update(self, rollout: GroupRollout, generator: torch.Generator) -> dict[str, float]:
        """Steps 4 and 5 (`grpo_loop.update`): the aggregated clipped loss, epochs x minibatches."""
        return grpo_loop.update(self, rollout, generator)

    # ---------------------------------------------------------------- one iteration and the loop

    def step(self, keep_rollout: bool = False):
        """One iteration: rollout, update. Returns the metrics dict (and the rollout with
        keep_rollout=True). Keys as PPOTrainer's where they mean the same (`objective/score`,
        `objective/kl`, `policy/entropy`, `policy/clipfrac`, `policy/approxkl`, `response/length`,
        `time/<part>_s`, ...), plus `objective/frac_zero_std`, the share of groups whose scores are
        all equal: their score advantage is 0, only the KL term moves them."""
        cfg, step = self.config, self.step_count
        t0 = time.perf_counter()
        generator = step_generator(cfg.seed, step)
        rollout = self.rollout(self.prompts_for_step(step), generator)
        rollout_end = time.perf_counter()
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
        metrics.update(step_timings(t0, rollout_end, rollout.timings))
        self.step_count += 1
        self.history.append(metrics)
        return (metrics, rollout) if keep_rollout else metrics

    def train(
        self,
        steps: int | None = None,
        *,
        on_step=None,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
    ) -> list[dict]:
        """Run until `steps` iterations in total (default `config.steps`); returns the history.
        `on_step(step, metrics)` is called after each step (a `plots.LivePlot` fits).

        With `checkpoint_dir` (a new or empty folder, or a checkpoint of this run), the policy,
        optimizer and run state are saved there every `checkpoint_every` steps and at the end; a
        fresh trainer that calls `train` with the same folder, config, prompts and reference (after
        an interrupt, or in a restarted kernel) resumes from the last checkpoint and ends with the
        same weights and history as an uninterrupted run on a CPU.
        """
        steps = self.config.steps if steps is None else steps
        if checkpoint_dir is not None and self.step_count == 0:
            self.step_count, self.history = resume_training(
                checkpoint_dir,
                self._run(),
                self.optimizer,
                self.scheduler,
                self.scaler,
                partial(load_causal_lm_weights, self.policy),
                on_step,
            )
        return run_iterations(
            self,
            steps,
            desc=self.config.advantage.upper(),
            on_step=on_step,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
        )

    # ---------------------------------------------------------------- checkpoints

    def _run(self) -> dict:
        """What a checkpoint must match to be resumed: the stage, the config, and a digest of the
        prompts and the reference's weights."""
        digest = rows_fingerprint([{"prompts": self.train_prompts, "reference": f"{param_sum(self.reference):.9g}"}])
        return {"stage": "GRPO", "config": jsonable(self.config), "data": digest}

    def save_checkpoint(self, out_dir: str | Path) -> Path:
        """The policy (save_pretrained, safetensors), the optimizer, scheduler and scaler, and the
        run state, swapped in whole (`checkpoints.save_training_checkpoint`)."""
        return save_training_checkpoint(
            out_dir,
            lambda folder: save_checkpoint(self.policy, self.tokenizer, folder),
            self.optimizer,
            self.scheduler,
            self.scaler,
            {**self._run(), "step": self.step_count, "history": self.history},
        )


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
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> GRPOTrainer:
    """Build a GRPOTrainer and run `config.steps` iterations; returns the trainer (its `history`
    holds one metrics dict per step). With `checkpoint_dir`, a call after an interrupt resumes the
    run (`GRPOTrainer.train`). Notebook: 06_dpo_grpo.ipynb"""
    trainer = GRPOTrainer(policy, reference, reward_fn, tokenizer, train_prompts, config, setup=setup)
    trainer.train(on_step=on_step, progress=progress, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
    return trainer
