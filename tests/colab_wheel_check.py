"""The Colab setup cell against the built wheel, in a simulated Colab (`make test-wheel`).

    .venv-wheel/bin/python tests/colab_wheel_check.py NOTEBOOK WORK_DIR WHEEL

Run with the Python of a fresh environment where `make test-wheel` installed the wheel. A stand-in
`google.colab` module makes the notebook's setup cell (cell 1) take its Colab branch, with the
course folder moved from /content into WORK_DIR. Three runtimes, each a fresh course folder:
`RLHF_EDU_WHEEL` naming the wheel file (the cell installs it, its dependencies under the runtime's
constraints and the model file), the wheel already pip-installed (no variable), and a second
notebook in the same runtime (nothing left to install). After each: the notebooks are copied into
the course folder, the working folder is its notebooks/, artifacts go to its artifacts/, and
rlhf_edu, imported from the installed wheel and not from a clone, reads the course's data.
Exits 1 with what was wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path


def setup_source(notebook: Path, course: Path) -> str:
    cell = json.loads(notebook.read_text())["cells"][1]
    source = "".join(cell["source"])
    default = 'Path("/content/rlhf-edu")'
    if source.count(default) != 1:
        raise SystemExit(f"{notebook.name}: the setup cell does not name {default} once")
    return source.replace(default, f"Path({str(course)!r})")


def run_cell(source: str, course: Path, pip_calls: list) -> None:
    real_run = subprocess.run

    def run(cmd, *args, **kwargs):  # record what the cell runs, then run it for real
        pip_calls.append([str(c) for c in cmd])
        return real_run(cmd, *args, **kwargs)

    subprocess.run = run
    try:
        exec(compile(source, "colab-setup", "exec"), {"__name__": "__main__"})  # noqa: S102 - the check's point
    finally:
        subprocess.run = real_run
    check(course)


def check(course: Path) -> None:
    import rlhf_edu
    from rlhf_edu.data import data_dir, load_concepts
    from rlhf_edu.store import artifacts_dir

    problems = []
    if Path.cwd() != course / "notebooks":
        problems.append(f"working folder {Path.cwd()}, expected {course / 'notebooks'}")
    if not sorted((course / "notebooks").glob("*.ipynb")):
        problems.append(f"no notebooks copied into {course / 'notebooks'}")
    if (Path(rlhf_edu.__file__).resolve().parents[1] / "notebooks").is_dir():
        problems.append(f"rlhf_edu was imported from a clone ({rlhf_edu.__file__}), not from the wheel")
    if artifacts_dir() != course / "artifacts":
        problems.append(f"artifacts go to {artifacts_dir()}, expected {course / 'artifacts'}")
    if "share/rlhf-edu" not in str(data_dir()) or not len(load_concepts("train")):
        problems.append(f"the course's data is not read from the installed wheel ({data_dir()})")
    if problems:
        raise SystemExit(f"Colab setup from the wheel, {course}:\n- " + "\n- ".join(problems))


def main(notebook: str, work: str, wheel: str) -> int:
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    sys.modules["google"], sys.modules["google.colab"] = google, google.colab
    notebook, work, wheel = Path(notebook).resolve(), Path(work).resolve(), str(Path(wheel).resolve())

    calls: list = []
    os.environ["RLHF_EDU_WHEEL"] = wheel
    first = work / "from-wheel-file" / "rlhf-edu"
    run_cell(setup_source(notebook, first), first, calls)
    installs = [c for c in calls if c[1:4] == ["-m", "pip", "install"]]
    assert any(wheel in c and "--no-deps" in c for c in installs), installs
    assert any("-c" in c and "transformers<6,>=5.0" in c for c in installs), installs  # the wheel's own
    assert not any("torch>=2.4" in c for c in installs), "the runtime's torch was not kept"

    del os.environ["RLHF_EDU_WHEEL"]
    calls.clear()
    second = work / "wheel-installed" / "rlhf-edu"
    run_cell(setup_source(notebook, second), second, calls)
    assert not any(wheel in c for c in calls), "installed the wheel again"
    assert any(c[1:3] == ["-m", "rlhf_edu.fetch"] for c in calls), calls

    calls.clear()  # another notebook in the same runtime: nothing to install or copy
    run_cell(setup_source(notebook, second), second, calls)
    assert calls == [], calls
    print(f"Colab setup from the wheel: {notebook.name} ran in three simulated runtimes under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
