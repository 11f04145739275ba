"""`hf-sparseout sweep`: finetune over a grid of q (and p, noise, penalty) values and seeds, then mean ± std.

The grid options (``--q --p --noise --lq-penalty --lq-q --seeds``) are declared here; every other
option is a finetune option, parsed by the
``finetune`` command's own Click parser (the command is registered with :data:`CONTEXT_SETTINGS` so
that Click hands them over in ``ctx.args``) and mapped with :func:`finetune_cmd.args_from_params`,
so the two commands cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from hf_sparseout_cli.errors import CliError, run_job
from hf_sparseout_cli.finetune_cmd import args_from_params, finetune
from hf_sparseout_cli.options import OutputFormat

GRID, OUT = "Grid", "Output"
# Register with: app.command("sweep", context_settings=CONTEXT_SETTINGS)(sweep)
CONTEXT_SETTINGS: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}
# finetune options a sweep sets itself (or cannot honour), with what to use instead.
NOT_PASSED = {
    "seed": "--seeds N or --seed-list",
    "resume_from_checkpoint": "rerunning the same sweep command (it resumes by itself)",
    "push_to_hub": "hf-sparseout push on one run directory",
    "hub_model_id": "hf-sparseout push on one run directory",
}


def finetune_command() -> TyperCommand:
    """The Click command of ``hf-sparseout finetune`` (the parser of the pass-through options)."""
    app = typer.Typer(add_completion=False)
    app.command()(finetune)
    return typer.main.get_command(app)


def _pass_through_options(command: TyperCommand) -> list[str]:
    own = {"q", "p", "noise", "lq_penalty", "lq_q", "baseline", "no_baseline", "output_dir", "overwrite_output_dir"}
    own |= {"fmt", *NOT_PASSED}
    return [opt for prm in command.params if prm.name not in own for opt in (*prm.opts, *prm.secondary_opts)]


def parse_finetune_options(extra: list[str]) -> dict[str, Any]:
    """Parse ``extra`` as finetune options; ``CliError`` for an unknown, malformed or sweep-controlled one."""
    command = finetune_command()
    valid = ", ".join(_pass_through_options(command))
    try:
        ctx = command.make_context("finetune", list(extra))
    except typer.TyperException as err:  # Typer's (vendored) Click usage errors: unknown option, bad value, ...
        option, close = getattr(err, "option_name", None), sorted(getattr(err, "possibilities", None) or [])
        if option and option.startswith("-") and "no such option" in err.format_message().lower():
            message = f"no such option for a sweep: {option}" + (
                f" (did you mean {', '.join(close)}?)" if close else ""
            )
        else:
            message = err.format_message()
        raise CliError(message, f"the finetune options a sweep passes on: {valid}") from None
    for name, instead in NOT_PASSED.items():
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE":
            option = next(prm.opts[0] for prm in command.params if prm.name == name)
            raise CliError(f"{option} cannot be passed to a sweep", f"use {instead}")
    return dict(ctx.params)


def sweep(
    ctx: typer.Context,
    q: Annotated[
        list[str] | None,
        typer.Option(
            "--q", help="q values, comma-separated (repeatable). Default: 1.0,1.5,2.0,2.5,3.0.", rich_help_panel=GRID
        ),
    ] = None,
    p: Annotated[
        list[str] | None,
        typer.Option(
            "--p",
            help="Drop probabilities, comma-separated (repeatable). Default: each site keeps its own p. "
            "0 is the no-noise control (attention probabilities at 0 too), trained once per seed whatever --q/--noise.",
            rich_help_panel=GRID,
        ),
    ] = None,
    noise: Annotated[
        list[str] | None,
        typer.Option(
            "--noise",
            help="Noise modes, comma-separated: raw (the paper's), matched (dropout's total variance). "
            "Two modes are an axis (q=2 is trained once: it is dropout in both); one is finetune's --noise.",
            rich_help_panel=GRID,
        ),
    ] = None,
    lq_penalty: Annotated[
        list[str] | None,
        typer.Option(
            "--lq-penalty",
            help="L_q activation-penalty weights, comma-separated; 0 = no penalty. Several are an axis; "
            "one is finetune's --lq-penalty.",
            rich_help_panel=GRID,
        ),
    ] = None,
    lq_q: Annotated[
        float | None,
        typer.Option("--lq-q", help="Exponent of the --lq-penalty runs (default 1).", rich_help_panel=GRID),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option("--seeds", help="Number of seeds: 0 .. N-1. Default: 3.", rich_help_panel=GRID)
    ] = None,
    seed_list: Annotated[
        str | None,
        typer.Option("--seed-list", help="Explicit seeds, comma-separated (instead of --seeds).", rich_help_panel=GRID),
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline/--no-baseline",
            help="Add a q=2 (plain dropout) run per p and seed when 2 is not in --q.",
            rich_help_panel=GRID,
        ),
    ] = True,
    output_dir: Annotated[
        str, typer.Option(help="Root of the run directories and of sweep.json/.md/.png.", rich_help_panel=OUT)
    ] = "hf-sparseout-sweep",
    overwrite_output_dir: Annotated[
        bool,
        typer.Option(
            "--overwrite-output-dir",
            help="Retrain every run (default: skip finished runs, resume interrupted ones).",
            rich_help_panel=OUT,
        ),
    ] = False,
    fmt: Annotated[
        OutputFormat,
        typer.Option("--format", help="Summary as a table (text) or JSON.", case_sensitive=False, rich_help_panel=OUT),
    ] = OutputFormat.text,
) -> None:
    """Fine-tune over a grid of q (and p, noise mode, L_q penalty) values and seeds; mean ± std per cell.

    Every other option is a finetune option, applied to every run (see
    hf-sparseout finetune --help), except --seed, --resume-from-checkpoint,
    --push-to-hub and --hub-model-id. Each run goes to
    OUTPUT_DIR/[pP/][noise-N/][lqW/]qQ/seedS/ (a level for each axis given:
    --p, two or more --noise modes, two or more --lq-penalty weights);
    sweep.json, sweep.md (mean ± std per cell: final and best-eval metric,
    Hoyer and its change from init, train/eval gap, gradient norm, Hoyer per
    site, steady-state step time against dropout; paired statistics and a
    verdict against each control), sweep.png (the metric and Hoyer sparsity
    against q, error bars over seeds) and sweep_sites.png (Hoyer per site and
    q) go to OUTPUT_DIR.

    The dropout control is the q=2 run (finetune's dropout control is the same
    patch at q=2), trained once per p, penalty weight and seed as part of the
    grid. With 0 in --p, the p=0 control (no noise at any site) is trained
    once per seed and penalty weight; every cell is compared with both.

    Every run keeps the model of its best evaluation (finetune's
    --load-best-model-at-end, on by default here; --no-load-best-model-at-end
    keeps the last model): the summaries compare best models.

    Rerunning the same command resumes: runs with a metrics.json are skipped,
    unfinished ones restart, or continue from their latest checkpoint when
    trained with --save-steps. A run trained with other options than this
    command gives it is an error (exit 2, naming runs and options), never
    skipped or mixed in; --overwrite-output-dir retrains. One writer per
    directory: a second sweep (or a finetune into a run) is refused while
    this one runs. Under accelerate launch every process runs every run in
    the same order; the main process writes the summary.

    Examples:

      hf-sparseout sweep --q 1.0,1.5,2.0,2.5,3.0 --seeds 3

      hf-sparseout sweep --q 1,1.5,2 --p 0.1,0.2 --seed-list 0,7 --dataset path/to/ptb --from-config gpt2-mini
      --max-steps 500

      hf-sparseout sweep --q 1.5,2.5 --task classification --max-steps 200 --save-steps 50 --format json

      hf-sparseout sweep --q 1,1.5,3 --p 0.1 --noise raw,matched --insert mlp --attention keep

      hf-sparseout sweep --q 2 --p 0 --no-baseline --lq-penalty 0,1,10 --lq-q 1

      hf-sparseout sweep --p 0,0.1 --q 1,1.5 --noise raw,matched --insert mlp --attention keep

      accelerate launch --multi_gpu --num_processes 2 -m hf_sparseout_cli sweep --q 1.5,2 --seeds 2 --max-steps 100
    """
    from hf_sparseout.sweep import DEFAULT_QS, parse_noise, parse_seeds, parse_values
    from hf_sparseout.sweep import sweep as run_sweep
    from hf_sparseout.training.args import UsageError

    # UsageError / CliError are printed once by the app's group (exit 2).
    qs = parse_values(q, "--q") if q else list(DEFAULT_QS)
    ps: list[float | None] = parse_values(p, "--p") if p else [None]
    noises = parse_noise(noise) if noise else None
    lq_penalties = parse_values(lq_penalty, "--lq-penalty") if lq_penalty else None
    if lq_q is not None and lq_penalties is None:
        raise UsageError("--lq-q is only used with --lq-penalty", "add --lq-penalty WEIGHTS, or drop --lq-q")
    if seeds is not None and seed_list is not None:
        raise UsageError("--seeds and --seed-list are exclusive", "give --seeds 3 or --seed-list 0,7")
    if seeds is not None and seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    seed_values = parse_seeds(seed_list) if seed_list is not None else list(range(3 if seeds is None else seeds))
    params = parse_finetune_options(ctx.args)
    params.update(output_dir=output_dir, overwrite_output_dir=overwrite_output_dir, baseline=baseline, lq_q=lq_q)
    args = args_from_params(params)
    import sys

    from hf_sparseout import logs

    logs.configure(params["log_level"].value, sys.stderr if fmt is OutputFormat.json else sys.stdout)
    result = run_job(
        lambda: run_sweep(args, qs, ps, seed_values, noises, lq_penalties),
        "finished runs are kept; rerun the same command to resume the sweep",
    )
    if not result.is_main_process:
        return
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=float))
    else:
        _print_summary(result)
        written = ", ".join(Path(f).name for f in result.files.values())
        typer.echo(f"Wrote {result.output_dir}/ ({written}, one directory per run)")


def _print_summary(result: Any) -> None:
    from rich.table import Table

    from hf_sparseout.sweep.report import (
        format_mean_std,
        lead_cells,
        lead_columns,
        q_cell,
        time_cell,
        verdict_cell,
    )
    from hf_sparseout.training.reporting import wide_console

    m = result.metric
    lead = lead_columns(result.summary)
    best = any(r.get(f"best_eval_{m}_mean") is not None for r in result.summary)
    against = list(dict.fromkeys(c["against"] for r in result.summary for c in r.get("comparisons") or []))
    quality = f"best_eval_{m}" if best else m
    table = Table(title=f"hf-sparseout sweep ({result.task}): mean ± std over seeds")
    columns = [*lead, "q", "n", m, *([f"best {m}"] if best else []), "hoyer", "time vs dropout"]
    for c in [*columns, *(f"vs {a}" for a in against)]:
        table.add_column(c, justify="right")
    for r in result.summary:
        cells = [*lead_cells(r, lead), q_cell(r, " (dropout)"), str(r["n"])]
        cells.append(format_mean_std(r[f"{m}_mean"], r[f"{m}_std"]))
        if best:
            cells.append(format_mean_std(r.get(f"best_eval_{m}_mean"), r.get(f"best_eval_{m}_std")))
        cells.append(format_mean_std(r["hoyer_mean"], r["hoyer_std"]))
        cells.append(time_cell(r))
        cells += [verdict_cell(r, a, quality) for a in against]
        table.add_row(*cells)
    wide_console().print(table)
    if against:
        typer.echo(
            f"vs: best {m} against each control over the same seeds (paired t, 95 %); "
            "every metric's statistics are in sweep.md and sweep.json"
        )
