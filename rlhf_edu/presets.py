"""Presets: the budgets of every notebook in one module.

`smoke` runs every code path with the real model at tiny budgets (CI, nbval); `cpu` fits a 2-core
laptop (every notebook in 10 minutes or less); `gpu` fits a Colab T4. `RLHF_EDU_PRESET` picks one;
otherwise a visible CUDA device means `gpu` and none means `cpu`.

Each preset is built from the stage config dataclasses themselves (`SamplingConfig`, `SFTConfig`,
`RewardConfig`, `PPOConfig`),
so a notebook can print the preset and a learner can change one field with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from rlhf_edu.budgets import FinalEvalBudget, TradeoffConfig
from rlhf_edu.dpo import DPOConfig
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.grpo_loop import GRPOConfig
from rlhf_edu.ppo_loop import PPOConfig
from rlhf_edu.reward import RewardConfig
from rlhf_edu.sft import SFTConfig

PRESET_ENV = "RLHF_EDU_PRESET"


@dataclass(frozen=True)
class Preset:
    """The budgets one run of the course uses."""

    name: str
    """`smoke`, `cpu` or `gpu`."""
    description: str
    """One line a notebook prints."""
    tradeoffs: TradeoffConfig
    """The budgets of notebook 05 (the kl_coef sweep, best-of-n, over-optimization, online refresh)."""
    final: FinalEvalBudget
    """The budgets of notebooks 06 and 07 (DPO, GRPO, the AI judge, best-of-n, the A/B widget)."""
    model_name: str = "SmolLM2-135M-Instruct"
    """The policy's starting point: the offline default, or any hub id where the hub is reachable."""
    n_eval: int = 64
    """How many eval concepts each policy answers when the notebooks compare gold scores."""
    eval_sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How evaluation samples are drawn (the same in every notebook, so scores compare)."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning (notebook 01)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward-model training (notebook 03)."""
    reward_pairs: int = 256
    """Labeled pairs the reward model trains on (the learner's first, then the annotator's)."""
    reward_heldout: int = 400
    """Held-out pairs (eval concepts) for the final accuracy; all of them at 400."""
    reward_probe: int = 64
    """Held-out pairs scored during training, for the accuracy-vs-labels curve."""
    reward_norm_samples: int = 64
    """SFT samples whose scores set the reward model's gain and bias (mean 0, std 1)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO against the reward model (notebook 04). Its rollouts sample at T = 1, the policy's own
    distribution, so that what the reward model prefers is explored; evaluation stays at
    `eval_sampling` like every other notebook's (`rlhf_edu.course.yardstick`)."""
    n_label_pairs: int = 12
    """Pairs the learner labels by hand in notebook 02."""
    n_label_repeats: int = 3
    """Of those, how many come back at the end of the queue (self-consistency)."""
    seed: int = 0
    """The one seed every notebook starts from."""
    cell_timeout: int = 1800
    """Seconds one notebook cell may run in `make course` and `make test` before it counts as hung.
    Sized to a few times the longest cell of the preset, so a slow machine passes and a hang still
    ends the run (a lost reply is caught sooner, see `rlhf_edu.course.kernel_watch`)."""


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        description="CI and nbval: every code path with the real model, tiny budgets",
        tradeoffs=TradeoffConfig(
            kl_coefs=(0.01, 0.1, 0.5),
            ppo=PPOConfig(
                steps=3,
                batch_size=4,
                mini_batch_size=2,
                micro_batch_size=2,
                ppo_epochs=1,
                lr=1e-4,
                sampling=SamplingConfig(16, 0.7, 4),
                trainable_layers=2,
            ),
            sweep_steps=2,
            eval_every=1,
            n_eval=4,
            pool_size=4,
            bon_ns=(1, 2, 4),
            weak_pairs=8,
            weak_reward=RewardConfig(lr=3e-5, batch_size=4, max_steps=2),
            heldout_pairs=4,
            overopt_kl_coef=0.0,
            overopt_steps=2,
            overopt_lr=5e-4,
            overopt_eval_every=1,
            refresh_kl_coef=0.1,
            refresh_pairs=8,
            refresh_old_pairs=4,
            refresh_reward=RewardConfig(lr=3e-5, batch_size=4, max_steps=2),
            refresh_steps=1,
            mix_weights=(0.0, 0.5, 1.0),
            mix_n=4,
        ),
        final=FinalEvalBudget(
            dpo=DPOConfig(beta=0.1, lr=5e-5, batch_size=2, max_steps=2, trainable_layers=2),
            dpo_heldout=4,
            grpo=GRPOConfig(
                steps=2,
                prompts_per_step=2,
                group_size=2,
                mini_batch_size=4,
                micro_batch_size=4,
                lr=1e-4,
                sampling=SamplingConfig(16, 1.0, 4),
                trainable_layers=2,
            ),
            judge_pairs=4,
            judge_reward=RewardConfig(lr=3e-5, batch_size=2, max_steps=1, trainable_layers=1),
            judge_heldout=4,
            judge_batch_size=4,
            bon_n=2,
            ab_items=3,
            notes="every code path with the real model; numbers mean nothing",
        ),
        cell_timeout=600,  # a whole smoke notebook takes a minute or two
        n_eval=4,
        eval_sampling=SamplingConfig(max_new_tokens=16, temperature=0.7, batch_size=4),
        sft=SFTConfig(max_steps=2, batch_size=4, eval_every=2, n_heldout=4, lr=3e-5),
        n_label_pairs=4,
        n_label_repeats=1,
        reward=RewardConfig(lr=3e-5, batch_size=4, max_steps=2, eval_every=2),
        reward_pairs=8,
        reward_heldout=8,
        reward_probe=4,
        reward_norm_samples=4,
        ppo=PPOConfig(
            steps=2,
            batch_size=4,
            mini_batch_size=2,
            micro_batch_size=2,
            ppo_epochs=1,
            lr=1e-5,
            sampling=SamplingConfig(16, 1.0, 4),
            eval_every=2,
            trainable_layers=2,
        ),
    ),
    "cpu": Preset(
        name="cpu",
        description="a 2-core laptop: every notebook in 10 minutes or less",
        tradeoffs=TradeoffConfig(
            kl_coefs=(0.01, 0.1, 0.5),
            ppo=PPOConfig(
                steps=8,
                batch_size=16,
                mini_batch_size=8,
                micro_batch_size=8,
                ppo_epochs=2,
                lr=1e-4,
                sampling=SamplingConfig(64, 0.7, 16),
                trainable_layers=8,
            ),
            sweep_steps=6,
            eval_every=3,
            n_eval=28,
            pool_size=16,
            bon_ns=(1, 2, 4, 8, 16),
            weak_pairs=48,
            weak_reward=RewardConfig(lr=1e-4, batch_size=8, warmup_steps=1, micro_batch_size=2),
            heldout_pairs=400,  # notebook 03's: on 32 pairs one accuracy's standard error is 8 points
            overopt_kl_coef=0.0,
            overopt_steps=6,
            overopt_lr=2e-4,
            overopt_eval_every=2,
            refresh_kl_coef=0.1,
            refresh_pairs=32,
            refresh_old_pairs=16,
            refresh_reward=RewardConfig(lr=5e-5, batch_size=8, micro_batch_size=2),
            refresh_steps=2,
            mix_weights=(0.0, 0.25, 0.5, 0.75, 1.0),
            mix_n=16,
        ),
        final=FinalEvalBudget(
            # lr 2e-4 on the top 8 blocks: at a few dozen steps the literature's 5e-7 to 1e-6
            # (batch 64, thousands of steps) would not move the policy. 40 steps (320 pairs) gained more
            # gold than 28; lr 1e-4, lr 3e-4, beta 0.05 or 0.2, or only the pairs sampled at T <= 1 gained
            # less (bench/stage_trials.py; the table is in docs/results.md).
            dpo=DPOConfig(beta=0.1, lr=2e-4, batch_size=8, max_steps=40, warmup_steps=2, trainable_layers=8),
            dpo_heldout=64,
            # 8 prompts x 4 answers a step in minibatches of 8: 32 optimizer steps in all, at half PPO's
            # learning rate. 4 prompts a step in minibatches of 4 at PPO's 2e-4 moved three times as far
            # from SFT for less gold: it spent its KL on the reward model's errors.
            grpo=GRPOConfig(
                steps=8,
                prompts_per_step=8,
                group_size=4,
                mini_batch_size=8,
                micro_batch_size=8,
                epochs=1,
                lr=1e-4,
                kl_coef=0.1,  # PPO's (notebook 04), so that the two pay the same for each nat of KL
                sampling=SamplingConfig(64, 1.0, 32),
                trainable_layers=8,
            ),
            judge_pairs=48,
            judge_reward=RewardConfig(
                lr=1e-4, batch_size=8, max_steps=10, warmup_steps=1, trainable_layers=4, micro_batch_size=2
            ),
            judge_heldout=48,
            judge_batch_size=16,
            bon_n=4,
            ab_items=12,
            notes="a 2-core laptop; 07 reuses the eval rows 06 cached",
        ),
        cell_timeout=1800,  # 03's reward model, 04's PPO, 05's sweep: several minutes a cell
        n_eval=128,
        # 32 prompts a decoding pass: on 2 cores one pass of 32 takes far less time than two of 16.
        eval_sampling=SamplingConfig(max_new_tokens=64, temperature=0.7, batch_size=32),
        # In parts of 2 demonstrations (gradients add up to the batch's): a lower peak memory for a little time.
        sft=SFTConfig(max_steps=48, batch_size=8, eval_every=16, n_heldout=32, lr=3e-5, micro_batch_size=2),
        # lr 3e-4: at 1e-4 the 48 steps learn form only and stay at chance on the pairs the preference
        # qualities decide (bench/reward_model_sweep.py, docs/results.md).
        # In parts of 2 pairs (gradients add up to the batch's): a lower peak memory for a little time.
        reward=RewardConfig(lr=3e-4, batch_size=8, eval_every=12, warmup_steps=2, micro_batch_size=2),
        reward_pairs=384,
        reward_heldout=400,
        reward_probe=64,
        reward_norm_samples=64,
        # 32 prompts a step in minibatches of 16, 2 epochs, lr 2e-4, kl_coef 0.1: against the learned
        # reward model, more gold at the same KL than 16 prompts, minibatches of 8, 4 epochs, lr 1e-4
        # and kl_coef 0.05 (bench/ppo_seeds.py; the figures are in docs/results.md): larger
        # minibatches spend the KL on what the reward model pays for, not on noise.
        ppo=PPOConfig(
            steps=14,
            batch_size=32,
            mini_batch_size=16,
            micro_batch_size=8,
            ppo_epochs=2,
            lr=2e-4,
            kl_coef=0.1,
            sampling=SamplingConfig(64, 1.0, 32),
            eval_every=7,
            eval_subset=16,
            trainable_layers=8,
        ),
    ),
    "gpu": Preset(
        name="gpu",
        description="a Colab T4 (16 GB): larger batches and more steps",
        tradeoffs=TradeoffConfig(
            kl_coefs=(0.01, 0.05, 0.2, 0.5),
            ppo=PPOConfig(
                steps=20,
                batch_size=64,
                mini_batch_size=16,
                micro_batch_size=16,
                ppo_epochs=2,
                lr=2e-5,
                sampling=SamplingConfig(64, 0.7, 64),
            ),
            sweep_steps=16,
            eval_every=4,
            n_eval=64,
            pool_size=32,
            bon_ns=(1, 2, 4, 8, 16, 32),
            weak_pairs=64,
            weak_reward=RewardConfig(lr=2e-5, batch_size=16),
            heldout_pairs=128,
            overopt_kl_coef=0.0,
            overopt_steps=16,
            overopt_lr=5e-5,
            overopt_eval_every=4,
            refresh_kl_coef=0.05,
            refresh_pairs=128,
            refresh_old_pairs=128,
            refresh_reward=RewardConfig(lr=1e-5, batch_size=16),
            refresh_steps=4,
            mix_weights=(0.0, 0.25, 0.5, 0.75, 1.0),
            mix_n=32,
        ),
        final=FinalEvalBudget(
            dpo=DPOConfig(beta=0.1, lr=2e-5, batch_size=16, max_steps=96, warmup_steps=8),
            dpo_heldout=256,
            grpo=GRPOConfig(
                steps=24,
                prompts_per_step=8,
                group_size=8,
                mini_batch_size=16,
                micro_batch_size=16,
                epochs=1,
                lr=5e-5,
                kl_coef=0.05,
                sampling=SamplingConfig(64, 1.0, 64),
            ),
            judge_pairs=256,
            judge_reward=RewardConfig(lr=2e-5, batch_size=16, max_steps=16, warmup_steps=2),
            judge_heldout=256,
            judge_batch_size=32,
            bon_n=16,
            ab_items=16,
            notes="a Colab T4: every notebook in 10 minutes or less",
        ),
        cell_timeout=1800,  # the notebooks aim at 10 minutes each on a T4
        n_eval=128,
        eval_sampling=SamplingConfig(max_new_tokens=64, temperature=0.7, batch_size=64),
        sft=SFTConfig(max_steps=160, batch_size=16, eval_every=20, n_heldout=32, lr=3e-5),
        reward=RewardConfig(lr=2e-5, batch_size=16, eval_every=20, warmup_steps=4),
        reward_pairs=100_000,
        reward_heldout=400,
        reward_probe=128,
        reward_norm_samples=256,
        ppo=PPOConfig(
            steps=48,
            batch_size=64,
            mini_batch_size=16,
            micro_batch_size=16,
            ppo_epochs=4,
            lr=2e-5,
            sampling=SamplingConfig(64, 1.0, 64),
            eval_every=8,
            eval_subset=64,
        ),
    ),
}


