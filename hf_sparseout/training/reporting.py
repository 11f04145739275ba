"""What a run leaves behind: metrics.json, report.md, plots, hf_sparseout_run.json, the summary table."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_sparseout.optional import require_matplotlib
from hf_sparseout.training.args import FinetuneArgs
from hf_sparseout.training.diagnostics import EvalRecord
from hf_sparseout.training.loop import RunResult
from hf_sparseout.training.run_names import DROPOUT, P0, q_label, run_label
from hf_sparseout.training.run_options import effective_noise

if TYPE_CHECKING:
    from rich.console import Console

RUN_FILE = "hf_sparseout_run.json"
PLOTS = {
    "training_loss": "training_loss.png",
    "eval_metric": "eval_metric.png",
    "per_site_hoyer": "sparsity_per_site.png",
}
CURVE_PLOT = "sparsity_curve.png"
CURVE_KEYS = ("sparsity_at_1pct", "sparsity_at_5pct")
FIXED_KEY = "metric_at_sparsity"
"""The curve's ``{"0.25": .., "0.4": .., "0.5": ..}`` (relative change of the metric), a dict: in the summary
rows and the final eval, not in the tables' columns."""

SummaryRow = dict[str, str | float | int | None]
"""One run in the summary table (``metrics.json``'s ``summary``): its name, p, q, final and best metrics, ..."""


def headline(task: str) -> tuple[str, str]:
    """(metric key, label) of the task's main eval metric."""
    return ("perplexity", "perplexity (lower is better)") if task == "causal-lm" else ("accuracy", "accuracy")


def summary_rows(results: list[RunResult], task: str) -> list[SummaryRow]:
    """One row per run: the final eval metrics, sparsity and throughput."""
    key, _ = headline(task)
    rows = []
    for r in results:
        final = r.final
        diag = r.diagnostics(task)
        rows.append(
            {
                "run": r.name,
                "p": r.p,
                "q": r.q,
                key: final.get(key),
                f"best_eval_{key}": diag.get(f"best_eval_{key}"),
                "best_step": diag.get("best_eval_step"),
                **({"f1_macro": final.get("f1_macro")} if task == "classification" else {}),
                "eval_loss": final.get("eval_loss"),
                "train_loss": final.get("train_loss"),
                "hoyer": final.get("hoyer"),
                "hoyer_init": diag["hoyer_init"],
                "rel_near_zero": final.get("relative_near_zero_fraction"),
                "grad_norm_median": diag["grad_norm"]["median"],
                "grad_norm_max": diag["grad_norm"]["max"],
                "sites": len(r.report.sparseout_sites),
                "measured": len(r.sparsity.get("sites", {})),
                "steps": r.global_step,
                r.throughput_unit: int(r.throughput),
                "peak_memory_mb": r.peak_memory_mb,
                **({k: final.get(k) for k in (*CURVE_KEYS, FIXED_KEY)} if r.curve is not None else {}),
            }
        )
    return rows


def _q_or(row: SummaryRow, column: str, cell: Callable[[object], str]) -> str:
    """A summary table's cell: q as ``–`` for the p = 0 run (``run_names.q_label``), else ``cell(value)``."""
    if column == "q" and isinstance(row.get("q"), float):
        return q_label(str(row["run"]), row["q"])
    return cell(row.get(column))


def unmeasured_sites(result: RunResult) -> list[str]:
    """Sparseout sites of ``result`` that the eval pass never reached (attention probabilities)."""
    measured = set(result.sparsity.get("sites", {}))
    # the monitor names a site by its Sparseout module (``<module>.sparseout`` for inserted sites,
    # ``<owner>.<attr>_sparseout`` for functional ones), the report by the site
    return [s.name for s in result.report.sparseout_sites if (s.module or s.name) not in measured]


