"""The preference labeler: core ipywidgets only (works in JupyterLab, Notebook 7, VS Code, Colab;
ipywidgets 7.7 and 8).

Design: the prompt on top, two equal panes labelled only
"A" and "B", sides swapped per pair by a seeded coin and the swap recorded; buttons A / B / Tie / Skip /
Undo; an optional rationale box; progress "n / N"; keyboard labeling through a Text box (type a, b, t
or s) because keys pressed on a focused Button leak to JupyterLab's shortcuts. Every action goes to an
append-only JSONL store first (labels.LabelStore) and the widget is redrawn from it, so a restarted
kernel resumes where the file says. Only the store's events for the pairs of this queue count
(labels.match_queue); labels made for another queue stay in the file and a note above the panes
says so. An answer that did not end within the token budget (its "eos" flag is False) shows a
cut-off marker, since the rubric and the annotator judge it as cut off too.

Notebook: 02_label_preferences.ipynb
"""

from __future__ import annotations

import html
import random
import time
from pathlib import Path

import ipywidgets as W

from rlhf_edu.labels import (
    LabelStore,
    match_queue,
    pair_digest,
    replay,
    screen_to_index,
    stale_labels_notice,
)

HOTKEYS = {"a": "A", "b": "B", "t": "tie", "s": "skip"}
CUT_OFF = "… [cut off: no end of answer within the token budget]"


def _side_html(side: str, text: str, eos: bool) -> str:
    """One pane's HTML: the side's letter, the answer, and the cut-off marker when it has no EOS."""
    marker = "" if eos else f'<br><i class="pref-cutoff" style="color:#a33">{html.escape(CUT_OFF)}</i>'
    return f"<b>{side}</b><br>{html.escape(text)}{marker}"


def _pane(title: str, css: str) -> W.HTML:
    pane = W.HTML(layout=W.Layout(width="50%", border="1px solid #bbb", padding="6px"))
    pane.add_class(css)
    return pane


