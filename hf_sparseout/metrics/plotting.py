"""``plot_sparsity``: per-site Hoyer bars and magnitude histograms from ``SparsityMonitor.compute()``.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change), so it
works headless and inside other matplotlib programs. matplotlib is imported on the first plot, so
``import hf_sparseout`` works without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hf_sparseout.optional import MATPLOTLIB, require

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _common_prefix(names: Sequence[str]) -> str:
    if len(names) < 2:
        return ""
    parts = [n.split(".") for n in names]
    common = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) > 1:
            break
        common.append(pieces[0])
    common = common[: min(len(p) for p in parts) - 1]  # never swallow a whole name
    return ".".join(common) + "." if common else ""


def _as_runs(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    if "sites" in results and "overall" in results:
        return {"": results}
    if not results or not all(isinstance(r, Mapping) and "sites" in r for r in results.values()):
        raise ValueError("results must be SparsityMonitor.compute() output, or a dict of label -> such output")
    return dict(results)


def plot_sparsity(
    results: Mapping[str, Any],
    path: str | os.PathLike[str] | None = None,
    *,
    hist_sites: Sequence[str] | None = None,
    metric: str = "hoyer",
    title: str | None = None,
    dpi: int = 110,
) -> Figure:
    """Plot a per-site bar chart of ``metric`` (Hoyer by default) and histograms of ``|a|``.

    Args:
        results: one ``SparsityMonitor.compute()`` result, or ``{label: result}`` to compare runs
            side by side (e.g. ``{"Sparseout q=1.5": a, "dropout": b}``); bars are grouped by site.
        path: if given, the figure is written there as PNG.
        hist_sites: sites whose histograms to draw (default: every site with a histogram in the
            first run, at most 4). The monitor must have been built with ``histogram_sites``.
        metric: which per-site metric the bars show (``hoyer``, ``zero_fraction``, ...).
        title: figure title.
        dpi: resolution of the PNG.

    Returns:
        The matplotlib ``Figure``.
    """
    require("matplotlib", feature="plot_sparsity", install=MATPLOTLIB)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = _as_runs(results)
    labels = list(runs)
    first = runs[labels[0]]
    sites = list(first["sites"])
    if metric not in next(iter(first["sites"].values()), {metric: 0}):
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(next(iter(first['sites'].values())))}")
    available = [s for s in first.get("histograms", {}) if all(s in r.get("histograms", {}) for r in runs.values())]
    if hist_sites is None:
        hist_sites = available[:4]
    missing = [s for s in hist_sites if s not in available]
    if missing:
        raise ValueError(f"no histogram for {missing} in every run; histograms recorded: {available}")

    rows = 1 + (len(hist_sites) + 1) // 2
    fig = Figure(figsize=(11, 3.2 + 3.0 * (rows - 1) + 0.12 * len(sites)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, 2, height_ratios=[1.3 + 0.04 * len(sites)] + [1] * (rows - 1))
    _bars(fig.add_subplot(grid[0, :]), runs, sites, metric)
    for i, site in enumerate(hist_sites):
        _histogram(fig.add_subplot(grid[1 + i // 2, i % 2]), runs, site, _common_prefix(sites))
    if title:
        from hf_sparseout.metrics.plot_style import wrapped

        fig.suptitle(wrapped(title, 100))
    if path is not None:
        fig.savefig(os.fspath(path), format="png")
    return fig


def _bars(ax: Any, runs: Mapping[str, Mapping[str, Any]], sites: list[str], metric: str) -> None:
    from hf_sparseout.metrics.plot_style import legend_outside, plain_ticks

    prefix = _common_prefix(sites)
    y = np.arange(len(sites))
    height = 0.8 / len(runs)
    for j, (label, result) in enumerate(runs.items()):
        values = [result["sites"].get(s, {}).get(metric, float("nan")) for s in sites]
        overall = result["overall"].get(metric, float("nan"))
        name = f"{label} (overall {overall:.3f})" if label else f"overall {overall:.3f}"
        ax.barh(y + (j - (len(runs) - 1) / 2) * height, values, height=height, label=name)
    ax.set_yticks(y, [s[len(prefix) :] for s in sites], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(metric.replace("_", " ") + (" (1 = one-hot, 0 = dense)" if metric == "hoyer" else ""))
    ax.set_title(f"{metric.replace('_', ' ')} per site" + (f" ({prefix[:-1]})" if prefix else ""), fontsize=10)
    plain_ticks(ax)
    legend_outside(ax, fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def _histogram(ax: Any, runs: Mapping[str, Mapping[str, Any]], site: str, prefix: str) -> None:
    from hf_sparseout.metrics.plot_style import legend_outside, plain_ticks

    lo, hi = None, None
    for j, (label, result) in enumerate(runs.items()):
        hist = result["histograms"][site]
        edges = np.asarray(hist["edges"])
        counts = np.asarray(hist["counts"], dtype=float)
        total = counts.sum()
        density = counts / total if total > 0 else counts
        # counts: [exact zeros, below range, log-spaced bins..., at or above range]
        extra = f"zeros {density[0]:.1%}"
        if density[1] > 0:
            extra += f", <{edges[0]:.0e} {density[1]:.1%}"
        if density[-1] > 0:
            extra += f", >={edges[-1]:.0e} {density[-1]:.1%}"
        name = f"{label}: {extra}" if label else extra
        ax.stairs(density[2:-1], edges, label=name, color=f"C{j}", fill=len(runs) == 1, alpha=0.85)
        used = np.nonzero(counts[2:-1])[0]
        if used.size:
            lo = used[0] if lo is None else min(lo, used[0])
            hi = used[-1] + 1 if hi is None else max(hi, used[-1] + 1)
    if lo is not None:
        edges = np.asarray(next(iter(runs.values()))["histograms"][site]["edges"])
        ax.set_xlim(edges[max(lo - 2, 0)], edges[min(hi + 2, len(edges) - 1)])
    ax.set_xscale("log")
    ax.set_xlabel("|activation| (log-spaced bins)")
    ax.set_ylabel("fraction of elements")
    ax.set_title(site[len(prefix) :], fontsize=9)
    plain_ticks(ax)
    legend_outside(ax, fontsize=7, ncol=1)
