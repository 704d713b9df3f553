"""Every link a learner can follow resolves inside the repository.

Checked: the markdown cells of every notebook, README.md and docs/*.md. A relative link must name a
file (or folder) of the repository, and a `#anchor` must be one that a heading of the target
produces (GitHub's heading slugs). Every `*.md` path named anywhere in the notebooks (code cells
too), the library, the tests, the scripts and the benchmarks must exist as well, with its anchor.
Notes kept outside the repository must not be cited at all: a learner cannot open them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOURCE_FILES = sorted(p for folder in ("rlhf_edu", "tests", "scripts", "bench") for p in (ROOT / folder).rglob("*.py"))
# Built from pieces so that this file does not itself name what it forbids.
FORBIDDEN = ("ppo" + "_details", "../" + "shared", "/work/" + "shared", "notebook" + "_tooling")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1`*[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_LINK = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"""<a\s[^>]*\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
MD_PATH = re.compile(r"(?<![\w/.-])((?:\.{1,2}/)*[\w][\w./-]*\.md)(#[\w-]+)?\b")
# Pages a run writes under artifacts/ (rlhf_edu.course.report), named by their file name in the code that writes them.
GENERATED_PAGES = {"report.md"}
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())  # \w keeps letters, digits and _
    return text.replace(" ", "-")


def slugs(headings: list[str]) -> set[str]:
    """GitHub's anchors for a page's headings, in order: a repeated slug gets -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for heading in headings:
        slug = github_slug(heading)
        if slug in seen:
            seen[slug] += 1
            out.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            out.add(slug)
    return out


def strip_code(markdown: str) -> str:
    """Markdown without fenced blocks and inline code spans, where links are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def markdown_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def all_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]


def markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n\n".join(markdown_cells(path))
    return path.read_text(encoding="utf-8")


def anchors_of(path: Path) -> set[str]:
    """Every anchor a link into `path` may use: heading slugs and explicit <a id/name> targets.

    In a notebook Jupyter's own form (the heading text with spaces as hyphens) is accepted too."""
    text = FENCE.sub("", markdown_of(path))
    headings = [m.group(2) for m in HEADING.finditer(text)]
    anchors = slugs(headings) | set(HTML_ANCHOR.findall(text))
    if path.suffix == ".ipynb":
        anchors |= {h.strip().replace(" ", "-") for h in headings}
    return anchors


def links_in(markdown: str) -> list[str]:
    text = strip_code(markdown)
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text) + HTML_LINK.findall(text)


def resolve(target: str, base: Path) -> tuple[Path | None, str]:
    """(resolved path or None when outside the repository, anchor) of a relative link."""
    path_part, _, anchor = target.partition("#")
    path = (base.parent / unquote(path_part)).resolve() if path_part else base
    try:
        path.relative_to(ROOT)
    except ValueError:
        return None, anchor
    return path, anchor


def link_problem(target: str, source: Path) -> str | None:
    """Why a link found in `source` does not resolve, or None when it does (or is external)."""
    if SCHEME.match(target):
        return None
    path, anchor = resolve(target, source)
    if path is None:
        return f"{target}: points outside the repository"
    if not path.exists():
        return f"{target}: {path.relative_to(ROOT)} does not exist"
    if anchor:
        if path.is_dir():
            return f"{target}: an anchor into a folder"
        if path.suffix in (".md", ".ipynb"):
            if unquote(anchor) not in anchors_of(path):
                return f"{target}: no heading of {path.relative_to(ROOT)} has the anchor #{anchor}"
        elif not re.fullmatch(r"L\d+(-L\d+)?", anchor):
            return f"{target}: #{anchor} is not a line anchor of {path.relative_to(ROOT)}"
    return None


def label(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", MARKDOWN_FILES + NOTEBOOKS, ids=label)
def test_relative_links_resolve(page):
    texts = markdown_cells(page) if page.suffix == ".ipynb" else [page.read_text(encoding="utf-8")]
    problems = [p for text in texts for t in links_in(text) if (p := link_problem(t, page))]
    assert not problems, f"{label(page)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", MARKDOWN_FILES + NOTEBOOKS + SOURCE_FILES, ids=label)
def test_named_markdown_files_exist(page):
    """A path like `docs/glossary.md#ppo-metrics` in a docstring, comment or cell must resolve,
    from the repository root or from the file's own folder."""
    if page == Path(__file__).resolve():
        return
    text = "\n".join(all_cells(page)) if page.suffix == ".ipynb" else page.read_text(encoding="utf-8")
    problems = []
    for match in MD_PATH.finditer(text):
        name, anchor = match.group(1), (match.group(2) or "")
        if name.startswith("artifacts/") or name in GENERATED_PAGES:
            continue  # written by a run (`make course`), never part of the repository
        candidates = [(ROOT / name).resolve(), (page.parent / name).resolve()]
        found = [c for c in candidates if c.is_file() and c.is_relative_to(ROOT)]
        if not found:
            problems.append(f"{name}: no such file in the repository")
        elif anchor and anchor[1:] not in anchors_of(found[0]):
            problems.append(f"{name}{anchor}: no heading of {label(found[0])} has that anchor")
    assert not problems, f"{label(page)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", MARKDOWN_FILES + NOTEBOOKS + SOURCE_FILES, ids=label)
