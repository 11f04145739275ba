"""``sweep(args, qs, ps, seeds, ...)``: ``finetune`` over a grid, resumable, summarised as mean ± std.

Layout of the output directory::

    sweep_args.json          the shared finetune options of the last command (marks a sweep directory)
    .hf-sparseout.lock       while a sweep runs: its lock (outdir_lock.py); each run holds its own too
    p0.1/q1.5/seed0/         one finetune output directory per run (grid.py: a level per axis given)
    sweep.json sweep.md sweep.png sweep_sites.png   the summaries (report.py)

The dropout baseline is the run at q = 2 (finetune's baseline is the same patch at q = 2, so they are
the same training run): when 2 is in the grid it serves as the baseline, otherwise (unless
``args.baseline`` is False) a q = 2 run is added for every p and seed. A run is finished when its
``metrics.json`` holds a summary; an unfinished run restarts from scratch, or resumes from its latest
checkpoint when it has one (train with ``save_steps`` for that). A run is skipped or resumed only when
the options it was trained with (``run_options.py``) are those this command gives it; otherwise the sweep
stops before training anything (``--overwrite-output-dir`` retrains every run). Under ``accelerate launch`` every
process runs every sub-run in the same order and only the main process writes files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_sparseout.logs import get_logger, log_prefix
from hf_sparseout.optional import MATPLOTLIB, require
from hf_sparseout.outdir_lock import entries, hold_output_dir, refuse_if_held
from hf_sparseout.sweep.grid import BASELINE_Q, DEFAULT_QS, GridPoint, grid, point_args
from hf_sparseout.sweep.report import FILES, aggregate, write_markdown, write_plot, write_site_plot
from hf_sparseout.training import checkpoints
from hf_sparseout.training.args import FinetuneArgs, UsageError
from hf_sparseout.training.reporting import headline
from hf_sparseout.training.run_names import canonical_metrics
from hf_sparseout.training.run_options import differing, effective_options, recorded_options

logger = get_logger(__name__)

ARGS_FILE = "sweep_args.json"
# Options the sweep sets for each run: not compared when a sweep is resumed.
PER_RUN = ("q", "p", "seed", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "baseline")


@dataclass
class SweepResult:
    """What ``sweep`` returns: per-run records, the per-(p, q) summary and the files written."""

    task: str
    metric: str
    output_dir: Path
    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)
    is_main_process: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``--format json`` prints)."""
        return {
            "task": self.task,
            "metric": self.metric,
            "output_dir": str(self.output_dir),
            "summary": self.summary,
            "runs": self.runs,
            "files": self.files,
        }


