"""Render every results table of README.md and docs/results.md from the runs' JSON, so that no figure
in them is typed by hand.

    .venv/bin/python scripts/render_results.py --save artifacts/course_summary.json   # keep a cpu run's summary
    .venv/bin/python scripts/render_results.py --bench artifacts/bench.json            # keep a `make bench` run
    .venv/bin/python scripts/render_results.py                                        # rewrite the blocks

Reads, when present: bench/results/course_cpu.json (a copy of `make course PRESET=cpu`'s
artifacts/course_summary.json, saved with --save), bench/results/bench_cpu.json (a copy of `make
bench`'s artifacts/bench.json, saved with --bench), bench/results/ppo_seeds_cpu.json
(bench/ppo_seeds.py), bench/results/ppo_perfect_reward_cpu*.json (bench/ppo_perfect_reward.py),
bench/results/stage_trials_cpu.json (bench/stage_trials.py),
bench/results/first_ratio.json (bench/first_ratio.py), the GPU measurements of
bench/gpu.py and data/quality_rates.json (scripts/quality_rates.py). Each block lies between
`<!-- NAME:start -->` and `<!-- NAME:end -->` in its page; tests/test_docs_links.py fails when a
committed block differs from what this script renders.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# One record per compute dtype: a CPU with native bf16 and one without each keep their own figures.
DTYPES = ("fp32", "bf16")
COURSES = {dtype: RESULTS / f"course_cpu_{dtype}.json" for dtype in DTYPES}
BENCHES = {dtype: RESULTS / f"bench_cpu_{dtype}.json" for dtype in DTYPES}
SEEDS = RESULTS / "ppo_seeds_cpu.json"
FIRST_RATIO = RESULTS / "first_ratio.json"
FIRST_RATIO_NATIVE = RESULTS / "first_ratio_native_bf16.json"
RM_SWEEP = RESULTS / "reward_model_sweep_cpu.json"
GPU_ESTIMATE = RESULTS / "gpu_memory_estimate.json"
GPU_MEASURED = RESULTS / "gpu_memory_h200.json"
RATES = ROOT / "data" / "quality_rates.json"
PREFERENCE = ("comparison", "speaks_to_child", "everyday_detail")
NOT_YET = "*Not measured yet.* "


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _metrics(course: dict, notebook: str) -> dict:
    return (course.get("notebooks", {}).get(notebook) or {}).get("metrics") or {}


def _table(header: tuple, rows: list[tuple], align: str | None = None) -> list[str]:
    align = align or "---|" * len(header)
    return ["| " + " | ".join(header) + " |", "|" + align] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def quality_rates() -> list[str]:
    rates = _load(RATES)
    if not rates:
        return [NOT_YET + "`scripts/quality_rates.py` writes data/quality_rates.json."]
    demo, sft = rates["demonstrations"], rates["sft_samples"].get("0.7")
    return [
        (
            "**The preference qualities** (`scripts/quality_rates.py`): share of texts that show each, "
            f"in the {demo['n']} demonstrations and in {sft['n']} SFT samples at the evaluation temperature 0.7."
        ),
        "",
        *_table(
            ("quality", "demonstrations", "SFT samples"),
            [(q, f"{demo[q]:.0%}", f"{sft[q]:.0%}") for q in PREFERENCE],
            "---|---:|---:|",
        ),
    ]


HEADLINES = {
    "01_sft": lambda m: (
        f"gold base {m['gold_base_mean']:.3f} -> SFT {m['gold_sft_mean']:.3f}, z = {m['gold_delta_z']:.1f}"
    ),
    "03_reward_model": lambda m: (
        f"held-out accuracy {m['rm_heldout_accuracy']:.1%}, noise ceiling {m['noise_ceiling_accuracy']:.1%}"
    ),
    "04_ppo": lambda m: (
        f"gold SFT {m['gold_sft_mean']:.3f} -> PPO {m['gold_ppo_mean']:.3f}, "
        f"z = {m['gold_delta_z']:.1f}; win rate {m['win_rate_vs_sft']:.0%}; KL {m['kl_mean']:.2f}"
    ),
    "05_reward_kl_tradeoffs": lambda m: (
        f"over-optimization gold drop z = {m['overopt_gold_drop_z']:.1f}; "
        f"online refresh z = {m['online_refresh_gold_z']:.1f}"
    ),
    "06_dpo_grpo": lambda m: (
        f"gold DPO z = {m['gold_dpo_z']:.1f}, "
        + ", ".join(
            f"{k[5:-2].upper()} z = {v:.1f}"
            for k, v in m.items()
            if k.startswith("gold_") and k.endswith("_z") and k not in ("gold_dpo_z", "gold_ppo_z")
        )
    ),
    "07_evaluation": lambda m: " ".join(m.get("verdict", [])[:1]),
    "08_at_scale": lambda m: (
        ", ".join(
            f"{k[: -len('_vs_course_z')].replace('_', ' ')} vs the course's z = {v:+.1f}"
            for k, v in m.items()
            if k.endswith("_vs_course_z")
        )
        or "TRL's side only (notebook 06 did not run)"
    ),
}


def course_tables(dtypes=DTYPES, first_only: bool = False) -> list[str]:
    """The course table of each dtype measured (fp32 first); with `first_only`, the first one alone."""
    out = []
    for dtype in dtypes:
        table = course_table(_load(COURSES[dtype]))
        if table:
            out += [*table, ""]
            if first_only:
                break
    if not out:
        return [
            NOT_YET + "`make course PRESET=cpu`, then `scripts/render_results.py --save artifacts/course_summary.json`."
        ]
    return out[:-1]


def course_table(course: dict | None) -> list[str]:
    if not course:
        return []
    n_eval = _metrics(course, "01_sft").get("n_eval", "?")
    rows = []
    for name, entry in course.get("notebooks", {}).items():
        m = entry.get("metrics") or {}
        try:
            head = HEADLINES[name](m) if name in HEADLINES else ""
        except KeyError:
            head = "(not recorded)"
        peak = entry.get("peak_rss_gb") or m.get("peak_rss_gb")
        memory = "" if peak is None else f"{peak:.1f} GB"
        if "error" in entry:
            rows.append((name, "failed", memory, entry["error"].splitlines()[-1][:120]))
        else:
            for failed in entry.get("failed_cells", []):  # a --keep-going run: the claims that failed
                head = head.rstrip(".") + f"; **claim failed:** {failed['error'].splitlines()[-1][:120]}"
            rows.append((name, f"{entry['seconds']:.0f} s", memory, head))
    return [
        (
            f"**`make course PRESET=cpu`** on {course.get('machine', 'an unnamed machine')}, "
            f"{course.get('dtype', '?')}; every policy on the same {n_eval} eval prompts at temperature 0.7 "
            "(`rlhf_edu.course.yardstick`)."
        ),
        "",
        *_table(("notebook", "wall time", "peak memory", "headline"), rows, "---|---:|---:|---|"),
    ]


def seeds_line() -> list[str]:
    seeds = _load(SEEDS)
    if not seeds:
        return [NOT_YET + "`bench/ppo_seeds.py` writes the 3-seed spread of notebook 04's gain."]
    s = seeds["summary"]
    return [
        (
            f"**PPO over {len(seeds['runs'])} seeds** (`bench/ppo_seeds.py`, cpu preset, {seeds['dtype']}): "
            f"gold gain {s['gold_delta']['mean']:+.3f} ± {s['gold_delta']['sd']:.3f} (mean ± sd), "
            f"z = {s['gold_delta_z']['mean']:.1f} ± {s['gold_delta_z']['sd']:.1f}, "
            f"win rate against SFT {s['win_rate_vs_sft']['mean']:.0%} ± {s['win_rate_vs_sft']['sd']:.0%}, "
            f"KL {s['kl_mean']['mean']:.2f} ± {s['kl_mean']['sd']:.2f} nats."
        )
    ]


def meets_ppo_bar(run: dict) -> bool:
    """Notebook 04's bar: gold more than 5 z above SFT, 70% of blind comparisons won, KL 6 nats or less."""
    return run["gold_delta_z"] > 5 and run["win_rate_vs_sft"] >= 0.70 and run["kl_mean"] <= 6


