"""The report card of a course run: `artifacts/report/report.md`, written by `make course`.

One page a learner or an instructor reads after a run: the preset, the machine, the compute dtype and
the times; then, for every notebook, its headline metrics (what it recorded with
`store.record_metrics`) and the plots it drew, copied out of its executed copy in
`artifacts/executed/`. Everything on the page comes from `course_summary.json` and the executed
notebooks; nothing is typed. `python -m rlhf_edu.course.report` writes it again from what is on disk.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import re
from pathlib import Path

from rlhf_edu.store import artifacts_dir

REPORT_DIR = "report"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def format_value(value) -> str:
    """A metric as a short string: floats to 4 significant digits, lists and dicts as compact JSON."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


def notebook_images(executed: Path) -> list[bytes]:
    """The PNG images in an executed notebook's outputs, in order."""
    if not executed.exists():
        return []
    nb = json.loads(executed.read_text(encoding="utf-8"))
    images = []
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                images.append(base64.b64decode("".join(png) if isinstance(png, list) else png))
    return images


def render_report(summary: dict, executed_dir: Path, out_dir: Path) -> str:
    """The report's markdown; the images it links are written to `out_dir`."""
    notebooks = summary.get("notebooks", {})
    total = sum(entry.get("seconds", 0.0) for entry in notebooks.values())
    lines = [
        f"# Course report: preset `{summary.get('preset', '?')}`",
        "",
        f"- machine: {summary.get('machine', '?')}",
        f"- compute dtype: {summary.get('dtype', '?')}",
        f"- notebooks run: {len(notebooks)}, in {total / 60:.1f} minutes",
        f"- written: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        "| notebook | status | time | peak memory | images |",
        "|---|---|---:|---:|---:|",
    ]
    for name, entry in notebooks.items():
        metrics = entry.get("metrics") or {}
        status = (
            "failed"
            if "error" in entry
            else f"{len(entry['failed_cells'])} cells failed"
            if entry.get("failed_cells")
            else "ok"
        )
        seconds = f"{entry['seconds']:.0f} s" if "seconds" in entry else ""
        peak_gb = entry.get("peak_rss_gb") or metrics.get("peak_rss_gb")  # the kernel's, else the notebook's own
        peak = f"{peak_gb:.2f} GB" if peak_gb else ""
        lines.append(f"| {name} | {status} | {seconds} | {peak} | {entry.get('images', '')} |")
    for name, entry in notebooks.items():
        lines += ["", f"## {name}", ""]
        if "error" in entry:
            lines += ["```", ANSI.sub("", entry["error"]), "```"]  # a traceback's colours are terminal codes
            continue
        for failed in entry.get("failed_cells", []):
            lines += [f"Failed: {failed['cell']}", "```", ANSI.sub("", failed["error"]), "```", ""]
        if entry.get("peak_cells"):
            cells = entry["peak_cells"]
            rises = "; ".join(f"{c['cell'].split(', ', 1)[-1]} to {c['peak_rss_gb']:.2f} GB" for c in cells)
            lines += [f"Where the peak memory rose: {rises}.", ""]
        metrics = {k: v for k, v in (entry.get("metrics") or {}).items() if k != "peak_rss_gb"}
        if metrics:
            lines += ["| metric | value |", "|---|---:|"]
            lines += [f"| `{key}` | {format_value(value)} |" for key, value in metrics.items()]
        for i, png in enumerate(notebook_images(executed_dir / f"{name}.ipynb"), start=1):
            image = out_dir / f"{name}-{i}.png"
            image.write_bytes(png)
            lines += ["", f"![{name}, figure {i}]({image.name})"]
    return "\n".join(lines) + "\n"


def write_report(summary: dict, artifacts: Path | None = None) -> Path:
    """Write `artifacts/report/report.md` (and its images) for this course summary."""
    artifacts = artifacts or artifacts_dir()
    out_dir = artifacts / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    path = out_dir / "report.md"
    path.write_text(render_report(summary, artifacts / "executed", out_dir), encoding="utf-8")
    return path


def main() -> int:
    summary_path = artifacts_dir() / "course_summary.json"
    if not summary_path.exists():
        raise SystemExit(f"no {summary_path}: run `make course` first")
    print(f"wrote {write_report(json.loads(summary_path.read_text()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
