"""A Bradley-Terry reward model trained on pairwise preferences.

The second stage of RLHF (Christiano et al. 2017; Stiennon et al. 2020, section 3.4; Ouyang et al.
2022, section 3.5): a transformer backbone reads `prompt + response`, a linear head turns the
last-layer hidden state of the last real token into one number, and the Bradley-Terry model says

    P(chosen preferred to rejected) = sigmoid(r(x, y_c) - r(x, y_r))                        (1)
    loss = - mean log sigmoid(r(x, y_c) - r(x, y_r) - margin)                               (2)

Notebook 03 builds each piece and checks it against this module. Details follow
docs/implementation_details.md#reward-model:
- The score is read at the last real token, found from the attention mask (the rightmost 1), never
  from token ids (pad may equal EOS). `build_sft_batch` appends EOS to every response that ended
  by itself, so that token is the EOS; a response cut off at the token budget is scored as it was
  sampled, without EOS (score the post-processed response, as PPO will).
- Head weight ~ N(0, std = 1 / sqrt(H + 1)), bias 0, as in OpenAI's code.
- `gain` and `bias` buffers make the score `gain * head(h) + bias`; `set_normalization` gives the
  scores of reference samples mean 0 and std 1 (OpenAI / N-details).

Deliberate deviations:
- Ouyang et al. put all K-choose-2 comparisons of one prompt in the same batch; we train on
  independent (prompt, chosen, rejected) pairs, like TRL's RewardTrainer and Stiennon et al.
- Normalization uses the population std (divide by n, as OpenAI's `tf.nn.moments`), so after
  `set_normalization` the same samples have a population std of exactly 1.
- The head runs in fp32 outside autocast: a bf16 score would be rounded to about 3 digits.
- No `center_rewards_coefficient` regularizer (TRL); `gain`/`bias` fix the offset after training.
- The pair order is the only randomness in training, a stream of batches drawn from `seed` alone,
  so a run resumed from a checkpoint (`checkpoint_dir`) repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_edu.batches import build_sft_batch
from rlhf_edu.generation import check_prompts
from rlhf_edu.logprobs import check_context_length, last_token_index, position_ids_from_mask

# --------------------------------------------------------------------------- the math


def reward_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood, equation (2): (B,), (B,) -> scalar.

    mean over pairs of -log sigmoid(r_c - r_r - margin). `margin` (a number or a (B,) tensor, as in
    TRL and Llama 2) asks the chosen score to win by at least that much. The loss is unchanged if
    the same constant is added to both scores: only differences are learned.

    Notebook: 03_reward_model.ipynb
    """
    difference = chosen_scores.float() - rejected_scores.float()  # (B,)
    if margin is not None:
        difference = difference - margin  # (B,)
    return -F.logsigmoid(difference).mean()  # logsigmoid is stable where log(sigmoid(.)) underflows