def _ppo_row(setting: str, run: dict) -> tuple:
    """One row of a PPO-settings table: setting, training time, gold gain and its z, win rate, KL, bar."""
    return (
        setting,
        f"{run['train_seconds']:.0f} s",
        f"{run['gold_delta']:+.3f}",
        f"{run['gold_delta_z']:.1f}",
        f"{run['win_rate_vs_sft']:.0%}",
        f"{run['kl_mean']:.2f}",
        "yes" if meets_ppo_bar(run) else "no",
    )


PPO_COLUMNS = ("PPO setting", "training", "gold gain", "z", "win rate vs SFT", "KL (nats)", "meets 04's bar")


def perfect_reward_line() -> list[str]:
    runs = [_load(path) for path in sorted(RESULTS.glob("ppo_perfect_reward_cpu*.json"))]
    runs = [run for run in runs if run]
    if not runs:
        return [
            NOT_YET + "`bench/ppo_perfect_reward.py`: PPO paid by the rubric itself, which separates what the "
            "reward model misses from what PPO's budget allows."
        ]
    base = runs[0]["config"]
    rows, same = [], []  # same: notebook 04's config with only the seed changed
    for run in runs:
        changed = {k: v for k, v in run["config"].items() if k != "sampling" and v != base.get(k)}
        seed = changed.pop("seed", run["config"].get("seed", 0))
        if not changed:
            same.append(run)
        label = ", ".join(f"{k} {v}" for k, v in changed.items()) or f"notebook 04's PPO config, seed {seed}"
        if run["dtype"] != runs[0]["dtype"]:
            label += f" ({run['dtype']})"
        rows.append(_ppo_row(label, run))
    spread = []
    if len(same) > 1:  # notebook 04's config over several seeds, beside `seeds_line`'s learned reward model
        stat = lambda key: (statistics.mean(r[key] for r in same), statistics.stdev(r[key] for r in same))
        (z, z_sd), (win, win_sd), (kl, kl_sd) = stat("gold_delta_z"), stat("win_rate_vs_sft"), stat("kl_mean")
        spread = [
            "",
            (
                f"Notebook 04's PPO config paid by the rubric, over its {len(same)} seeds: z = {z:.1f} ± {z_sd:.1f}, "
                f"win rate against SFT {win:.0%} ± {win_sd:.0%}, KL {kl:.2f} ± {kl_sd:.2f} nats (mean ± sd)."
            ),
        ]
    return [
        (
            f"**PPO paid by the rubric itself** (`bench/ppo_perfect_reward.py`, {runs[0]['preset']} preset, "
            f"{runs[0]['dtype']}): the gold rubric on the reward model's scale (mean 0, std 1 over SFT's answers) "
            "instead of the learned reward model, evaluated on the yardstick. A perfect reward shows what PPO "
            "can do within the budget; notebook 04 pays the learned reward model instead."
        ),
        "",
        *_table(PPO_COLUMNS, rows, "---|---:|---:|---:|---:|---:|---|"),
        *spread,
    ]


