"""The lock (requirements/lock.txt): `make lab` and `make test` install exact versions, so a release
elsewhere cannot break a notebook; every dependency pyproject.toml names is pinned there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"{LOCK.name}: {line!r} is not an exact pin (name==version)"
            pins[canonical(name)] = version
    return pins


def test_every_dependency_is_pinned_except_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("lab", "test", "scale"):
        wanted += project["optional-dependencies"][extra]
    names = {canonical(re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0]) for spec in wanted}
    pins = locked()
    assert "torch" not in pins, "torch is installed by TORCH_SPEC (or Colab's own), not by the lock"
    missing = sorted(names - set(pins) - {"torch"})
    assert not missing, f"not pinned in {LOCK.relative_to(ROOT)}: {missing} (run make lock)"


def test_make_installs_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'pip install --quiet -c \$\(LOCK\) -e "\.\[lab,test,scale\]"', makefile.replace("$(PIP)", "pip"))
    assert "LOCK   := requirements/lock.txt" in makefile
