"""Simulated annotator, label store and the PreferenceLabeler widget, headless (button.click())."""

import html
import itertools
import json
import math
import random
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
    biased = [
        SimulatedAnnotator(AnnotatorConfig(temperature=10.0, position_bias=2.0, seed=s)).label(P, BAD, GOOD)
        for s in range(300)
    ]
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
    ev = [
        {"event": "label", "item": 0},
        {"event": "skip", "item": 1},
        {"event": "undo", "item": 1},
        {"event": "undo", "item": 0},
        {"event": "undo"},
    ]
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
    assert [(d["event"], d["choice"]) for d in lab.decisions] == [
        ("label", "A"),
        ("label", "B"),
        ("label", "tie"),
        ("skip", None),
    ]


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
    queue = [
        {"pair_id": f"p{i}", "prompt": P, "responses": [GOOD, GOOD.replace("Rain", "Rain water") + str(i)]}
        for i in range(60)
    ]
    lab = PreferenceLabeler(queue, tmp_path / "l.jsonl", min_interval=0)
    for _ in queue:
        lab.label("A")  # always the left pane
    fb = label_feedback(lab.decisions, queue, SimulatedAnnotator())
    assert fb["share_A"] == 1.0 and fb["share_A_ci"][0] > 0.9


def test_noise_ceiling_counts_rubric_agreement_without_ties():
    from rlhf_edu.annotator import noise_ceiling

    rows = [
        {"prompt": P, "chosen": GOOD, "rejected": BAD},
        {"prompt": P, "chosen": BAD, "rejected": GOOD},
        {"prompt": P, "chosen": GOOD, "rejected": GOOD},
    ]
    assert noise_ceiling(rows, SimulatedAnnotator()) == (0.5, 2)


# ---------------------------------------------------------------- review fixes

from rlhf_edu.labels import feedback_text, pair_digest
from rlhf_edu.widgets import CUT_OFF


def other_pairs(n):
    """The same ids as pairs(n), other texts: what another preset or SFT model samples."""
    return [
        {"pair_id": f"p{i}", "prompt": f"Explain wind, take {i}.", "responses": [GOOD, BAD + "?" + str(i)]}
        for i in range(n)
    ]


def test_labels_for_another_queue_are_kept_and_left_out(tmp_path):
    """make course PRESET=smoke, then PRESET=cpu in one checkout: a queue of 4 + 1 repeat labeled,
    then a queue of 12 + 3 repeats with the same ids for other texts."""
    path = tmp_path / "you.jsonl"
    smoke = with_repeats(pairs(4), 1, seed=0)
    PreferenceLabeler(smoke, path, min_interval=0).run_autopilot(SimulatedAnnotator())
    smoke_file = path.read_text()

    cpu = with_repeats(other_pairs(12), 3, seed=0)
    lab = PreferenceLabeler(cpu, path, min_interval=0)  # no KeyError, no traceback
    assert lab.position == 0 and lab.decisions == [] and lab.progress_text.value == "0 / 15"
    assert "5 earlier label(s) for pairs that are not in this queue" in lab.notice
    assert "stay in the file" in lab.notice and lab.notice in html.unescape(lab.notice_html.value)
    fb = label_feedback(lab.decisions, cpu, SimulatedAnnotator())
    assert fb["n_labeled"] == 0 and labels_to_rows(lab.decisions, cpu) == []
    # the stale decisions read straight from the file do not crash the helpers either
    assert label_feedback(LabelStore(path).decisions(), cpu, SimulatedAnnotator())["n_labeled"] == 0
    assert labels_to_rows(LabelStore(path).decisions(), cpu) == []

    lab.run_autopilot(SimulatedAnnotator(), n=2)
    lab.buttons["undo"].click()  # takes back a label of this queue, not one of the old file
    assert lab.position == 1 and [d["pair_id"] for d in lab.decisions] == ["p0"]
    assert path.read_text().startswith(smoke_file)  # nothing deleted or rewritten

    back = PreferenceLabeler(smoke, path, min_interval=0)  # back to the first queue: all there
    assert back.done and len(back.decisions) == 5
    assert "1 label(s) match this queue" not in back.notice and "5 label(s) match this queue" in back.notice
    assert label_feedback(back.decisions, smoke, SimulatedAnnotator())["n_labeled"] == 5


