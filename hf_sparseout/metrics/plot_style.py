"""What every plot of the project shares: plain tick labels, a title that fits, a legend outside the data."""

from __future__ import annotations

import textwrap
from typing import Any

from matplotlib.ticker import LogFormatter, ScalarFormatter


class PlainLogFormatter(LogFormatter):
    """matplotlib's log-axis labels (the same ticks get one) written as plain numbers: ``1070``, not ``1.07×10^3``."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def plain_ticks(ax: Any) -> None:
    """Plain numbers on both axes of ``ax``: no ``×10^n`` mathtext on log axes, no offset or ``1e3`` on linear ones.

    Call it after the axes' scales are set. Axes with labels of their own (``set_xticks(ticks, labels)``) are
    left alone.
    """
    for axis in (ax.xaxis, ax.yaxis):
        if not isinstance(axis.get_major_formatter(), (ScalarFormatter, LogFormatter)):
            continue
        if axis.get_scale() == "log":
            axis.set_major_formatter(PlainLogFormatter())
            axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        elif axis.get_scale() == "linear":
            formatter = ScalarFormatter(useOffset=False, useMathText=False)
            formatter.set_scientific(False)
            axis.set_major_formatter(formatter)


def wrapped(title: str, width: int = 70) -> str:
    """``title`` broken into lines of at most ``width`` characters, so it fits the figure."""
    return "\n".join(textwrap.wrap(title, width)) or title


def legend_outside(ax: Any, handles: list[Any] | None = None, labels: list[str] | None = None, **kwargs: Any) -> Any:
    """A legend under ``ax``, below its tick labels and x label, where it cannot cover data.

    Anchored a fixed 0.5 inch under the axes (room for one line of tick labels and the x label) whatever
    the axes' height; the figure's layout (``tight_layout`` or constrained) then makes room for it.
    """
    from matplotlib.transforms import ScaledTranslation

    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ncol = kwargs.pop("ncol", min(len(handles), 2))
    below = ax.transAxes + ScaledTranslation(0, -0.5, ax.figure.dpi_scale_trans)
    return ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=below,
        ncol=ncol,
        frameon=False,
        **kwargs,
    )
