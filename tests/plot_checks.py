"""Legibility checks for a drawn matplotlib figure (used by tests/test_plots_legible.py)."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text

MATHTEXT = ("$", "×", "\\times", "10^")


def _tick_labels(fig: Figure) -> tuple[list[Text], set[Text]]:
    """The tick labels drawn (ticks inside the view), and every tick label object (drawn or not)."""
    drawn, every = [], set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(abs(lo), abs(hi), 1e-300)
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                labels = (tick.label1, tick.label2)
                every.update(labels)
                if lo - slack <= tick.get_loc() <= hi + slack:
                    drawn += [t for t in labels if t.get_visible() and t.get_text().strip()]
    return drawn, every


def _texts(fig: Figure) -> list[Text]:
    """Every text drawn: titles, labels, legends, annotations, and the tick labels inside the view."""
    drawn, ticks = _tick_labels(fig)
    others = [t for t in fig.findobj(Text) if t not in ticks and t.get_visible() and t.get_text().strip()]
    return others + drawn


def legibility_problems(fig: Figure) -> list[str]:
    """What is wrong with ``fig`` once drawn: text outside the figure, mathtext tick labels, a legend over an axes or
    over another text. Empty when nothing is."""
    if not hasattr(fig.canvas, "get_renderer"):  # pyplot's figures lose their Agg canvas on close
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    problems = []
    for text in _texts(fig):
        extent = text.get_window_extent(renderer)
        if extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y0 < box.y0 - 1 or extent.y1 > box.y1 + 1:
            problems.append(f"text outside the figure: {text.get_text()[:60]!r}")
    for label in _tick_labels(fig)[0]:
        if any(m in label.get_text() for m in MATHTEXT):
            problems.append(f"mathtext tick label {label.get_text()!r}")
    legends = [lg for lg in fig.findobj(Legend) if lg.get_visible()]
    for legend in legends:
        extent = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if extent.overlaps(ax.get_window_extent(renderer)):
                problems.append(f"legend {legend.get_texts()[0].get_text()[:40]!r} over an axes")
        inside = set(legend.get_texts()) | {legend.get_title()}
        for text in _texts(fig):
            if text not in inside and extent.overlaps(text.get_window_extent(renderer)):
                problems.append(f"legend over the text {text.get_text()[:40]!r}")
    return problems
