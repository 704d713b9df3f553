"""The headless course runner and the artifacts it writes, on a two-cell notebook."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from rlhf_edu.course import runner as course
from rlhf_edu.plots import LivePlot
from rlhf_edu.store import record_metrics


def test_course_runner_writes_summary(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    write_notebook(
        nb_dir,
        "00_demo",
        [
            "from rlhf_edu.store import record_metrics\nfrom rlhf_edu.presets import get_preset",
            "record_metrics('00_demo', {'answer': 42, 'preset': get_preset().name})",
            'big = b"x" * 10**9  # 1 GB written after the metrics\ndel big',
        ],
    )
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    assert course.main(["--preset", "smoke", "--notebooks-dir", str(nb_dir)]) == 0
    summary = json.loads((tmp_path / "artifacts" / "course_summary.json").read_text())
    assert summary["preset"] == "smoke"
    entry = summary["notebooks"]["00_demo"]
    assert entry["metrics"]["answer"] == 42 and entry["metrics"]["preset"] == "smoke"
    assert entry["seconds"] > 0 and entry["metrics"]["peak_rss_gb"] > 0
    # The kernel's peak, read after every cell, sees the 1 GB of the last cell, which the metrics
    # recorded before it cannot.
    assert entry["peak_rss_gb"] >= 1.0 > entry["metrics"]["peak_rss_gb"]
    # The cells that raised the peak: the 1 GB cell among them, by its index and first line.
    assert 'cell 2 ("big = b"x" * 10**9' in entry["peak_cells"][-1]["cell"]
    assert entry["peak_cells"][-1]["peak_rss_gb"] >= 1.0
    assert entry["images"] == 0  # draws nothing, so no image is fine
    assert (tmp_path / "artifacts" / "executed" / "00_demo.ipynb").exists()
    report = (tmp_path / "artifacts" / "report" / "report.md").read_text()
    assert "| 00_demo | ok |" in report and "| `answer` | 42 |" in report and "| `preset` | smoke |" in report
    assert f"| {entry['peak_rss_gb']:.2f} GB |" in report  # the kernel's peak, not the metrics' earlier one
    rose = next(line for line in report.splitlines() if line.startswith("Where the peak memory rose:"))
    assert rose.endswith(
        f'cell 2 ("big = b"x" * 10**9  # 1 GB written after the metrics") to {entry["peak_rss_gb"]:.2f} GB.'
    )


def test_course_runner_reports_a_failing_notebook(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("assert 1 == 2, 'claim failed'")]
    nbformat.write(nb, nb_dir / "00_bad.ipynb")
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    assert course.main(["--preset", "smoke", "--notebooks-dir", str(nb_dir)]) == 1
    summary = json.loads((tmp_path / "artifacts" / "course_summary.json").read_text())
    assert "error" in summary["notebooks"]["00_bad"]
    report = (tmp_path / "artifacts" / "report" / "report.md").read_text()
    assert "| 00_bad | failed |" in report and "claim failed" in report and "\x1b[" not in report


def test_keep_going_runs_every_notebook_and_lists_failed_cells(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    write_notebook(
        nb_dir,
        "00_bad",
        [
            "assert 1 == 2, 'claim failed'",
            "from rlhf_edu.store import record_metrics\nrecord_metrics('00_bad', {'after': 1})",
        ],
    )
    write_notebook(nb_dir, "01_good", ["x = 1"])
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    assert course.main(["--preset", "smoke", "--keep-going", "--notebooks-dir", str(nb_dir)]) == 1
    summary = json.loads((tmp_path / "artifacts" / "course_summary.json").read_text())
    bad_entry, good_entry = summary["notebooks"]["00_bad"], summary["notebooks"]["01_good"]
    # The failing notebook ran to its end (its metrics come from the cell after the failure), the
    # next notebook ran too, and the failure is named by cell and message.
    assert bad_entry["metrics"]["after"] == 1 and bad_entry["seconds"] > 0
    assert bad_entry["failed_cells"] == [
        {
            "cell": "notebook 00_bad.ipynb, cell 0 (\"assert 1 == 2, 'claim failed'\")",
            "error": "AssertionError: claim failed",
        }
    ]
    assert "failed_cells" not in good_entry and "error" not in good_entry
    report = (tmp_path / "artifacts" / "report" / "report.md").read_text()
    assert "| 00_bad | 1 cells failed |" in report and "| 01_good | ok |" in report


def test_record_metrics_converts_tensors(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path))
    path = record_metrics("01_x", {"a": torch.tensor(1.5), "b": 2})
    assert json.loads(path.read_text())["a"] == 1.5


def test_live_plot_records_outside_a_notebook():
    plot = LivePlot({"loss": ["train/loss", "eval/loss"]}, every=2)
    for step in range(1, 5):
        plot.update(step, {"train/loss": 1.0 / step, "other": 3.0})
    assert [s for s, _ in plot.history["train/loss"]] == [1, 2, 3, 4]
    assert plot.history["eval/loss"] == []
    assert plot.axes[0].get_title() == "loss"


def test_partial_run_keeps_other_notebooks(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    for name in ("00_a", "01_b"):
        nb = nbformat.v4.new_notebook()
        nb.cells = [
            nbformat.v4.new_code_cell(
                f"from rlhf_edu.store import record_metrics\nrecord_metrics('{name}', {{'x': 1}})"
            )
        ]
        nbformat.write(nb, nb_dir / f"{name}.ipynb")
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    assert course.main(["--preset", "smoke", "--notebooks-dir", str(nb_dir)]) == 0
    assert course.main(["--preset", "smoke", "--notebooks-dir", str(nb_dir), "--only", "01"]) == 0
    summary = json.loads((tmp_path / "artifacts" / "course_summary.json").read_text())
    assert set(summary["notebooks"]) == {"00_a", "01_b"}


def write_notebook(nb_dir: Path, name: str, sources: list[str]) -> Path:
    nb_dir.mkdir(exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    path = nb_dir / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_course_runner_counts_images(tmp_path, monkeypatch):
    draw = "from rlhf_edu.plots import Figure\nfig = Figure(figsize=(2, 2))\nfig.subplots().plot([0, 1])\ndisplay(fig)"
    write_notebook(tmp_path / "notebooks", "00_plot", [draw])
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    assert course.main(["--preset", "smoke", "--notebooks-dir", str(tmp_path / "notebooks")]) == 0
    summary = json.loads((tmp_path / "artifacts" / "course_summary.json").read_text())
    assert summary["notebooks"]["00_plot"]["images"] == 1
    # the report card shows the plot, copied out of the executed notebook
    report = tmp_path / "artifacts" / "report" / "report.md"
    text = report.read_text()
    assert "# Course report: preset `smoke`" in text and "![00_plot, figure 1](00_plot-1.png)" in text
    assert (report.parent / "00_plot-1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_course_runner_fails_a_figure_shown_as_text(tmp_path, monkeypatch, capsys):
    # A bare matplotlib Figure has no PNG representation: display() shows "<Figure size ...>".
    bare = "from matplotlib.figure import Figure\nfig = Figure()\nfig.subplots().plot([0, 1])\ndisplay(fig)"
    write_notebook(tmp_path / "notebooks", "00_text", ["x = 1", bare])
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    assert course.main(["--preset", "smoke", "--notebooks-dir", str(tmp_path / "notebooks")]) == 1
    err = capsys.readouterr().err
    assert 'notebook 00_text.ipynb, cell 1 ("from matplotlib.figure import Figure")' in err
    assert "no image/png output" in err
    summary = json.loads((tmp_path / "artifacts" / "course_summary.json").read_text())
    assert "no image/png output" in summary["notebooks"]["00_text"]["error"]


def test_plotting_cells_render_png_under_a_real_kernel():
    """The library's Figure, a LivePlot and a figure inside an Output widget all reach the executed
    notebook as image/png (a bare matplotlib Figure showed only as text)."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from rlhf_edu.plots import Figure, LivePlot\nfig = Figure()\nfig.subplots().plot([0, 1])\ndisplay(fig)"
        ),
        nbformat.v4.new_code_cell(
            "plot = LivePlot({'loss': ['loss']})\nplot.update(1, {'loss': 1.0})\nplot.update(2, {'loss': 0.5})"
        ),
        nbformat.v4.new_code_cell(
            "import ipywidgets as W\nout = W.Output()\nwith out:\n    display(fig)\ndisplay(out)"
        ),
    ]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    for cell in nb.cells[:2]:
        assert any("image/png" in out.get("data", {}) for out in cell.outputs), cell.outputs
    assert course.count_images(nb) == 3  # the Output widget's image is in the widget state