def ppo_trials_line() -> list[str]:
    """PPO settings tried against notebook 03's learned reward model (bench/ppo_seeds.py --out NAME)."""
    trials = [_load(path) for path in sorted(RESULTS.glob("ppo_seeds_cpu_*.json"))]
    rows = []
    for trial in (t for t in trials if t):
        overrides = ", ".join(f"{k} {v}" for k, v in trial.get("ppo_overrides", {}).items())
        setting = trial.get("label") or overrides or "notebook 04's"  # a label says what else differed
        rows += [_ppo_row(f"{setting} (seed {run['seed']})", run) for run in trial["runs"]]
    if not rows:
        return []
    return [
        (
            f"**PPO against the learned reward model, other settings** (`bench/ppo_seeds.py --ppo ... --out ...`, "
            f"cpu preset, {trials[0]['dtype']}): notebook 04's run with these PPOConfig fields replaced, on the "
            "yardstick; every other field as the cpu preset's PPOConfig (`rlhf_edu/presets.py`) at the time of the run."
        ),
        "",
        *_table(PPO_COLUMNS, rows, "---|---:|---:|---:|---:|---:|---|"),
    ]


STAGE_COLUMNS = (
    "stage",
    "setting",
    "training",
    "gold gain",
    "z",
    "win rate vs SFT",
    "KL (nats)",
    "reward model gain",
    "meets 06's bar",
)


