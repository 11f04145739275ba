"""Summaries of a sweep: mean ± std per grid cell, per-site Hoyer, time against dropout; the files.

``aggregate`` turns per-run records into one row per cell (p, noise, penalty, q); ``write_markdown``,
``write_plot`` and ``write_site_plot`` write ``sweep.md``, ``sweep.png`` and ``sweep_sites.png`` from a
``SweepResult`` (see ``run.py``). A record is one finished run (``run.read_record``)::

    {"p", "q", "seed", "noise"?, "lq_penalty"?, <metric>, "hoyer", "eval_loss", "throughput",
     "throughput_unit", "sites": {site: hoyer}, and the diagnostics in SUMMARISED}
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hf_sparseout.optional import require_matplotlib
from hf_sparseout.sweep.grid import BASELINE_Q
from hf_sparseout.sweep.stats import compare
from hf_sparseout.sweep.timing import MAX_LOAD_GAP, MAX_SPREAD, STEPS, THROUGHPUT, steady_state, time_vs_dropout
from hf_sparseout.training.reporting import CURVE_KEYS, headline

FILES = {"json": "sweep.json", "markdown": "sweep.md", "plot": "sweep.png", "site_plot": "sweep_sites.png"}
# Per-run values summarised as mean ± std besides the final metric (best_eval_<metric> is added per task).
SUMMARISED = (
    "hoyer",
    "eval_loss",
    "throughput",
    *CURVE_KEYS,
    "best_step",
    "gap_at_best",
    "hoyer_at_best",
    "hoyer_init",
    "hoyer_change",
    "mean_abs",
    "relative_near_zero_fraction",
    "grad_norm_median",
)
DIAGNOSTIC_HEADERS = ("best step", "gap", "hoyer at best", "hoyer", "hoyer change", "mean abs", "rel. near-zero")
DIAGNOSTIC_HEADERS += ("grad norm",)
DIAGNOSTIC_KEYS = (
    "best_step",
    "gap_at_best",
    "hoyer_at_best",
    "hoyer",
    "hoyer_change",
    "mean_abs",
    "relative_near_zero_fraction",
    "grad_norm_median",
)
Cell = tuple[float | None, str | None, float | None, float]  # (p, noise, lq_penalty, q)
# The metrics every cell is compared on with its controls (best_eval_<metric> is added per task).
COMPARED = ("hoyer", "sparsity_at_1pct")
DROPOUT, P0 = "dropout", "p=0"  # the controls' names in ``comparisons``
P0_NOTE = (
    "p = 0 (q shown as –): every site at p = 0, attention probabilities included: the no-noise control, trained "
    "once per seed (and L_q penalty) whatever the q and noise axes."
)
STAT_HEADERS = ("mean diff", "95 % CI", "t", "p", "test", "verdict")


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def _cell(r: Mapping[str, Any]) -> Cell:
    return (r["p"], r.get("noise"), r.get("lq_penalty"), r["q"])


def _cell_order(cell: Cell) -> tuple[bool, float, str, float, float]:
    p, noise, lq, q = cell
    return (p is not None, p or 0.0, noise or "", lq or 0.0, q)


def series_key(row: Mapping[str, Any]) -> tuple[float | None, str | None, float | None]:
    """The line a row belongs to in the plots: (p, noise, penalty); q = 2 rows have no noise."""
    return (row["p"], row.get("noise"), row.get("lq_penalty"))


def aggregate(records: Iterable[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (n - 1; None for one seed) per cell, sorted by p, noise, penalty, q.

    A cell is (p, noise, lq_penalty, q); ``noise``/``lq_penalty`` are None (or absent) when they are not
    axes. Each record needs ``p``, ``q``, ``seed`` and the metric, ``hoyer`` and ``eval_loss`` values
    (None or a missing key is left out of that statistic); the keys of :data:`SUMMARISED`,
    ``best_eval_<metric>`` and ``sites`` (site -> Hoyer) are optional. ``n`` is the number of seeds of
    the cell. ``time_vs_dropout`` is the steady-state step time relative to the q = 2 run of the same p,
    penalty and seed (1.25 = 25 % slower than dropout), averaged over the seeds whose pair is comparable
    (``timing.time_vs_dropout``: basis, n and the caveats of the pairs left out). ``site_hoyer`` maps
    each site to ``{"mean", "std"}``; ``comparisons`` are the paired statistics against the controls.
    """
    records = list(records)
    dropout_runs = {
        (r["p"], r.get("lq_penalty"), r["seed"]): r for r in records if r["q"] == BASELINE_Q and r["p"] != 0
    }
    groups: dict[Cell, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(_cell(r), []).append(r)
    with_axes = any(r.get("noise") is not None or r.get("lq_penalty") is not None for r in records)
    rows = []
    for (p, noise, lq, q), group in sorted(groups.items(), key=lambda kv: _cell_order(kv[0])):
        row: dict[str, Any] = {"p": p, "q": q}
        if with_axes:
            row.update(noise=noise, lq_penalty=lq)
        row.update(baseline=q == BASELINE_Q and p != 0, n=len(group), seeds=sorted(r["seed"] for r in group))
        for key in (metric, f"best_eval_{metric}", *SUMMARISED):
            mean, std = _stats([float(r[key]) for r in group if r.get(key) is not None])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        units = {r["throughput_unit"] for r in group if r.get("throughput_unit")}
        row["throughput_unit"] = units.pop() if len(units) == 1 else None
        row.update(
            time_vs_dropout([(r, dropout_runs[key]) for r in group if (key := (p, lq, r["seed"])) in dropout_runs])
        )
        sites: dict[str, list[float]] = {}
        for r in group:
            for site, value in (r.get("sites") or {}).items():
                if value is not None:
                    sites.setdefault(site, []).append(float(value))
        row["site_hoyer"] = {s: dict(zip(("mean", "std"), _stats(v), strict=True)) for s, v in sites.items()}
        row["comparisons"] = _comparisons((p, noise, lq, q), groups, (f"best_eval_{metric}", *COMPARED), with_axes)
        rows.append(row)
    return rows


def controls(cell: Cell, with_lq_axis: bool) -> dict[str, Cell]:
    """The control cells of ``cell`` by name: ``dropout`` (q = 2 at the same p and penalty; not for p = 0
    or a q = 2 cell) and ``p=0`` (the p = 0 cell without penalty; not for that cell itself)."""
    p, _, lq, q = cell
    out: dict[str, Cell] = {}
    if p != 0 and q != BASELINE_Q:
        out[DROPOUT] = (p, None, lq, BASELINE_Q)
    control = (0.0, None, 0.0 if with_lq_axis else None, BASELINE_Q)
    if cell != control:
        out[P0] = control
    return out


def _comparisons(
    cell: Cell, groups: Mapping[Cell, list[Mapping[str, Any]]], keys: Iterable[str], with_axes: bool
) -> list[dict[str, Any]]:
    """``stats.compare`` of ``cell`` against each control present, for each key both sides recorded."""
    with_lq_axis = with_axes and any(c[2] is not None for c in groups)
    out = []
    for name, other in controls(cell, with_lq_axis).items():
        if other not in groups:
            continue
        for key in keys:
            mine, theirs = (_by_seed(groups[c], key) for c in (cell, other))
            if mine and theirs:
                out.append({"against": name, "metric": key, **compare(mine, theirs, key)})
    return out


def _by_seed(group: list[Mapping[str, Any]], key: str) -> dict[int, float]:
    return {r["seed"]: float(r[key]) for r in group if r.get(key) is not None}


def format_mean_std(mean: float | None, std: float | None) -> str:
    """``12.3 ± 0.45`` (just the mean for one seed; empty for no value)."""
    if mean is None:
        return ""
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def _p_label(p: float | None) -> str:
    return "model's" if p is None else f"{p:g}"


Series = tuple[float | None, str | None, float | None]


def series_label(key: Series, with_p: bool = True) -> str:
    """``p=0.1, noise=matched, lq=1`` (the parts that are axes; empty when none is)."""
    p, noise, lq = key
    parts = [f"p={_p_label(p)}"] if with_p and p is not None else []
    parts += [] if noise is None else [f"noise={noise}"]
    parts += [] if lq is None else [f"lq={lq:g}"]
    return ", ".join(parts)


def series(summary: list[dict[str, Any]]) -> list[tuple[Series, list[dict[str, Any]]]]:
    """The lines of the plots: rows per (p, noise, penalty), by q; the shared q = 2 row joins every noise line."""
    noisy = {(r["p"], r.get("lq_penalty")) for r in summary if r.get("noise") is not None}
    out = []
    for key in dict.fromkeys(series_key(r) for r in summary):
        p, noise, lq = key
        if noise is None and (p, lq) in noisy:
            continue  # the q = 2 rows of a noise axis: drawn with each noise mode
        rows = [
            r
            for r in summary
            if series_key(r) == key or (noise is not None and r["baseline"] and series_key(r) == (p, None, lq))
        ]
        out.append((key, sorted(rows, key=lambda r: r["q"])))
    return out


def lead_columns(summary: list[dict[str, Any]]) -> list[str]:
    """The axis columns a table of ``summary`` needs before q: p, noise, lq (those that vary or are set)."""
    cols = ["p"] if any(r["p"] is not None for r in summary) else []
    cols += ["noise"] if any(r.get("noise") is not None for r in summary) else []
    cols += ["lq"] if any(r.get("lq_penalty") is not None for r in summary) else []
    return cols


def lead_cells(row: Mapping[str, Any], columns: list[str]) -> list[str]:
    """The axis cells of ``row`` for :func:`lead_columns` (``-`` for the noise of a shared q = 2 row)."""
    values = {
        "p": _p_label(row["p"]),
        "noise": row.get("noise") or "-",
        "lq": "" if row.get("lq_penalty") is None else f"{row['lq_penalty']:g}",
    }
    return [values[c] for c in columns]


def q_cell(row: Mapping[str, Any], dropout: str = " (dropout baseline)") -> str:
    """The q of a summary row: ``–`` at p = 0 (q means nothing at identity sites), the dropout row marked."""
    if row["p"] == 0:
        return f"– ({P0})"
    return f"{row['q']:g}" + (dropout if row["baseline"] else "")


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def comparison_lines(result: Any) -> list[str]:
    """sweep.md's section of paired statistics: each cell against each of its controls."""
    if not any(r.get("comparisons") for r in result.summary):
        return []
    lead = lead_columns(result.summary)
    lines = [
        "",
        "## Against the controls",
        "",
        f"Each cell minus its control: {DROPOUT} (q = 2 at the same p and penalty) and {P0} (every site at p = 0, "
        "attention probabilities included: no noise anywhere). paired-t: a t-test on the per-seed differences "
        "(both sides ran the same seeds); welch-t: Welch's t-test otherwise. Verdict at p < 0.05 in the metric's "
        "direction (perplexity and loss: lower is better; Hoyer: sparser/denser; sparsity at +1 %: more/less "
        "prunable); one seed: no test.",
        "",
        "| " + " | ".join([*lead, "q", "against", "metric", "n", *STAT_HEADERS]) + " |",
        "|---" * (len(lead) + 4 + len(STAT_HEADERS)) + "|",
    ]
    for r in result.summary:
        for c in r.get("comparisons") or []:
            cells = [*lead_cells(r, lead), q_cell(r), c["against"], c["metric"], str(c["n"])]
            lines.append("| " + " | ".join([*cells, *stat_cells(c)]) + " |")
    return lines


def verdict_cell(row: Mapping[str, Any], against: str, metric: str) -> str:
    """``worse (p 0.002)``: the verdict of ``row`` against control ``against`` on ``metric`` (empty if none)."""
    c = next((c for c in row.get("comparisons") or [] if c["against"] == against and c["metric"] == metric), None)
    if c is None:
        return ""
    return c["verdict"] + ("" if c["p_value"] is None else f" (p {c['p_value']:.2g})")


def stat_cells(c: Mapping[str, Any]) -> list[str]:
    """The cells of :data:`STAT_HEADERS` for one comparison (empty p, t and interval for one seed)."""
    ci = c["ci95"]
    cells = [f"{c['mean_diff']:+.4g}", "" if ci is None else f"[{ci[0]:+.4g}, {ci[1]:+.4g}]"]
    return [*cells, _fmt(c.get("statistic"), ".3g"), _fmt(c["p_value"], ".2g"), c["test"], c["verdict"]]


def _table(result: Any, header: list[str], keys: list[str]) -> list[str]:
    lead = lead_columns(result.summary)
    lines = ["| " + " | ".join([*lead, "q", "n", *header]) + " |", "|---" * (len(lead) + 2 + len(header)) + "|"]
    for r in result.summary:
        cells = [*lead_cells(r, lead), q_cell(r), str(r["n"])]
        cells += [format_mean_std(r.get(f"{k}_mean"), r.get(f"{k}_std")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _site_value(row: Mapping[str, Any], site: str, stat: str) -> float | None:
    return (row.get("site_hoyer", {}).get(site) or {}).get(stat)


def _site_panels(result: Any) -> list[tuple[Series, list[dict[str, Any]], list[str]]]:
    """Per series (in summary order) that recorded per-site Hoyer: ``(series, its rows, its sites)``."""
    panels = []
    for key, rows in series(result.summary):
        sites = list(dict.fromkeys(s for r in rows for s in r.get("site_hoyer", {})))
        if sites:
            panels.append((key, rows, sites))
    return panels


def _site_tables(result: Any) -> list[str]:
    """One table per series: a row per site, a column per q, mean ± std Hoyer over seeds."""
    lines: list[str] = []
    for key, rows, sites in _site_panels(result):
        qs = [P0 if r["p"] == 0 else f"q={r['q']:g}" + (" (dropout)" if r["baseline"] else "") for r in rows]
        title = series_label(key) or f"p = {_p_label(key[0])}"
        lines += ["", f"{title}:", "", "| site | " + " | ".join(qs) + " |", "|---" * (len(qs) + 1) + "|"]
        for s in sites:
            cells = [format_mean_std(_site_value(r, s, "mean"), _site_value(r, s, "std")) for r in rows]
            lines.append(f"| `{s}` | " + " | ".join(cells) + " |")
    return lines


def _curve_lines(result: Any) -> list[str]:
    """Deployable sparsity per cell when the runs had ``--sparsity-curve``: mean ± std over seeds."""
    if not any(r.get("sparsity_at_1pct_mean") is not None for r in result.summary):
        return []
    rule = "+1 % / +5 % perplexity" if result.metric == "perplexity" else "-1 / -5 accuracy points"
    return [
        "",
        "## Deployable sparsity (magnitude thresholding, `--sparsity-curve`)",
        "",
        f"Largest fraction of weight-matrix inputs zeroed by calibrated magnitude thresholds within {rule} of the "
        "run's own unthresholded model (parameter-weighted, interpolated between targets; see each run's report.md). "
        "Mean ± std over seeds.",
        "",
        *_table(result, ["sparsity at 1%", "sparsity at 5%", "hoyer"], [*CURVE_KEYS, "hoyer"]),
    ]


def _diagnostic_lines(result: Any) -> list[str]:
    """Best evaluation and training diagnostics per cell (runs written with them; issue 14)."""
    m = result.metric
    if not any(r.get(f"best_eval_{m}_mean") is not None for r in result.summary):
        return []
    return [
        "",
        "## Best evaluation and diagnostics",
        "",
        f"best {m}: the best of the run's evaluations (at best step); gap: eval loss minus the mean training "
        "loss of the steps before that evaluation; hoyer at best: Hoyer at that evaluation; Hoyer change: final "
        "Hoyer minus the untrained model's on the same eval data; mean abs: mean |x| at the sites (final); "
        "rel. near-zero: fraction of entries with |a| <= 0.1 RMS of their vector (final model); grad norm: "
        "median gradient norm before clipping. Mean ± std over seeds.",
        "",
        *_table(result, [f"best {m}", *DIAGNOSTIC_HEADERS], [f"best_eval_{m}", *DIAGNOSTIC_KEYS]),
    ]


def time_cell(row: Mapping[str, Any]) -> str:
    """``1.08 ± 0.02``, ``not comparable`` (every pair had a caveat), ``(whole run)`` for the throughput basis."""
    mean = row.get("time_vs_dropout_mean")
    if mean is None:
        return "not comparable" if row.get("time_vs_dropout_caveats") else ""
    text = format_mean_std(mean, row.get("time_vs_dropout_std"))
    text += " (whole run)" if row.get("time_vs_dropout_basis") == THROUGHPUT else ""
    return text + (" *" if row.get("time_vs_dropout_caveats") else "")


def timing_lines(result: Any) -> list[str]:
    """The note under sweep.md's first table: how time vs dropout is measured, and every pair left out."""
    lines = [
        "",
        f"time vs dropout: the median step time ({STEPS}: after the first 10 % of the steps) over the dropout run's "
        "of the same p, penalty and seed (1.25 = 25 % slower), mean ± std over seeds. A pair is *not comparable* "
        "(left out; * when some pairs of the cell were) when the runs ran on another host, device, number of "
        f"processes or threads, when the machine load differed by more than {MAX_LOAD_GAP:g}, or when a run's step "
        f"times were unsteady (IQR over {100 * MAX_SPREAD:.0f} % of the median: another job on the machine). "
        "(whole run): runs without step times, throughput ratio, conditions unknown.",
    ]
    for r in result.summary:
        for caveat in r.get("time_vs_dropout_caveats") or []:
            lines.append(f"- {', '.join(lead_cells(r, lead_columns(result.summary)))} q {q_cell(r)}: {caveat}")
    return lines


def write_markdown(path: Path, result: Any, options: Mapping[str, Any]) -> Path:
    """``sweep.md``: per-cell table, diagnostics, per-site Hoyer, every run, the plots and the shared options."""
    m = result.metric
    units = {r.get("throughput_unit") for r in result.summary} - {None}
    unit = units.pop() if len(units) == 1 else "throughput"
    lead = lead_columns(result.summary)
    lines = [
        f"# hf-sparseout sweep: {result.task}",
        "",
        f"Mean ± sample standard deviation over seeds (n seeds per row) of the final eval {m} and of the "
        "Hoyer sparsity of the activations entering the Sparseout sites (0 dense .. 1 one-hot). "
        f"q = {BASELINE_Q:g} is plain dropout at the same sites: the dropout baseline. "
        f"{unit} is training throughput; time vs dropout: see the note under the table.",
        *(["", P0_NOTE] if any(r["p"] == 0 for r in result.summary) else []),
        "",
        "| " + " | ".join([*lead, "q", "n", m, "hoyer", "eval_loss", unit, "time vs dropout"]) + " |",
        "|---" * (len(lead) + 7) + "|",
    ]
    for r in result.summary:
        cells = [*lead_cells(r, lead), q_cell(r), str(r["n"])]
        cells += [format_mean_std(r.get(f"{k}_mean"), r.get(f"{k}_std")) for k in (m, "hoyer", "eval_loss")]
        thr = r.get("throughput_mean")
        cells.append("" if thr is None else f"{thr:.0f}")
        cells.append(time_cell(r))
        lines.append("| " + " | ".join(cells) + " |")
    lines += timing_lines(result)
    lines += comparison_lines(result)
    lines += _diagnostic_lines(result)
    lines += _curve_lines(result)
    lines += ["", f"![sweep]({FILES['plot']})"]
    site_lines = _site_tables(result)
    if site_lines:
        lines += ["", "## Hoyer sparsity per site", *site_lines, "", f"![per-site Hoyer]({FILES['site_plot']})"]
    lines += ["", "## Runs", "", f"| run | {m} | hoyer | eval_loss | steps | step time (median, IQR) |"]
    lines.append("|---|---|---|---|---|---|")
    for r in result.runs:
        values = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k)) for k in (m, "hoyer", "eval_loss")]
        steady = steady_state(r.get("step_seconds"))
        step = "" if steady is None else f"{steady['median']:.3g} s ± {100 * steady['spread']:.0f} %"
        lines.append(f"| [{r['dir']}]({r['dir']}/report.md) | " + " | ".join(values) + f" | {r['steps']} | {step} |")
    lines += ["", "## Options (every run)", "", "```json", json.dumps(dict(options), indent=2, default=str), "```", ""]
    path.write_text("\n".join(lines))
    return path


