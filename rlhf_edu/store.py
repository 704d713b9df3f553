"""Artifacts: checkpoints, runs and the headline metrics each notebook records.

`artifacts_dir()` is `$RLHF_EDU_ARTIFACTS`, else `artifacts/` in the repository (found from the
package's location), else `./artifacts`. Each notebook calls `record_metrics("01_sft", {...})`;
`make course` gathers those files into `artifacts/course_summary.json`.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

ARTIFACTS_ENV = "RLHF_EDU_ARTIFACTS"


def artifacts_dir() -> Path:
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        path = Path(env)
    else:
        repo = Path(__file__).resolve().parents[1]
        path = repo / "artifacts" if (repo / "notebooks").is_dir() else Path.cwd() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (a crash mid-write never leaves a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # bytes on macOS, KiB on Linux


def record_metrics(notebook: str, metrics: dict) -> Path:
    """Save a notebook's headline metrics (plus its peak memory) for the course summary."""
    clean = {k: (float(v) if hasattr(v, "item") else v) for k, v in metrics.items()}
    clean["peak_rss_gb"] = round(peak_rss_gb(), 3)
    path = artifacts_dir() / "metrics" / f"{notebook}.json"
    write_json(path, clean)
    return path


def load_metrics(notebook: str) -> dict | None:
    path = artifacts_dir() / "metrics" / f"{notebook}.json"
    return json.loads(path.read_text()) if path.exists() else None
