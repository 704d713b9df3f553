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

from rlhf_edu.generation import SamplingConfig
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
    `eval_sampling` like every other notebook's (`rlhf_edu.yardstick`)."""
    n_label_pairs: int = 12
    """Pairs the learner labels by hand in notebook 02."""
    n_label_repeats: int = 3
    """Of those, how many come back at the end of the queue (self-consistency)."""
    seed: int = 0
    """The one seed every notebook starts from."""
    cell_timeout: int = 1800
    """Seconds one notebook cell may run in `make course` and `make test` before it counts as hung.
    Sized to a few times the longest cell of the preset, so a slow machine passes and a hang still
    ends the run (a lost reply is caught sooner, see `rlhf_edu.kernel_watch`)."""


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        description="CI and nbval: every code path with the real model, tiny budgets",
        cell_timeout=600,  # whole smoke notebooks take 9 to 86 s
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
        cell_timeout=1800,  # 03's reward model, 04's PPO, 05's sweep: 4 to 6 minutes a cell
        n_eval=128,
        eval_sampling=SamplingConfig(max_new_tokens=64, temperature=0.7, batch_size=16),
        sft=SFTConfig(max_steps=48, batch_size=8, eval_every=16, n_heldout=32, lr=3e-5),
        reward=RewardConfig(lr=1e-4, batch_size=8, eval_every=12, warmup_steps=2),
        reward_pairs=384,
        reward_heldout=400,
        reward_probe=64,
        reward_norm_samples=64,
        ppo=PPOConfig(
            steps=14,
            batch_size=16,
            mini_batch_size=8,
            micro_batch_size=8,
            ppo_epochs=4,
            lr=1e-4,
            sampling=SamplingConfig(64, 1.0, 16),
            eval_every=7,
            eval_subset=16,
            trainable_layers=8,
        ),
    ),
    "gpu": Preset(
        name="gpu",
        description="a Colab T4 (16 GB): larger batches and more steps",
        cell_timeout=1800,  # not yet measured on a T4; the notebooks aim at 10 minutes each
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
