"""What labels are worth: reward models fit on your labels and on the annotator's, at equal counts.

Notebook 03's reward model trains the top blocks of the transformer on a few hundred pairs, several
minutes on a laptop. To compare label sets quickly, this module fits only the reward model's head:
the SFT transformer stays frozen, each response is read once into its last-token hidden state h
(`RewardModel.features`), and the Bradley-Terry loss of eq. (2) is minimized over a linear score
r(x, y) = w . h, with an L2 penalty:

    loss(w) = mean_i log(1 + exp(-(w . (h_chosen_i - h_rejected_i)))) + l2 / 2 * |w|^2

a logistic regression on feature differences (features standardized on the training pairs). Fits
on a dozen pairs take a fraction of a second, so the notebook can show a whole accuracy-vs-labels
curve and where the learner's own labels sit on it.

Notebook: 03_reward_model.ipynb
"""

from __future__ import annotations

import random

import torch

from rlhf_edu.metrics import wilson_interval
from rlhf_edu.reward import score_pairs


@torch.no_grad()
def pair_features(reward_model, tokenizer, rows: list[dict], batch_size: int = 16, autocast_ctx=None) -> torch.Tensor:
    """h_chosen - h_rejected for preference rows {prompt, chosen, rejected, chosen_eos?, rejected_eos?}:
    -> (N, H) fp32, one forward pass per response through the frozen reward-model backbone."""
    import contextlib

    if not rows:
        raise ValueError("pair_features needs at least one row")
    with autocast_ctx or contextlib.nullcontext():
        chosen, rejected = score_pairs(reward_model, tokenizer, rows, batch_size, features=True)  # (N, H) each
    return chosen - rejected  # (N, H)


def fit_linear_reward(diffs: torch.Tensor, l2: float = 1.0, steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimize the Bradley-Terry loss of a linear score on standardized feature differences (N, H).
    Returns (w (H,), scale (H,)): the score difference of a pair is (diff / scale) . w.

    Differences are scaled by the root mean square of each feature over the training pairs (no
    centering: the loss compares chosen with rejected, and flipping a pair must flip its score)."""
    if diffs.ndim != 2 or diffs.shape[0] < 1:
        raise ValueError(f"diffs must be (N, H) with N >= 1, got {tuple(diffs.shape)}")
    x = diffs.double()
    scale = x.pow(2).mean(0).sqrt().clamp_min(1e-6)  # (H,)
    x = x / scale
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(x @ w)).mean() + 0.5 * l2 * w.pow(2).sum() / x.shape[0]
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), scale


def linear_accuracy(w: torch.Tensor, scale: torch.Tensor, diffs: torch.Tensor) -> float:
    """Share of pairs (N, H) whose chosen response the linear reward scores higher (ties count half)."""
    margin = (diffs.double() / scale) @ w  # (N,)
    return float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean())


def label_value(train_diffs: dict[str, torch.Tensor], heldout_diffs: torch.Tensor, l2: float = 1.0) -> dict[str, dict]:
    """For each named set of training pairs, fit a linear reward and measure it on the held-out pairs:
    {name: {n, accuracy, low, high}} with the 95% Wilson interval over the held-out pairs."""
    out = {}
    for name, diffs in train_diffs.items():
        w, scale = fit_linear_reward(diffs, l2)
        acc = linear_accuracy(w, scale, heldout_diffs)
        low, high = wilson_interval(acc * len(heldout_diffs), len(heldout_diffs))
        out[name] = {"n": int(diffs.shape[0]), "accuracy": acc, "low": low, "high": high}
    return out


def accuracy_curve(
    diffs: torch.Tensor,
    heldout_diffs: torch.Tensor,
    counts: list[int],
    *,
    repeats: int = 5,
    seed: int = 0,
    l2: float = 1.0,
) -> list[tuple[int, float]]:
    """Held-out accuracy of linear rewards fit on n randomly drawn training pairs, for each n in
    `counts` (mean over `repeats` draws): how accuracy grows with labels. -> [(n, accuracy)]."""
    rng = random.Random(seed)
    curve = []
    for n in counts:
        if not 1 <= n <= diffs.shape[0]:
            raise ValueError(f"count {n} is outside 1..{diffs.shape[0]}")
        accs = []
        for _ in range(repeats if n < diffs.shape[0] else 1):
            idx = rng.sample(range(diffs.shape[0]), n)
            w, scale = fit_linear_reward(diffs[idx], l2)
            accs.append(linear_accuracy(w, scale, heldout_diffs))
        curve.append((n, sum(accs) / len(accs)))
    return curve
