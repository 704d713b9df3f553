"""Preference labels on disk: an append-only JSON Lines log, replayed to resume.

Every click is one event, one line, written, flushed and fsynced before the widget moves on, so a
crash or a killed kernel loses nothing that was clicked. Widget state is never trusted: it is not
saved in Colab and is lossy in JupyterLab. Events:

    {"event": "label", "item": 3, "pair_id": "p17", "choice": "A", "swapped": true, "chosen_index": 1,
     "rationale": "shorter", "annotator": "you", "time": "2026-11-25T21:00:00+00:00"}
    {"event": "skip", "item": 4, "pair_id": "p18", ...}
    {"event": "undo", "item": 4, ...}            # takes back the latest label or skip

`choice` is what was clicked on screen ("A", "B", "tie"); `chosen_index` maps it back to the pair's
own response order (0 or 1; None for a tie), using the recorded `swapped` flag.

A pair is known by its `pair_id` and `pair_digest`, a short hash of its prompt and responses: a
queue sampled with another preset or another SFT model reuses the ids "you-0", "you-1", ... for
other texts. `match_queue` keeps the events of the pairs in the current queue and leaves the others
in the file, untouched, so going back to that queue finds them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from datetime import datetime, timezone
from pathlib import Path

EVENTS = ("label", "skip", "undo")


class LabelStore:
    """Append-only JSONL event log. Notebook: 02_label_preferences.ipynb"""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: dict) -> dict:
        """Write one event as one line; flushed and fsynced before returning.

        A file that does not end with a newline lost the end of its last line (the machine died
        mid-write): a newline goes first, so that torn line stays alone (skipped on replay) and this
        event is a line of its own."""
        if event.get("event") not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, got {event.get('event')!r}")
        event = {**event, "time": event.get("time") or datetime.now(timezone.utc).isoformat(timespec="seconds")}
        line = (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")
        with self.path.open("a+b") as f:  # "a": every write lands at the end, whatever we read
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return event

    def events(self) -> list[dict]:
        """Every readable event in order. A corrupted line (e.g. half-written when the machine
        died) is skipped with a warning naming the file and line, never a crash."""
        if not self.path.exists():
            return []
        events = []
        with self.path.open(encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict) or event.get("event") not in EVENTS:
                        raise ValueError("not a label event")
                except ValueError:
                    warnings.warn(
                        f"{self.path}, line {line_no}: unreadable label event skipped: {line[:80]!r}", stacklevel=2
                    )
                    continue
                events.append(event)
        return events

    def decisions(self) -> list[dict]:
        """Replay: labels and skips in order, with every undo applied (the current state)."""
        return replay(self.events())


def replay(events: list[dict]) -> list[dict]:
    """Labels and skips that stand after applying undos in order."""
    stack: list[dict] = []
    for event in events:
        if event["event"] == "undo":
            if stack:
                stack.pop()
        else:
            stack.append(event)
    return stack


def pair_digest(pair: dict) -> str:
    """A short hash of a pair's prompt and responses; with its `pair_id`, the pair's identity."""
    text = "\x00".join([pair["prompt"], *pair["responses"]])
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def match_queue(events: list[dict], pairs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(decisions that stand for this queue, events of other pairs).

    An event belongs to the queue when its pair_id and pair_digest name a pair in it; the decisions
    are replayed from those events only (so an undo takes back a label of this queue) and carry
    `item`, the pair's position in this queue, one decision per pair (the first, should two stand).
    Events written before pairs had a digest count when every label they leave standing has its
    pair_id at its item; otherwise they are left out too.
    """
    index = {(p["pair_id"], pair_digest(p)): i for i, p in enumerate(pairs)}
    legacy = [e for e in events if "pair_digest" not in e]
    legacy_fits = all(
        isinstance(d.get("item"), int)
        and 0 <= d["item"] < len(pairs)
        and pairs[d["item"]]["pair_id"] == d.get("pair_id")
        for d in replay(legacy)
    )
    mine, other = [], []
    for e in events:
        if "pair_digest" in e:
            (mine if (e.get("pair_id"), e["pair_digest"]) in index else other).append(e)
        else:
            (mine if legacy_fits else other).append(e)
    decisions, seen = [], set()
    for d in replay(mine):
        item = index.get((d.get("pair_id"), d.get("pair_digest")), d.get("item"))
        if item not in seen:
            seen.add(item)
            decisions.append({**d, "item": item})
    return decisions, other


