"""FrontierExplorer: walk along the gold-and-proxy-versus-sqrt(KL) frontier and read the samples.

Each entry is one policy: a PPO run at one kl_coef, or best-of-n at one n. A slider picks an entry;
a marker moves to it on the plot of gold and proxy against d = sqrt(KL) (the axis of Gao et al.
2022), and a table below shows that policy's samples with their rubric components, so the point
where the proxy keeps rising while the gold falls can be read in the text itself.

Core ipywidgets only (IntSlider, HTML, Output, VBox), the same in ipywidgets 7.7 and 8; the figure
is a plain matplotlib Figure rendered inline into an Output widget and re-rendered on each change,
so no ipympl is needed. `select(i)`, `marker_xy` and
`table_html` let a test drive it without a browser.

Notebook: 05_reward_kl_tradeoffs.ipynb
"""

from __future__ import annotations

import html
import math

import ipywidgets as W

from rlhf_edu.plots import Figure, html_table, in_notebook
from rlhf_edu.rubric import COMPONENTS
from rlhf_edu.tradeoffs import best_of_n, bon_curve, pool_array

REQUIRED = ("label", "kl", "gold", "proxy", "samples")


class FrontierExplorer:
    """A slider over `runs`, a marker on the gold/proxy-vs-sqrt(KL) plot, and a sample table.

    runs: [{label, kl, gold, proxy, samples, kl_coef or n, method (optional)}], where samples are
    [{prompt, response, gold, proxy, components: {name: value}}]. Entries with the same `method`
    (default "policy") are joined into one curve, in order of KL. `max_samples` rows are shown.
    """

    def __init__(self, runs: list[dict], *, max_samples: int = 5, title: str = "gold and proxy vs sqrt(KL)"):
        if not runs:
            raise ValueError("FrontierExplorer needs at least one run")
        for i, run in enumerate(runs):
            missing = [k for k in REQUIRED if k not in run]
            if missing:
                raise ValueError(f"run {i}: missing {missing}")
            if run["kl"] < 0:
                raise ValueError(f"run {i}: kl must be >= 0, got {run['kl']}")
        self.runs, self.max_samples, self.title = runs, max_samples, title
        self.index = 0
        self._build()
        self.select(0)

    # ------------------------------------------------------------------ state
    @property
    def marker_xy(self) -> tuple[float, float]:
        """(sqrt(KL), gold) of the marker as drawn on the plot."""
        xs, ys = self.marker.get_data()
        return float(xs[0]), float(ys[0])

    @property
    def table_html(self) -> str:
        return self.table.value

    def rows(self, i: int) -> list[dict]:
        """The table rows of entry i: prompt, response, gold, proxy, then each rubric component."""
        rows = []
        for s in self.runs[i]["samples"][: self.max_samples]:
            rows.append(
                {
                    "prompt": s["prompt"],
                    "response": s["response"],
                    "gold": float(s["gold"]),
                    "proxy": float(s["proxy"]),
                    **{k: float(v) for k, v in s.get("components", {}).items()},
                }
            )
        return rows

    # ------------------------------------------------------------------ actions
    def select(self, i: int) -> None:
        """Show entry i: move the marker, rewrite the readout and the table, re-render the plot."""
        if not 0 <= i < len(self.runs):
            raise IndexError(f"entry {i} out of range 0..{len(self.runs) - 1}")
        self.index = i
        if self.slider.value != i:
            self.slider.value = i  # the observer calls select(i) again; that call does the work
            return
        run = self.runs[i]
        d = math.sqrt(run["kl"])
        self.marker.set_data([d], [run["gold"]])
        self.proxy_marker.set_data([d], [run["proxy"]])
        self.ax.set_title(f"{self.title}\nselected: {run['label']}", fontsize=9)
        knob = ""  # the setting that made this policy: PPO's kl_coef or best-of-n's n
        if "kl_coef" in run:
            knob = f"kl_coef = {run['kl_coef']}"
        elif "n" in run:
            knob = f"n = {run['n']}"
        self.readout.value = (
            f"<b>{html.escape(str(run['label']))}</b> &nbsp; {html.escape(knob)} &nbsp; "
            f"KL = {run['kl']:.3f} (sqrt {d:.3f}) &nbsp; gold = {run['gold']:.3f} &nbsp; "
            f"proxy = {run['proxy']:.3f}"
        )
        rows = self.rows(i)
        components = list(dict.fromkeys(k for s in run["samples"][: self.max_samples] for k in s.get("components", {})))
        self.table.value = html_table(rows, ["prompt", "response", "gold", "proxy", *components])
        self._render()

    def _on_slide(self, change) -> None:
        self.select(int(change["new"]))

    # ------------------------------------------------------------------ view
    def _build(self) -> None:
        self.fig = Figure(figsize=(6.0, 3.6), layout="constrained")
        self.ax = self.fig.subplots()
        methods = list(dict.fromkeys(r.get("method", "policy") for r in self.runs))
        for m, method in enumerate(methods):
            members = sorted((r for r in self.runs if r.get("method", "policy") == method), key=lambda r: r["kl"])
            d = [math.sqrt(r["kl"]) for r in members]
            color = f"C{m}"
            self.ax.plot(d, [r["gold"] for r in members], "-o", ms=4, color=color, label=f"{method}: gold")
            self.ax.plot(
                d,
                [r["proxy"] for r in members],
                "--s",
                ms=3,
                color=color,
                alpha=0.6,
                label=f"{method}: proxy",
            )
        (self.marker,) = self.ax.plot([0.0], [0.0], "o", ms=14, mfc="none", mec="red", mew=2, label="selected (gold)")
        (self.proxy_marker,) = self.ax.plot([0.0], [0.0], "s", ms=11, mfc="none", mec="red", mew=1)
        self.ax.set_xlabel("sqrt(KL(pi || pi_ref))  [sqrt(nats)]")
        self.ax.set_ylabel("score")
        self.ax.grid(alpha=0.3)
        self.ax.legend(fontsize=7)

        self.slider = W.IntSlider(
            value=0,
            min=0,
            max=len(self.runs) - 1,
            step=1,
            description="policy",
            continuous_update=False,
            readout=True,
        )
        self.slider.observe(self._on_slide, names="value")
        self.readout = W.HTML()
        self.readout.add_class("frontier-readout")
        self.output = W.Output()
        self.table = W.HTML()
        self.table.add_class("frontier-table")
        self.widget = W.VBox([W.HBox([self.slider, self.readout]), self.output, self.table])

    def png(self) -> bytes:
        """The figure as PNG bytes, drawn with Agg whatever matplotlib backend the kernel uses."""
        return self.fig.png()

    def _render(self) -> None:
        """Re-render the figure into the Output widget: a new PNG per change, as with inline
        matplotlib. Outside a kernel there is nothing to show, so nothing is drawn."""
        if not in_notebook():
            return
        from IPython.display import Image, display

        self.output.clear_output(wait=True)
        with self.output:
            display(Image(data=self.png(), format="png"))

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _sample_view(prompt: str, row: dict, proxy: float) -> dict:
    return {
        "prompt": prompt,
        "response": row["response"],
        "gold": row["gold"],
        "proxy": proxy,
        "components": {c: row[c] for c in COMPONENTS},
    }


