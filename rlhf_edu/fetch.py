"""Copy the course's notebooks and reference pages into a working folder, from an installed wheel.

    pip install rlhf-edu
    python -m rlhf_edu.fetch my-course      # my-course/notebooks/*.ipynb and my-course/docs/*.md
    cd my-course/notebooks && jupyter lab
    python -m rlhf_edu.fetch my-course --run smoke          # copy, then run every notebook headless
    python -m rlhf_edu.fetch my-course --run cpu --only 00 01

The data stays where the wheel installed it (`rlhf_edu.data.data_dir`); artifacts are written under
`artifacts/` in the folder the notebooks run from. A folder that already holds notebooks is left
alone unless `--force`, so nothing a learner changed is overwritten. `--run PRESET` then runs the
copied notebooks headless with `python -m rlhf_edu.course` (artifacts in `my-course/artifacts/`, the
executed copies and the course summary with them), as `make course` does in a clone.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rlhf_edu.data import installed_course_dir


def fetch(dest: str | Path, *, source: str | Path | None = None, force: bool = False) -> list[Path]:
    """Copy notebooks/ and docs/ from `source` (default: the installed course) into `dest`; returns
    the notebooks copied. Raises FileExistsError when `dest/notebooks` holds notebooks and not `force`."""
    source = Path(source) if source is not None else installed_course_dir()
    if not (source / "notebooks").is_dir():
        raise FileNotFoundError(
            f"no course notebooks in {source}: install the wheel (pip install rlhf-edu), or work in a clone"
        )
    dest = Path(dest)
    existing = sorted((dest / "notebooks").glob("*.ipynb"))
    if existing and not force:
        raise FileExistsError(
            f"{dest / 'notebooks'} already holds {len(existing)} notebooks; pass --force to overwrite"
        )
    for part in ("notebooks", "docs"):
        if (source / part).is_dir():
            shutil.copytree(source / part, dest / part, dirs_exist_ok=True)
    return sorted((dest / "notebooks").glob("*.ipynb"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Copy the course's notebooks and pages into a working folder.")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--force", action="store_true", help="overwrite notebooks already in dest/notebooks")
    ap.add_argument("--run", metavar="PRESET", choices=["smoke", "cpu", "gpu"], help="then run the notebooks headless")
    ap.add_argument("--only", nargs="*", default=None, help="with --run: notebook number prefixes, e.g. 00 01")
    args = ap.parse_args(argv)
    try:
        copied = fetch(args.dest, force=args.force)
    except (FileNotFoundError, FileExistsError) as err:
        print(err, file=sys.stderr)
        return 1
    print(
        f"{len(copied)} notebooks in {args.dest / 'notebooks'}; start with: cd {args.dest / 'notebooks'} && jupyter lab"
    )
    if args.run is None:
        return 0
    return run(args.dest, args.run, args.only)


def run(dest: Path, preset: str, only: list[str] | None = None) -> int:
    """Run the notebooks copied into `dest` with the course runner (`python -m rlhf_edu.course`, in a
    process of its own), artifacts in dest/artifacts. Returns its exit status."""
    import os
    import subprocess

    from rlhf_edu.store import ARTIFACTS_ENV

    env = {**os.environ, ARTIFACTS_ENV: str(Path(dest).resolve() / "artifacts")}
    command = [
        sys.executable,
        "-m",
        "rlhf_edu.course",
        "--preset",
        preset,
        "--notebooks-dir",
        str(Path(dest) / "notebooks"),
    ]
    return subprocess.run(command + (["--only", *only] if only else []), env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
