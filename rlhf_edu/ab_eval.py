"""Blind pairwise evaluation of two policies: the ABEvaluator widget and a win-rate matrix.

Both policies answer the same eval prompts; each item shows the two responses as "A" and "B", the
side of each policy decided by a seeded coin and recorded, and the judge (you, or the simulated
annotator) picks A, B or Tie, or skips. This is the PreferenceLabeler of notebook 02 with a queue
made of (policy X, policy Y) pairs, so clicks go through the same crash-safe JSONL store
(labels.LabelStore: one fsynced line per click, replayed on restart) and the same buttons, undo and
a/b/t/s keyboard box. Only the results are un-blinded: a chosen side maps back to its policy
through the recorded `swapped` flag.

Win rate of X over Y, ties counted as half a win for each side (as in Chatbot Arena and
AlpacaEval win rates):

    win_rate = (wins_X + ties / 2) / (wins_X + wins_Y + ties)          skips are left out

with a 95% Wilson interval (Wilson 1927) on that count. A tie has less variance than a coin flip,
so treating (wins + ties / 2) as binomial gives an interval that is, if anything, too wide.

Notebook: 07_evaluation.ipynb
"""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

from rlhf_edu.labels import LabelStore, screen_to_index
from rlhf_edu.metrics import wilson_interval
from rlhf_edu.widgets import PreferenceLabeler


def win_rate(wins: int, ties: int, n: int) -> tuple[float, tuple[float, float]]:
    """(win rate, 95% Wilson interval) with ties counted as half a win; n counts wins, losses
    and ties. Notebook: 07_evaluation.ipynb"""
    if n <= 0:
        return float("nan"), (float("nan"), float("nan"))
    successes = wins + 0.5 * ties
    return successes / n, wilson_interval(successes, n)


def _pair_id(i: int, prompt: str, response_x: str, response_y: str) -> str:
    """Item id: the position plus a short digest of its texts, so that a store written for other
    responses is recognised on resume. No policy name, nothing readable about the sides."""
    digest = hashlib.sha1(f"{prompt}\x00{response_x}\x00{response_y}".encode()).hexdigest()[:10]
    return f"ab{i}-{digest}"


