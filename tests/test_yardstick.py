"""rlhf_edu.course.yardstick: one evaluation for every notebook (same prompts, sampling, seed, cache), and
the headline numbers against SFT, checked against naive recomputations."""

import copy
import dataclasses
import math

import pytest
import torch

from rlhf_edu.annotator import SimulatedAnnotator
from rlhf_edu.course import yardstick
from rlhf_edu.devices import device_setup
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.presets import get_preset
from rlhf_edu.reward import RewardModel
from rlhf_edu.rubric import COMPONENTS, score

PRESET = dataclasses.replace(
    get_preset("smoke"), n_eval=3, eval_sampling=SamplingConfig(max_new_tokens=8, temperature=0.7, batch_size=2)
)


def test_same_policy_same_rows_with_or_without_the_scorers(artifacts, monkeypatch):
    """The gold of a policy does not depend on what else a notebook scores it with: SFT's gold is
    one number in every notebook. The rows are cached once per key."""
    policy, tok = tiny_model_and_tokenizer(seed=0)
    reference = copy.deepcopy(policy)
    lm, _ = tiny_model_and_tokenizer(seed=3)
    torch.manual_seed(3)
    reward_model = RewardModel.from_causal_lm(lm).eval()
    setup = device_setup("cpu")
    bare, message = yardstick.evaluate("sft", policy, tok, PRESET, setup)
    assert "sampled" in message and len(bare) == PRESET.n_eval
    assert [r["prompt"] for r in bare] == yardstick.prompts_for(PRESET)
    assert all("kl" not in r and "rm" not in r for r in bare)
    full, _ = yardstick.evaluate("sft", policy, tok, PRESET, setup, reference=reference, reward_model=reward_model)
    assert [r["response"] for r in full] == [r["response"] for r in bare]
    assert [r["gold"] for r in full] == [r["gold"] for r in bare]
    assert all(abs(r["kl"]) < 1e-4 and math.isfinite(r["rm"]) for r in full)
    for r in bare:  # the gold is the rubric's, on the text and the eos flag
        assert r["gold"] == score(r["prompt"], r["response"], r["eos"])[0]
    monkeypatch.setattr("rlhf_edu.eval_rows.sample", lambda *a, **k: pytest.fail("not cached"))
    again, message = yardstick.evaluate(
        "sft", policy, tok, PRESET, setup, reference=reference, reward_model=reward_model
    )
    assert again == full and "from" in message


def test_the_cache_key_holds_the_rubric_and_the_dtype(artifacts, monkeypatch):
    policy, tok = tiny_model_and_tokenizer(seed=0)
    setup = device_setup("cpu")
    yardstick.evaluate("p", policy, tok, PRESET, setup)
    monkeypatch.setattr(yardstick, "rubric_digest", lambda: "another rubric")
    calls = []
    monkeypatch.setattr("rlhf_edu.eval_rows.sample", lambda *a, **k: calls.append(1) or pytest.fail("sampled"))
    with pytest.raises(pytest.fail.Exception):
        yardstick.evaluate("p", policy, tok, PRESET, setup)
    assert calls == [1]


def _row(prompt, response, eos=True):
    total, components = score(prompt, response, eos)
    return {"prompt": prompt, "response": response, "eos": eos, "gold": total, **components}


P1, P2, P3 = (f"Explain {c} to a 10-year-old." for c in ("gravity", "rain", "a magnet"))
GOOD = {
    P1: "Gravity is a pull between things. When you drop your spoon at breakfast, it falls to the floor. It's like an invisible rope to the Earth.",
    P2: "Rain is water falling from clouds. When you see a puddle after school, that is rain. Clouds are like sponges that get too full.",
    P3: "A magnet pulls on some metals. When you put one on the fridge, it sticks. It's like a tiny hand that grabs iron.",
}
PLAIN = {
    P1: "Gravity is a pull between things. It keeps the Moon going around the Earth. It also pulls rain down from clouds.",
    P2: "Rain is water falling from clouds. The water goes up as vapor first. Then it cools and falls down again.",
    P3: "A magnet pulls on some metals. It has a north end and a south end. Opposite ends pull together.",
}