def write_metrics(
    out: Path, args: FinetuneArgs, results: list[RunResult], task: str, data_source: str, num_processes: int = 1
) -> Path:
    """``metrics.json``: every eval of every run, the training-loss curve, per-site sparsity, the options."""
    data = {
        "task": task,
        "data": data_source,
        "num_processes": num_processes,
        "args": args.to_dict(),
        "summary": summary_rows(results, task),
        "runs": {
            r.name: {
                "q": r.q,
                "p": r.p,
                "lq_penalty": r.penalty,
                "noise": effective_noise(args.noise, r.q, args.p if r.p is None else r.p),
                **r.diagnostics(task),
                "init": r.init,
                "evals": r.evals,
                "train_loss": r.train_loss,
                "learning_rate": r.learning_rate,
                "sparsity": r.sparsity,
                "sites_not_measured": unmeasured_sites(r),
                "sites": [s.__dict__ for s in r.report.sites],
                "train_seconds": r.train_seconds,
                "step_seconds": r.step_seconds,
                "conditions": r.conditions,
                "throughput": r.throughput,
                "throughput_unit": r.throughput_unit,
                "peak_memory_mb": r.peak_memory_mb,
                **({"sparsity_curve": r.curve.to_dict()} if r.curve is not None else {}),
                **run_outcome(r),
            }
            for r in results
        },
    }
    path = out / "metrics.json"
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def run_outcome(result: RunResult) -> dict[str, Any]:
    """metrics.json's record of how a run ended: a stop before its last step, non-finite losses, analyses
    that failed and, with ``--load-best-model-at-end``, the best evaluation (``best_step``) and the last
    step's figures (``last``; ``final`` is the kept model's evaluation)."""
    outcome: dict[str, Any] = {
        "stopped_early": result.stopped_early,
        "nonfinite_loss_steps": result.nonfinite_loss_steps,
        "skipped_steps": result.skipped_steps,
        "analysis_errors": result.analysis_errors,
    }
    if result.best is not None:
        outcome.update(best=result.best, best_step=result.best["step"], last=result.last, final=result.final)
    return outcome


def notes(results: list[RunResult]) -> list[str]:
    """One line per thing a reader of the summary must know: early stops, skipped steps, the best model
    kept, analyses that failed."""
    lines = []
    for r in results:
        if r.stopped_early:
            lines.append(f"{r.name}: stopped at step {r.stopped_early['step']}: {r.stopped_early['reason']}")
        if r.skipped_steps:
            skipped = r.nonfinite_loss_steps
            lines.append(f"{r.name}: {r.skipped_steps} step(s) with a non-finite training loss skipped: {skipped}")
        if r.best is not None and r.best_final is not None:
            lines.append(
                f"{r.name}: the model kept is the best evaluation's (step {r.best['step']}, "
                f"{r.best['metric']}={r.best['value']:.6g}); the last step's figures are under 'last' in metrics.json"
            )
        lines += [f"{r.name}: {error}" for error in r.analysis_errors.values()]
    return lines


def write_plots(out: Path, results: list[RunResult], task: str) -> dict[str, str]:
    """Training loss, eval metric vs step, and per-site Hoyer sparsity (runs overlaid)."""
    plt = require_matplotlib("finetune's plots")
    from hf_sparseout.metrics.plot_style import legend_outside, plain_ticks

    key, label = headline(task)
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for r in results:
        steps, losses = zip(*r.train_loss, strict=True) if r.train_loss else ((), ())
        ax.plot(steps, losses, label=run_label(r.name, r.q), alpha=0.85)
    ax.set(xlabel="optimizer step", ylabel="training loss", title="Training loss")
    plain_ticks(ax)
    legend_outside(ax)
    fig.tight_layout()
    fig.savefig(out / PLOTS["training_loss"], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for r in results:
        ax.plot([e["step"] for e in r.evals], [e.get(key) for e in r.evals], marker="o", label=run_label(r.name, r.q))
    ax.set(xlabel="optimizer step", ylabel=label, title=f"Eval {key}")
    plain_ticks(ax)
    legend_outside(ax)
    fig.tight_layout()
    fig.savefig(out / PLOTS["eval_metric"], dpi=120)
    plt.close(fig)

    sites = list(results[0].sparsity.get("sites", {}))
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(sites) + 2), 4.5))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        values = [r.sparsity.get("sites", {}).get(s, {}).get("hoyer", float("nan")) for s in sites]
        ax.bar([x + i * width for x in range(len(sites))], values, width=width, label=run_label(r.name, r.q))
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(sites))])
    ax.set_xticklabels(sites, rotation=70, ha="right", fontsize=7)
    ax.set(ylabel="Hoyer sparsity (0 dense .. 1 one-hot)")
    plain_ticks(ax)
    ax.set_title("Activation sparsity entering each site (eval)", pad=28)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(results), frameon=False)
    fig.tight_layout()
    fig.savefig(out / PLOTS["per_site_hoyer"], dpi=120)
    plt.close(fig)
    written = dict(PLOTS)
    curves = {run_label(r.name, r.q): r.curve for r in results if r.curve is not None}
    if curves:
        from hf_sparseout.metrics.threshold_plot import plot_sparsity_curves

        plot_sparsity_curves(curves, out / CURVE_PLOT)
        written["sparsity_curve"] = CURVE_PLOT
    return written