def test_a_queue_sharing_some_pairs_reuses_their_labels(tmp_path):
    path = tmp_path / "you.jsonl"
    first = PreferenceLabeler(pairs(3), path, min_interval=0)
    first.label("A")
    first.label("B")
    grown = pairs(3)[:1] + other_pairs(3)[1:2] + pairs(3)[1:]  # p0 same, then a changed pair, then p1, p2
    grown[1] = {**grown[1], "pair_id": "new"}
    lab = PreferenceLabeler(grown, path, min_interval=0)
    assert [(d["pair_id"], d["item"]) for d in lab.decisions] == [("p0", 0), ("p1", 2)]
    assert lab.position == 1 and lab.notice == ""
    lab.label("tie")
    assert lab.position == 3 and lab.done is False


def test_label_files_without_digests_resume_only_on_their_own_queue(tmp_path):
    """Files written before events had a pair_digest: used when their ids sit at their items."""
    path = tmp_path / "you.jsonl"
    store = LabelStore(path)
    for i, pair_id in enumerate(["p0", "p1", "p1#again"]):
        store.append(
            {
                "event": "label",
                "item": i,
                "pair_id": pair_id,
                "choice": "A",
                "swapped": False,
                "chosen_index": 0,
                "rationale": "",
                "annotator": "you",
            }
        )
    assert PreferenceLabeler(pairs(2), path, min_interval=0).decisions == []  # p1#again is not at item 2
    own = [*pairs(2), {**pairs(2)[1], "pair_id": "p1#again", "repeat_of": "p1"}]
    assert PreferenceLabeler(own, path, min_interval=0).done


def test_torn_line_does_not_swallow_the_next_label(tmp_path):
    """p0 written, p1 torn (the machine died mid-line), then p2: replay gives p0 and p2."""
    store = LabelStore(tmp_path / "labels.jsonl")
    store.append({"event": "label", "item": 0, "pair_id": "p0", "choice": "A"})
    with open(store.path, "a") as f:
        f.write('{"event": "label", "item": 1, "pair_id": "p1", "cho')  # no newline
    store.append({"event": "label", "item": 1, "pair_id": "p2", "choice": "B"})
    with pytest.warns(UserWarning, match="line 2"):
        assert [d["pair_id"] for d in store.decisions()] == ["p0", "p2"]
    assert store.path.read_text().endswith("\n")


def test_undo_clears_the_rationale(tmp_path):
    path = tmp_path / "l.jsonl"
    lab = PreferenceLabeler(pairs(), path, min_interval=0)
    lab.rationale.value = "shorter"
    lab.buttons["A"].click()
    lab.rationale.value = "typed for p1"  # then the learner changes their mind about p0
    lab.buttons["undo"].click()
    assert lab.rationale.value == ""
    lab.buttons["B"].click()
    assert [(d["pair_id"], d["rationale"]) for d in lab.decisions] == [("p0", "")]


def test_a_repeat_never_follows_its_original():
    for n, k in [(4, 1), (2, 1), (5, 2), (12, 3), (6, 6)]:
        for seed in range(200):
            queue = with_repeats(pairs(n), k, seed=seed)
            ids = [q.get("repeat_of", q["pair_id"]) for q in queue]
            assert all(a != b for a, b in itertools.pairwise(ids)), (n, k, seed, ids)
            assert len(queue) == n + k and len(set(ids[n:])) == k
            assert queue == with_repeats(pairs(n), k, seed=seed)  # seeded, deterministic
    # seed 0 (the smoke queue: 4 pairs, 1 repeat) draws the last pair: another one comes back instead
    assert random.Random(0).sample(pairs(4), 1)[0]["pair_id"] == "p3"
    assert with_repeats(pairs(4), 1, seed=0)[-1]["pair_id"] != "p3#again"


def test_cut_off_side_shows_a_marker(tmp_path):
    queue = [
        {"pair_id": f"p{i}", "prompt": P, "responses": [GOOD, BAD + str(i)], "eos": [True, False]} for i in range(6)
    ]
    lab = PreferenceLabeler(queue, tmp_path / "l.jsonl", min_interval=0)
    seen_swapped = set()
    while not lab.done:
        item = lab.position
        swapped = lab.swapped(item)
        seen_swapped.add(swapped)
        cut, whole = (lab.pane_a, lab.pane_b) if swapped else (lab.pane_b, lab.pane_a)  # response 1 has no EOS
        assert html.escape(CUT_OFF) in cut.value and "cut off" not in whole.value
        assert lab.shown_eos(item) == ((False, True) if swapped else (True, False))
        lab.label("skip")
    assert seen_swapped == {True, False}
    assert "cut off" not in PreferenceLabeler(pairs(2), tmp_path / "m.jsonl").pane_a.value  # no eos flags: whole


