"""Plots: figures that render as images in every front end, and live training plots.

A bare `matplotlib.figure.Figure` passed to `display()` has only a text representation
("<Figure size 600x280 with 1 Axes>") unless pyplot's inline backend happens to be active in the
kernel. The course's `Figure` draws itself to PNG (`_repr_png_`, with Agg), so `display(fig)` shows
the plot in JupyterLab, Notebook 7, VS Code, Colab and executed copies alike, whatever the backend.
Every figure of the library and the notebooks is made from it.

Live plots need no widget library either (`display(fig, display_id=True)` then
`handle.update(fig)`), so they update the same way everywhere. Outside a notebook the plot only
records values.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as _MatplotlibFigure


class Figure(_MatplotlibFigure):
    """A matplotlib figure that IPython displays as a PNG image in every front end.

    >>> fig = Figure(figsize=(4, 3)); ax = fig.subplots(); _ = ax.plot([0, 1]); display(fig)
    """

    dpi_png = 90

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)  # drawable without pyplot or any interactive backend

    def png(self) -> bytes:
        """The figure as PNG bytes."""
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=self.dpi_png)
        return buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()

    def __repr__(self) -> str:  # the text shown beside the image: short, no "<Figure size ...>"
        return f"[figure: {len(self.axes)} axes]"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code, Colab), where display() renders.
    Colab's shell is a subclass with another class name, so look for the kernel, not the name."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class LivePlot:
    """One panel per group of metric keys, redrawn every `every` updates.

    Every training loop takes it as `on_step`: it is called with (step, record) after each step.

    >>> plot = LivePlot({"loss": ["train/loss", "eval/loss"]})
    >>> plot(1, {"train/loss": 2.3})
    """

    def __init__(self, panels: dict[str, list[str]], every: int = 1, title: str = ""):
        self.panels, self.every, self.title = panels, max(1, every), title
        self.history: dict[str, list[tuple[int, float]]] = {k: [] for keys in panels.values() for k in keys}
        self._updates = 0
        self._handle = None
        cols = min(3, len(panels))  # at most 3 panels a row, so six stay readable in a notebook's width
        rows = -(-len(panels) // cols)
        self.fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
        self.axes = list(self.fig.subplots(rows, cols, squeeze=False).flat)[: len(panels)]
        for ax in list(self.fig.axes)[len(panels) :]:
            ax.set_visible(False)
        if in_notebook():
            from IPython.display import display

            self._handle = display(self.fig, display_id=True)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        """Record a step's metrics (the `on_step` of every training loop); redraw every `every` calls."""
        self.update(step, metrics)

    def update(self, step: int, metrics: dict[str, float], force: bool = False) -> None:
        for key, value in metrics.items():
            if key in self.history and value is not None:
                self.history[key].append((step, float(value)))
        self._updates += 1
        if force or self._updates % self.every == 0:
            self.draw()

    def draw(self) -> None:
        for ax, (name, keys) in zip(self.axes, self.panels.items()):
            ax.clear()
            for key in keys:
                points = self.history[key]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker="o" if len(points) < 30 else None, ms=3, label=key)
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if any(self.history[k] for k in keys):
                ax.legend(fontsize=8)
        if self.title:
            self.fig.suptitle(self.title)
        if self._handle is not None:
            self._handle.update(self.fig)


def html_table(rows: list[dict], columns: list[str], floats: str = "{:+.2f}") -> str:
    """An HTML table of `rows` (dicts) with these `columns`; text is escaped, floats formatted.

    Display it with `IPython.display.HTML(html_table(...))`; it renders the same in JupyterLab,
    VS Code and Colab. Notebooks: 04_ppo.ipynb and later
    """
    import html

    def cell(value) -> str:
        text = floats.format(value) if isinstance(value, float) else str(value)
        return f"<td style='text-align:left;vertical-align:top'>{html.escape(text)}</td>"

    head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(r.get(c, "")) for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def readable_token(token: str) -> str:
    """A byte-level BPE token as a learner reads it: readable_token("Ġare") == "·are", and "Ċ" is "⏎"."""
    return repr(token.replace("Ġ", "·").replace("Ċ", "⏎"))[1:-1]


def token_heatmap(tokens: list[str], series: dict[str, list[float]], title: str = "") -> Figure:
    """One row per series (e.g. KL penalty, advantage) over the tokens of one response, each row
    on its own diverging color scale centred at 0, the value printed in each cell. Byte-level BPE
    tokens (`convert_ids_to_tokens`) are shown readable: "·" for the space a token starts with ("Ġ"),
    "⏎" for a newline ("Ċ").

    Notebook: 04_ppo.ipynb
    """
    import numpy as np

    n = len(tokens)
    fig = Figure(figsize=(min(0.42 * n + 2.0, 40), 0.9 * len(series) + 1.2), layout="constrained")
    axes = fig.subplots(len(series), 1, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, series.items()):
        row = np.asarray(values, dtype=float)[None, :n]  # (1, n)
        bound = float(np.abs(row).max()) or 1.0
        ax.imshow(row, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
        for i, v in enumerate(row[0]):
            ax.text(i, 0, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_yticks([0], [name])
        ax.set_xticks(range(n), [readable_token(t) for t in tokens], rotation=90, fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