class PreferenceLabeler:
    """Label pairs {pair_id, prompt, responses: [r0, r1]} as A / B / tie, or skip them.

    `min_interval` (seconds) ignores a second click that arrives right after the first, so a
    double click records one label.
    """

    def __init__(
        self,
        pairs: list[dict],
        store_path: str | Path,
        *,
        annotator: str = "you",
        seed: int = 0,
        min_interval: float = 0.3,
    ):
        if not pairs:
            raise ValueError("PreferenceLabeler needs at least one pair")
        for i, p in enumerate(pairs):
            missing = [k for k in ("pair_id", "prompt", "responses") if k not in p]
            if missing or len(p.get("responses", [])) != 2:
                raise ValueError(f"pair {i}: needs pair_id, prompt and two responses (missing {missing})")
        self.pairs, self.annotator, self.seed, self.min_interval = pairs, annotator, seed, min_interval
        self.store = LabelStore(store_path)
        self._last_action = 0.0
        decisions, other = match_queue(self.store.events(), pairs)
        self.notice = stale_labels_notice(self.store.path, len(replay(other)), len(decisions))
        self._build()
        self.refresh()

    # ------------------------------------------------------------------ state from the store
    @property
    def decisions(self) -> list[dict]:
        """Labels and skips that stand for this queue, in the order they were made; `item` is the
        pair's position in this queue."""
        return match_queue(self.store.events(), self.pairs)[0]

    @staticmethod
    def _next(decisions: list[dict], n: int) -> int:
        decided = {d["item"] for d in decisions}
        return next((i for i in range(n) if i not in decided), n)

    @property
    def position(self) -> int:
        """Index of the next pair to label: the first without a label or skip that stands (when
        labeling in order, the number of labels and skips)."""
        return self._next(self.decisions, len(self.pairs))

    @property
    def done(self) -> bool:
        return self.position >= len(self.pairs)

    def swapped(self, item: int) -> bool:
        """The seeded coin for queue position `item`: True shows response 1 as A."""
        return random.Random(f"{self.seed}|{item}|{self.pairs[item]['pair_id']}").random() < 0.5

    def shown(self, item: int) -> tuple[str, str]:
        """(text shown as A, text shown as B) for queue position `item`."""
        r0, r1 = self.pairs[item]["responses"]
        return (r1, r0) if self.swapped(item) else (r0, r1)

    def shown_eos(self, item: int) -> tuple[bool, bool]:
        """(A ended by itself, B ended by itself): the pair's "eos" flags (default True) in screen order."""
        e0, e1 = self.pairs[item].get("eos", [True, True])
        return (bool(e1), bool(e0)) if self.swapped(item) else (bool(e0), bool(e1))

    # ------------------------------------------------------------------ actions
    def _debounced(self) -> bool:
        now = time.monotonic()
        if now - self._last_action < self.min_interval:
            return True
        self._last_action = now
        return False

    def label(self, choice: str, rationale: str | None = None) -> dict | None:
        """Record "A", "B", "tie" or "skip" for the current pair; returns the stored event."""
        if choice not in ("A", "B", "tie", "skip"):
            raise ValueError(f"choice must be 'A', 'B', 'tie' or 'skip', got {choice!r}")
        if self.done or self._debounced():
            return None
        item = self.position
        swapped = self.swapped(item)
        event = {
            "event": "skip" if choice == "skip" else "label",
            "item": item,
            "pair_id": self.pairs[item]["pair_id"],
            "pair_digest": pair_digest(self.pairs[item]),
            "choice": None if choice == "skip" else choice,
            "swapped": swapped,
            "chosen_index": None if choice in ("skip", "tie") else screen_to_index(choice, swapped),
            "rationale": (self.rationale.value if rationale is None else rationale).strip(),
            "annotator": self.annotator,
        }
        stored = self.store.append(event)
        self.rationale.value = ""
        self.refresh()
        return stored

    def undo(self) -> dict | None:
        """Take back the latest label or skip. The rationale box is cleared: what was typed there
        belongs to the pair on screen, not to the one that comes back."""
        decisions = self.decisions
        if not decisions or self._debounced():
            return None
        last = decisions[-1]
        stored = self.store.append(
            {
                "event": "undo",
                "item": last["item"],
                "pair_id": last["pair_id"],
                "pair_digest": pair_digest(self.pairs[last["item"]]),
                "annotator": self.annotator,
            }
        )
        self.rationale.value = ""
        self.refresh()
        return stored

    def run_autopilot(self, annotator, n: int | None = None) -> int:
        """Label the next `n` pairs (all remaining if None) with `annotator.label(prompt, A, B, eos_A,
        eos_B)`, through the same path as a click. Returns how many were labeled. A pair's "eos"
        flags (in its own order) follow the sides on screen, so a cut-off response is judged as one."""
        count = 0
        while not self.done and (n is None or count < n):
            item = self.position
            a, b = self.shown(item)
            eos_a, eos_b = self.shown_eos(item)
            pair = self.pairs[item]
            self._last_action = 0.0
            self.label(annotator.label(pair["prompt"], a, b, eos_a, eos_b), rationale="")
            count += 1
        return count

    # ------------------------------------------------------------------ view
    def _build(self) -> None:
        note = f'<div style="background:#fff4d6;padding:4px 6px">{html.escape(self.notice)}</div>'
        self.notice_html = W.HTML(note if self.notice else "")
        self.notice_html.add_class("pref-notice")
        self.prompt_html = W.HTML()
        self.pane_a, self.pane_b = _pane("A", "pref-pane-A"), _pane("B", "pref-pane-B")
        self.buttons = {}
        for key, text, style in [
            ("A", "A is better", "info"),
            ("B", "B is better", "info"),
            ("tie", "Tie", ""),
            ("skip", "Skip", ""),
            ("undo", "Undo", "warning"),
        ]:
            button = W.Button(description=text, button_style=style, layout=W.Layout(width="auto"))
            button.add_class(f"pref-btn-{key}")
            button.on_click(lambda _b, key=key: self.undo() if key == "undo" else self.label(key))
            self.buttons[key] = button
        self.rationale = W.Textarea(placeholder="Why? (optional)", layout=W.Layout(width="100%", height="48px"))
        self.rationale.add_class("pref-rationale")
        self.hotkeys = W.Text(
            placeholder="type a / b / t / s here to label", continuous_update=True, layout=W.Layout(width="260px")
        )
        self.hotkeys.add_class("pref-hotkeys")
        self.hotkeys.observe(self._on_hotkey, names="value")
        self.progress = W.IntProgress(min=0, max=len(self.pairs), layout=W.Layout(width="200px"))
        self.progress_text = W.HTML()
        self.progress_text.add_class("pref-progress")
        self.widget = W.VBox(
            [
                self.notice_html,
                self.prompt_html,
                W.HBox([self.pane_a, self.pane_b]),
                W.HBox(list(self.buttons.values())),
                self.rationale,
                W.HBox([self.hotkeys, self.progress, self.progress_text]),
            ]
        )

    def _on_hotkey(self, change) -> None:
        typed = (change["new"] or "").strip().lower()
        if not typed:
            return
        self.hotkeys.value = ""
        choice = HOTKEYS.get(typed[-1])
        if choice is not None:
            self.label(choice)

    def refresh(self) -> None:
        decisions = self.decisions
        n, item = len(decisions), self._next(decisions, len(self.pairs))
        done = item >= len(self.pairs)
        self.progress.value = min(n, len(self.pairs))
        self.progress_text.value = f"{n} / {len(self.pairs)}"
        if done:
            self.prompt_html.value = "<b>All pairs labeled.</b> Undo to change the last one."
            self.pane_a.value = self.pane_b.value = ""
        else:
            self.prompt_html.value = f"<b>Prompt:</b> {html.escape(self.pairs[item]['prompt'])}"
            panes = (self.pane_a, self.pane_b)
            for pane, side, text, eos in zip(panes, "AB", self.shown(item), self.shown_eos(item)):
                pane.value = _side_html(side, text, eos)
        for key, button in self.buttons.items():
            button.disabled = (done and key != "undo") or (key == "undo" and n == 0)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
