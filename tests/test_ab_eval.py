"""ABEvaluator headless (button.click()), un-blinding, resume, Wilson reference values, win-rate matrix."""

import json

import pytest

from rlhf_edu.ab_eval import ABEvaluator, win_rate, winrate_matrix
from rlhf_edu.annotator import AnnotatorConfig, SimulatedAnnotator
from rlhf_edu.metrics import wilson_interval

P = "Explain rain to a 10-year-old."
GOOD = "Rain is water that falls from clouds. Tiny drops join into big drops. Then they are heavy and fall down."
QUALITIES = "Rain is water that falls from clouds. When you see a puddle after school, that was rain. Clouds are like sponges that get too full"
MID = "Rain is water from clouds. It falls."
BAD = "rain rain rain rain rain rain rain rain"


def make(path, n=8, seed=0, **kw):
    prompts = [f"{P} ({i})" for i in range(n)]
    xs = [f"{GOOD} x{i}" for i in range(n)]
    ys = [f"{BAD} y{i}" for i in range(n)]
    return ABEvaluator(prompts, xs, ys, path, names=("sft", "ppo"), seed=seed, min_interval=0, **kw)


def side_of(ev, name_response_prefix):
    """The on-screen side ("A" or "B") showing the response that starts with this text."""
    a, _ = ev.shown(ev.position)
    return "A" if a.startswith(name_response_prefix) else "B"


def test_clicking_the_x_pane_unblinds_to_x_wins(tmp_path):
    path = tmp_path / "ab.jsonl"
    ev = make(path)
    swaps = [ev.swapped(i) for i in range(8)]
    assert 0 < sum(swaps) < 8  # both orders occur with this seed
    screen = ev.pane_a.value + ev.pane_b.value + ev.prompt_html.value
    assert GOOD in screen and "sft" not in screen and "ppo" not in screen  # names never shown
    while not ev.done:
        ev.buttons[side_of(ev, GOOD)].click()
    res = ev.results()
    assert (res["wins_x"], res["wins_y"], res["ties"], res["n"]) == (8, 0, 0, 8)
    assert res["win_rate"] == 1.0 and res["x"] == "sft"
    assert res["share_A"] == pytest.approx(1 - sum(swaps) / 8)  # picks follow the coin, not a side
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["swapped"] for e in events] == swaps  # sides recorded per item
    assert all(e["chosen_index"] == 0 for e in events)  # response 0 is policy X's
    rows = ev.unblinded()
    assert all(r["winner"] == "sft" for r in rows)
    assert [r["A"] for r in rows] == ["ppo" if s else "sft" for s in swaps]


def test_always_a_counts_unswapped_items_and_ties_are_half(tmp_path):
    ev = make(tmp_path / "ab.jsonl", n=6, seed=1)
    swaps = [ev.swapped(i) for i in range(6)]
    for _ in range(4):
        ev.buttons["A"].click()
    ev.buttons["tie"].click()
    ev.buttons["skip"].click()
    res = ev.results()
    expected_x = sum(not s for s in swaps[:4])
    assert (res["wins_x"], res["wins_y"], res["ties"], res["skipped"], res["n"]) == (
        expected_x,
        4 - expected_x,
        1,
        1,
        5,
    )
    assert res["win_rate"] == pytest.approx((expected_x + 0.5) / 5)
    assert res["ci"] == pytest.approx(wilson_interval(expected_x + 0.5, 5))
    assert ev.unblinded()[-1]["winner"] is None


def test_hotkeys_and_undo_go_through_the_store(tmp_path):
    ev = make(tmp_path / "ab.jsonl", n=4)
    ev.hotkeys.value = "t"
    ev.hotkeys.value = "a"
    ev.buttons["undo"].click()
    assert [d["choice"] for d in ev.decisions] == ["tie"]
    assert ev.results()["ties"] == 1 and ev.results()["win_rate"] == 0.5


