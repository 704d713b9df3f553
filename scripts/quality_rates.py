"""How often the demonstrations and the SFT policy's samples show each gold rubric component.

    .venv/bin/python scripts/quality_rates.py          # a few seconds; no model needed

Reads data/sft_demos.jsonl and the SFT samples stored in data/preferences_{train,heldout}.jsonl
(one sample per concept at each sampling temperature), scores them with `rlhf_edu.rubric`, writes
data/quality_rates.json and renders its table into data/README.md between the markers
`<!-- quality-rates:start -->` and `<!-- quality-rates:end -->`.

The preference components are meant to appear in only part of the SFT samples (roughly 10 to 40%):
reinforcement learning amplifies what a policy sometimes does and cannot find what it never does.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from rlhf_edu.data import data_dir
from rlhf_edu.rubric import COMPONENTS, PREFERENCE, score
from rlhf_edu.store import write_json

START, END = "<!-- quality-rates:start -->", "<!-- quality-rates:end -->"


def rates(items: list[tuple[str, str, bool]]) -> dict:
    """Mean of every component and of the total over (prompt, response, eos) items."""
    scored = [score(p, r, e) for p, r, e in items]
    out = {c: sum(s[1][c] for s in scored) / len(scored) for c in COMPONENTS}
    out["gold"] = sum(s[0] for s in scored) / len(scored)
    out["n"] = len(scored)
    return out


def sft_samples(folder: Path) -> dict[float, list[tuple[str, str, bool]]]:
    """The distinct SFT samples of the preference files, by sampling temperature."""
    seen: dict[tuple[str, float], tuple[str, bool]] = {}
    for split in ("train", "heldout"):
        for line in (folder / f"preferences_{split}.jsonl").read_text().splitlines():
            pair = json.loads(line)
            for text, eos, t in zip(pair["responses"], pair["eos"], pair["temperatures"]):
                seen[(pair["prompt"], t)] = (text, eos)
    by_t = defaultdict(list)
    for (prompt, t), (text, eos) in seen.items():
        by_t[t].append((prompt, text, eos))
    return dict(sorted(by_t.items()))


def table(result: dict) -> str:
    cols = ["demonstrations"] + [f"SFT, T = {t}" for t in result["sft_samples"]]
    rows = [result["demonstrations"]] + list(result["sft_samples"].values())
    lines = ["| component | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines.append("| (texts) | " + " | ".join(f"{r['n']:,}" for r in rows) + " |")
    for c in (*PREFERENCE, *[c for c in COMPONENTS if c not in PREFERENCE], "gold"):
        name = f"**{c}**" if c in PREFERENCE else c
        lines.append(
            f"| {name} | " + " | ".join(f"{r[c]:.0%}" if c in PREFERENCE else f"{r[c]:.2f}" for r in rows) + " |"
        )
    return "\n".join(lines)


def main() -> int:
    folder = data_dir()
    demos = [json.loads(line) for line in (folder / "sft_demos.jsonl").read_text().splitlines()]
    result = {
        "demonstrations": rates([(d["prompt"], d["response"], True) for d in demos]),
        "sft_samples": {str(t): rates(items) for t, items in sft_samples(folder).items()},
    }
    write_json(folder / "quality_rates.json", result)
    readme = folder / "README.md"
    text = readme.read_text()
    block = f"{START}\n{table(result)}\n{END}"
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
