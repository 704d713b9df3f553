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
"""

from __future__ import annotations

import json
import os
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
        """Write one event as one line; flushed and fsynced before returning."""
        if event.get("event") not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, got {event.get('event')!r}")
        event = {**event, "time": event.get("time") or datetime.now(timezone.utc).isoformat(timespec="seconds")}
        line = json.dumps(event, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
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
                    warnings.warn(f"{self.path}, line {line_no}: unreadable label event skipped: {line[:80]!r}", stacklevel=2)
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
    self-consistency can be measured. The repeats come last and get their own side coin."""
    import random

    rng = random.Random(seed)
    again = rng.sample(pairs, min(n_repeats, len(pairs)))
    return list(pairs) + [{**p, "pair_id": f"{p['pair_id']}#again", "repeat_of": p["pair_id"]} for p in again]


def labels_to_rows(decisions: list[dict], pairs: list[dict], include_ties: bool = False) -> list[dict]:
    """Decisions -> {prompt, chosen, rejected, pair_id, annotator} rows.

    Skips are dropped. Ties are dropped by default (the Bradley-Terry loss has no term for them);
    with include_ties=True a tie becomes a row with chosen/rejected in the pair's own order and
    `tie: True`, for tie-aware losses. Repeats of a pair are exported once (the first label).
    """
    by_id = {p["pair_id"]: p for p in pairs}
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
                rows.append({"prompt": pair["prompt"], "chosen": r0, "rejected": r1, "pair_id": base_id,
                             "annotator": d["annotator"], "tie": True})
            continue
        win = d["chosen_index"]
        eos = pair.get("eos", [True, True])
        rows.append({"prompt": pair["prompt"], "chosen": pair["responses"][win], "rejected": pair["responses"][1 - win],
                     "chosen_eos": eos[win], "rejected_eos": eos[1 - win],
                     "pair_id": base_id, "annotator": d["annotator"], **({"tie": False} if include_ties else {})})
    return rows


def label_feedback(decisions: list[dict], pairs: list[dict], annotator) -> dict:
    """How a labeler's decisions compare with the gold rubric and with themselves.

    - agreement: share of A/B labels that pick the response the noiseless rubric prefers (pairs the
      rubric calls a tie are left out), with a 95% Wilson interval;
    - self_consistency: share of repeated pairs given the same underlying answer both times;
    - share_A: share of A/B labels that picked the left pane; about 0.5 when there is no position bias.

    Notebook: 02_label_preferences.ipynb
    """
    from rlhf_edu.metrics import wilson_interval

    by_id = {p["pair_id"]: p for p in pairs}
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
    out = {
        "n_labeled": len(labels), "n_ties": sum(d["choice"] == "tie" for d in labels),
        "n_skipped": sum(d["event"] == "skip" for d in decisions),
        "agreement": agree / n_compared if n_compared else float("nan"),
        "agreement_ci": wilson_interval(agree, n_compared) if n_compared else (float("nan"), float("nan")),
        "n_compared": n_compared,
        "self_consistency": same / n_repeats if n_repeats else float("nan"), "n_repeats": n_repeats,
        "share_A": n_a / len(ab) if ab else float("nan"),
        "share_A_ci": wilson_interval(n_a, len(ab)) if ab else (float("nan"), float("nan")),
    }
    return out
