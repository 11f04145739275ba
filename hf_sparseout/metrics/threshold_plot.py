"""``plot_sparsity_curves``: the metric against reached sparsity, one line per run, the 1 % band shaded.

Uses matplotlib's object API with the Agg canvas (no pyplot), like :mod:`hf_sparseout.metrics.plotting`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hf_sparseout.metrics.plot_style import legend_outside, plain_ticks, wrapped
from hf_sparseout.metrics.threshold import LOWER_IS_BETTER, SparsityCurve


def plot_sparsity_curves(
    curves: Mapping[str, SparsityCurve | Mapping[str, Any]],
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    dpi: int = 110,
) -> Figure:
    """Plot each run's metric against the sparsity reached, with its 1 % tolerance band and 1 % headline.

    Args:
        curves: ``{label: SparsityCurve or SparsityCurve.to_dict()}`` (e.g. ``{"sparseout": a, "baseline": b}``).
        path: if given, the figure is written there as PNG.
        title: figure title.
        dpi: resolution of the PNG.
    """
    if not curves:
        raise ValueError("curves is empty: pass {label: SparsityCurve or its to_dict()}")
    fig = Figure(figsize=(7, 4.8), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    metric = None
    for i, (label, curve) in enumerate(curves.items()):
        data = curve.to_dict() if isinstance(curve, SparsityCurve) else curve
        metric = data["metric"]
        points = sorted(data["points"], key=lambda p: p["sparsity"])
        xs = [p["sparsity"] for p in points]
        ys = [p["metrics"][metric] for p in points]
        ref = data["reference"]
        lower = metric in LOWER_IS_BETTER
        band = (ref, ref * 1.01) if lower else (ref - 0.01, ref)
        color = f"C{i}"
        ax.axhspan(*band, color=color, alpha=0.12, lw=0)
        at1 = data.get("sparsity_at_1pct")
        shown = f"{label}: 1% at {at1:.1%}" if at1 is not None else f"{label}: 1% not reached"
        ax.plot(xs, ys, "o-", color=color, label=shown, ms=4)
        if at1 is not None:
            ax.axvline(at1, color=color, ls=":", lw=1)
    ax.set_xlabel("sparsity reached (fraction of site inputs zeroed, parameter-weighted)")
    ax.set_ylabel(metric.replace("_", " ") if metric else "")
    if metric in LOWER_IS_BETTER:
        ax.set_yscale("log")
    plain_ticks(ax)
    default = "Magnitude thresholding: quality against sparsity (band: 1 % of each run's reference)"
    ax.set_title(wrapped(title or default))
    legend_outside(ax, fontsize=8)
    ax.grid(alpha=0.3)
    if path is not None:
        fig.savefig(os.fspath(path), format="png")
    return fig
