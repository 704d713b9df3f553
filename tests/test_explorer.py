"""FrontierExplorer, headless: move the slider, check the marker, the readout and the sample table."""

import math

import pytest

from rlhf_edu.explorer import FrontierExplorer


def fake_runs():
    runs = []
    for i, (coef, kl, gold, proxy) in enumerate(
        [(0.2, 1.0, 0.55, 0.1), (0.05, 4.0, 0.62, 0.9), (0.01, 16.0, 0.48, 2.3)]
    ):
        samples = [
            {
                "prompt": f"Explain tides to a 10-year-old. #{j}",
                "response": f"answer <{i}-{j}> from run {i}",
                "gold": gold + 0.01 * j,
                "proxy": proxy,
                "components": {"length": 0.1 * i, "simple": 1.0 - 0.1 * i},
            }
            for j in range(3)
        ]
        runs.append(
            {
                "label": f"ppo kl_coef={coef}",
                "kl_coef": coef,
                "kl": kl,
                "gold": gold,
                "proxy": proxy,
                "samples": samples,
            }
        )
    return runs


def test_slider_moves_marker_and_table():
    ex = FrontierExplorer(fake_runs())
    assert ex.marker_xy == (1.0, 0.55)
    assert "answer &lt;0-0&gt; from run 0" in ex.table_html  # escaped text of run 0
    before = ex.table_html
    ex.slider.value = 2
    assert ex.index == 2
    assert ex.marker_xy == pytest.approx((math.sqrt(16.0), 0.48))
    assert ex.proxy_marker.get_data()[1][0] == pytest.approx(2.3)
    assert ex.table_html != before
    assert "from run 2" in ex.table_html and "from run 0" not in ex.table_html
    assert "ppo kl_coef=0.01" in ex.readout.value and "kl_coef = 0.01" in ex.readout.value
    assert "ppo kl_coef=0.01" in ex.ax.get_title()
    # rubric components are columns, formatted by plots.html_table
    assert "<th style='text-align:left'>length</th>" in ex.table_html and "+0.20" in ex.table_html


def test_select_moves_the_slider_and_rejects_bad_indices():
    ex = FrontierExplorer(fake_runs(), max_samples=2)
    ex.select(1)
    assert ex.slider.value == 1 and ex.marker_xy == pytest.approx((2.0, 0.62))
    assert ex.table_html.count("<tr>") == 3  # header + 2 samples
    with pytest.raises(IndexError):
        ex.select(3)
    assert ex.slider.value == 1


def test_curves_per_method_and_png():
    runs = fake_runs()
    runs.append(
        {
            "label": "best-of-4",
            "n": 4,
            "method": "bon",
            "kl": 0.6363,
            "gold": 0.6,
            "proxy": 0.8,
            "samples": [],
        }
    )
    ex = FrontierExplorer(runs)
    labels = [line.get_label() for line in ex.ax.get_lines()]
    assert "policy: gold" in labels and "bon: proxy" in labels
    gold_line = ex.ax.get_lines()[labels.index("policy: gold")]
    assert list(gold_line.get_xdata()) == pytest.approx([1.0, 2.0, 4.0])  # sqrt(KL), sorted
    ex.slider.value = 3
    assert "n = 4" in ex.readout.value and ex.table_html.count("<tr>") == 1
    assert ex.png()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_runs_are_a_clear_error():
    with pytest.raises(ValueError, match="at least one"):
        FrontierExplorer([])
    with pytest.raises(ValueError, match="run 0: missing"):
        FrontierExplorer([{"label": "x", "kl": 1.0}])


def test_render_path_runs_outside_a_browser(monkeypatch, capsys):
    from rlhf_edu import explorer

    monkeypatch.setattr(explorer, "in_notebook", lambda: True)
    ex = FrontierExplorer(fake_runs())
    ex.slider.value = 1
    assert ex.marker_xy == pytest.approx((2.0, 0.62))
    assert "Image" in capsys.readouterr().out  # no kernel captures it here, so display() prints
