"""Reward functions: what a policy-gradient loop is paid with.

PPO and GRPO take a learned reward model or any plain function `reward_fn(prompts, texts, eos_flags)
-> (B,)` scores: the gold rubric (`rubric_reward`, a verifiable reward in the sense GRPO is used with
today), a verifier, or a weighted mix of several (`mix`). A learned reward model becomes such a
function through `reward_model_scorer`, which also scores the sampled token ids directly, as PPO
does.

Notebook: 06_dpo_grpo.ipynb
"""

from __future__ import annotations

import contextlib

import torch


class RewardModelScorer:
    """A `reward.RewardModel` as GRPO's reward (built by `reward_model_scorer`).

    `GRPOTrainer` asks it for the scores of the sampled token ids (`score_samples`), which is what
    PPO scores: decoded, stripped text re-tokenized gives other tokens for some samples (special
    tokens dropped, whitespace stripped) and other scores. Called like any `reward_fn(prompts, texts,
    eos_flags) -> (B,)`, it scores texts, re-tokenized with EOS appended where the response ended
    (`reward.score_texts`). Notebook: 06_dpo_grpo.ipynb
    """

    def __init__(self, reward_model, tokenizer, batch_size: int = 16, autocast_ctx=None):
        self.reward_model, self.tokenizer, self.batch_size = reward_model, tokenizer, batch_size
        self.autocast_ctx = autocast_ctx

    def score_samples(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sampled sequences (B, P+R) in the course layout -> (B,) scores (`reward.score_samples`)."""
        from rlhf_edu.reward import score_samples

        with self.autocast_ctx or contextlib.nullcontext():
            return score_samples(self.reward_model, input_ids, attention_mask, self.batch_size)

    def __call__(self, prompts: list[str], texts: list[str], eos_flags: list[bool]) -> torch.Tensor:
        from rlhf_edu.reward import score_texts

        with self.autocast_ctx or contextlib.nullcontext():
            return score_texts(self.reward_model, self.tokenizer, prompts, texts, self.batch_size, eos=list(eos_flags))


def is_reward_model(reward) -> bool:
    """True for a learned reward model (a torch module scoring token ids), False for a function of text."""
    return isinstance(reward, torch.nn.Module)


def rubric_reward(prompts: list[str], texts: list[str], eos_flags: list[bool]) -> torch.Tensor:
    """The gold rubric's total as a reward function: (B,) in [0, 1]. Optimizing it directly is
    optimizing the yardstick itself, which no real task allows (there, only people or a learned
    reward model know what is good); it shows what a perfect reward would do.
    Notebooks: 04_ppo.ipynb, 06_dpo_grpo.ipynb"""
    from rlhf_edu.rubric import score_batch

    return torch.tensor([row["gold"] for row in score_batch(list(prompts), list(texts), list(eos_flags))])


def mix(weighted: dict, /):
    """A reward function that sums weight * fn(prompts, texts, eos_flags) over {fn: weight}."""
    if not weighted:
        raise ValueError("mix needs at least one reward function")

    def mixed(prompts, texts, eos_flags) -> torch.Tensor:
        return sum(
            w * torch.as_tensor(fn(prompts, texts, eos_flags), dtype=torch.float32) for fn, w in weighted.items()
        )

    return mixed


def reward_model_scorer(reward_model, tokenizer, *, batch_size: int = 16, autocast_ctx=None) -> RewardModelScorer:
    """GRPO's reward from a `reward.RewardModel`: a `RewardModelScorer`, which `GRPOTrainer` asks for
    the scores of the sampled tokens, as PPO scores them. Notebook: 06_dpo_grpo.ipynb
    """
    return RewardModelScorer(reward_model, tokenizer, batch_size, autocast_ctx)