def stage_trials_table() -> list[str]:
    """Notebook 06's DPO and GRPO with other settings (bench/stage_trials.py)."""
    trials = _load(RESULTS / "stage_trials_cpu.json")
    if not trials:
        return []
    rows = [
        (
            t["stage"].upper(),
            t["name"],
            f"{t['train_seconds']:.0f} s",
            f"{t['gold_delta']:+.3f}",
            f"{t['gold_delta_z']:.1f}",
            f"{t['win_rate_vs_sft']:.0%}",
            f"{t['kl_mean']:.2f}",
            f"{t['rm_delta']:+.2f}",
            "yes" if t["gold_delta_z"] > 3 else "no",
        )
        for t in sorted(trials["trials"], key=lambda t: t["stage"])
    ]
    return [
        (
            f"**DPO and GRPO, other settings** (`bench/stage_trials.py`, cpu preset, {trials['dtype']}): notebook 06's "
            "training with the named fields changed (each trial's whole configuration is in "
            "bench/results/stage_trials_cpu.json), on the yardstick. Training time includes DPO's reference "
            "log-probs; the reward model's gain is in standard deviations of its score on SFT samples."
        ),
        "",
        *_table(STAGE_COLUMNS, rows, "---|---|---:|---:|---:|---:|---:|---:|---|"),
    ]


def reward_model_sweep_table() -> list[str]:
    sweep = _load(RM_SWEEP)
    if not sweep:
        return [NOT_YET + "`bench/reward_model_sweep.py`: what the reward model learns, form or preference."]
    rows = []
    for run in sweep["runs"]:
        others = {k: v for k, v in run["config"].items() if k != "lr"}
        if others.pop("group_by_prompt", False):  # batch_size counts prompts then
            per_step = f"{others.pop('batch_size')} prompts" if "batch_size" in others else "prompts"
            others["batch_size"] = f"{per_step}, all their pairs (group_by_prompt)"
        setting = ", ".join([f"lr {run['lr']:g}", *(f"{k} {v}" for k, v in others.items())])
        if run.get("temperatures"):
            setting += f"; pairs at T {', '.join(str(t) for t in run['temperatures'])}"
        if run.get("readout", "last") != "last":
            setting += f"; read-out: {run['readout']} over the tokens"
        rows.append(
            (
                setting,
                str(run["n_pairs"]),
                str(run["steps"]),
                f"{run['seconds']:.0f} s",
                f"{run['accuracy']:.1%}",
                f"{run['accuracy_form_decided']:.1%}",
                f"{run['accuracy_preference_decided']:.1%}",
            )
        )
    first = sweep["runs"][0]
    return [
        (
            f"**What the reward model learns** (`bench/reward_model_sweep.py`, {sweep['preset']} preset, "
            f"{first['dtype']}): held-out accuracy (noise ceiling {first['noise_ceiling']:.1%}), split into the "
            f"{first['n_preference_decided']} held-out pairs of two answers good in form that the preference "
            "qualities decide, and the rest, which form decides (times are wall times; some runs shared the "
            "2 cores with other work). Chance is 50%; notebook 03's bar is 75% and within 10 points of the ceiling."
        ),
        "",
        *_table(
            ("reward-model training", "pairs", "steps", "time", "accuracy", "form-decided", "preference-decided"),
            rows,
            "---|---:|---:|---:|---:|---:|---:|",
        ),
    ]


