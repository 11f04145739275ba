"""``sweep(args, qs, ps, seeds)``: ``finetune`` over a (p, q, seed) grid, resumable, summarised as mean ± std.

Layout of the output directory::

    sweep_args.json          the shared finetune options (a resumed sweep must use the same ones)
    p0.1/q1.5/seed0/         one finetune output directory per run (no ``pX/`` level without --p)
    sweep.json sweep.md sweep.png sweep_sites.png   the summaries (sweep_report.py)

The dropout baseline is the run at q = 2 (finetune's baseline is the same patch at q = 2, so they are
the same training run): when 2 is in the grid it serves as the baseline, otherwise (unless
``args.baseline`` is False) a q = 2 run is added for every p and seed. A run is finished when its
``metrics.json`` holds a summary; an unfinished run restarts from scratch, or resumes from its latest
checkpoint when it has one (train with ``save_steps`` for that). Under ``accelerate launch`` every
process runs every sub-run in the same order and only the main process writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_sparseout.logs import get_logger, log_prefix
from hf_sparseout.optional import MATPLOTLIB, require
from hf_sparseout.training import checkpoints
from hf_sparseout.training.args import FinetuneArgs, UsageError
from hf_sparseout.training.reporting import headline
from hf_sparseout.training.sweep_report import BASELINE_Q, FILES, aggregate, write_markdown, write_plot, write_site_plot

logger = get_logger(__name__)

ARGS_FILE = "sweep_args.json"
DEFAULT_QS = (1.0, 1.5, 2.0, 2.5, 3.0)
# Options the sweep sets for each run: not compared when a sweep is resumed.
PER_RUN = ("q", "p", "seed", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "baseline")


@dataclass(frozen=True)
class GridPoint:
    """One run of the sweep."""

    p: float | None
    q: float
    seed: int

    @property
    def baseline(self) -> bool:
        """The q = 2 run is plain dropout: the baseline for its p and seed."""
        return self.q == BASELINE_Q

    @property
    def relative_dir(self) -> str:
        """``p0.1/q1.5/seed0`` (``q1.5/seed0`` when p is the model's own)."""
        parts = ([] if self.p is None else [f"p{self.p:g}"]) + [f"q{self.q:g}", f"seed{self.seed}"]
        return "/".join(parts)

    @property
    def label(self) -> str:
        """A short name for log lines."""
        return self.relative_dir.replace("/", " ")


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


def parse_values(text: str | Iterable[str], name: str) -> list[float]:
    """``"1,1.5, 2"`` (or several such strings) -> ``[1.0, 1.5, 2.0]``; ``UsageError`` for a non-number."""
    items = [text] if isinstance(text, str) else list(text)
    values = []
    for item in (v.strip() for chunk in items for v in chunk.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"{name}: {item!r} is not a number", f"e.g. {name} 1.0,1.5,2.0") from None
        values.append(value)
    return values


def parse_seeds(text: str) -> list[int]:
    """``"0,7,42"`` -> ``[0, 7, 42]``."""
    seeds = []
    for item in (v.strip() for v in text.split(",")):
        try:
            seeds.append(int(item))
        except ValueError:
            raise UsageError(f"--seed-list: {item!r} is not an integer", "e.g. --seed-list 0,1,2") from None
    return seeds


def _check_unique(values: Sequence[Any], name: str, fmt: Callable[[Any], str] = str) -> None:
    if not values:
        raise UsageError(f"{name} is empty", f"give at least one value to {name}")
    seen: set[str] = set()
    for v in values:
        if fmt(v) in seen:
            raise UsageError(f"{name} lists {fmt(v)} twice", "give each value once")
        seen.add(fmt(v))


def grid(args: FinetuneArgs, qs: Sequence[float], ps: Sequence[float | None], seeds: Sequence[int]) -> list[GridPoint]:
    """Validate the grid and list its runs (seed-major within each p, so early seeds complete first).

    Adds a q = 2 run per (p, seed) when 2 is not in ``qs`` and ``args.baseline`` is not False.
    """
    from hf_sparseout.training.loop import sparseout_config

    _check_unique(list(qs), "--q", lambda v: f"{v:g}")
    _check_unique(list(ps), "--p", lambda v: "default" if v is None else f"{v:g}")
    _check_unique(list(seeds), "--seeds")
    for v in [*qs, *(p for p in ps if p is not None)]:
        if not math.isfinite(v):
            raise UsageError(f"grid values must be finite numbers, got {v}")
    for s in seeds:
        if not 0 <= s < 2**32:
            raise UsageError(f"seeds must be in [0, 2**32), got {s}")
    for p in ps:
        for q in qs:
            try:
                sparseout_config(dataclasses.replace(args, p=p), q)
            except ValueError as err:
                raise UsageError(str(err), "q must be >= 0 and p a probability in [0, 1]") from err
    all_qs = list(qs) + ([BASELINE_Q] if BASELINE_Q not in qs and args.baseline is not False else [])
    return [GridPoint(p, q, seed) for p in ps for seed in seeds for q in all_qs]


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
    if root.exists() and not root.is_dir():
        raise UsageError(f"--output-dir {str(root)!r} is a file", "choose a directory path")
    if args.overwrite_output_dir or not root.is_dir() or not any(root.iterdir()):
        return
    stored = root / ARGS_FILE
    if not stored.is_file():
        raise UsageError(
            f"output directory {str(root)!r} is not empty and holds no sweep ({ARGS_FILE} is missing)",
            "choose another --output-dir, or pass --overwrite-output-dir to write into it",
        )
    try:
        previous = json.loads(stored.read_text())
    except ValueError:
        previous = None
    current = json.loads(json.dumps(_shared_options(args), default=str))
    if previous == current:
        return
    started = [pt.relative_dir for pt in points if _run_state(root / pt.relative_dir, False) != "fresh"]
    if started:  # finished or checkpointed runs were trained with other options
        changed = sorted(k for k in set(current) | set(previous or {}) if (previous or {}).get(k) != current.get(k))
        raise UsageError(
            f"{str(root)!r} holds a sweep with other finetune options (differs in: {', '.join(changed)}); "
            f"runs already there: {', '.join(started[:3])}{', ...' if len(started) > 3 else ''}",
            "resume with the same options, choose another --output-dir, or pass --overwrite-output-dir to retrain",
        )


def _read_record(root: Path, point: GridPoint, status: str) -> tuple[str, dict[str, Any]]:
    data = json.loads((root / point.relative_dir / "metrics.json").read_text())
    row = next(r for r in data["summary"] if r["run"] == "sparseout")
    key, _ = headline(data["task"])
    record = {
        "p": point.p,
        "q": point.q,
        "seed": point.seed,
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
    }
    run = data.get("runs", {}).get("sparseout", {})
    record["throughput"] = run.get("throughput")
    record["throughput_unit"] = run.get("throughput_unit")
    record["sites"] = {s: v.get("hoyer") for s, v in (run.get("sparsity") or {}).get("sites", {}).items()}
    return data["task"], record


def sweep(
    args: FinetuneArgs,
    qs: Sequence[float] = DEFAULT_QS,
    ps: Sequence[float | None] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
) -> SweepResult:
    """Run ``finetune`` for every (p, q, seed) into ``args.output_dir/[pP/]qQ/seedS``, then summarise.

    ``ps`` None means ``[args.p]``. ``args`` holds the options shared by every run;
    ``args.overwrite_output_dir`` retrains every run, ``args.baseline=False`` adds no q = 2 runs.
    Finished runs are skipped, interrupted ones resumed (see the module docstring). ``UsageError`` for
    a bad grid or options, before anything is written.
    """
    import torch
    from accelerate import PartialState

    if args.resume_from_checkpoint:
        raise UsageError("a sweep resumes by itself: drop --resume-from-checkpoint", "rerun the same sweep command")
    if args.push_to_hub or args.hub_model_id:
        raise UsageError("a sweep does not push to the Hub", "push one run with hf-sparseout push")
    ps = [args.p] if ps is None else list(ps)
    args.validate()
    points = grid(args, qs, ps, seeds)
    root = Path(args.output_dir).expanduser()
    _check_output_dir(root, args, points)
    require("matplotlib", feature="the sweep's plots", install=MATPLOTLIB)  # before any run

    state = PartialState(cpu=not torch.cuda.is_available())
    status = _run_grid(args, points, root, state)
    result = _summarise(args, list(qs), ps, list(seeds), points, root, status, state)
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
            args,
            q=pt.q,
            p=pt.p,
            seed=pt.seed,
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


def _summarise(
    args: FinetuneArgs,
    qs: list[float],
    ps: list[float | None],
    seeds: list[int],
    points: list[GridPoint],
    root: Path,
    status: dict[GridPoint, str],
    state: Any,
) -> SweepResult:
    task, runs = "", []
    for pt in points:
        task, record = _read_record(root, pt, status[pt])
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
                    "grid": {"q": qs, "p": ps, "seeds": seeds, "baseline_q": BASELINE_Q},
                    "options": _shared_options(args),
                },
                indent=2,
                default=str,
            )
        )
        write_markdown(paths["markdown"], result, _shared_options(args))
        write_plot(paths["plot"], result)
    return result
