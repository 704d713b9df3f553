"""The preference labeler: core ipywidgets only (works in JupyterLab, Notebook 7, VS Code, Colab;
ipywidgets 7.7 and 8).

Design (reference/notebook_tooling.md section 2.4): the prompt on top, two equal panes labelled only
"A" and "B", sides swapped per pair by a seeded coin and the swap recorded; buttons A / B / Tie / Skip /
Undo; an optional rationale box; progress "n / N"; keyboard labeling through a Text box (type a, b, t
or s) because keys pressed on a focused Button leak to JupyterLab's shortcuts. Every action goes to an
append-only JSONL store first (labels.LabelStore) and the widget is redrawn from it, so a restarted
kernel resumes where the file says.

Notebook: 02_label_preferences.ipynb
"""

from __future__ import annotations

import html
import random
import time
from pathlib import Path

import ipywidgets as W

from rlhf_edu.labels import LabelStore, screen_to_index

HOTKEYS = {"a": "A", "b": "B", "t": "tie", "s": "skip"}


def _pane(title: str, css: str) -> W.HTML:
    pane = W.HTML(layout=W.Layout(width="50%", border="1px solid #bbb", padding="6px"))
    pane.add_class(css)
    return pane


class PreferenceLabeler:
    """Label pairs {pair_id, prompt, responses: [r0, r1]} as A / B / tie, or skip them.

    `min_interval` (seconds) ignores a second click that arrives right after the first, so a
    double click records one label.
    """

    def __init__(self, pairs: list[dict], store_path: str | Path, *, annotator: str = "you", seed: int = 0,
                 min_interval: float = 0.3):
        if not pairs:
            raise ValueError("PreferenceLabeler needs at least one pair")
        for i, p in enumerate(pairs):
            missing = [k for k in ("pair_id", "prompt", "responses") if k not in p]
            if missing or len(p.get("responses", [])) != 2:
                raise ValueError(f"pair {i}: needs pair_id, prompt and two responses (missing {missing})")
        self.pairs, self.annotator, self.seed, self.min_interval = pairs, annotator, seed, min_interval
        self.store = LabelStore(store_path)
        self._last_action = 0.0
        self._build()
        self.refresh()

    # ------------------------------------------------------------------ state from the store
    @property
    def decisions(self) -> list[dict]:
        return self.store.decisions()

    @property
    def position(self) -> int:
        """Index of the next pair to label (= labels and skips that stand)."""
        return len(self.decisions)

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
        """Take back the latest label or skip."""
        if self.position == 0 or self._debounced():
            return None
        last = self.decisions[-1]
        stored = self.store.append({"event": "undo", "item": last["item"], "pair_id": last["pair_id"], "annotator": self.annotator})
        self.refresh()
        return stored

    def run_autopilot(self, annotator, n: int | None = None) -> int:
        """Label the next `n` pairs (all remaining if None) with `annotator.label(prompt, A, B, eos_A,
        eos_B)`, through the same path as a click. Returns how many were labeled. A pair's "eos"
        flags (in its own order) follow the sides on screen, so a cut-off response is judged as one."""
        count = 0
        while not self.done and (n is None or count < n):
            pair = self.pairs[self.position]
            a, b = self.shown(self.position)
            eos = pair.get("eos", [True, True])
            eos_a, eos_b = (eos[1], eos[0]) if self.swapped(self.position) else (eos[0], eos[1])
            self._last_action = 0.0
            self.label(annotator.label(pair["prompt"], a, b, eos_a, eos_b), rationale="")
            count += 1
        return count

    # ------------------------------------------------------------------ view
    def _build(self) -> None:
        self.prompt_html = W.HTML()
        self.pane_a, self.pane_b = _pane("A", "pref-pane-A"), _pane("B", "pref-pane-B")
        self.buttons = {}
        for key, text, style in [("A", "A is better", "info"), ("B", "B is better", "info"), ("tie", "Tie", ""),
                                 ("skip", "Skip", ""), ("undo", "Undo", "warning")]:
            button = W.Button(description=text, button_style=style, layout=W.Layout(width="auto"))
            button.add_class(f"pref-btn-{key}")
            button.on_click(lambda _b, key=key: self.undo() if key == "undo" else self.label(key))
            self.buttons[key] = button
        self.rationale = W.Textarea(placeholder="Why? (optional)", layout=W.Layout(width="100%", height="48px"))
        self.rationale.add_class("pref-rationale")
        self.hotkeys = W.Text(placeholder="type a / b / t / s here to label", continuous_update=True,
                              layout=W.Layout(width="260px"))
        self.hotkeys.add_class("pref-hotkeys")
        self.hotkeys.observe(self._on_hotkey, names="value")
        self.progress = W.IntProgress(min=0, max=len(self.pairs), layout=W.Layout(width="200px"))
        self.progress_text = W.HTML()
        self.progress_text.add_class("pref-progress")
        self.widget = W.VBox([
            self.prompt_html,
            W.HBox([self.pane_a, self.pane_b]),
            W.HBox(list(self.buttons.values())),
            self.rationale,
            W.HBox([self.hotkeys, self.progress, self.progress_text]),
        ])

    def _on_hotkey(self, change) -> None:
        typed = (change["new"] or "").strip().lower()
        if not typed:
            return
        self.hotkeys.value = ""
        choice = HOTKEYS.get(typed[-1])
        if choice is not None:
            self.label(choice)

    def refresh(self) -> None:
        n = self.position
        self.progress.value = min(n, len(self.pairs))
        self.progress_text.value = f"{n} / {len(self.pairs)}"
        if self.done:
            self.prompt_html.value = "<b>All pairs labeled.</b> Undo to change the last one."
            self.pane_a.value = self.pane_b.value = ""
        else:
            a, b = self.shown(n)
            self.prompt_html.value = f"<b>Prompt:</b> {html.escape(self.pairs[n]['prompt'])}"
            self.pane_a.value = f"<b>A</b><br>{html.escape(a)}"
            self.pane_b.value = f"<b>B</b><br>{html.escape(b)}"
        for key, button in self.buttons.items():
            button.disabled = (self.done and key != "undo") or (key == "undo" and n == 0)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
