"""Simulated annotator, label store and the PreferenceLabeler widget, headless (button.click())."""

import json
import math
import subprocess
import sys
import textwrap

import pytest

from rlhf_edu.annotator import AnnotatorConfig, SimulatedAnnotator, preference_probability
from rlhf_edu.labels import LabelStore, replay, screen_to_index
from rlhf_edu.metrics import wilson_interval
from rlhf_edu.widgets import PreferenceLabeler

P = "Explain rain to a 10-year-old."
GOOD = "Rain is water that falls from clouds. Tiny drops join into big drops. Then they are heavy and fall down."
BAD = "rain rain rain rain rain rain rain rain"


def pairs(n=6):
    return [{"pair_id": f"p{i}", "prompt": P, "responses": [GOOD, BAD + str(i)]} for i in range(n)]


# ---------------------------------------------------------------- annotator

def test_bradley_terry_probability_reference_values():
    assert preference_probability(0.5, 0.5, 0.05) == 0.5
    assert preference_probability(0.6, 0.5, 0.05) == pytest.approx(1 / (1 + math.exp(-2)))  # 0.880797
    assert preference_probability(0.6, 0.5, 0.05) == pytest.approx(0.880797, abs=1e-6)
    assert preference_probability(0.5, 0.5, 0.05, position_bias=1.0) == pytest.approx(0.731059, abs=1e-6)
    assert preference_probability(0.0, 1.0, 0.001) == pytest.approx(0.0, abs=1e-12)  # no overflow


def test_annotator_is_seeded_and_mostly_right():
    ann = SimulatedAnnotator(AnnotatorConfig(temperature=0.05, seed=1))
    assert ann.label(P, GOOD, BAD) == ann.label(P, GOOD, BAD)  # same pair, same label
    assert ann.noiseless_label(P, GOOD, BAD) == "A" and ann.noiseless_label(P, BAD, GOOD) == "B"
    assert ann.label(P, GOOD, GOOD) == "tie"
    # A noisy annotator on a near-tie flips about as often as Bradley-Terry says.
    noisy = [SimulatedAnnotator(AnnotatorConfig(temperature=10.0, seed=s)).label(P, GOOD, BAD) for s in range(400)]
    share_a = noisy.count("A") / len(noisy)
    gap = ann.gold_gap(P, GOOD, BAD)
    assert abs(share_a - preference_probability(gap, 0, 10.0)) < 0.08


def test_position_bias_favours_a():
    biased = [SimulatedAnnotator(AnnotatorConfig(temperature=10.0, position_bias=2.0, seed=s)).label(P, BAD, GOOD) for s in range(300)]
    assert biased.count("A") / 300 > 0.75


def test_annotator_config_errors():
    with pytest.raises(ValueError, match="temperature"):
        AnnotatorConfig(temperature=0)


def test_wilson_interval_reference_values():
    lo, hi = wilson_interval(8, 10)  # reference: (0.490162, 0.943318)
    assert (lo, hi) == (pytest.approx(0.490162, abs=1e-5), pytest.approx(0.943318, abs=1e-5))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


# ---------------------------------------------------------------- store

def test_screen_to_index():
    assert screen_to_index("A", swapped=False) == 0 and screen_to_index("B", swapped=False) == 1
    assert screen_to_index("A", swapped=True) == 1 and screen_to_index("B", swapped=True) == 0
    assert screen_to_index("tie", swapped=True) is None


def test_replay_applies_undo():
    ev = [{"event": "label", "item": 0}, {"event": "skip", "item": 1}, {"event": "undo", "item": 1}, {"event": "undo", "item": 0}, {"event": "undo"}]
    assert replay(ev) == []
    assert replay(ev[:3]) == [ev[0]]


def test_corrupted_trailing_line_is_skipped_with_a_warning(tmp_path):
    store = LabelStore(tmp_path / "labels.jsonl")
    store.append({"event": "label", "item": 0, "choice": "A"})
    with open(store.path, "a") as f:
        f.write('{"event": "label", "item": 1, "cho')  # half-written line
    with pytest.warns(UserWarning, match="line 2"):
        assert len(store.events()) == 1


# ---------------------------------------------------------------- widget

def test_every_button_records_the_right_event(tmp_path):
    path = tmp_path / "labels.jsonl"
    lab = PreferenceLabeler(pairs(), path, min_interval=0, seed=3)
    lab.rationale.value = "clearer"
    lab.buttons["A"].click()
    lab.buttons["B"].click()
    lab.buttons["tie"].click()
    lab.buttons["undo"].click()
    lab.buttons["skip"].click()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in events] == ["label", "label", "label", "undo", "skip"]
    assert [e.get("choice") for e in events] == ["A", "B", "tie", None, None]
    assert events[0]["rationale"] == "clearer" and events[1]["rationale"] == ""
    for e in events[:2]:
        assert e["chosen_index"] == screen_to_index(e["choice"], e["swapped"])
        assert e["swapped"] == lab.swapped(e["item"])
    assert events[3]["item"] == 2  # the undo took back the tie
    assert lab.position == 3 and lab.progress_text.value == "3 / 6"


def test_hotkeys_label_and_clear(tmp_path):
    lab = PreferenceLabeler(pairs(), tmp_path / "l.jsonl", min_interval=0)
    for key in ["a", "b", "t", "s", "x"]:
        lab.hotkeys.value = key
        assert lab.hotkeys.value == ""
    assert [(d["event"], d["choice"]) for d in lab.decisions] == [("label", "A"), ("label", "B"), ("label", "tie"), ("skip", None)]


