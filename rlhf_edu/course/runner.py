"""Run the course headless: `python -m rlhf_edu.course --preset cpu` (what `make course` calls).

Executes every notebook in `notebooks/` in order with nbclient, in a fresh kernel each, with
`RLHF_EDU_PRESET` set; writes the executed copies to `artifacts/executed/` and
`artifacts/course_summary.json`, and the report card of the run, `artifacts/report/report.md`
(`rlhf_edu.course.report`: each notebook's headline metrics and plots, the machine, the preset, the times):

    {"preset": "cpu", "machine": "...",
     "notebooks": {"01_sft": {"seconds": 412.0, "images": 2, "peak_rss_gb": 4.4, "metrics": {...}}}}

A notebook fails when a cell raises, when a cell runs past the preset's `cell_timeout`, when its
kernel loses a reply (idle, and no `execute_reply` even on a fresh poll: see
`rlhf_edu.course.kernel_watch`; the notebook is rerun once in a fresh kernel first), and when its source
draws figures but it produced no image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from functools import partial
from pathlib import Path

from rlhf_edu.course.kernel_watch import LOST_REPLY_GRACE, LostReplyError, WatchedClient, describe_cell
from rlhf_edu.course.report import write_report
from rlhf_edu.devices import device_setup
from rlhf_edu.presets import PRESETS
from rlhf_edu.store import ARTIFACTS_ENV, artifacts_dir, load_metrics, write_json

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
# What draws a figure in the course: the library's Figure, LivePlot, token heatmap and frontier
# explorer, and pyplot.
DRAWS_A_FIGURE = re.compile(r"\b(Figure|LivePlot|token_heatmap|FrontierExplorer)\(|\bplt\.")


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


def figure_cells(nb) -> list[int]:
    """Indices of the code cells whose source draws a figure (comment lines aside)."""
    return [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and any(DRAWS_A_FIGURE.search(line) for line in cell.source.splitlines() if not line.lstrip().startswith("#"))
    ]


def count_images(nb) -> int:
    """`image/png` outputs of an executed notebook: the cells' own, and those shown inside Output
    widgets (the frontier explorer's), which nbclient keeps in the notebook's widget state."""
    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    for model in state.get("state", {}).values():
        outputs += model.get("state", {}).get("outputs", [])
    return sum("image/png" in out.get("data", {}) for out in outputs)


def kernel_peak_rss_gb(client) -> float | None:
    """The kernel process's peak resident memory so far (VmHWM, GB), None where /proc cannot tell."""
    pid = getattr(getattr(client.km, "provisioner", None), "pid", None)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9  # KiB -> GB, as store.peak_rss_gb
    except (OSError, ValueError):
        pass
    return None


PEAK_STEP_GB = 0.25
"""A cell that raises the kernel's peak memory by at least this much is named in `peak_cells`."""


def _record_peak(usage: dict, client, cell=None, cell_index=None, **_) -> None:
    """After each cell: the kernel's peak memory so far, and the cells that raised it by at least
    `PEAK_STEP_GB` (`usage["peak_cells"]`: where a notebook's memory goes)."""
    peak = kernel_peak_rss_gb(client)
    if peak is None:
        return
    before = usage.get("peak_rss_gb") or 0.0
    if cell is not None and peak - before >= PEAK_STEP_GB:
        where = describe_cell(client.notebook_name, cell_index, cell.source)
        usage.setdefault("peak_cells", []).append({"cell": where, "peak_rss_gb": round(peak, 2)})
    usage["peak_rss_gb"] = peak


def run_notebook(
    path: Path,
    out_dir: Path,
    timeout: int,
    lost_reply_grace: float = LOST_REPLY_GRACE,
    reruns: int = 1,
    usage: dict | None = None,
    keep_going: bool = False,
) -> tuple[float, int]:
    """Execute one notebook in a fresh kernel; (seconds, images). A lost reply reruns the notebook
    up to `reruns` times, then raises `LostReplyError` naming the notebook and cell. `usage`, when
    given, receives `peak_rss_gb`: the kernel's peak resident memory, read after every cell, and
    `peak_cells`, the cells that raised it most (`_record_peak`); with
    `keep_going` a failing cell does not stop the notebook and `usage["failed_cells"]` lists them."""
    import nbformat

    attempt = 0
    while True:
        nb = nbformat.read(path, as_version=4)
        client = WatchedClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            lost_reply_grace=lost_reply_grace,
            notebook_name=path.name,
            allow_errors=keep_going,
            resources={"metadata": {"path": str(path.parent)}},
        )
        if usage is not None:
            client.on_cell_executed = partial(_record_peak, usage, client)
        start = time.perf_counter()
        try:
            client.execute()
        except LostReplyError as err:
            if attempt == reruns:
                raise
            attempt += 1
            print(f"[course] {err}\n[course] rerunning {path.name} in a fresh kernel", flush=True)
            continue
        finally:
            seconds = time.perf_counter() - start
            out_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out_dir / path.name)
        if client.recovered_replies:
            print(f"[course] {path.name}: {client.recovered_replies} replies found by a fresh poll")
        if usage is not None and keep_going:
            usage["failed_cells"] = failed_cells(path.name, nb)
        return seconds, count_images(nb)


