"""The budget dataclasses of notebooks 05 to 07; their values, one per preset, are fields of
`presets.Preset` (`preset.tradeoffs`, `preset.final`), beside every other notebook's budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rlhf_edu.dpo import DPOConfig
from rlhf_edu.grpo_loop import GRPOConfig
from rlhf_edu.ppo_loop import PPOConfig
from rlhf_edu.reward import RewardConfig


@dataclass(frozen=True)
class TradeoffConfig:
    """The budgets of notebook 05 (`preset.tradeoffs`)."""

    kl_coefs: tuple[float, ...]
    """kl_coef (beta) of each PPO run of the sweep."""
    ppo: PPOConfig
    """Every PPO run's settings except kl_coef; its `steps` must be sweep_steps + refresh_steps (the
    learning rate decays over both, so the refresh continues a sweep run on its own schedule)."""
    sweep_steps: int
    """PPO steps of each sweep run."""
    eval_every: int
    """Evaluate the policy every this many steps (and at step 0 and the last step)."""
    n_eval: int
    """The fixed eval prompts (the first n eval concepts) every policy and best-of-n answers."""
    pool_size: int
    """Samples per eval prompt in the best-of-n pool (N >= every n)."""
    bon_ns: tuple[int, ...]
    """The n of the best-of-n curve."""
    weak_pairs: int
    """Labeled pairs the weak proxy trains on (notebook 03's reward model used preset.reward_pairs)."""
    weak_reward: RewardConfig
    """Training of the weak proxy."""
    heldout_pairs: int
    """Held-out pairs (eval concepts) on which the weak and the main proxy's accuracy is measured."""
    overopt_kl_coef: float
    """kl_coef of the PPO run against the weak proxy (0: nothing holds the policy back)."""
    overopt_steps: int
    """PPO steps against the weak proxy."""
    overopt_lr: float
    """Learning rate of that run."""
    overopt_eval_every: int
    """Evaluate that run every this many steps (finer than the sweep: its peak is the point)."""
    refresh_kl_coef: float
    """Which sweep run (its kl_coef) the online refresh continues."""
    refresh_pairs: int
    """Fresh pairs sampled from that run's policy (train prompts) and labeled by the annotator."""
    refresh_old_pairs: int
    """Pairs of notebook 03's training data mixed into the fine-tuning (against forgetting)."""
    refresh_reward: RewardConfig
    """Fine-tuning of the refreshed reward model."""
    refresh_steps: int
    """PPO steps each arm (stale, refreshed) continues for."""
    mix_weights: tuple[float, ...]
    """w of the scalarized reward w * brevity + (1 - w) * completeness (section 5)."""
    mix_n: int
    """n of the best-of-n selection with that scalarized reward."""
    seed: int = 0
    """Pool sampling, pair sampling, weak-proxy initialization."""

    def __post_init__(self):
        if self.ppo.steps != self.sweep_steps + self.refresh_steps:
            raise ValueError(
                f"ppo.steps ({self.ppo.steps}) must be sweep_steps + refresh_steps "
                f"({self.sweep_steps} + {self.refresh_steps})"
            )
        if self.refresh_kl_coef not in self.kl_coefs:
            raise ValueError(f"refresh_kl_coef {self.refresh_kl_coef} is not one of the sweep's {self.kl_coefs}")
        if max(self.bon_ns) > self.pool_size or self.mix_n > self.pool_size or min(self.bon_ns) < 1:
            raise ValueError(
                f"every n (bon_ns {self.bon_ns}, mix_n {self.mix_n}) must be in 1..pool_size ({self.pool_size})"
            )
        if min(self.eval_every, self.overopt_eval_every, self.sweep_steps, self.overopt_steps) < 1 or self.n_eval < 2:
            raise ValueError("eval_every, overopt_eval_every, sweep_steps and overopt_steps must be >= 1, n_eval >= 2")

    def sweep_config(self, kl_coef: float) -> PPOConfig:
        """The PPO config of the sweep run at `kl_coef`."""
        return dataclasses.replace(self.ppo, kl_coef=kl_coef)

    def overopt_config(self) -> PPOConfig:
        """The PPO config of the run against the weak proxy."""
        return dataclasses.replace(self.ppo, kl_coef=self.overopt_kl_coef, lr=self.overopt_lr, steps=self.overopt_steps)


@dataclass(frozen=True)
class FinalEvalBudget:
    """The budgets of notebooks 06 and 07 (`preset.final`)."""

    dpo: DPOConfig
    """DPO training (06); `batch_size * max_steps` pairs are used, each seen once."""
    dpo_heldout: int
    """Held-out pairs (eval concepts) on which DPO's implicit-reward accuracy is measured."""
    grpo: GRPOConfig
    """GRPO / Dr GRPO / RLOO training (06); `advantage` names the algorithm and the policy."""
    judge_pairs: int
    """Annotator-labeled train pairs that the AI judge labels (both orders) in 06."""
    judge_reward: RewardConfig
    """Training of the two reward models of the AI-feedback comparison (AI labels vs annotator's)."""
    judge_heldout: int
    """Held-out pairs (annotator labels) on which those two reward models are compared."""
    judge_batch_size: int = 8
    """Judging prompts per forward pass (each holds two responses: about 250 tokens)."""
    bon_n: int = 4
    """n of the best-of-n policy in 07 (n samples of the SFT policy, the reward model picks one)."""
    ab_items: int = 8
    """Prompts judged blind in the A/B widget of 07."""
    seed: int = 0
    """The seed of the pair choices (evaluation itself is the yardstick's: `rlhf_edu.course.yardstick`)."""
    notes: str = ""
    """Where the time goes, in words."""

    def __post_init__(self):
        if self.dpo_heldout < 1 or self.judge_pairs < 2 or self.judge_heldout < 1:
            raise ValueError("need dpo_heldout >= 1, judge_pairs >= 2 and judge_heldout >= 1")
        if self.dpo.max_steps is None:
            raise ValueError("the DPO budget needs max_steps (it sets how many pairs are used)")
        if self.bon_n < 1 or self.ab_items < 1 or self.judge_batch_size < 1:
            raise ValueError("bon_n, ab_items and judge_batch_size must be >= 1")

    @property
    def dpo_pairs(self) -> int:
        """Training pairs DPO uses: one pass, batch_size * max_steps."""
        return self.dpo.batch_size * self.dpo.max_steps

    @property
    def group_algorithm(self) -> str:
        """ "grpo", "dr_grpo" or "rloo": the name of the group-baseline policy."""
        return self.grpo.advantage