def test_double_click_records_one_label(tmp_path):
    lab = PreferenceLabeler(pairs(), tmp_path / "l.jsonl", min_interval=5.0)
    lab.buttons["A"].click()
    lab.buttons["A"].click()
    assert lab.position == 1


def test_sides_are_randomized_and_shown_blind(tmp_path):
    lab = PreferenceLabeler(pairs(40), tmp_path / "l.jsonl", seed=0)
    swaps = [lab.swapped(i) for i in range(40)]
    assert 10 < sum(swaps) < 30
    a, b = lab.shown(0)
    assert {a, b} == set(lab.pairs[0]["responses"])
    assert "p0" not in lab.pane_a.value + lab.pane_b.value  # no source identity on screen


def test_resume_after_restart_replays_the_file(tmp_path):
    path = tmp_path / "l.jsonl"
    first = PreferenceLabeler(pairs(), path, min_interval=0)
    first.buttons["A"].click()
    first.buttons["B"].click()
    first.buttons["skip"].click()
    first.buttons["undo"].click()
    again = PreferenceLabeler(pairs(), path, min_interval=0)  # a new kernel, same file
    assert again.position == 2
    assert again.pane_a.value == first.pane_a.value


def test_done_state_and_autopilot(tmp_path):
    lab = PreferenceLabeler(pairs(4), tmp_path / "l.jsonl", min_interval=0)
    assert lab.run_autopilot(SimulatedAnnotator()) == 4
    assert lab.done and lab.buttons["A"].disabled and not lab.buttons["undo"].disabled
    assert lab.label("A") is None
    # the annotator prefers GOOD (response 0) in every pair
    assert all(d["chosen_index"] == 0 for d in lab.decisions)


def test_bad_pairs_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="pair 0"):
        PreferenceLabeler([{"pair_id": "x", "prompt": P, "responses": [GOOD]}], tmp_path / "l.jsonl")
    with pytest.raises(ValueError, match="at least one"):
        PreferenceLabeler([], tmp_path / "l.jsonl")


def test_every_clicked_label_survives_sigkill(tmp_path, sigkill_when):
    """A kernel killed between clicks loses nothing that was clicked."""
    path = tmp_path / "l.jsonl"
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time, pathlib
        from rlhf_edu.widgets import PreferenceLabeler
        pairs = [{{"pair_id": f"p{{i}}", "prompt": "q", "responses": ["a{{i}}", "b{{i}}"]}} for i in range(50)]
        lab = PreferenceLabeler(pairs, {str(path)!r}, min_interval=0)
        for i in range(7):
            lab.buttons["A" if i % 2 else "B"].click()
        pathlib.Path({str(ready)!r}).write_text("7")
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    sigkill_when(proc, ready.exists, "child did not get to the clicks")
    assert len(LabelStore(path).decisions()) == 7


# ---------------------------------------------------------------- export and feedback

from rlhf_edu.labels import label_feedback, labels_to_rows, with_repeats


def test_repeats_export_and_feedback(tmp_path):
    queue = with_repeats(pairs(6), 2, seed=0)
    assert len(queue) == 8 and queue[-1]["repeat_of"] in {p["pair_id"] for p in pairs(6)}
    lab = PreferenceLabeler(queue, tmp_path / "l.jsonl", min_interval=0)
    lab.run_autopilot(SimulatedAnnotator())
    fb = label_feedback(lab.decisions, queue, SimulatedAnnotator())
    assert fb["n_labeled"] == 8 and fb["agreement"] == 1.0 and fb["self_consistency"] == 1.0
    assert fb["n_repeats"] == 2 and 0.0 <= fb["share_A"] <= 1.0
    rows = labels_to_rows(lab.decisions, queue)
    assert len(rows) == 6  # each repeated pair exported once
    assert all(r["chosen"] == GOOD and r["rejected"].startswith(BAD) for r in rows)


def test_export_handles_ties_and_skips_explicitly(tmp_path):
    lab = PreferenceLabeler(pairs(3), tmp_path / "l.jsonl", min_interval=0)
    lab.label("tie")
    lab.label("skip")
    lab.label("B")
    assert len(labels_to_rows(lab.decisions, lab.pairs)) == 1
    with_ties = labels_to_rows(lab.decisions, lab.pairs, include_ties=True)
    assert [r["tie"] for r in with_ties] == [True, False]
    b = lab.decisions[-1]
    assert with_ties[1]["chosen"] == lab.pairs[2]["responses"][b["chosen_index"]]


def test_feedback_flags_a_position_biased_labeler(tmp_path):
    queue = [{"pair_id": f"p{i}", "prompt": P, "responses": [GOOD, GOOD.replace("Rain", "Rain water") + str(i)]} for i in range(60)]
    lab = PreferenceLabeler(queue, tmp_path / "l.jsonl", min_interval=0)
    for _ in queue:
        lab.label("A")  # always the left pane
    fb = label_feedback(lab.decisions, queue, SimulatedAnnotator())
    assert fb["share_A"] == 1.0 and fb["share_A_ci"][0] > 0.9


def test_noise_ceiling_counts_rubric_agreement_without_ties():
    from rlhf_edu.annotator import noise_ceiling

    rows = [{"prompt": P, "chosen": GOOD, "rejected": BAD}, {"prompt": P, "chosen": BAD, "rejected": GOOD},
            {"prompt": P, "chosen": GOOD, "rejected": GOOD}]
    assert noise_ceiling(rows, SimulatedAnnotator()) == (0.5, 2)