def failed_cells(notebook: str, nb) -> list[dict]:
    """[{"cell": where, "error": "AssertionError: ..."}] for every code cell with an error output."""
    failed = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                error = f"{output.get('ename', '')}: {output.get('evalue', '')}"
                failed.append({"cell": describe_cell(notebook, index, cell.source), "error": error[-500:]})
    return failed


def missing_images_message(path: Path) -> str | None:
    """Why a notebook that draws figures but produced no image fails, or None."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = figure_cells(nb)
    if not cells:
        return None
    where = describe_cell(path.name, cells[0], nb.cells[cells[0]].source)
    return (
        f"{where} and {len(cells) - 1} more cells draw figures, but the executed notebook has no "
        "image/png output (a figure shown as text only? display an rlhf_edu.plots.Figure)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_edu.course", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default=os.environ.get("RLHF_EDU_PRESET", "cpu"), choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 00 01")
    parser.add_argument(
        "--timeout", type=int, default=None, help="seconds per cell (default: the preset's cell_timeout)"
    )
    parser.add_argument(
        "--lost-reply-grace",
        type=float,
        default=LOST_REPLY_GRACE,
        help="seconds from a cell's idle status to its reply before the reply counts as lost",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run every notebook to its end even when cells fail, list the failed cells, exit 1 if any",
    )
    parser.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR)
    args = parser.parse_args(argv)
    os.environ["RLHF_EDU_PRESET"] = args.preset
    timeout = args.timeout or PRESETS[args.preset].cell_timeout
    os.environ["RLHF_EDU_AUTOPILOT"] = "1"  # no one is there to click: the labeling widgets use their autopilot
    artifacts = artifacts_dir()
    os.environ[ARTIFACTS_ENV] = str(artifacts)  # the kernels inherit it
    notebooks = sorted(args.notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in args.only]
    summary_path = artifacts / "course_summary.json"
    summary = {
        "preset": args.preset,
        "machine": machine_description(),
        "dtype": device_setup().dtype_name,
        "notebooks": {},
    }
    if args.only and summary_path.exists():
        # A partial run (--only) keeps the other notebooks' entries of the same preset.
        previous = json.loads(summary_path.read_text())
        if previous.get("preset") == args.preset:
            summary["notebooks"] = previous.get("notebooks", {})
    any_failed = False
    for nb in notebooks:
        name = nb.stem
        print(f"[course] {name} (preset {args.preset}) ...", flush=True)
        metrics_file = artifacts / "metrics" / f"{name}.json"
        metrics_file.unlink(missing_ok=True)
        try:
            usage: dict = {}
            seconds, images = run_notebook(
                nb, artifacts / "executed", timeout, args.lost_reply_grace, usage=usage, keep_going=args.keep_going
            )
            missing = None if images else missing_images_message(nb)
            if missing:
                raise RuntimeError(missing)
        except Exception as err:  # noqa: BLE001 - report which notebook failed, then stop
            print(f"[course] {name} FAILED: {type(err).__name__}: {str(err)[-2000:]}", file=sys.stderr)
            summary["notebooks"][name] = {"error": f"{type(err).__name__}: {str(err)[-500:]}"}
            write_json(summary_path, summary)
            print(f"[course] wrote {write_report(summary, artifacts)}")
            return 1
        summary["notebooks"][name] = {
            "seconds": round(seconds, 1),
            "images": images,
            "peak_rss_gb": None if usage.get("peak_rss_gb") is None else round(usage["peak_rss_gb"], 2),
            "metrics": load_metrics(name) or {},
        }
        if usage.get("peak_cells"):
            summary["notebooks"][name]["peak_cells"] = usage["peak_cells"]
        if usage.get("failed_cells"):
            any_failed = True
            summary["notebooks"][name]["failed_cells"] = usage["failed_cells"]
            first = usage["failed_cells"][0]
            print(
                f"[course] {name}: {len(usage['failed_cells'])} cells failed, first {first['cell']}: {first['error']}"
            )
        print(f"[course] {name} done in {seconds:.1f} s", flush=True)
        write_json(summary_path, summary)
    print(f"[course] wrote {summary_path} and {write_report(summary, artifacts)}")
    return 1 if any_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
