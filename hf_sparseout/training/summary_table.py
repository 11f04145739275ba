"""finetune's terminal summary: short distinct headers, a legend, lower bounds marked, no truncated header.

The table keeps what compares runs at a glance; ``metrics.json`` and ``report.md`` have every column.
Columns are dropped (lowest priority first, and the caption says which) rather than squeezed, so no
header is cut to ``sparsity_at…`` on a narrow terminal.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rich.cells import cell_len

from hf_sparseout.training.run_names import q_label

if TYPE_CHECKING:
    from rich.table import Table

    from hf_sparseout.training.reporting import SummaryRow

BOUND_MARK = ">="
"""Prefix of a deployable-sparsity figure that is only a lower bound (no measured target left the tolerance)."""


def terminal_columns(metric: str, unit: str) -> list[tuple[str, str, str]]:
    """(summary key, header, legend entry) of every column the terminal may show, most important first.

    ``metric`` is the task's headline key (``perplexity`` or ``accuracy``); ``unit`` the throughput key
    (``tokens/s`` or ``samples/s``).
    """
    short = "ppl" if metric == "perplexity" else "acc"
    limits = "+1 % / +5 % perplexity" if metric == "perplexity" else "-1 / -5 accuracy points"
    return [
        ("run", "run", ""),
        ("p", "p", ""),
        ("q", "q", ""),
        (metric, short, f"{short}: final eval {metric}"),
        (f"best_eval_{metric}", "best", f"best: best eval {metric}"),
        ("hoyer", "hoyer", "hoyer: Hoyer sparsity at the sites (0 dense, 1 one-hot)"),
        ("hoyer_init", "h@init", "h@init: the same on the untrained model"),
        ("sparsity_at_1pct", "sp@1%", f"sp@1%/5%: inputs zeroable within {limits}"),
        ("sparsity_at_5pct", "sp@5%", f"{BOUND_MARK}: a lower bound"),
        ("grad_norm_median", "gnorm", "gnorm: median gradient norm"),
        ("measured", "sites", "sites: measured/patched"),
        ("steps", "steps", ""),
        (unit, "tok/s" if unit == "tokens/s" else "smp/s", "throughput varies with machine and load"),
        ("eval_loss", "loss", "loss: final eval loss"),
        ("peak_memory_mb", "MB", "MB: peak accelerator memory"),
    ]


def _cell(key: str, row: Mapping[str, object], lower_bounds: set[str]) -> str:
    value = row.get(key)
    if key == "measured":
        return f"{value}/{row.get('sites')}"
    if key == "q" and isinstance(value, float):
        return q_label(str(row.get("run")), value)  # "–" where q means nothing (the p = 0 run)
    if value is None:
        return ""
    if key.startswith("sparsity_at_"):
        return (BOUND_MARK if key in lower_bounds else "") + f"{value:.3f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _build(
    rows: Sequence[SummaryRow],
    columns: list[tuple[str, str, str]],
    bounds: Mapping[str, set[str]],
    title: str | None,
    legend: list[str],
) -> Table:
    from rich.table import Table

    table = Table(title=title, caption="; ".join(legend) if legend else None, caption_justify="left")
    for key, header, _ in columns:
        table.add_column(header, justify="left" if key == "run" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(key, row, bounds.get(str(row.get("run")), set())) for key, _, _ in columns))
    return table


def summary_table(
    rows: Sequence[SummaryRow],
    metric: str,
    width: int,
    lower_bounds: Mapping[str, set[str]] | None = None,
    title: str = "hf-sparseout finetune",
) -> Table:
    """The summary table for a console ``width`` columns wide.

    ``rows`` are ``summary_rows`` output; ``lower_bounds`` maps a run name to the ``sparsity_at_*`` keys
    that are only lower bounds (marked ``>=``). Columns with no value in any row are left out; when the
    rest does not fit ``width``, the least important are dropped and named in the caption.
    """
    bounds = dict(lower_bounds or {})
    unit = next((k for k in ("tokens/s", "samples/s") if any(k in r for r in rows)), "tokens/s")
    columns = [c for c in terminal_columns(metric, unit) if any(r.get(c[0]) is not None for r in rows)]
    dropped: list[str] = []
    while _natural_width(_build(rows, columns, bounds, None, [])) > width and len(columns) > 4:
        dropped.insert(0, columns.pop()[1])
    return _build(rows, columns, bounds, title, _legend(columns, dropped))


def _legend(columns: list[tuple[str, str, str]], dropped: list[str]) -> list[str]:
    legend = [entry for _, _, entry in columns if entry]
    if dropped:
        legend.append("not shown: " + ", ".join(dropped))
    return [*legend, "every column: metrics.json, report.md"]


def _natural_width(table: Table) -> int:
    """The width ``table`` takes when nothing is squeezed (rendered on a very wide console)."""
    from rich.console import Console

    console = Console(width=10_000, file=io.StringIO(), color_system=None)
    with console.capture() as capture:
        console.print(table)
    return max((cell_len(line.rstrip()) for line in capture.get().splitlines()), default=0)
