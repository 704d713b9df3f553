"""One yardstick: every notebook evaluates every policy the same way, so the numbers compare.

- the prompts: the first `preset.n_eval` eval concepts (`data.eval_prompts`), which no stage trains on;
- the sampling: `preset.eval_sampling` (one temperature for the whole course), seeded with
  `preset.seed`, so two policies answer with the same randomness and the SFT policy's answers, and
  its gold score, are the same in every notebook;
- the scores: the gold rubric on every answer, plus the KL to a reference and the reward model's
  score where a notebook has them (`eval_rows.score_samples`);
- one cache: artifacts/eval_rows/<name>.json, keyed by everything the rows depend on (the weights of
  each model, the prompts, the sampling, the seed, the dtype and the rubric's source), so a policy
  evaluated in notebook 04 is not sampled again in 06 or 07.

Training may sample at another temperature; evaluation never moves.

`headline(rows, sft_rows)` gives the numbers every notebook reports against SFT: the paired gold
difference and its z, and the win rate judged blind by the simulated annotator (ties half) with its
Wilson interval. Notebooks: 00, 01, 04, 06, 07.
"""

from __future__ import annotations

import hashlib
import inspect
import random

from rlhf_edu import rubric
from rlhf_edu.annotator import SimulatedAnnotator
from rlhf_edu.data import eval_prompts
from rlhf_edu.metrics import mean_and_se, paired_difference, wilson_interval


def rubric_digest() -> str:
    """12 hex digits of the rubric's source: a change to the gold invalidates every cached row."""
    return hashlib.sha256(inspect.getsource(rubric).encode()).hexdigest()[:12]


def prompts_for(preset) -> list[str]:
    """The eval prompts of the yardstick at this preset."""
    return eval_prompts(preset.n_eval)


def spec(preset, setup):
    """The yardstick as an `eval_rows.EvalSpec`: the preset's eval prompts, its evaluation sampling
    and seed; the dtype and the rubric's digest join the cache key (another dtype or another rubric
    gives other rows)."""
    from rlhf_edu.devices import autocast
    from rlhf_edu.eval_rows import EvalSpec

    return EvalSpec(
        prompts=prompts_for(preset),
        sampling=preset.eval_sampling,
        preset_name=preset.name,
        seed=preset.seed,
        autocast_ctx=autocast(setup),
        extra={"dtype": setup.dtype_name, "rubric": rubric_digest()},
    )


def evaluate(
    name: str, model, tokenizer, preset, setup, *, reference=None, reward_model=None, refresh: bool = False
) -> tuple[list[dict], str]:
    """Rows {prompt, response, tokens, eos, gold, <components>[, kl, ref_nll, ref_tokens][, rm]} of
    policy `model` on the yardstick's prompts, sampled and scored once and cached as
    artifacts/eval_rows/<name>.json. Returns (rows, a line saying whether they were cached)."""
    from rlhf_edu.eval_rows import policy_eval_rows

    return policy_eval_rows(
        name, model, tokenizer, spec(preset, setup), reference=reference, reward_model=reward_model, refresh=refresh
    )


def best_of_n(
    policy, tokenizer, n: int, preset, setup, *, reference, reward_model, refresh: bool = False
) -> tuple[list[dict], str]:
    """The best-of-n baseline on the yardstick: n answers of `policy` per eval prompt at the
    evaluation temperature, the reward model keeps one (`eval_rows.best_of_n_rows`); cached."""
    from rlhf_edu.eval_rows import best_of_n_eval_rows

    return best_of_n_eval_rows(
        policy, tokenizer, spec(preset, setup), n, reference=reference, reward_model=reward_model, refresh=refresh
    )


def blind_wins(
    rows: list[dict], sft_rows: list[dict], annotator: SimulatedAnnotator | None = None, seed: int = 0
) -> tuple[int, int, int]:
    """(wins, ties, losses) of `rows` against `sft_rows` on the same prompts, each pair judged by the
    simulated annotator with the two answers in a seeded random order (it never knows which is which)."""
    annotator = annotator or SimulatedAnnotator()
    if [r["prompt"] for r in rows] != [r["prompt"] for r in sft_rows]:
        raise ValueError("blind_wins needs both policies' rows on the same prompts, in the same order")
    rng = random.Random(seed)
    wins = ties = losses = 0
    for r, s in zip(rows, sft_rows):
        policy_first = rng.random() < 0.5
        a, b = (r, s) if policy_first else (s, r)
        verdict = annotator.label(r["prompt"], a["response"], b["response"], a["eos"], b["eos"])
        if verdict == "tie":
            ties += 1
        elif (verdict == "A") == policy_first:
            wins += 1
        else:
            losses += 1
    return wins, ties, losses