def test_no_citations_of_notes_outside_the_repository(page):
    if page == Path(__file__).resolve():
        return
    text = page.read_text(encoding="utf-8")
    hits = [
        f"line {i}: {line.strip()[:120]}"
        for i, line in enumerate(text.splitlines(), 1)
        if any(word in line for word in FORBIDDEN)
    ]
    assert not hits, f"{label(page)} cites notes a learner cannot open:\n" + "\n".join(hits)


def test_the_slugs_follow_github():
    assert github_slug("GRPO, Dr GRPO and RLOO") == "grpo-dr-grpo-and-rloo"
    assert github_slug("KL estimators: `k1`, k2 and k3") == "kl-estimators-k1-k2-and-k3"
    assert github_slug("Best-of-n and over-optimization") == "best-of-n-and-over-optimization"
    assert github_slug("1. Sample") == "1-sample"
    assert github_slug("The [glossary](glossary.md) names") == "the-glossary-names"
    assert slugs(["Notes", "Notes", "Notes"]) == {"notes", "notes-1", "notes-2"}


def test_the_checker_catches_broken_links():
    page = ROOT / "docs" / "README.md"
    assert link_problem("glossary.md#ppo-metrics", page) is None
    assert link_problem("implementation_details.md#gae", page) is None
    assert link_problem("https://arxiv.org/abs/1707.06347", page) is None
    assert "does not exist" in link_problem("missing.md", page)
    assert "no heading" in link_problem("glossary.md#no-such-section", page)
    assert "outside the repository" in link_problem("../../elsewhere.md", page)
    assert links_in("see `[x](nowhere.md)` and\n```\n[y](nowhere.md)\n```\n[z](here.md)") == ["here.md"]


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_tables_are_rendered_from_the_runs_json():
    """Every results block of README.md and docs/results.md is what scripts/render_results.py renders
    from the committed JSON: no figure in them was typed, and none is stale."""
    render = _script("render_results")
    rendered = render.blocks()
    assert {page for page, _ in rendered} == {"README.md", "docs/results.md"}
    for (page, name), body in rendered.items():
        assert render.committed_block(page, name) == body, (
            f"{page}'s {name} block is stale: run scripts/render_results.py"
        )


def test_a_stale_results_table_is_caught(tmp_path, monkeypatch):
    """The check above can fail: a course summary with another figure renders another block."""
    render = _script("render_results")
    summary = {
        "machine": "m",
        "dtype": "fp32",
        "preset": "cpu",
        "notebooks": {
            "01_sft": {
                "seconds": 100.0,
                "metrics": {"n_eval": 128, "gold_base_mean": 0.39, "gold_sft_mean": 0.61, "gold_delta_z": 12.0},
            }
        },
    }
    path = tmp_path / "course_cpu_fp32.json"
    path.write_text(json.dumps(summary))
    bf16 = tmp_path / "course_cpu_bf16.json"
    bf16.write_text(json.dumps({**summary, "dtype": "bf16", "machine": "n"}))
    monkeypatch.setattr(render, "COURSES", {"fp32": path, "bf16": bf16})
    block = render.blocks()[("README.md", "results")]
    assert "gold base 0.390 -> SFT 0.610, z = 12.0" in block and "100 s" in block
    assert block != render.committed_block("README.md", "results")
    # The README shows the fp32 record (the reference laptop); the results page shows each dtype's.
    assert "on m, fp32" in block and "on n, bf16" not in block
    page = render.blocks()[("docs/results.md", "course")]
    assert "on m, fp32" in page and "on n, bf16" in page


def test_readme_is_a_newcomers_page():
    """The README stays short enough to read: what to do first, the rest linked."""
    size = len((ROOT / "README.md").read_text(encoding="utf-8"))
    assert size <= 12_000, f"README.md has {size} characters; move reference material to docs/"


def test_data_readme_rates_are_rendered_from_the_data():
    """data/README.md's table of quality rates is scripts/quality_rates.py's, on today's data and rubric."""
    rates = _script("quality_rates")
    text = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    block = text[text.index(rates.START) + len(rates.START) : text.index(rates.END)].strip("\n")
    import json

    stored = json.loads((ROOT / "data" / "quality_rates.json").read_text())
    assert block == rates.table(stored)
    folder = ROOT / "data"
    demos = [json.loads(line) for line in (folder / "sft_demos.jsonl").read_text().splitlines()]
    fresh = rates.rates([(d["prompt"], d["response"], True) for d in demos])
    assert fresh == stored["demonstrations"], "data/quality_rates.json is stale: run scripts/quality_rates.py"