def is_finished(run_dir: Path) -> bool:
    """A run is finished when its ``metrics.json`` is readable and has a summary."""
    try:
        return bool(json.loads((run_dir / "metrics.json").read_text())["summary"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _run_state(run_dir: Path, overwrite: bool) -> str:
    if overwrite:
        return "fresh"
    if is_finished(run_dir):
        return "finished"
    if checkpoints.list_checkpoints(checkpoints.run_dir(run_dir, "sparseout")):
        return "resume"
    return "fresh"


def _shared_options(args: FinetuneArgs) -> dict[str, Any]:
    return {k: v for k, v in args.to_dict().items() if k not in PER_RUN}


def _check_output_dir(root: Path, args: FinetuneArgs, points: list[GridPoint]) -> None:
    if args.overwrite_output_dir or not root.is_dir() or not entries(root):
        return
    if not (root / ARGS_FILE).is_file():
        raise UsageError(
            f"output directory {str(root)!r} is not empty and holds no sweep ({ARGS_FILE} is missing)",
            "choose another --output-dir, or pass --overwrite-output-dir to write into it",
        )
    _check_recorded_options(root, args, points)


def _check_recorded_options(root: Path, args: FinetuneArgs, points: list[GridPoint]) -> None:
    """Every run the sweep would skip, resume or aggregate was trained with this command's options for it."""
    mismatched = []
    for pt in points:
        run_dir = root / pt.relative_dir
        if _run_state(run_dir, False) == "fresh":
            continue  # trained from scratch
        expected = effective_options(point_args(args, pt))
        recorded = recorded_options(run_dir)
        if recorded is None:
            mismatched.append(f"{pt.relative_dir} (its options are not recorded)")
        elif changed := differing(recorded, expected):
            values = ", ".join(f"{k} ({recorded.get(k)}, this command {expected.get(k)})" for k in changed)
            mismatched.append(f"{pt.relative_dir} differs in: {values}")
    if mismatched:
        shown = "; ".join(mismatched[:5]) + (f"; and {len(mismatched) - 5} more" if len(mismatched) > 5 else "")
        raise UsageError(
            f"{str(root)!r} holds runs trained with other options than this command's: {shown}",
            "rerun with the options they were trained with, choose another --output-dir, "
            "or pass --overwrite-output-dir to retrain every run",
        )


def read_record(root: Path, point: GridPoint, status: str) -> tuple[str, dict[str, Any]]:
    """``(task, record)`` of a finished run: the values ``report.aggregate`` summarises."""
    data = canonical_metrics(json.loads((root / point.relative_dir / "metrics.json").read_text()))
    row = data["summary"][0]  # the main run (a sweep's runs have no controls): sparseout, dropout or p=0
    key, _ = headline(data["task"])
    run = data.get("runs", {}).get(row["run"], {})
    record = {
        "p": point.p,
        "q": point.q,
        "seed": point.seed,
        "noise": point.noise,
        "lq_penalty": point.lq_penalty,
        "baseline": point.baseline,
        "dir": point.relative_dir,
        "status": status,
        key: row.get(key),
        "eval_loss": row.get("eval_loss"),
        "hoyer": row.get("hoyer"),
        "steps": row.get("steps"),
        "sparsity_at_1pct": row.get("sparsity_at_1pct"),
        "sparsity_at_5pct": row.get("sparsity_at_5pct"),
        # issue 14 diagnostics (absent from runs written before them)
        f"best_eval_{key}": row.get(f"best_eval_{key}"),
        "best_step": row.get("best_step"),
        "train_loss": row.get("train_loss"),
        "hoyer_init": row.get("hoyer_init"),
        "relative_near_zero_fraction": row.get("rel_near_zero"),
        "grad_norm_median": row.get("grad_norm_median"),
        **_at_best(run.get("evals") or [], row.get("best_step")),
    }
    if record["hoyer"] is not None and record["hoyer_init"] is not None:
        record["hoyer_change"] = record["hoyer"] - record["hoyer_init"]
    record["mean_abs"] = ((run.get("sparsity") or {}).get("overall") or {}).get("mean_abs")
    record["throughput"] = run.get("throughput")
    record["throughput_unit"] = run.get("throughput_unit")
    record["step_seconds"] = run.get("step_seconds")  # absent from runs written before them
    record["conditions"] = run.get("conditions")
    record["sites"] = {s: v.get("hoyer") for s, v in (run.get("sparsity") or {}).get("sites", {}).items()}
    return data["task"], record


def _at_best(evals: list[dict[str, Any]], best_step: int | None) -> dict[str, Any]:
    """The train/eval gap (eval loss minus the training loss before it) and Hoyer at the best evaluation."""
    best = next((e for e in evals if e.get("step") == best_step), None)
    if best is None or best.get("train_loss") is None or best.get("eval_loss") is None:
        return {}
    return {"gap_at_best": best["eval_loss"] - best["train_loss"], "hoyer_at_best": best.get("hoyer")}


def sweep(
    args: FinetuneArgs,
    qs: Sequence[float] = DEFAULT_QS,
    ps: Sequence[float | None] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    noises: Sequence[str] | None = None,
    lq_penalties: Sequence[float] | None = None,
) -> SweepResult:
    """Run ``finetune`` for every grid point into ``args.output_dir/<GridPoint.relative_dir>``, then summarise.

    ``ps`` None means ``[args.p]``. ``noises`` (``"raw"``/``"matched"``) and ``lq_penalties`` (weights;
    0 = no penalty, exponent ``args.lq_q``) are further axes when given; a single value is not an axis
    but the shared option (same directory layout as without it). ``args`` holds the options shared by
    every run; ``args.overwrite_output_dir`` retrains every run, ``args.baseline=False`` adds no q = 2
    runs. Finished runs are skipped, interrupted ones resumed (see the module docstring).
    ``args.load_best_model_at_end`` None (not given) is on: every run keeps its best evaluation's model.
    ``UsageError`` for a bad grid or options, before anything is written.
    """
    import torch
    from accelerate import PartialState

    if args.resume_from_checkpoint:
        raise UsageError("a sweep resumes by itself: drop --resume-from-checkpoint", "rerun the same sweep command")
    if args.push_to_hub or args.hub_model_id:
        raise UsageError("a sweep does not push to the Hub", "push one run with hf-sparseout push")
    if args.load_best_model_at_end is None:  # a sweep compares the best model of every run by default
        args = dataclasses.replace(args, load_best_model_at_end=True)
    ps = [args.p] if ps is None else list(ps)
    args, noises, lq_penalties = _single_values_as_options(args, noises, lq_penalties)
    lq_q = args.lq_q
    args = dataclasses.replace(args, lq_q=None) if lq_penalties is not None else args
    args.validate()  # the shared options (--lq-q belongs to the penalty axis)
    args.lq_q = lq_q
    points = grid(args, qs, ps, seeds, noises, lq_penalties)
    root = Path(args.output_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--output-dir {str(root)!r} is a file", "choose a directory path")
    require("matplotlib", feature="the sweep's plots", install=MATPLOTLIB)  # before any run

    state = PartialState(cpu=not torch.cuda.is_available())
    # one writer: the root is held for the sweep's lifetime (its runs hold their own directories inside it)
    with hold_output_dir(root, main_process=state.is_main_process):
        for pt in points:  # a finetune started by hand into one of this sweep's run directories
            refuse_if_held(root / pt.relative_dir)
        _check_output_dir(root, args, points)
        status = _run_grid(args, points, root, state)
        axes = {"q": list(qs), "p": ps, "seeds": list(seeds), "noise": noises, "lq_penalty": lq_penalties}
        result = _summarise(args, axes, points, root, status, state)
    if state.use_distributed:
        state.wait_for_everyone()
        state.destroy_process_group()
    return result


def _run_grid(args: FinetuneArgs, points: list[GridPoint], root: Path, state: Any) -> dict[GridPoint, str]:
    from hf_sparseout.training.runner import finetune

    states = {pt: _run_state(root / pt.relative_dir, args.overwrite_output_dir) for pt in points}
    state.wait_for_everyone()  # every process has read the directory before anything is written
    if state.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        (root / ARGS_FILE).write_text(json.dumps(_shared_options(args), indent=2, default=str))
    todo = sum(s != "finished" for s in states.values())
    logger.info(f"sweep: {len(points)} runs in {root} ({len(points) - todo} finished, {todo} to train)")
    status: dict[GridPoint, str] = {}
    for i, pt in enumerate(points, 1):
        if states[pt] == "finished":
            logger.info(f"[{i}/{len(points)} {pt.label}] finished earlier: skipped")
            status[pt] = "skipped"
            continue
        logger.info(f"[{i}/{len(points)} {pt.label}] {'resuming' if states[pt] == 'resume' else 'training'}")
        run_args = dataclasses.replace(
            point_args(args, pt),
            output_dir=str(root / pt.relative_dir),
            baseline=False,
            overwrite_output_dir=states[pt] == "fresh",
            resume_from_checkpoint="latest" if states[pt] == "resume" else None,
        )
        with log_prefix(f"[{pt.label}]"):
            finetune(run_args, end_training=False)
        status[pt] = "resumed" if states[pt] == "resume" else "trained"
    state.wait_for_everyone()  # every metrics.json is written
    return status


def _single_values_as_options(
    args: FinetuneArgs, noises: Sequence[str] | None, lq_penalties: Sequence[float] | None
) -> tuple[FinetuneArgs, list[str] | None, list[float] | None]:
    """One noise mode or one penalty weight is the shared option, not an axis (no directory level)."""
    changes: dict[str, Any] = {}
    noises = None if noises is None else list(noises)
    lq_penalties = None if lq_penalties is None else list(lq_penalties)
    if lq_penalties is not None and args.lq_penalty is not None:
        raise UsageError("the L_q penalty is given twice", "pass the weights once, as the penalty axis")
    if noises is not None and len(noises) == 1:
        changes["noise"], noises = noises[0], None
    if lq_penalties is not None and len(lq_penalties) == 1:
        changes["lq_penalty"], lq_penalties = lq_penalties[0] or None, None  # 0: no penalty
    return (dataclasses.replace(args, **changes) if changes else args), noises, lq_penalties


def _summarise(
    args: FinetuneArgs,
    axes: dict[str, Any],
    points: list[GridPoint],
    root: Path,
    status: dict[GridPoint, str],
    state: Any,
) -> SweepResult:
    task, runs = "", []
    for pt in points:
        task, record = read_record(root, pt, status[pt])
        runs.append(record)
    metric, _ = headline(task)
    result = SweepResult(task, metric, root, runs, aggregate(runs, metric), is_main_process=state.is_main_process)
    if state.is_main_process:
        paths = {k: root / name for k, name in FILES.items()}
        if not write_site_plot(paths["site_plot"], result):
            paths.pop("site_plot")
        result.files = {k: str(v) for k, v in paths.items()}
        paths["json"].write_text(
            json.dumps(
                {
                    **result.to_dict(),
                    "grid": {**axes, "baseline_q": BASELINE_Q},
                    "options": _shared_options(args),
                },
                indent=2,
                default=str,
            )
        )
        write_markdown(paths["markdown"], result, _shared_options(args))
        write_plot(paths["plot"], result)
    return result