def headline(rows: list[dict], sft_rows: list[dict], *, seed: int = 0) -> dict:
    """What a notebook reports for a policy against SFT on the yardstick:

    gold_mean, gold_se, gold_sft_mean, gold_delta (paired, per prompt), gold_delta_se and
    gold_delta_z = gold_delta / gold_delta_se; win_rate_vs_sft (blind annotator verdicts, ties
    half) with its 95% Wilson interval win_rate_low, win_rate_high; wins, ties, losses; and the mean
    of every rubric component for both policies (components, sft_components).
    """
    gold, gold_se = mean_and_se([r["gold"] for r in rows])
    diff = paired_difference([r["gold"] for r in rows], [r["gold"] for r in sft_rows])
    wins, ties, losses = blind_wins(rows, sft_rows, seed=seed)
    n = wins + ties + losses
    rate = (wins + 0.5 * ties) / n
    low, high = wilson_interval(wins + 0.5 * ties, n)
    mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)
    return {
        "gold_mean": gold,
        "gold_se": gold_se,
        "gold_sft_mean": mean(sft_rows, "gold"),
        "gold_delta": diff["delta"],
        "gold_delta_se": diff["se"],
        "gold_delta_z": diff["z"],
        "win_rate_vs_sft": rate,
        "win_rate_low": low,
        "win_rate_high": high,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "components": {c: mean(rows, c) for c in rubric.COMPONENTS},
        "sft_components": {c: mean(sft_rows, c) for c in rubric.COMPONENTS},
    }


def component_table(named_rows: dict[str, list[dict]]) -> list[dict]:
    """One row per rubric component (preference qualities first) with each policy's mean: the
    qualities that rose, side by side. Notebooks: 04, 06, 07"""
    order = (*rubric.PREFERENCE, *rubric.FORMAT)
    table = []
    for c in order:
        line = {"component": c, "kind": "preference" if c in rubric.PREFERENCE else "format"}
        for name, rows in named_rows.items():
            line[name] = round(sum(r[c] for r in rows) / len(rows), 3)
        table.append(line)
    line = {"component": "gold (total)", "kind": ""}
    for name, rows in named_rows.items():
        line[name] = round(sum(r["gold"] for r in rows) / len(rows), 3)
    table.append(line)
    return table


def _judgement(z: float) -> str:
    if z > 3:
        return "clearly better than SFT"
    if z < -3:
        return "clearly worse than SFT"
    return "within noise of SFT" if abs(z) < 2 else ("likely better than SFT" if z > 0 else "likely worse than SFT")


def verdict(
    rows: dict[str, list[dict]],
    *,
    trained: list[str],
    baseline: str | None = "best_of_n",
    labels: dict[str, str] | None = None,
    seed: int = 0,
) -> tuple[str, list[str]]:
    """The scoreboard in words, computed: which trained policy wins on gold, by how much against SFT
    (paired z, blind win rate) and against the untrained baseline (best-of-n), and where each other
    trained policy stands. `rows` holds every policy's yardstick rows, "sft" among them.
    Returns (the winner's name, the sentences). Notebook: 07_evaluation.ipynb"""
    labels = labels or {}
    name = lambda m: labels.get(m, m)
    present = [m for m in trained if m in rows]
    if not present:
        return "sft", ["No trained policy is on the board yet: run notebooks 04 and 06 at this preset."]
    heads = {m: headline(rows[m], rows["sft"], seed=seed) for m in present}
    winner = max(present, key=lambda m: heads[m]["gold_mean"])
    h = heads[winner]
    first = (
        f"{name(winner)} wins: gold {h['gold_mean']:.3f} against SFT's {h['gold_sft_mean']:.3f} "
        f"({h['gold_delta']:+.3f}, z = {h['gold_delta_z']:.1f}), and it wins {h['win_rate_vs_sft']:.0%} of "
        f"blind comparisons with SFT (95% interval {h['win_rate_low']:.0%} to {h['win_rate_high']:.0%})."
    )
    lines = [first]
    if baseline and baseline in rows:
        diff = paired_difference([r["gold"] for r in rows[winner]], [r["gold"] for r in rows[baseline]])
        base_gold = sum(r["gold"] for r in rows[baseline]) / len(rows[baseline])
        beats = "beats" if diff["z"] > 2 else "does not clearly beat"
        lines.append(
            f"{name(baseline)}, which trains nothing, scores {base_gold:.3f}: {name(winner)} {beats} it "
            f"({diff['delta']:+.3f}, z = {diff['z']:.1f})."
        )
    for m in present:
        if m != winner:
            lines.append(
                f"{name(m)}: gold {heads[m]['gold_mean']:.3f} ({heads[m]['gold_delta']:+.3f}, "
                f"z = {heads[m]['gold_delta_z']:.1f}), {_judgement(heads[m]['gold_delta_z'])}."
            )
    return winner, lines