def bench_tables() -> list[str]:
    out = []
    for dtype in DTYPES:
        bench = _load(BENCHES[dtype])
        if bench:
            out += [f"*On a CPU that computes in {dtype}:*", "", *bench_table(bench), ""]
    if not out:
        return [
            NOT_YET + "`make bench`, then `scripts/render_results.py --bench artifacts/bench.json`: "
            "the compute dtypes of this CPU, PPO against TRL's `PPOTrainer` at equal settings "
            "(seconds per step and the step's split by part), and peak memory per notebook."
        ]
    return out[:-1]


def bench_table(bench: dict) -> list[str]:
    out = []
    dtype = bench.get("dtype_cpu")
    if dtype:
        out += [
            f"**Compute dtypes on this CPU** ({dtype['chosen']}):",
            "",
            *_table(
                ("dtype", "generate (s)", "forward (s)", "SFT step (s)"),
                [
                    (r["dtype"], f"{r['generate_s']:.2f}", f"{r['forward_s']:.2f}", f"{r['sft_step_s']:.2f}")
                    for r in dtype["rows"]
                ],
                "---|---:|---:|---:|",
            ),
            "",
        ]
    trl = bench.get("trl")
    if trl:
        rows = [
            (
                name,
                "" if sec is None else f"{sec:.1f}",
                f"{trl['gold'][name]:.3f}",
                f"{trl['rm_score'][name]:+.2f}",
                f"{trl['kl'][name]:.2f}",
            )
            for name, sec in [("sft", None), *trl["seconds_per_step"].items()]
        ]
        out += [
            (
                f"**PPO against TRL** (`bench/trl_ppo.py`, trl {trl['versions']['trl']}, {trl['threads']} threads): "
                f"ours is {trl['ppo_speedup_vs_trl']:.2f}x TRL's speed."
            ),
            "",
            *_table(("run", "s/step", "gold", "RM score", "KL (nats)"), rows, "---|---:|---:|---:|---:|"),
            "",
        ]
    peaks = bench.get("peak_rss_gb")
    if peaks:
        out += [
            "**Peak memory per notebook** at the cpu preset (GB):",
            "",
            *_table(("notebook", "peak RSS (GB)"), [(k, f"{v:.2f}") for k, v in peaks.items()], "---|---:|"),
            "",
        ]
    return out[:-1] if out and out[-1] == "" else out


def gpu_tables() -> list[str]:
    estimate, measured = _load(GPU_ESTIMATE), _load(GPU_MEASURED)
    if not estimate:
        return [NOT_YET + "`bench/gpu.py estimate` and, on a CUDA machine, `bench/gpu.py measure`."]
    by_arch: dict[str, dict] = {}
    for row in measured or []:
        by_arch.setdefault(row["arch"], {})[row["dtype"]] = row
    dtypes = sorted({row["dtype"] for row in measured or []})
    device = (measured or [{}])[0].get("device", "a CUDA device")
    rows = []
    for e in estimate:
        got = by_arch.get(e["arch"], {})
        rows.append(
            (
                e["arch"],
                f"{e['total_gib']:.1f} GiB",
                *[
                    f"{got[d]['peak_gib']:.1f} GiB, {got[d]['seconds_per_step_after_first']:.1f} s/step"
                    if d in got
                    else "not measured"
                    for d in dtypes
                ],
            )
        )
    return [
        (
            f"**GPU memory of PPO at the `gpu` preset** (`bench/gpu.py`; measured on an {device} with randomly "
            "initialized models of the same shapes, every response 64 tokens):"
        ),
        "",
        *_table(("model", "estimate", *[f"measured ({d})" for d in dtypes]), rows),
    ]