class ABEvaluator(PreferenceLabeler):
    """Judge policy X against policy Y on the same prompts, blind, with the PreferenceLabeler.

    responses_x[i] and responses_y[i] answer prompts[i]; `eos_x`/`eos_y` say whether each response
    ended by itself (default True), which the gold rubric checks. `names` are used only in the
    results, never on screen. Re-creating it on the same `store_path` resumes.
    """

    def __init__(
        self,
        prompts: list[str],
        responses_x: list[str],
        responses_y: list[str],
        store_path: str | Path,
        *,
        names: tuple[str, str] = ("X", "Y"),
        eos_x: list[bool] | None = None,
        eos_y: list[bool] | None = None,
        annotator: str = "you",
        seed: int = 0,
        min_interval: float = 0.3,
    ):
        eos_x = [True] * len(prompts) if eos_x is None else [bool(e) for e in eos_x]
        eos_y = [True] * len(prompts) if eos_y is None else [bool(e) for e in eos_y]
        if not len(prompts) == len(responses_x) == len(responses_y) == len(eos_x) == len(eos_y):
            raise ValueError(
                f"lengths differ: {len(prompts)} prompts, {len(responses_x)} and {len(responses_y)} "
                f"responses, {len(eos_x)} and {len(eos_y)} eos flags"
            )
        if len(names) != 2 or names[0] == names[1]:
            raise ValueError(f"names must be two different policy names, got {names!r}")
        self.names = tuple(names)
        pairs = [
            {"pair_id": _pair_id(i, p, rx, ry), "prompt": p, "responses": [rx, ry], "eos": [ex, ey]}
            for i, (p, rx, ry, ex, ey) in enumerate(zip(prompts, responses_x, responses_y, eos_x, eos_y))
        ]
        for k, d in enumerate(LabelStore(store_path).decisions()):
            if k >= len(pairs) or d.get("pair_id") != pairs[k]["pair_id"]:
                raise ValueError(
                    f"{store_path} holds labels for other prompts or responses (decision {k}); "
                    "use a new file for this comparison"
                )
        super().__init__(pairs, store_path, annotator=annotator, seed=seed, min_interval=min_interval)

    def autopilot(self, annotator, n: int | None = None) -> int:
        """Judge the next `n` items (all remaining if None) unattended, e.g. with
        rlhf_edu.annotator.SimulatedAnnotator; the same path as a click (`run_autopilot`)."""
        return self.run_autopilot(annotator, n)

    def unblinded(self) -> list[dict]:
        """Each standing decision with the sides revealed: {item, prompt, A, B, choice, winner},
        where A and B are the policy names shown there and winner is a name, "tie" or None (skip)."""
        x, y = self.names
        rows = []
        for d in self.decisions:
            swapped = bool(d["swapped"]) if "swapped" in d else self.swapped(d["item"])
            choice = d.get("choice")
            if d["event"] == "skip":
                winner = None
            elif choice == "tie":
                winner = "tie"
            else:
                winner = self.names[screen_to_index(choice, swapped)]
            rows.append(
                {
                    "item": d["item"],
                    "prompt": self.pairs[d["item"]]["prompt"],
                    "A": y if swapped else x,
                    "B": x if swapped else y,
                    "choice": choice,
                    "winner": winner,
                }
            )
        return rows

    def results(self) -> dict:
        """Wins of X over Y so far: counts, the win rate of X with ties as half, its 95% Wilson
        interval, and share_A (the share of A among A/B picks: about 0.5 without position bias)."""
        x, y = self.names
        rows = self.unblinded()
        wins_x = sum(r["winner"] == x for r in rows)
        wins_y = sum(r["winner"] == y for r in rows)
        ties = sum(r["winner"] == "tie" for r in rows)
        n = wins_x + wins_y + ties
        rate, ci = win_rate(wins_x, ties, n)
        picks = [r["choice"] for r in rows if r["choice"] in ("A", "B")]
        return {
            "x": x,
            "y": y,
            "wins_x": wins_x,
            "wins_y": wins_y,
            "ties": ties,
            "skipped": sum(r["winner"] is None for r in rows),
            "n": n,
            "win_rate": rate,
            "ci": ci,
            "share_A": picks.count("A") / len(picks) if picks else None,
        }


def winrate_matrix(
    policies: dict[str, list[tuple[str, bool]]], prompts: list[str], annotator, *, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Pairwise win rates judged by `annotator` (e.g. the gold rubric with its noise,
    SimulatedAnnotator): m[a][b] is the win rate of policy a over policy b on `prompts`, ties as
    half, so m[a][b] + m[b][a] = 1 and m[a][a] = 0.5.

    policies: name -> [(response, eos)], one per prompt. Each comparison shows the two responses
    in an order set by a seeded coin per (prompt, pair of names), as in ABEvaluator, so a judge's
    position bias averages out instead of favouring one policy. Notebook: 07_evaluation.ipynb
    """
    names = list(policies)
    for name, answers in policies.items():
        if len(answers) != len(prompts):
            raise ValueError(f"policy {name!r} has {len(answers)} responses for {len(prompts)} prompts")
    if not prompts:
        raise ValueError("winrate_matrix needs at least one prompt")
    m = {a: {b: 0.5 for b in names} for a in names}
    for a, b in itertools.combinations(names, 2):
        wins = ties = 0
        for i, prompt in enumerate(prompts):
            swapped = random.Random(f"{seed}|{i}|{a}|{b}").random() < 0.5
            first, second = (policies[b][i], policies[a][i]) if swapped else (policies[a][i], policies[b][i])
            choice = annotator.label(prompt, first[0], second[0], first[1], second[1])
            index = screen_to_index(choice, swapped)  # 0: a, 1: b, None: tie
            wins += index == 0
            ties += index is None
        m[a][b] = (wins + 0.5 * ties) / len(prompts)
        m[b][a] = 1.0 - m[a][b]
    return m
