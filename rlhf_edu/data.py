"""The task's data: concepts (train/eval split) and SFT demonstrations, with schema checks.

Every file in `data/` was written for this project (see data/README.md). Files are JSON Lines, one
object per line. Loading goes through `datasets`; before that, each row is checked against its
schema so that a bad row raises `DataError` naming the file, the line and the field, instead of a
traceback from deep inside pyarrow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA_ENV = "RLHF_EDU_DATA"
PROMPT_TEMPLATE = "Explain {concept} to a 10-year-old."

CONCEPTS_SCHEMA = {"concept": str, "category": str, "split": str}
SFT_SCHEMA = {"concept": str, "prompt": str, "response": str}
SPLITS = ("train", "eval")


class DataError(ValueError):
    """A data file that does not match its schema; the message names file, line and field."""


def installed_course_dir() -> Path:
    """Where an installed wheel keeps the course's data, notebooks and pages: share/rlhf-edu under the
    install scheme's data folder. That is `sys.prefix` in a virtual environment, but /usr/local for a
    system Python on Debian and Ubuntu (Colab) and ~/.local for `pip install --user`: the first of
    these that holds the course, else the scheme's own."""
    import site
    import sys
    import sysconfig

    bases = [sysconfig.get_path("data"), sys.prefix, site.getuserbase()]
    for base in bases:
        if (Path(base) / "share" / "rlhf-edu").is_dir():
            return Path(base) / "share" / "rlhf-edu"
    return Path(bases[0]) / "share" / "rlhf-edu"


def data_dir() -> Path:
    """`$RLHF_EDU_DATA`, else the repository's `data/` next to the package (a clone), else the data an
    installed wheel carries (`installed_course_dir() / "data"`)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    in_clone = Path(__file__).resolve().parents[1] / "data"
    return in_clone if in_clone.is_dir() else installed_course_dir() / "data"


def make_prompt(concept: str) -> str:
    """The running task's prompt for one concept."""
    if not isinstance(concept, str) or not concept.strip():
        raise ValueError(f"a concept must be a non-empty string, got {concept!r}")
    return PROMPT_TEMPLATE.format(concept=concept.strip())


def read_jsonl(path: str | Path, schema: dict, optional: dict | None = None) -> list[dict]:
    """Parse and check a JSON Lines file: every row has exactly the schema's fields (plus any of
    `optional`'s), each a non-empty value of the right type. Raises `DataError` naming file, line
    and field."""
    optional = optional or {}
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (" (it is a folder)" if path.is_dir() else ""))
    rows = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig")  # -sig: a byte-order mark (Windows editors) is dropped
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}, line {line_no}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                    f"{err.start + 1}); save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {line_no}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
            for field, kind in schema.items():
                if field not in row:
                    near = [k for k in row if k not in schema]
                    hint = f" (found unexpected field(s) {near})" if near else ""
                    raise DataError(f"{path}, line {line_no}: missing field {field!r}{hint}")
                value = row[field]
                if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
                    expected = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
                    raise DataError(
                        f"{path}, line {line_no}, field {field!r}: expected {expected}, "
                        f"got {type(value).__name__} ({value!r})"
                    )
                if kind is str and not value.strip():
                    raise DataError(f"{path}, line {line_no}, field {field!r}: empty string")
            for field, kind in optional.items():
                if field in row and not isinstance(row[field], kind):
                    raise DataError(
                        f"{path}, line {line_no}, field {field!r}: expected {kind.__name__}, "
                        f"got {type(row[field]).__name__} ({row[field]!r})"
                    )
            extra = [k for k in row if k not in schema and k not in optional]
            if extra:
                raise DataError(f"{path}, line {line_no}: unexpected field(s) {extra}; expected {list(schema)}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def load_jsonl_dataset(path: str | Path, schema: dict[str, type]):
    """A `datasets.Dataset` from a checked JSON Lines file."""
    import datasets

    from rlhf_edu import quiet_progress_bars

    quiet_progress_bars()  # no "Generating train split" bar for every small local file
    read_jsonl(path, schema)  # raises DataError on the first bad row
    return datasets.load_dataset("json", data_files=str(path), split="train")


def load_concepts(split: str | None = None, path: str | Path | None = None):
    """Concepts as a `datasets.Dataset` (concept, category, split), optionally one split."""
    path = Path(path) if path else data_dir() / "concepts.jsonl"
    ds = load_jsonl_dataset(path, CONCEPTS_SCHEMA)
    for i, value in enumerate(ds["split"]):
        if value not in SPLITS:
            raise DataError(f"{path}, row {i + 1}, field 'split': {value!r} is not one of {SPLITS}")
    if split is None:
        return ds
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return ds.filter(lambda row: row["split"] == split)


def load_sft_demos(path: str | Path | None = None):
    """SFT demonstrations as a `datasets.Dataset` (concept, prompt, response)."""
    path = Path(path) if path else data_dir() / "sft_demos.jsonl"
    ds = load_jsonl_dataset(path, SFT_SCHEMA)
    for i, row in enumerate(ds):
        if row["prompt"] != make_prompt(row["concept"]):
            raise DataError(
                f"{path}, row {i + 1}, field 'prompt': expected {make_prompt(row['concept'])!r}, got {row['prompt']!r}"
            )
    return ds


def eval_prompts(n: int | None = None) -> list[str]:
    """Prompts for the first `n` eval concepts (all of them if n is None), in file order."""
    concepts = load_concepts("eval")["concept"]
    if n is not None:
        if n > len(concepts):
            raise ValueError(f"asked for {n} eval prompts but the eval split has {len(concepts)}")
        concepts = concepts[:n]
    return [make_prompt(c) for c in concepts]
