"""The headless course runner and the artifacts it writes, on a two-cell notebook."""

import json

import nbformat

from rlhf_edu import course
from rlhf_edu.plots import LivePlot
from rlhf_edu.store import record_metrics


def test_course_runner_writes_summary(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from rlhf_edu.store import record_metrics\nfrom rlhf_edu.presets import get_preset"),
        nbformat.v4.new_code_cell("record_metrics('00_demo', {'answer': 42, 'preset': get_preset().name})"),
    ]
    nbformat.write(nb, nb_dir / "00_demo.ipynb")
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    assert course.main(["--preset", "smoke", "--notebooks-dir", str(nb_dir)]) == 0
    summary = json.loads((tmp_path / "artifacts" / "course_summary.json").read_text())
    assert summary["preset"] == "smoke"
    entry = summary["notebooks"]["00_demo"]
    assert entry["metrics"]["answer"] == 42 and entry["metrics"]["preset"] == "smoke"
    assert entry["seconds"] > 0 and entry["metrics"]["peak_rss_gb"] > 0
    assert (tmp_path / "artifacts" / "executed" / "00_demo.ipynb").exists()


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
        nb.cells = [nbformat.v4.new_code_cell(f"from rlhf_edu.store import record_metrics\nrecord_metrics('{name}', {{'x': 1}})")]
        nbformat.write(nb, nb_dir / f"{name}.ipynb")
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    assert course.main(["--preset", "smoke", "--notebooks-dir", str(nb_dir)]) == 0
    assert course.main(["--preset", "smoke", "--notebooks-dir", str(nb_dir), "--only", "01"]) == 0
    summary = json.loads((tmp_path / "artifacts" / "course_summary.json").read_text())
    assert set(summary["notebooks"]) == {"00_a", "01_b"}