def reward_accuracy(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> float:
    """Fraction of pairs where the chosen response scores higher; a tie counts as half.

    chosen_scores, rejected_scores (B,) -> float in [0, 1]. A constant model gets 0.5, not 0.

    Notebook: 03_reward_model.ipynb
    """
    wins = (chosen_scores > rejected_scores).float()  # (B,)
    ties = (chosen_scores == rejected_scores).float()  # (B,)
    return float((wins + 0.5 * ties).mean())


def fit_normalization(scores) -> tuple[float, float]:
    """(gain, bias) such that gain * scores + bias has mean 0 and population std 1.

    scores: a (N,) tensor or a list of N >= 2 floats, not all equal. gain = 1 / std,
    bias = -gain * mean, with the population std (divide by N), as OpenAI's `tf.nn.moments`.
    fit_normalization([1.0, 2.0, 3.0]) == (1.224745, -2.449490) to 6 decimals.

    Notebook: 03_reward_model.ipynb
    """
    x = torch.as_tensor(scores, dtype=torch.float64).flatten()  # (N,) float64: exact statistics
    if x.numel() < 2:
        raise ValueError(f"fit_normalization needs at least 2 scores, got {x.numel()}")
    mean, std = x.mean(), x.std(correction=0)  # population std
    if not torch.isfinite(std) or std == 0:
        raise ValueError(f"cannot normalize scores whose std is {float(std)}")
    gain = 1.0 / std
    return float(gain), float(-gain * mean)


# --------------------------------------------------------------------------- the model


def backbone_of(causal_lm: torch.nn.Module) -> torch.nn.Module:
    """The transformer of a causal LM without its unembedding (`lm_head`).

    `base_model` is `causal_lm.model` for Llama/SmolLM2 and `causal_lm.transformer` for GPT-2; it
    returns hidden states (B, T, H) instead of logits (B, T, V). Ouyang et al. (2022, section 3.5)
    build the reward model the same way: the SFT model with the unembedding layer removed.

    Notebook: 03_reward_model.ipynb
    """
    return causal_lm.base_model


def init_head(hidden_size: int) -> torch.nn.Linear:
    """Linear(H, 1) with weight ~ N(0, std = 1 / sqrt(H + 1)) and bias 0.

    The initial scores then have about unit variance (OpenAI lm-human-preferences `model.py`;
    docs/implementation_details.md#reward-model on the variance-vs-std typo in the paper).

    Notebook: 03_reward_model.ipynb
    """
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.normal_(head.weight, mean=0.0, std=1.0 / math.sqrt(hidden_size + 1))  # (1, H)
    torch.nn.init.zeros_(head.bias)  # (1,)
    return head


class RewardModel(torch.nn.Module):
    """score(x, y) = gain * head(h_last) + bias, h_last the hidden state of the last real token.

    `backbone` maps input_ids (B, T) to hidden states (B, T, H). Dropout is switched off. `gain`
    and `bias` are buffers (saved, not trained), 1 and 0 until `set_normalization`. `readout_index`,
    attention_mask (B, T) -> (B,) positions, says where the head reads: `last_token_index` unless
    replaced (notebook 03's exercise reads elsewhere to see what breaks).

    Notebook: 03_reward_model.ipynb
    """

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        from rlhf_edu.models import disable_dropout

        self.backbone = backbone
        disable_dropout(self.backbone)
        self.head = init_head(backbone.config.hidden_size)
        self.register_buffer("gain", torch.tensor(1.0))  # ()
        self.register_buffer("bias", torch.tensor(0.0))  # ()
        self.readout_index = last_token_index

    @classmethod
    def from_causal_lm(cls, causal_lm: torch.nn.Module) -> RewardModel:
        """A reward model on the backbone of `causal_lm` (shared, not copied: pass a model you own).

        Notebook: 03_reward_model.ipynb
        """
        return cls(backbone_of(causal_lm))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """h_last, the hidden state the head reads: input_ids, attention_mask (B, T) -> (B, H) fp32.

        Notebook: 03_reward_model.ipynb (`rlhf_edu.label_value`)
        """
        check_context_length(self.backbone, attention_mask)
        position_ids = position_ids_from_mask(attention_mask)  # (B, T) skip the left padding
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state  # (B, T, H)
        index = self.readout_index(attention_mask)  # (B,)
        rows = torch.arange(hidden.shape[0], device=hidden.device)  # (B,)
        return hidden[rows, index].float()  # (B, H) fp32

    def raw_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """head(h_last) before gain and bias: input_ids, attention_mask (B, T) -> (B,) fp32.

        Notebook: 03_reward_model.ipynb
        """
        h_last = self.features(input_ids, attention_mask)  # (B, H) fp32
        with torch.autocast(device_type=h_last.device.type, enabled=False):  # keep the head in fp32
            return self.head(h_last).squeeze(-1)  # (B, 1) -> (B,)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores gain * head(h_last) + bias: input_ids, attention_mask (B, T) -> (B,) fp32.

        Notebook: 03_reward_model.ipynb
        """
        return self.gain * self.raw_scores(input_ids, attention_mask) + self.bias  # (B,)

    @torch.no_grad()
    def set_normalization(self, raw_scores: torch.Tensor) -> None:
        """Set gain and bias so that these raw scores (N,) come out with mean 0 and std 1.

        `raw_scores` are head outputs before gain and bias (`score_samples(..., raw=True)`), e.g. of
        responses sampled from the SFT policy
        (docs/implementation_details.md#reward-normalization).

        Notebook: 03_reward_model.ipynb
        """
        gain, bias = fit_normalization(raw_scores)
        self.gain.fill_(gain)
        self.bias.fill_(bias)


# --------------------------------------------------------------------------- data and scoring


@torch.no_grad()
def score_texts(
    reward_model: RewardModel,
    tokenizer,
    prompts: list[str],
    responses: list[str],
    batch_size: int = 16,
    *,
    raw: bool = False,
    max_response_tokens: int = 1024,
    eos: list[bool] | None = None,
    features: bool = False,
) -> torch.Tensor:
    """Score B (prompt, response) pairs: -> (B,) fp32 on the CPU (with features=True, the hidden
    states the head reads instead: (B, H)).

    Each response gets EOS appended, as in training (`build_sft_batch`), unless `eos[i]` is False
    (cut off at the token budget), so pass decoded text without special tokens. With raw=True, the
    head output before gain and bias. Wrap the call in
    `devices.autocast(setup)` to score in bf16/fp16 (the head stays fp32).

    Notebook: 03_reward_model.ipynb
    """
    check_prompts(prompts)  # here, so that the index it names counts from the first prompt
    reward_model.eval()
    device = next(reward_model.parameters()).device
    scores = []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        batch = build_sft_batch(
            tokenizer,
            prompts[start:end],
            responses[start:end],
            max_response_tokens,
            eos=None if eos is None else eos[start:end],
        )
        input_ids = batch["input_ids"].to(device)  # (b, P+R)
        attention_mask = batch["attention_mask"].to(device)  # (b, P+R)
        check_context_length(reward_model.backbone, attention_mask, first_index=start, what="prompt + response")
        score_fn = reward_model.features if features else reward_model.raw_scores if raw else reward_model
        scores.append(score_fn(input_ids, attention_mask).float().cpu())  # (b,)
    return torch.cat(scores)  # (B,)


@torch.no_grad()
def score_samples(
    reward_model: RewardModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int = 16,
    *,
    raw: bool = False,
) -> torch.Tensor:
    """Score sampled sequences as they were sampled: input_ids, attention_mask (B, P + R) in the
    course layout (`generation.Samples`) -> (B,) fp32 on the CPU.

    The reward model reads the sampled token ids themselves, EOS included, as PPO scores them
    (`ppo_loop.rollout`). Decoding to text and re-tokenizing (`score_texts`) can give
    other tokens (special tokens dropped, whitespace stripped) and other scores. With raw=True, the
    head output before gain and bias. Wrap the call in `devices.autocast(setup)` as `score_texts`.

    Notebooks: 03_reward_model.ipynb, 06_dpo_grpo.ipynb
    """
    reward_model.eval()
    device = next(reward_model.parameters()).device
    score_fn = reward_model.raw_scores if raw else reward_model
    scores = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)  # (b, P+R)
        mask = attention_mask[start : start + batch_size].to(device)  # (b, P+R)
        scores.append(score_fn(ids, mask).float().cpu())  # (b,)
    return torch.cat(scores)  # (B,)


@torch.no_grad()
def score_pairs(reward_model: RewardModel, tokenizer, rows: list[dict], batch_size: int = 16, **kwargs):
    """(chosen, rejected): `score_texts` of each row's two responses, (N,) each (with features=True,
    (N, H) each). rows: {prompt, chosen, rejected, chosen_eos?, rejected_eos?}; keyword arguments go
    to `score_texts`. Notebook: 03_reward_model.ipynb"""
    prompts = [r["prompt"] for r in rows]
    chosen, rejected = (
        score_texts(
            reward_model,
            tokenizer,
            prompts,
            [r[side] for r in rows],
            batch_size,
            eos=[r.get(f"{side}_eos", True) for r in rows],
            **kwargs,
        )
        for side in ("chosen", "rejected")
    )
    return chosen, rejected


def evaluate_reward_model(reward_model: RewardModel, tokenizer, rows: list[dict], config: RewardConfig) -> dict:
    """Held-out `eval/loss`, `eval/accuracy`, `eval/margin` (mean r_c - r_r) over all pairs.

    rows: dicts with `prompt`, `chosen`, `rejected`. Every pair counts once (not batch means).

    Notebook: 03_reward_model.ipynb
    """
    limit = config.max_response_tokens
    chosen, rejected = score_pairs(reward_model, tokenizer, rows, 2 * config.batch_size, max_response_tokens=limit)
    return {
        "eval/loss": float(reward_loss(chosen, rejected)),
        "eval/accuracy": reward_accuracy(chosen, rejected),
        "eval/margin": float((chosen - rejected).mean()),
    }


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RewardConfig:
    """Reward-model training settings (docs/implementation_details.md#reward-model)."""

    lr: float = 2e-5
    """Peak AdamW learning rate (OpenAI books: 5e-5; N+ TL;DR: 3e-6)."""
    batch_size: int = 8
    """Preference pairs per optimizer step (2 x batch_size sequences per forward pass); with
    `group_by_prompt`, prompts per step."""
    group_by_prompt: bool = False
    """Each step takes every labeled pair of `batch_size` prompts and scores each distinct response
    once, as Ouyang et al. (2022, section 3.5) train on all K-choose-2 comparisons of a prompt as one
    batch element: with 4 answers a prompt, 6 pairs cost 4 forward passes instead of 12, and no
    answer is seen in several steps of a pass (which, they found, overfits)."""
    micro_batch_size: int | None = None
    """Pairs (with `group_by_prompt`, prompts) per forward and backward pass; the gradients of a
    step's parts add up to the batch's before the optimizer steps. None: the whole batch at once.
    Smaller parts hold fewer activations at a time (less peak memory), for the same update up to
    rounding."""
    epochs: int = 1
    """Passes over the training pairs (over the prompts, with `group_by_prompt`); one epoch, as
    Ziegler et al. (2019), to avoid overfitting."""
    max_steps: int | None = None
    """Optimizer steps; None means `epochs` passes over the data (`total_steps`)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to `lr`, then linear decay to 0 at the last step (OpenAI: no warm-up)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    eval_every: int = 16
    """Held-out loss and accuracy every this many steps (and at the last step)."""
    seed: int = 0
    """Order in which the training pairs are visited."""
    max_response_tokens: int = 96
    """Longer responses are an error (they would be cut before their EOS, where the score is read)."""
    trainable_layers: int | None = None
    """Train only the top this-many transformer blocks (plus the final norm and the head); None
    trains everything. Freezing the lower blocks skips their backward pass (about 2x faster on a
    CPU) and overfits less when labels are few."""

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError(f"batch_size and epochs must be >= 1, got {self.batch_size}, {self.epochs}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be None or >= 1, got {self.micro_batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be None or >= 1, got {self.max_steps}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")


# --------------------------------------------------------------------------- saving and loading