def ppo_entries(
    record: dict, method: str, gold_units: tuple[float, float], proxy_units: tuple[float, float]
) -> list[dict]:
    """FrontierExplorer entries, one per evaluated checkpoint of a PPO run. Gold and proxy are given
    as (value - mean) / sd with the (mean, sd) of `gold_units` and `proxy_units` (e.g. of the SFT
    policy's samples); the sample table keeps the raw scores. Notebook: 05_reward_kl_tradeoffs.ipynb"""
    out = []
    for point in record["points"]:
        out.append(
            {
                "label": f"{record['label']}, step {point['step']}",
                "method": method,
                "kl_coef": record["kl_coef"],
                "kl": max(point["kl"], 0.0),
                "gold": (point["gold"] - gold_units[0]) / gold_units[1],
                "proxy": (point["proxy"] - proxy_units[0]) / proxy_units[1],
                "samples": [_sample_view(r["prompt"], r, r["rm"]) for r in point["rows"]],
            }
        )
    return out


def bon_entries(
    pool: dict, proxy: str, ns, method: str, gold_units: tuple[float, float], proxy_units: tuple[float, float]
) -> list[dict]:
    """FrontierExplorer entries, one per n: KL is the analytic bound, gold and proxy the unbiased
    best-of-n estimates (`bon_curve`, in the units as in `ppo_entries`), and the samples are the ones
    best-of-n picks among the first n of each prompt's pool. Notebook: 05_reward_kl_tradeoffs.ipynb"""
    scores = pool_array(pool, proxy)  # (G, N)
    curve = bon_curve(pool_array(pool, "gold"), scores, ns)
    out = []
    for i, n in enumerate(curve["n"]):
        picks = best_of_n(scores, int(n))  # (G,)
        out.append(
            {
                "label": f"best-of-{n} ({proxy} proxy)",
                "method": method,
                "n": int(n),
                "kl": float(curve["kl"][i]),
                "gold": (float(curve["gold"][i]) - gold_units[0]) / gold_units[1],
                "proxy": (float(curve["proxy"][i]) - proxy_units[0]) / proxy_units[1],
                "samples": [
                    _sample_view(p, pool["samples"][j][k], scores[j, k])
                    for j, (p, k) in enumerate(zip(pool["prompts"], picks.tolist()))
                ],
            }
        )
    return out