def test_headline_against_naive_recomputation():
    rows = [_row(p, GOOD[p]) for p in (P1, P2, P3)]
    sft_rows = [_row(p, PLAIN[p]) for p in (P1, P2, P3)]
    h = yardstick.headline(rows, sft_rows)
    d = [r["gold"] - s["gold"] for r, s in zip(rows, sft_rows)]
    mean = sum(d) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 2 / 3)
    assert h["gold_delta"] == pytest.approx(mean) and h["gold_delta_se"] == pytest.approx(se)
    assert h["gold_delta_z"] == pytest.approx(mean / se)
    assert h["gold_sft_mean"] == pytest.approx(0.5, abs=0.01)  # reference value: plain answers score about half
    # every good answer beats its plain one by a quality or more: the annotator prefers it nearly always
    assert (h["wins"], h["ties"], h["losses"]) == (3, 0, 0) and h["win_rate_vs_sft"] == 1.0
    assert h["win_rate_low"] < 1.0 and h["win_rate_high"] == pytest.approx(1.0)
    assert set(h["components"]) == set(COMPONENTS)
    tie = yardstick.headline(sft_rows, sft_rows)  # the same answers: every comparison a tie
    assert (tie["wins"], tie["ties"], tie["losses"]) == (0, 3, 0) and tie["win_rate_vs_sft"] == 0.5


def test_blind_wins_randomize_the_order_and_need_matched_prompts():
    rows = [_row(p, GOOD[p]) for p in (P1, P2, P3)] * 10
    sft_rows = [_row(p, PLAIN[p]) for p in (P1, P2, P3)] * 10
    biased = SimulatedAnnotator(dataclasses.replace(SimulatedAnnotator().config, position_bias=50.0))
    wins, ties, losses = yardstick.blind_wins(rows, sft_rows, annotator=biased, seed=1)
    # an annotator who always picks the first answer: wins only where the policy was shown first
    assert 5 < wins < 25 and wins + losses == 30 and ties == 0
    with pytest.raises(ValueError, match="same prompts"):
        yardstick.blind_wins(rows[:2], list(reversed(sft_rows[:2])))


def test_component_table_puts_the_preference_qualities_first():
    table = yardstick.component_table({"sft": [_row(P1, PLAIN[P1])], "ppo": [_row(P1, GOOD[P1])]})
    assert [t["component"] for t in table[:3]] == ["comparison", "speaks_to_child", "everyday_detail"]
    assert table[0]["sft"] == 0.0 and table[0]["ppo"] == 1.0 and table[-1]["component"] == "gold (total)"


def test_verdict_names_the_winner_in_computed_words():
    sft = [_row(p, PLAIN[p]) for p in (P1, P2, P3)] * 4
    good = [_row(p, GOOD[p]) for p in (P1, P2, P3)] * 4
    half = [_row(p, GOOD[p] if i % 2 else PLAIN[p]) for i, p in enumerate((P1, P2, P3) * 4)]
    winner, lines = yardstick.verdict(
        {"sft": sft, "best_of_n": half, "ppo": good, "dpo": sft},
        trained=["ppo", "dpo", "grpo"],
        labels={"best_of_n": "best-of-4"},
    )
    assert winner == "ppo"
    h = yardstick.headline(good, sft)
    assert lines[0].startswith("ppo wins: gold") and f"{h['gold_mean']:.3f}" in lines[0] and "100%" in lines[0]
    assert lines[1].startswith("best-of-4, which trains nothing") and "beats it" in lines[1]
    assert lines[2].startswith("dpo:") and "within noise of SFT" in lines[2]
    assert yardstick.verdict({"sft": sft}, trained=["ppo"])[0] == "sft"


def test_scoring_batches_stay_small_whatever_the_sampler_takes(artifacts, monkeypatch):
    """The reference's vocabulary-wide logits bound an evaluation's memory: the sampler may take 32
    prompts a pass, the scoring forward passes still take 16 answers at most."""
    import rlhf_edu.eval_rows as er

    policy, tok = tiny_model_and_tokenizer(seed=0)
    preset = dataclasses.replace(
        PRESET, n_eval=40, eval_sampling=SamplingConfig(max_new_tokens=4, temperature=0.7, batch_size=32)
    )
    rows_seen = []
    real = er.response_logits
    monkeypatch.setattr(
        er, "response_logits", lambda model, ids, *a, **k: rows_seen.append(len(ids)) or real(model, ids, *a, **k)
    )
    rows, _ = yardstick.evaluate("p", policy, tok, preset, device_setup("cpu"), reference=copy.deepcopy(policy))
    assert len(rows) == 40 and sum(rows_seen) == 40 and max(rows_seen) == 16