def test_notebooks_use_the_course_figure():
    """No notebook makes a bare matplotlib Figure: rlhf_edu.plots.Figure renders as PNG anywhere."""
    offenders = []
    for path in sorted(course.NOTEBOOKS_DIR.glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code" and "matplotlib.figure" in cell.source:
                offenders.append(f"{path.name}, cell {i}")
    assert not offenders, f"import Figure from rlhf_edu.plots instead: {offenders}"


# A cell that makes the running ipykernel drop its own execute_reply: the kernel runs the cell,
# publishes its outputs and its idle status, but never answers on the shell channel.
DROP_THIS_REPLY = """\
kernel = get_ipython().kernel
send = kernel.session.send


def drop_execute_reply(stream, msg_type, content=None, *args, **kwargs):
    if msg_type == "execute_reply":
        kernel.session.send = send  # only this one
        return {"msg_type": msg_type, "content": content}
    return send(stream, msg_type, content, *args, **kwargs)


kernel.session.send = drop_execute_reply
"""


def test_lost_reply_fails_the_notebook_within_two_minutes(tmp_path, monkeypatch, capsys):
    write_notebook(tmp_path / "notebooks", "00_lost", ["x = 1", DROP_THIS_REPLY, "print(x)"])
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    start = time.monotonic()
    args = ["--preset", "smoke", "--notebooks-dir", str(tmp_path / "notebooks"), "--lost-reply-grace", "5"]
    code = course.main(args)
    seconds = time.monotonic() - start
    assert code == 1 and seconds < 120, seconds
    out, err = capsys.readouterr()
    assert "rerunning 00_lost.ipynb in a fresh kernel" in out  # once, then it fails
    assert 'notebook 00_lost.ipynb, cell 1 ("kernel = get_ipython().kernel")' in err
    assert "the kernel went idle without replying (lost reply)" in err
    summary = json.loads((tmp_path / "artifacts" / "course_summary.json").read_text())
    assert summary["notebooks"]["00_lost"]["error"].startswith("LostReplyError")


def test_reply_behind_a_missed_wakeup_is_recovered(monkeypatch):
    """nbclient #312: the reply waits in the shell socket but nbclient's poll never wakes up.
    Simulated by a shell poll that never returns; the fresh poll after the idle status finds it."""
    import asyncio

    from nbclient import NotebookClient

    from rlhf_edu.course.kernel_watch import WatchedClient

    async def poll_that_misses_its_wakeup(self, *args):
        await asyncio.sleep(3600)

    monkeypatch.setattr(NotebookClient, "_async_poll_for_reply", poll_that_misses_its_wakeup)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("print(x + 1)")]
    client = WatchedClient(nb, timeout=60, kernel_name="python3", lost_reply_grace=10)
    start = time.monotonic()
    client.execute()
    assert client.recovered_replies == 2 and nb.cells[1].outputs[0]["text"] == "2\n"
    assert time.monotonic() - start < 60


def test_nbval_lost_reply_fails_the_cell(tmp_path):
    """`make test`'s nbval run, with rlhf_edu.course.nbval_watch loaded, fails the cell and skips the rest."""
    write_notebook(tmp_path, "00_lost", ["x = 1", DROP_THIS_REPLY, "print(x)"])
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-p", "rlhf_edu.course.nbval_watch", "--nbval-lax", "--nbval-current-env"]
    command += ["--lost-reply-grace", "5", "00_lost.ipynb"]
    env = {**os.environ, "RLHF_EDU_PRESET": "smoke"}
    start = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'notebook 00_lost.ipynb, cell 1 ("kernel = get_ipython().kernel")' in result.stdout
    assert "lost reply" in result.stdout and "1 failed, 1 passed, 1 skipped" in result.stdout
    assert seconds < 120, seconds


def test_heatmap_tokens_read_as_text():
    from rlhf_edu.plots import readable_token

    assert readable_token("Ġare") == "·are" and readable_token("Ċ") == "⏎" and readable_token("\t") == "\\t"
    assert readable_token("<|im_end|>") == "<|im_end|>"