def default_preset_name(cuda_available: bool | None = None) -> str:
    """`RLHF_EDU_PRESET` if set, else `gpu` with CUDA and `cpu` without."""
    name = os.environ.get(PRESET_ENV, "").strip().lower()
    if name:
        if name not in PRESETS:
            raise ValueError(f"{PRESET_ENV}={name!r} is not a preset; choose one of {sorted(PRESETS)}")
        return name
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return "gpu" if cuda_available else "cpu"


def config_table(config, title: str | None = None, indent: str = "") -> str:
    """A config dataclass (or a dict of settings) as one `field  value` line per field, nested
    configs indented below their field: easier to read than the one-line repr.

    >>> print(config_table({"temperature": 0.02, "seed": 0}, "annotator"))
    annotator
      temperature  0.02
      seed         0
    """
    items = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    title = title or type(config).__name__
    width = max((len(k) for k in items), default=0)
    lines = [indent + title]
    for key, value in items.items():
        if isinstance(value, dict):
            lines.append(config_table(value, key, indent + "  "))
        else:
            lines.append(f"{indent}  {key:<{width}}  {value}")
    return "\n".join(lines)


def get_preset(name: str | None = None) -> Preset:
    """The preset called `name`, or the one `default_preset_name()` picks."""
    name = default_preset_name() if name is None else name.strip().lower()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
