"""rlhf_edu.label_value: the head-only reward model that compares label sets (notebook 03)."""

import math

import pytest
import torch

from rlhf_edu.label_value import (
    accuracy_curve,
    fit_linear_reward,
    label_value,
    linear_accuracy,
    pair_features,
)
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.reward import RewardModel, build_sft_batch


def synthetic(n, h=6, noise=0.0, seed=0):
    """Pairs whose preference follows a hidden direction u: chosen has the larger u . h."""
    u = torch.randn(h, generator=torch.Generator().manual_seed(123))  # the same direction in every set
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, h, generator=g), torch.randn(n, h, generator=g)
    score = (a - b) @ u + noise * torch.randn(n, generator=g)
    return torch.where((score > 0)[:, None], a - b, b - a)  # chosen minus rejected


def naive_loss(w, x, l2):
    total = 0.0
    for row in x.tolist():
        m = sum(wi * xi for wi, xi in zip(w.tolist(), row))
        total += math.log1p(math.exp(-m))
    return total / len(x) + 0.5 * l2 * sum(v * v for v in w.tolist()) / len(x)


def test_fit_is_a_minimum_of_the_naive_loss():
    diffs = synthetic(40, noise=1.0)
    w, scale = fit_linear_reward(diffs, l2=1.0)
    x = diffs.double() / scale
    best = naive_loss(w, x, 1.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # every nearby point is worse
        assert naive_loss(w + 0.05 * torch.randn(w.shape, generator=g, dtype=torch.float64), x, 1.0) > best
    # reference value: at w = 0 the loss is log 2
    assert naive_loss(torch.zeros_like(w), x, 1.0) == pytest.approx(math.log(2))


def test_separable_pairs_are_learned_and_flipped_pairs_score_the_opposite():
    train, held = synthetic(60, seed=0), synthetic(200, seed=7)
    w, scale = fit_linear_reward(train)
    assert linear_accuracy(w, scale, held) > 0.9
    assert linear_accuracy(w, scale, -held) < 0.1
    assert linear_accuracy(torch.zeros_like(w), scale, held) == 0.5  # all ties count half


def test_label_value_and_curve_shapes():
    diffs, held = synthetic(64, noise=0.5, seed=2), synthetic(100, noise=0.0, seed=3)
    out = label_value({"yours": diffs[:8], "annotator": diffs[8:16]}, held)
    assert set(out) == {"yours", "annotator"} and out["yours"]["n"] == 8
    assert all(0 <= v["low"] <= v["accuracy"] <= v["high"] <= 1 for v in out.values())
    curve = accuracy_curve(diffs, held, [4, 16, 64], repeats=3)
    assert [n for n, _ in curve] == [4, 16, 64]
    assert curve[-1][1] > curve[0][1]  # more labels, better accuracy
    with pytest.raises(ValueError, match="outside"):
        accuracy_curve(diffs, held, [65])


def test_pair_features_are_the_difference_of_last_token_states():
    torch.set_num_threads(1)
    lm, tok = tiny_model_and_tokenizer(seed=0)
    rm = RewardModel.from_causal_lm(lm).eval()
    rows = [
        {
            "prompt": "Explain rain to a 10-year-old.",
            "chosen": "Rain is water.",
            "rejected": "No.",
            "rejected_eos": False,
        },
        {"prompt": "Explain a volcano to a 10-year-old.", "chosen": "Hot rock.", "rejected": "A hill that is hot."},
    ]
    diffs = pair_features(rm, tok, rows, batch_size=1)
    assert diffs.shape == (2, lm.config.hidden_size)
    for i, r in enumerate(rows):
        c = build_sft_batch(tok, [r["prompt"]], [r["chosen"]], 1024, eos=[r.get("chosen_eos", True)])
        j = build_sft_batch(tok, [r["prompt"]], [r["rejected"]], 1024, eos=[r.get("rejected_eos", True)])
        with torch.no_grad():
            expected = rm.features(c["input_ids"], c["attention_mask"]) - rm.features(
                j["input_ids"], j["attention_mask"]
            )
        torch.testing.assert_close(diffs[i], expected[0])
    # the head reads exactly these features
    with torch.no_grad():
        c = build_sft_batch(tok, [rows[0]["prompt"]], [rows[0]["chosen"]], 1024)
        torch.testing.assert_close(
            rm.raw_scores(c["input_ids"], c["attention_mask"]),
            rm.head(rm.features(c["input_ids"], c["attention_mask"])).squeeze(-1),
        )