def _control_line(ax: Any, row: Mapping[str, Any], metric: str, colour: str, label: str) -> None:
    """A control's mean metric as a dotted horizontal line with a ±1 std band."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"] or 0.0
    if mean is None:
        return
    ax.axhline(mean, color=colour, ls=":", lw=1.2, label=label)
    if std:
        ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12)


def write_plot(path: Path, result: Any) -> Path:
    """``sweep.png``: the metric (left axis) and Hoyer sparsity (right axis) against q, error bars over seeds.

    One colour per series (p, noise mode, penalty); the controls (dropout: q = 2; p = 0) are horizontal
    lines with a ±1 std band.
    """
    plt = require_matplotlib("the sweep's plot (sweep.png)")
    from hf_sparseout.metrics.plot_style import legend_outside, plain_ticks

    _, label = headline(result.task)
    m = result.metric
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    ax2 = ax.twinx()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = series(result.summary)
    for i, (key, rows) in enumerate(lines):
        colour = colours[i % len(colours)]
        name = series_label(key) or ("model's p" if len(lines) > 1 else "")
        tag = f" ({name})" if name else ""
        qs = [r["q"] for r in rows]
        if key[0] == 0:  # the p = 0 control: a level, not a point at some q
            _control_line(ax, rows[0], m, colour, f"{P0}" + (f" ({series_label(key, with_p=False)})" if key[2] else ""))
            continue

        def err(k: str, rows: list[dict[str, Any]] = rows) -> list[float]:
            return [r[f"{k}_std"] or 0.0 for r in rows]

        means = [r[f"{m}_mean"] for r in rows]
        ax.errorbar(qs, means, yerr=err(m), color=colour, marker="o", capsize=3, label=f"{m}{tag}")
        hoyer = [r["hoyer_mean"] for r in rows]
        ax2.errorbar(qs, hoyer, yerr=err("hoyer"), color=colour, marker="s", ls="--", capsize=3, label=f"Hoyer{tag}")
        base = next((r for r in rows if r["baseline"]), None)
        if base is not None:
            _control_line(ax, base, m, colour, f"{DROPOUT}{tag}")
    ax.set(xlabel="q (Sparseout exponent; 2 = dropout)", ylabel=f"{label}, solid")
    ax2.set_ylabel("Hoyer sparsity, dashed (0 dense .. 1 one-hot)")
    n = sorted({r["n"] for r in result.summary})
    ax.set_title(f"Sweep over q: mean ± std over {'/'.join(map(str, n))} seed(s)")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    plain_ticks(ax)
    plain_ticks(ax2)
    legend_outside(ax, handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_site_plot(path: Path, result: Any) -> Path | None:
    """``sweep_sites.png``: per series (p, noise, penalty), a site x q heat map of mean Hoyer minus dropout's.

    Red: sparser than the dropout run.

    Each cell is annotated with the mean Hoyer itself; without a q = 2 run the colour is the Hoyer value.
    None (nothing written) when the runs recorded no per-site sparsity.
    """
    plt = require_matplotlib("the sweep's heat map (sweep_sites.png)")
    import numpy as np

    panels = _site_panels(result)
    if not panels:
        return None
    height = 1.5 + 0.28 * max(len(sites) for _, _, sites in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 3.0, height), squeeze=False)
    for ax, (key, rows, sites) in zip(axes[0], panels, strict=True):
        values = np.array([[_site_value(r, s, "mean") for r in rows] for s in sites], dtype=float)
        base = next((i for i, r in enumerate(rows) if r["baseline"]), None)
        colour = values - values[:, [base]] if base is not None else values
        limit = float(np.nanmax(np.abs(colour))) if np.isfinite(colour).any() else 1.0
        image = ax.imshow(
            colour, cmap="RdBu_r" if base is not None else "viridis", aspect="auto",
            vmin=-limit if base is not None else None, vmax=limit if base is not None else None,
        )  # fmt: skip
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=6.5)
        ax.set_xticks(range(len(rows)), [f"{r['q']:g}" for r in rows])
        ax.set_yticks(range(len(sites)), sites, fontsize=7)
        ax.set_xlabel("q")
        ax.set_title(series_label(key) or f"p = {_p_label(key[0])}", fontsize=9)
        cbar = fig.colorbar(image, ax=ax, fraction=0.05)
        cbar.set_label("Hoyer − dropout run's" if base is not None else "Hoyer", fontsize=8)
    fig.suptitle("Hoyer sparsity per site (cell: mean over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
