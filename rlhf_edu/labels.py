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