def _curve_lines(results: list[RunResult], cell: Callable[[object], str]) -> list[str]:
    """report.md's section on the sparsity-quality curve (``--sparsity-curve``)."""
    runs = [r for r in results if r.curve is not None]
    if not runs:
        return []
    metric = runs[0].curve.metric
    rule = "+1 % / +5 % perplexity" if metric == "perplexity" else "-1 / -5 accuracy points"
    first = runs[0].curve.to_dict()
    measured_on = ""
    if first.get("eval") and first.get("calibration"):
        ev, cal = first["eval"], first["calibration"]
        measured_on = (
            f" Each target is one pass over the curve's own eval set, the first {ev['samples']} of the "
            f"{ev['of']} eval {ev['unit']} ({ev['tokens']} tokens; --sparsity-eval-samples), the unthresholded "
            f"reference (target 0) included; thresholds are calibrated on {cal['samples']} training {ev['unit']} "
            f"({cal['tokens']} tokens): {cal['source']}."
        )
    fixed = [k for k in first.get(FIXED_KEY) or {}]
    lines = [
        "",
        "## Deployable sparsity (magnitude thresholding after the final evaluation)",
        "",
        "Per site (the inputs of the weight matrices), the activations with the smallest |x| are zeroed at eval "
        "with thresholds calibrated on training data, never the eval set; sparsity is the fraction of site inputs "
        f"zeroed, averaged with the weight matrices' parameter counts as weights (TEAL's definition). sparsity at "
        f"{rule}: the largest sparsity reached within that loss of the unthresholded model, linearly interpolated "
        "between measured targets (a lower bound, marked >=, when no target left the tolerance). "
        f"{metric} at s: its relative change against the unthresholded model at sparsity s, interpolated between "
        "the measured points around s (empty outside the measured range)." + measured_on,
        "",
        "| run | sparsity at 1% | sparsity at 5% |" + "".join(f" {metric} at {s} |" for s in fixed),
        "|---|---|---|" + "---|" * len(fixed),
    ]
    for r in runs:
        marks = [">= " if not r.curve.bounded(t) else "" for t in (0.01, 0.05)]
        values = [r.curve.sparsity_at(t) for t in (0.01, 0.05)]
        at = r.curve.to_dict().get(FIXED_KEY) or {}
        changes = "".join(f" {'' if at.get(s) is None else f'{at[s]:+.2%}'} |" for s in fixed)
        lines.append(
            f"| {r.name} | " + " | ".join(m + cell(v) for m, v in zip(marks, values, strict=True)) + " |" + changes
        )
    header = " | ".join(f"{r.name}: sparsity, {metric}" for r in runs)
    lines += ["", f"| target | {header} |", "|---|" + "---|" * len(runs)]
    for i, point in enumerate(runs[0].curve.points):
        cells = []
        for r in runs:
            p = r.curve.points[i] if i < len(r.curve.points) else None
            cells.append("" if p is None else f"{p.sparsity:.3f}, {cell(p.metrics.get(metric))}")
        lines.append(f"| {point.target:g} | " + " | ".join(cells) + " |")
    lines += ["", f"![sparsity curve]({CURVE_PLOT})", "", "Thresholds: `thresholds.json` beside each model."]
    return lines