def _of_queue(decisions: list[dict], pairs: list[dict]) -> tuple[list[dict], dict[str, dict]]:
    """(the decisions whose pair is in `pairs`, pairs by id); a decision with a pair_digest must
    match the pair's texts too."""
    by_id = {p["pair_id"]: p for p in pairs}
    digests = {pid: pair_digest(p) for pid, p in by_id.items()}
    kept = [
        d
        for d in decisions
        if d.get("pair_id") in by_id and d.get("pair_digest", digests[d["pair_id"]]) == digests[d["pair_id"]]
    ]
    return kept, by_id


def stale_labels_notice(path: Path, n_other: int, n_kept: int) -> str:
    """Plain words for a label file that also holds labels for pairs not in the current queue."""
    if not n_other:
        return ""
    kept = f" {n_kept} label(s) match this queue and are used." if n_kept else ""
    return (
        f"{path} also holds {n_other} earlier label(s) for pairs that are not in this queue: they were "
        f"made for another queue (another preset, or an SFT model trained since). They stay in the file, "
        f"unchanged, and are left out here; they count again if you come back to that queue.{kept} "
        f"Nothing to do: label this queue as usual."
    )


def screen_to_index(choice: str, swapped: bool) -> int | None:
    """Map an on-screen choice back to the pair's response index (None for a tie).

    Not swapped: A shows response 0 and B response 1. Swapped: A shows response 1.
    """
    if choice == "tie":
        return None
    if choice not in ("A", "B"):
        raise ValueError(f"choice must be 'A', 'B' or 'tie', got {choice!r}")
    shown_first = 1 if swapped else 0
    return shown_first if choice == "A" else 1 - shown_first


def with_repeats(pairs: list[dict], n_repeats: int, seed: int = 0) -> list[dict]:
    """The labeling queue: `pairs`, then `n_repeats` of them again (new ids `<id>#again`), so that
    self-consistency can be measured. The repeats come last and get their own side coin.

    A repeat never comes straight after its original (the labeler would remember the first
    answer): when the last pair is drawn, it goes last among the repeats, or, as the only repeat,
    gives way to another pair. Only a queue of a single pair cannot avoid it.
    """
    rng = random.Random(seed)
    again = rng.sample(pairs, min(n_repeats, len(pairs)))
    if again and len(pairs) > 1 and again[0] is pairs[-1]:
        if len(again) > 1:
            again = again[1:] + again[:1]
        else:
            again = [rng.choice(pairs[:-1])]
    return list(pairs) + [{**p, "pair_id": f"{p['pair_id']}#again", "repeat_of": p["pair_id"]} for p in again]


def labels_to_rows(decisions: list[dict], pairs: list[dict], include_ties: bool = False) -> list[dict]:
    """Decisions -> {prompt, chosen, rejected, pair_id, annotator} rows.

    Skips are dropped. Ties are dropped by default (the Bradley-Terry loss has no term for them);
    with include_ties=True a tie becomes a row with chosen/rejected in the pair's own order and
    `tie: True`, for tie-aware losses. Repeats of a pair are exported once (the first label).
    Decisions for pairs not in `pairs` (another id, or the same id for other texts) are left out.
    """
    decisions, by_id = _of_queue(decisions, pairs)
    rows, seen = [], set()
    for d in decisions:
        if d["event"] != "label":
            continue
        pair = by_id[d["pair_id"]]
        base_id = pair.get("repeat_of", pair["pair_id"])
        if base_id in seen:
            continue
        seen.add(base_id)
        r0, r1 = pair["responses"]
        if d["choice"] == "tie":
            if include_ties:
                rows.append(
                    {
                        "prompt": pair["prompt"],
                        "chosen": r0,
                        "rejected": r1,
                        "pair_id": base_id,
                        "annotator": d["annotator"],
                        "tie": True,
                    }
                )
            continue
        win = d["chosen_index"]
        eos = pair.get("eos", [True, True])
        rows.append(
            {
                "prompt": pair["prompt"],
                "chosen": pair["responses"][win],
                "rejected": pair["responses"][1 - win],
                "chosen_eos": eos[win],
                "rejected_eos": eos[1 - win],
                "pair_id": base_id,
                "annotator": d["annotator"],
                **({"tie": False} if include_ties else {}),
            }
        )
    return rows