def test_resume_on_the_same_file(tmp_path):
    path = tmp_path / "ab.jsonl"
    first = make(path)
    first.buttons["A"].click()
    first.buttons["B"].click()
    first.buttons["tie"].click()
    first.buttons["undo"].click()
    again = make(path)  # a restarted kernel
    assert again.position == 2
    assert again.results() == first.results()
    assert again.pane_a.value == first.pane_a.value and again.progress_text.value == "2 / 8"
    # a store written for other responses is refused, not silently mixed in
    with pytest.raises(ValueError, match="other prompts or responses"):
        ABEvaluator([f"{P} ({i})" for i in range(8)], [MID] * 8, [BAD] * 8, path, min_interval=0)


def test_autopilot_uses_the_gold_annotator_with_eos_in_shown_order(tmp_path):
    ev = make(tmp_path / "ab.jsonl", n=8)
    assert ev.autopilot(SimulatedAnnotator(), n=3) == 3 and ev.position == 3
    assert ev.autopilot(SimulatedAnnotator()) == 5 and ev.done
    assert ev.results()["wins_x"] == 8
    # Same text on both sides; only Y ended by itself, so the rubric prefers Y: "finished", and the
    # preference qualities, which count only in a finished answer (a gap of 0.58: never a coin flip).
    prompts = [f"{P} ({i})" for i in range(8)]
    texts = [f"{QUALITIES} {i}." for i in range(8)]
    cut = ABEvaluator(
        prompts,
        texts,
        texts,
        tmp_path / "eos.jsonl",
        eos_x=[False] * 8,
        eos_y=[True] * 8,
        min_interval=0,
    )
    assert 0 < sum(cut.swapped(i) for i in range(8)) < 8
    cut.run_autopilot(SimulatedAnnotator())  # the inherited name also passes eos
    assert cut.results()["wins_y"] == 8


def test_wilson_reference_values():
    # Wilson 95% (z = 1.959964): 0/10 -> (0, 0.277533); 5/10 -> (0.236593, 0.763407); 10/10 -> (0.722467, 1)
    for successes, (lo, hi) in [
        (0, (0.0, 0.277533)),
        (5, (0.236593, 0.763407)),
        (10, (0.722467, 1.0)),
    ]:
        assert wilson_interval(successes, 10) == pytest.approx((lo, hi), abs=1e-4)
    # 4 wins and 2 ties of 10 count as 5 successes
    assert win_rate(4, 2, 10) == (0.5, pytest.approx((0.236593, 0.763407), abs=1e-4))


def test_wilson_interval_of_a_full_evaluation(tmp_path):
    ev = make(tmp_path / "ab.jsonl", n=10, seed=3)
    while not ev.done:
        ev.buttons[side_of(ev, BAD)].click()  # Y wins every item
    assert ev.results()["ci"] == pytest.approx((0.0, 0.277533), abs=1e-4)


def test_winrate_matrix():
    prompts = [f"{P} ({i})" for i in range(12)]
    policies = {
        "good": [(f"{GOOD} {i}", True) for i in range(12)],
        "mid": [(f"{MID} {i}", True) for i in range(12)],
        "bad": [(f"{BAD} {i}", True) for i in range(12)],
    }
    m = winrate_matrix(policies, prompts, SimulatedAnnotator(AnnotatorConfig(temperature=0.01)))
    for a in policies:
        assert m[a][a] == 0.5
        for b in policies:
            assert m[a][b] + m[b][a] == pytest.approx(1.0)
    assert m["good"]["bad"] == 1.0 and m["bad"]["good"] == 0.0 and m["mid"]["bad"] == 1.0
    # A judge who nearly always picks A: randomized sides keep the matrix near 0.5, not near 1.
    biased = SimulatedAnnotator(AnnotatorConfig(temperature=10.0, position_bias=6.0))
    prompts40 = [f"{P} ({i})" for i in range(40)]
    two = {"good": [(GOOD, True)] * 40, "bad": [(BAD, True)] * 40}
    assert 0.25 < winrate_matrix(two, prompts40, biased)["good"]["bad"] < 0.75
    with pytest.raises(ValueError, match="responses for"):
        winrate_matrix({"a": [(GOOD, True)]}, prompts, biased)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="lengths differ"):
        ABEvaluator([P, P], [GOOD], [BAD, BAD], tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="names"):
        ABEvaluator([P], [GOOD], [BAD], tmp_path / "x.jsonl", names=("a", "a"))