def write_report(out: Path, args: FinetuneArgs, results: list[RunResult], task: str, data_source: str) -> Path:
    """``report.md``: the summary table, per-site sparsity, plots, and the command's options."""
    rows = summary_rows(results, task)
    columns = [c for c in rows[0] if c != FIXED_KEY and any(r.get(c) is not None for r in rows)]

    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = [f"# hf-sparseout finetune: {task}", "", f"Data: {data_source}.", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_q_or(r, c, cell) for c in columns) + " |" for r in rows]
    sites = list(results[0].sparsity.get("sites", {}))
    unmeasured = unmeasured_sites(results[0])
    if sites or unmeasured:
        lines += ["", "## Hoyer sparsity per site (eval, pre-noise activations)", ""]
        lines += ["| site | " + " | ".join(r.name for r in results) + " |", "|---|" + "---|" * len(results)]
        for s in sites:
            values = [cell(r.sparsity.get("sites", {}).get(s, {}).get("hoyer")) for r in results]
            lines.append(f"| {s} | " + " | ".join(values) + " |")
        for s in unmeasured:
            lines.append(f"| {s} | " + " | ".join("not measured" for _ in results) + " |")
        if unmeasured:
            lines += [
                "",
                f"{len(unmeasured)} of {len(sites) + len(unmeasured)} Sparseout sites are attention probabilities: "
                "models pass dropout 0 to attention in eval, so an eval pass never reaches them (not measured).",
            ]
    lines += _curve_lines(results, cell)
    if run_notes := notes(results):
        lines += ["", "## Notes", "", *(f"- {line}" for line in run_notes)]
    lines += [
        "",
        "hoyer_init: the untrained model on the same eval data. train_loss: mean training loss (training mode, "
        "with the noise) since the previous evaluation. rel_near_zero: share of entries with |a| <= 0.1 * rms "
        "of their vector. grad_norm: before clipping, over every optimizer step (per logging step in metrics.json).",
    ]
    lines += ["", *(f"![{name}]({file})" for name, file in PLOTS.items()), ""]
    lines += ["## Options", "", "```json", args.to_json(), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_run_file(
    out: Path,
    args: FinetuneArgs,
    results: list[RunResult],
    task: str,
    datasets: tuple[str, ...],
    from_scratch: bool = False,
) -> Path:
    """``hf_sparseout_run.json``: what the model card is generated from (no local paths)."""
    model = args.model if args.model and not Path(args.model).expanduser().exists() else None
    main = results[0]

    def final(r: RunResult) -> EvalRecord:
        return {k: v for k, v in r.final.items() if k != "step"}

    data = {
        "task": task,
        "base_model": model,
        "from_scratch": from_scratch,
        "datasets": list(datasets),
        "license": None,
        "sparseout": main.report.config,
        "sites": [s.__dict__ for s in main.report.sites],
        "hyperparameters": {
            k: v
            for k, v in args.to_dict().items()
            if k
            not in (
                "output_dir",
                "model",
                "dataset",
                "tokenizer",
                "from_config",
                "resume_from_checkpoint",
                "hub_model_id",
            )
        },
        "results": {
            "sparseout": final(main),
            "baseline": next((final(r) for r in results[1:] if r.name == DROPOUT), None),
            "p0": next((final(r) for r in results[1:] if r.name == P0), None),
        },
        "plots": dict(PLOTS),
    }
    path = out / RUN_FILE
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def print_summary(results: list[RunResult], task: str) -> None:
    """The final comparison as a rich table on stdout (``summary_table``: short headers, a legend)."""
    from hf_sparseout.training.summary_table import summary_table

    key, _ = headline(task)
    bounds = {
        r.name: {k for k, t in zip(CURVE_KEYS, (0.01, 0.05), strict=True) if not r.curve.bounded(t)}
        for r in results
        if r.curve is not None
    }
    console = wide_console()
    title = f"hf-sparseout finetune ({task})"
    console.print(summary_table(summary_rows(results, task), key, console.width, bounds, title))
    for line in notes(results):
        console.print(line, markup=False, highlight=False)


def wide_console() -> Console:
    """A rich console for tables: the terminal's width, or 120 columns when output is piped (not 80)."""
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console