def label_feedback(decisions: list[dict], pairs: list[dict], annotator) -> dict:
    """How a labeler's decisions compare with the gold rubric and with themselves.

    - agreement: share of A/B labels that pick the response the noiseless rubric prefers (pairs the
      rubric calls a tie are left out), with a 95% Wilson interval;
    - self_consistency: share of repeated pairs given the same underlying answer both times;
    - share_A: share of A/B labels that picked the left pane; about 0.5 when there is no position bias.

    A share with nothing to count (no labels yet, no repeated pair labeled yet) is None, never NaN,
    so it is stored as null. Decisions for pairs not in `pairs` (another id, or the same id for other
    texts) are left out. `feedback_text` puts the result in words. Notebook: 02_label_preferences.ipynb
    """
    from rlhf_edu.metrics import wilson_interval

    decisions, by_id = _of_queue(decisions, pairs)
    labels = [d for d in decisions if d["event"] == "label"]
    ab = [d for d in labels if d["choice"] in ("A", "B")]
    agree = n_compared = 0
    for d in ab:
        pair = by_id[d["pair_id"]]
        gold = annotator.noiseless_label(pair["prompt"], *pair["responses"], *pair.get("eos", [True, True]))
        if gold == "tie":
            continue
        n_compared += 1
        agree += int(gold == ("A" if d["chosen_index"] == 0 else "B"))
    first: dict[str, object] = {}
    same = n_repeats = 0
    for d in labels:
        base = by_id[d["pair_id"]].get("repeat_of", d["pair_id"])
        answer = "tie" if d["choice"] == "tie" else d["chosen_index"]
        if base in first:
            n_repeats += 1
            same += int(first[base] == answer)
        else:
            first[base] = answer
    n_a = sum(d["choice"] == "A" for d in ab)
    return {
        "n_pairs": len(pairs),
        "n_labeled": len(labels),
        "n_ties": sum(d["choice"] == "tie" for d in labels),
        "n_skipped": sum(d["event"] == "skip" for d in decisions),
        "agreement": agree / n_compared if n_compared else None,
        "agreement_ci": wilson_interval(agree, n_compared) if n_compared else (None, None),
        "n_compared": n_compared,
        "self_consistency": same / n_repeats if n_repeats else None,
        "n_repeats": n_repeats,
        "share_A": n_a / len(ab) if ab else None,
        "share_A_ci": wilson_interval(n_a, len(ab)) if ab else (None, None),
    }


def feedback_text(fb: dict) -> str:
    """`label_feedback`'s result in plain words, one line per check; says so when there is nothing
    to measure yet, and what the course does without your labels. Notebook: 02_label_preferences.ipynb"""
    if fb["n_labeled"] == 0:
        skipped = f" ({fb['n_skipped']} skipped)" if fb["n_skipped"] else ""
        return (
            f"Nothing labeled yet: 0 of {fb['n_pairs']} pairs{skipped}, so there is no feedback to give and "
            f"nothing of yours to export. Notebook 03 then trains the reward model on the annotator's "
            f"labels only. To add yours, label pairs in the widget above and run the cells below again."
        )
    n_ties, n_skipped = fb["n_ties"], fb["n_skipped"]
    lines = [f"labels: {fb['n_labeled']} of {fb['n_pairs']} pairs ({n_ties} ties), skipped: {n_skipped}"]
    if fb["agreement"] is None:
        lines.append("agreement with the rubric: no A/B label on a pair the rubric does not call a tie yet")
    else:
        lo, hi = fb["agreement_ci"]
        lines.append(
            f"agreement with the rubric: {fb['agreement']:.0%} of {fb['n_compared']} (95% CI {lo:.0%} to {hi:.0%})"
        )
    if fb["self_consistency"] is None:
        lines.append(
            "self-consistency on repeated pairs: no repeated pair labeled yet (they come at the end of the queue)"
        )
    else:
        lines.append(f"self-consistency on repeated pairs: {fb['self_consistency']:.0%} of {fb['n_repeats']}")
    if fb["share_A"] is None:
        lines.append("picked the left pane (A): no A/B label yet")
    else:
        lo, hi = fb["share_A_ci"]
        lines.append(
            f"picked the left pane (A): {fb['share_A']:.0%} (95% CI {lo:.0%} to {hi:.0%}; 50% means no position bias)"
        )
    return "\n".join(lines)
