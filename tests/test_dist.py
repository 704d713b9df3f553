"""The wheel carries the course (`make dist`): data, notebooks and pages install under
<data path>/share/rlhf-edu, `data.data_dir` finds the data there outside a clone, and `rlhf_edu.fetch`
copies the notebooks into a working folder without overwriting a learner's."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rlhf_edu import data, fetch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    leftovers = [REPO / "build", REPO / "rlhf_edu.egg-info"]  # what an in-tree build leaves behind
    existed = {p for p in leftovers if p.exists()}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    for p in set(leftovers) - existed:
        shutil.rmtree(p, ignore_errors=True)
    (path,) = out.glob("rlhf_edu-*.whl")
    return path


def test_the_wheel_carries_the_data_notebooks_and_pages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    share = [n for n in names if "/data/share/rlhf-edu/" in n]
    rel = {n.split("/data/share/rlhf-edu/", 1)[1] for n in share}
    for path in [*REPO.glob("notebooks/*.ipynb"), *REPO.glob("docs/*.md"), *REPO.glob("data/*.jsonl")]:
        assert str(path.relative_to(REPO)) in rel, f"{path.name} is not in the wheel"
    assert "data/fixtures/hh_rlhf_sample.jsonl" in rel and "data/README.md" in rel
    assert "rlhf_edu/exercises.py" in names


def test_fetch_copies_the_installed_course_and_keeps_a_learners_notebooks(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "unpacked")
    (installed,) = (tmp_path / "unpacked").glob("rlhf_edu-*.data/data/share/rlhf-edu")
    copied = fetch.fetch(tmp_path / "course", source=installed)
    assert [p.name for p in copied] == sorted(p.name for p in REPO.glob("notebooks/*.ipynb"))
    assert (tmp_path / "course" / "docs/glossary.md").is_file()  # the notebooks' links resolve
    edited = tmp_path / "course" / "notebooks" / copied[0].name
    edited.write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        fetch.fetch(tmp_path / "course", source=installed)
    assert edited.read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="pip install rlhf-edu"):
        fetch.fetch(tmp_path / "elsewhere", source=tmp_path / "nothing")


def test_data_dir_outside_a_clone_is_the_installed_copy(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    assert data.data_dir() == REPO / "data"  # in a clone
    monkeypatch.setattr(data, "__file__", str(tmp_path / "site-packages" / "rlhf_edu" / "data.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    (tmp_path / "env" / "share" / "rlhf-edu" / "data").mkdir(parents=True)
    assert data.data_dir() == tmp_path / "env" / "share" / "rlhf-edu" / "data"


@pytest.mark.parametrize("where", ["scheme", "prefix", "user"])
def test_the_installed_course_is_found_where_pip_put_it(monkeypatch, tmp_path, where):
    """A venv installs under sys.prefix, a Debian or Ubuntu system Python (Colab) under /usr/local
    (the scheme's data path, not sys.prefix = /usr), `pip install --user` under ~/.local."""
    import site
    import sysconfig

    bases = {"scheme": tmp_path / "usr-local", "prefix": tmp_path / "usr", "user": tmp_path / "home-local"}
    monkeypatch.setattr(sysconfig, "get_path", lambda name, *a, **k: str(bases["scheme"]))
    monkeypatch.setattr(sys, "prefix", str(bases["prefix"]))
    monkeypatch.setattr(site, "getuserbase", lambda: str(bases["user"]))
    assert data.installed_course_dir() == bases["scheme"] / "share" / "rlhf-edu"  # nothing installed yet
    (bases[where] / "share" / "rlhf-edu").mkdir(parents=True)
    assert data.installed_course_dir() == bases[where] / "share" / "rlhf-edu"
