"""Does the Jupyter stack lose replies? Execute a widget notebook many times and count the hangs.

Once, at the cpu preset, `make course` waited forever after notebook 05's FrontierExplorer cell:
the kernel had run the cell and sat idle, but its execute_reply never came (suspects: ipykernel 7's
shell-reply thread, ipykernel #1529 and #1554, and nbclient #312). This script rebuilds that
cell's ingredients in a small notebook: a busy torch cell (a few seconds of matmuls), then the
widgets the explorer builds (IntSlider, HTML, an Output with a PNG Image displayed in it, HBox and
VBox, the widget displayed, the slider moved), and executes it `--runs` times, one at a time, with
`rlhf_edu.course.kernel_watch.WatchedClient`. A stall is a cell whose idle status came but whose reply
nbclient's own poll did not see within a second; `recovered` counts the stalls whose reply a fresh
poll of the shell socket found, `hangs` those it did not find within `--grace` seconds. With
`--no-fresh-poll` the client only waits `--grace` seconds on nbclient's own poll, so every stall is
a hang (nbclient alone would wait out the per-cell timeout instead). Result: the stalls come with
ipykernel 6 and 7 alike, and a fresh poll finds every reply (nbclient #312, not the kernel).

Run it with the Python of each candidate environment; each run adds its entry (versions, runs,
hangs, seconds) to the JSON file:

    nice -n 10 .venv/bin/python bench/kernel_hangs.py --label ipykernel7
    nice -n 10 /tmp/venv-k6/bin/python bench/kernel_hangs.py --label ipykernel6
    nice -n 10 .venv/bin/python bench/kernel_hangs.py --label ipykernel7-no-fresh-poll --no-fresh-poll

The candidate environment needs only nbclient, ipykernel, ipywidgets, matplotlib and torch: the
course package is imported from this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncio

from nbclient import NotebookClient

from rlhf_edu.course.kernel_watch import LostReplyError, WatchedClient, lost_reply_message

PACKAGES = ["ipykernel", "nbclient", "pyzmq", "jupyter_client", "tornado", "ipython", "ipywidgets"]

BUSY_CELL = """\
import time
import torch

torch.set_num_threads(1)
a = torch.randn(384, 384)
start = time.perf_counter()
while time.perf_counter() - start < {busy_seconds}:
    a = torch.tanh(a @ a)  # (384, 384)
"""

WIDGET_CELL = """\
import io

import ipywidgets as W
from IPython.display import Image, display
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

fig = Figure(figsize=(6.0, 3.6))
FigureCanvasAgg(fig)
ax = fig.subplots()
ax.plot([0, 1, 2], [0.2, 0.5, 0.4], "-o")
(marker,) = ax.plot([0.0], [0.2], "o", ms=14, mfc="none", mec="red")
slider = W.IntSlider(value=0, min=0, max=2, description="policy", continuous_update=False)
readout, table, output = W.HTML(), W.HTML(), W.Output()


def render(i):
    marker.set_data([i], [[0.2, 0.5, 0.4][i]])
    readout.value = f"<b>policy {i}</b>"
    table.value = f"<table><tr><td>row {i}</td></tr></table>"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    output.clear_output(wait=True)
    with output:
        display(Image(data=buffer.getvalue(), format="png"))


slider.observe(lambda change: render(change["new"]), names="value")
render(0)
display(W.VBox([W.HBox([slider, readout]), output, table]))
slider.value = 2
"""


def widget_notebook(busy_seconds: float):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(BUSY_CELL.format(busy_seconds=busy_seconds)),
        nbformat.v4.new_code_cell(WIDGET_CELL),
        nbformat.v4.new_code_cell("import sys, ipykernel\nprint(ipykernel.__version__, sys.executable)"),
    ]
    return nb


class NoFreshPollClient(WatchedClient):
    """The stall check without the fresh poll: nbclient's own poll gets `lost_reply_grace` seconds
    after the idle status, then the reply counts as lost."""

    async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
        reply = asyncio.ensure_future(
            NotebookClient._async_poll_for_reply(
                self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive
            )
        )
        await asyncio.wait({reply, task_poll_output_msg}, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            await asyncio.wait({reply}, timeout=self.lost_reply_grace)
        if not reply.done():
            reply.cancel()
            task_poll_kernel_alive.cancel()
            raise LostReplyError(lost_reply_message(self._where(cell), self.lost_reply_grace))
        return reply.result()


def execute_once(busy_seconds: float, grace: float, timeout: int, fresh_poll: bool) -> dict:
    """One execution in a fresh kernel: its outcome ("ok", "lost_reply", or the error's name),
    seconds, and replies recovered by a fresh poll."""
    nb = widget_notebook(busy_seconds)
    client = (WatchedClient if fresh_poll else NoFreshPollClient)(
        nb,
        timeout=timeout,
        kernel_name="python3",
        lost_reply_grace=grace,
        notebook_name="kernel_hangs.ipynb",
    )
    start = time.perf_counter()
    try:
        client.execute()
        outcome, detail = "ok", nb.cells[-1].outputs[0]["text"].strip()  # the kernel's ipykernel
        if not nb.metadata.get("widgets"):
            outcome, detail = "no_widget_state", "the executed notebook kept no widget state"
    except LostReplyError as err:
        outcome, detail = "lost_reply", str(err)
    except Exception as err:  # noqa: BLE001 - a timeout or a dead kernel is a result too
        outcome, detail = type(err).__name__, str(err)[-300:]
    seconds = round(time.perf_counter() - start, 2)
    return {
        "outcome": outcome,
        "detail": detail,
        "seconds": seconds,
        "recovered": client.recovered_replies,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="the entry's name, e.g. ipykernel7")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--busy-seconds", type=float, default=3.0)
    parser.add_argument("--grace", type=float, default=120.0, help="seconds from idle to reply")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--no-fresh-poll", action="store_true", help="wait on nbclient's poll only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kernel_hangs.json")
    args = parser.parse_args(argv)

    entry = {
        "versions": {name: version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "runs": 0,
        "hangs": 0,
        "failures": 0,
        "client": "nbclient's poll only" if args.no_fresh_poll else "WatchedClient (fresh poll)",
        "recovered": 0,
        "busy_seconds": args.busy_seconds,
        "grace_s": args.grace,
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "results": [],
    }
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for i in range(args.runs):
        result = execute_once(args.busy_seconds, args.grace, args.timeout, not args.no_fresh_poll)
        entry["results"].append(result)
        entry["runs"] = i + 1
        entry["hangs"] = sum(r["outcome"] == "lost_reply" for r in entry["results"])
        entry["failures"] = sum(r["outcome"] != "ok" for r in entry["results"])
        entry["recovered"] = sum(r["recovered"] for r in entry["results"])
        seconds = [r["seconds"] for r in entry["results"]]
        entry["seconds_total"] = round(sum(seconds), 1)
        entry["seconds_mean"] = round(sum(seconds) / len(seconds), 2)
        entry["seconds_max"] = max(seconds)
        entry["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        results[args.label] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(
            f"[{args.label}] run {i + 1}/{args.runs}: {result['outcome']} in {result['seconds']} s, "
            f"{result['recovered']} recovered",
            flush=True,
        )
    print(
        f"[{args.label}] {entry['hangs']} hangs, {entry['recovered']} recovered, "
        f"{entry['failures']} failures in {entry['runs']} runs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
