"""Render README's results block from the runs' JSON, so no figure in it is typed by hand.

    .venv/bin/python scripts/render_results.py --save artifacts/course_summary.json   # keep a cpu run's summary
    .venv/bin/python scripts/render_results.py                                        # rewrite the README block

Reads bench/results/course_cpu.json (a copy of `make course PRESET=cpu`'s artifacts/course_summary.json,
saved with --save), bench/results/ppo_seeds_cpu.json (bench/ppo_seeds.py) and data/quality_rates.json
(scripts/quality_rates.py), and writes the block between `<!-- results:start -->` and
`<!-- results:end -->` in README.md. tests/test_docs_links.py checks that the block is up to date.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "bench" / "results" / "course_cpu.json"
SEEDS = ROOT / "bench" / "results" / "ppo_seeds_cpu.json"
RATES = ROOT / "data" / "quality_rates.json"
START, END = "<!-- results:start -->", "<!-- results:end -->"
PREFERENCE = ("comparison", "speaks_to_child", "everyday_detail")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _metrics(course: dict, notebook: str) -> dict:
    return (course.get("notebooks", {}).get(notebook) or {}).get("metrics") or {}


def render() -> str:
    course, seeds, rates = _load(COURSE), _load(SEEDS), _load(RATES)
    out = []
    if rates:
        demo, sft = rates["demonstrations"], rates["sft_samples"].get("0.7")
        out.append("**The preference qualities** (`scripts/quality_rates.py`): share of texts that show each, "
                   f"in the {demo['n']} demonstrations and in {sft['n']} SFT samples at the evaluation "
                   "temperature 0.7.\n")
        out.append("| quality | demonstrations | SFT samples |\n|---|---:|---:|")
        for q in PREFERENCE:
            out.append(f"| {q} | {demo[q]:.0%} | {sft[q]:.0%} |")
        out.append("")
    if course:
        out.append(f"**`make course PRESET=cpu`** on {course.get('machine', 'an unnamed machine')}, "
                   f"{course.get('dtype', '?')}; every policy on the same {_metrics(course, '01_sft').get('n_eval', '?')} "
                   "eval prompts at temperature 0.7 (`rlhf_edu.yardstick`).\n")
        rows = [("notebook", "wall time", "headline")]
        heads = {
            "01_sft": lambda m: f"gold base {m['gold_base_mean']:.3f} -> SFT {m['gold_sft_mean']:.3f}, z = {m['gold_delta_z']:.1f}",
            "03_reward_model": lambda m: f"held-out accuracy {m['rm_heldout_accuracy']:.1%}, noise ceiling {m['noise_ceiling_accuracy']:.1%}",
            "04_ppo": lambda m: (f"gold SFT {m['gold_sft_mean']:.3f} -> PPO {m['gold_ppo_mean']:.3f}, z = {m['gold_delta_z']:.1f}; "
                                 f"win rate {m['win_rate_vs_sft']:.0%}; KL {m['kl_mean']:.2f}"),
            "05_reward_kl_tradeoffs": lambda m: (f"over-optimization gold drop z = {m['overopt_gold_drop_z']:.1f}; "
                                                 f"online refresh z = {m['online_refresh_gold_z']:.1f}"),
            "06_dpo_grpo": lambda m: (f"gold DPO z = {m['gold_dpo_z']:.1f}, "
                                      + ", ".join(f"{k[5:-2].upper()} z = {v:.1f}" for k, v in m.items()
                                                  if k.startswith("gold_") and k.endswith("_z") and k not in ("gold_dpo_z", "gold_ppo_z"))),
            "07_evaluation": lambda m: " ".join(m.get("verdict", [])[:1]),
        }
        for name, entry in course.get("notebooks", {}).items():
            m = entry.get("metrics") or {}
            try:
                head = heads[name](m) if name in heads else ""
            except KeyError:
                head = "(not recorded)"
            if "error" in entry:
                rows.append((name, "failed", entry["error"].splitlines()[-1][:120]))
            else:
                rows.append((name, f"{entry['seconds']:.0f} s", head))
        out.append("| " + " | ".join(rows[0]) + " |\n|---|---:|---|")
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        out.append("")
    if seeds:
        s = seeds["summary"]
        out.append(f"**PPO over {len(seeds['runs'])} seeds** (`bench/ppo_seeds.py`, cpu preset, {seeds['dtype']}): "
                   f"gold gain {s['gold_delta']['mean']:+.3f} ± {s['gold_delta']['sd']:.3f} (mean ± sd), "
                   f"z = {s['gold_delta_z']['mean']:.1f} ± {s['gold_delta_z']['sd']:.1f}, "
                   f"win rate against SFT {s['win_rate_vs_sft']['mean']:.0%} ± {s['win_rate_vs_sft']['sd']:.0%}, "
                   f"KL {s['kl_mean']['mean']:.2f} ± {s['kl_mean']['sd']:.2f} nats.")
        out.append("")
    return "\n".join(out).rstrip("\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save", type=Path, help="copy this course_summary.json to bench/results/course_cpu.json first")
    args = ap.parse_args(argv)
    if args.save:
        shutil.copyfile(args.save, COURSE)
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{START}\n{render()}\n{END}"
    if START not in text:
        raise SystemExit(f"README.md has no {START} marker: add one where the results belong")
    readme.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL))
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
