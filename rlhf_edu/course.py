"""Run the course headless: `python -m rlhf_edu.course --preset cpu` (what `make course` calls).

Executes every notebook in `notebooks/` in order with nbclient, in a fresh kernel each, with
`RLHF_EDU_PRESET` set; writes the executed copies to `artifacts/executed/` and
`artifacts/course_summary.json`:

    {"preset": "cpu", "machine": "...", "notebooks": {"01_sft": {"seconds": 412.0, "metrics": {...}}}}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from rlhf_edu.store import ARTIFACTS_ENV, artifacts_dir, load_metrics, write_json

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def run_notebook(path: Path, out_dir: Path, timeout: int) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - start
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=os.environ.get("RLHF_EDU_PRESET", "cpu"), choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 00 01")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR)
    args = parser.parse_args(argv)
    os.environ["RLHF_EDU_PRESET"] = args.preset
    os.environ["RLHF_EDU_AUTOPILOT"] = "1"  # no one is there to click: the labeling widgets use their autopilot
    artifacts = artifacts_dir()
    os.environ[ARTIFACTS_ENV] = str(artifacts)  # the kernels inherit it
    notebooks = sorted(args.notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in args.only]
    summary_path = artifacts / "course_summary.json"
    summary = {"preset": args.preset, "machine": machine_description(), "notebooks": {}}
    if args.only and summary_path.exists():
        # A partial run (--only) keeps the other notebooks' entries of the same preset.
        previous = json.loads(summary_path.read_text())
        if previous.get("preset") == args.preset:
            summary["notebooks"] = previous.get("notebooks", {})
    for nb in notebooks:
        name = nb.stem
        print(f"[course] {name} (preset {args.preset}) ...", flush=True)
        metrics_file = artifacts / "metrics" / f"{name}.json"
        metrics_file.unlink(missing_ok=True)
        try:
            seconds = run_notebook(nb, artifacts / "executed", args.timeout)
        except Exception as err:  # noqa: BLE001 - report which notebook failed, then stop
            print(f"[course] {name} FAILED: {type(err).__name__}: {str(err)[-2000:]}", file=sys.stderr)
            summary["notebooks"][name] = {"error": f"{type(err).__name__}"}
            write_json(summary_path, summary)
            return 1
        summary["notebooks"][name] = {"seconds": round(seconds, 1), "metrics": load_metrics(name) or {}}
        print(f"[course] {name} done in {seconds:.1f} s", flush=True)
        write_json(summary_path, summary)
    print(f"[course] wrote {summary_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