def first_ratio_table() -> list[str]:
    out = []
    for path in (FIRST_RATIO, FIRST_RATIO_NATIVE):
        fr = _load(path)
        if not fr:
            continue
        bf16 = "native bf16" if fr.get("native_bf16") else "bf16 emulated: no native bf16 instructions"
        rows = [
            (
                r["dtype"],
                r["ratio_logps"],
                "" if r.get("first_ratio_dev_mean") is None else f"{r['first_ratio_dev_mean']:.2g}",
                f"{r['first_ratio_dev_max']:.2g}",
                f"{r['seconds']:.0f} s",
            )
            for r in fr["rows"]
        ]
        out += [
            (
                f"**PPO's first-minibatch ratio** (`bench/first_ratio.py`, {fr['preset']} preset, {fr['machine']}, "
                f"{bf16}): |ratio - 1| over the first minibatch's tokens before any update, which must be 0 up "
                f"to rounding; the clip range is {fr['rows'][0]['clip_range']}."
            ),
            "",
            *_table(
                ("compute dtype", "log-probs of the ratio", "mean abs(ratio - 1)", "max abs(ratio - 1)", "time"),
                rows,
                "---|---|---:|---:|---:|",
            ),
            "",
        ]
    return out[:-1] if out else [NOT_YET + "`bench/first_ratio.py`."]


def blocks() -> dict[tuple[str, str], str]:
    """(page, block name) -> the rendered text of the block."""
    join = lambda *parts: "\n\n".join("\n".join(p) for p in parts if p)
    return {
        ("README.md", "results"): join(quality_rates(), course_tables(first_only=True), seeds_line()),
        ("docs/results.md", "course"): join(
            quality_rates(),
            course_tables(),
            seeds_line(),
            reward_model_sweep_table(),
            perfect_reward_line(),
            ppo_trials_line(),
            stage_trials_table(),
        ),
        ("docs/results.md", "bench"): join(bench_tables(), first_ratio_table()),
        ("docs/results.md", "gpu"): join(gpu_tables()),
    }


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def committed_block(page: str, name: str) -> str:
    text = (ROOT / page).read_text(encoding="utf-8")
    start, end = markers(name)
    if start not in text or end not in text:
        raise ValueError(f"{page} has no {start} ... {end} block")
    return text[text.index(start) + len(start) : text.index(end)].strip("\n")


def _dtype_of(path: Path) -> str:
    """The compute dtype a run recorded (`dtype`), which picks the file it is saved to."""
    dtype = json.loads(path.read_text()).get("dtype")
    if dtype not in DTYPES:
        raise SystemExit(f"{path} records dtype {dtype!r}; expected one of {DTYPES} (a run of the cpu preset)")
    return dtype


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--save", type=Path, help="copy this course_summary.json to bench/results/course_cpu_<dtype>.json first"
    )
    ap.add_argument("--bench", type=Path, help="copy this bench.json to bench/results/bench_cpu_<dtype>.json first")
    args = ap.parse_args(argv)
    if args.save:
        shutil.copyfile(args.save, COURSES[_dtype_of(args.save)])
    if args.bench:
        shutil.copyfile(args.bench, BENCHES[_dtype_of(args.bench)])
    for (page, name), body in blocks().items():
        path = ROOT / page
        committed_block(page, name)  # the markers must be there
        start, end = markers(name)
        block = f"{start}\n{body}\n{end}"
        pattern = re.escape(start) + ".*?" + re.escape(end)
        text = re.sub(pattern, block.replace("\\", "\\\\"), path.read_text(encoding="utf-8"), flags=re.DOTALL)
        path.write_text(text, encoding="utf-8")
        print(f"{page}: {name} ({len(body)} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