def test_feedback_with_no_labels_says_so_and_stores_no_nan(tmp_path):
    queue = with_repeats(pairs(4), 1)
    lab = PreferenceLabeler(queue, tmp_path / "l.jsonl", min_interval=0)
    fb = label_feedback(lab.decisions, queue, SimulatedAnnotator())
    assert fb["n_labeled"] == 0 and fb["agreement"] is None and fb["self_consistency"] is None
    assert fb["share_A"] is None and fb["agreement_ci"] == (None, None)
    json.dumps(fb, allow_nan=False)  # stored as null, never NaN
    text = feedback_text(fb)
    assert "Nothing labeled yet: 0 of 5 pairs" in text and "annotator's labels only" in text
    assert "nan" not in text.lower()


def test_feedback_with_labels_but_no_repeats(tmp_path):
    queue = with_repeats(pairs(4), 1)
    lab = PreferenceLabeler(queue, tmp_path / "l.jsonl", min_interval=0)
    lab.label("A")
    lab.label("tie")
    fb = label_feedback(lab.decisions, queue, SimulatedAnnotator())
    assert fb["n_labeled"] == 2 and fb["n_repeats"] == 0 and fb["self_consistency"] is None
    json.dumps(fb, allow_nan=False)
    text = feedback_text(fb)
    assert "no repeated pair labeled yet" in text and "nan" not in text.lower()
    assert "labels: 2 of 5 pairs (1 ties)" in text and "picked the left pane (A): 100%" in text


def test_pair_digest_depends_on_the_texts():
    a, b = pairs(1)[0], other_pairs(1)[0]
    assert a["pair_id"] == b["pair_id"] and pair_digest(a) != pair_digest(b)
    assert pair_digest(a) == pair_digest(dict(a))


# ---------------------------------------------------------------- notebook 02's output


def test_quiet_progress_bars_hides_loading_and_saving_only(tmp_path, capfd):
    """No "Loading weights" / "Writing model shards" / "Generating train split" bars; others stay."""
    import datasets
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    import rlhf_edu
    from rlhf_edu.data import load_concepts
    from rlhf_edu.models import tiny_model_and_tokenizer

    if not hasattr(hf_logging, "set_tqdm_hook") or not hf_logging.is_progress_bar_enabled():
        pytest.skip("this transformers has no tqdm hook, or its bars are off already")
    model, _ = tiny_model_and_tokenizer()
    try:
        rlhf_edu.quiet_progress_bars()
        rlhf_edu.quiet_progress_bars()  # twice is the same as once
        capfd.readouterr()
        model.save_pretrained(tmp_path / "m")
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")
        load_concepts("train")
        err = capfd.readouterr().err
        for bar in ("Loading weights", "Writing model shards", "Generating train split"):
            assert bar not in err
        other = hf_logging.tqdm(range(2), desc="Downloading")  # any other bar of transformers stays
        assert not other.disable
        other.close()
        assert datasets.is_progress_bar_enabled() is False
    finally:
        hf_logging.set_tqdm_hook(None)
        datasets.enable_progress_bars()


def test_config_table_prints_one_field_per_line():
    from rlhf_edu.annotator import AnnotatorConfig
    from rlhf_edu.presets import config_table, get_preset

    text = config_table(AnnotatorConfig(temperature=0.05))
    assert text.splitlines()[0] == "AnnotatorConfig" and "  temperature    0.05" in text.splitlines()
    assert (
        config_table({"seed": 0, "tie_threshold": 0.005}, "annotator")
        == "annotator\n  seed           0\n  tie_threshold  0.005"
    )
    nested = config_table(get_preset("smoke"))
    assert "\n  eval_sampling\n    max_new_tokens" in nested and "(" not in nested.splitlines()[1]


def test_odd_lines_in_the_label_file_never_raise(tmp_path):
    """Hand-edited or foreign lines: left out, never a traceback; two standing labels of one pair count once."""
    path = tmp_path / "you.jsonl"
    lab = PreferenceLabeler(pairs(3), path, min_interval=0)
    lab.label("A")
    first = json.loads(path.read_text())
    store = LabelStore(path)
    store.append({"event": "label", "item": "zero"})  # no pair_id, an item that is not a number
    store.append({**first, "choice": "B", "chosen_index": 1 - first["chosen_index"], "time": None})  # a second tab
    again = PreferenceLabeler(pairs(3), path, min_interval=0)
    assert [(d["pair_id"], d["choice"]) for d in again.decisions] == [("p0", "A")] and again.position == 1
    fb = label_feedback(again.decisions, again.pairs, SimulatedAnnotator())
    assert fb["n_labeled"] == 1 and fb["n_repeats"] == 0
    assert len(labels_to_rows(again.decisions, again.pairs)) == 1
