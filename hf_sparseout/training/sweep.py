"""``sweep(args, qs, ps, seeds)``: ``finetune`` over a (p, q, seed) grid, resumable, summarised as mean ± std.

Layout of the output directory::

    sweep_args.json          the shared finetune options (a resumed sweep must use the same ones)
    p0.1/q1.5/seed0/         one finetune output directory per run (no ``pX/`` level without --p)
    sweep.json sweep.md sweep.png

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
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_sparseout.training import checkpoints
from hf_sparseout.training.args import FinetuneArgs, UsageError
from hf_sparseout.training.reporting import headline

BASELINE_Q = 2.0
ARGS_FILE = "sweep_args.json"
FILES = {"json": "sweep.json", "markdown": "sweep.md", "plot": "sweep.png"}
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
    }
    return data["task"], record


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def aggregate(records: Iterable[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (n - 1; None for one seed) per (p, q), sorted by p then q.

    Each record needs ``p``, ``q``, ``seed`` and the metric, ``hoyer`` and ``eval_loss`` values (None or
    a missing key is left out of that statistic). ``n`` is the number of seeds of the group.
    """
    groups: dict[tuple[float | None, float], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["p"], r["q"]), []).append(r)
    rows = []
    for (p, q), group in sorted(groups.items(), key=lambda kv: (kv[0][0] is not None, kv[0][0] or 0.0, kv[0][1])):
        row: dict[str, Any] = {
            "p": p,
            "q": q,
            "baseline": q == BASELINE_Q,
            "n": len(group),
            "seeds": sorted(r["seed"] for r in group),
        }
        for key in (metric, "hoyer", "eval_loss"):
            mean, std = _stats([float(r[key]) for r in group if r.get(key) is not None])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        rows.append(row)
    return rows


def format_mean_std(mean: float | None, std: float | None) -> str:
    """``12.3 ± 0.45`` (just the mean for one seed; empty for no value)."""
    if mean is None:
        return ""
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def write_markdown(path: Path, result: SweepResult, args: FinetuneArgs) -> Path:
    """``sweep.md``: the per-(p, q) table (mean ± std over seeds), every run, the plot and the options."""
    m = result.metric
    with_p = any(r["p"] is not None for r in result.summary)
    lines = [
        f"# hf-sparseout sweep: {result.task}",
        "",
        f"Mean ± sample standard deviation over seeds (n seeds per row) of the final eval {m} and of the "
        "Hoyer sparsity of the activations entering the Sparseout sites (0 dense .. 1 one-hot). "
        f"q = {BASELINE_Q:g} is plain dropout at the same sites: the dropout baseline.",
        "",
        ("| p " if with_p else "") + f"| q | n | {m} | hoyer | eval_loss |",
        ("|---" if with_p else "") + "|---|---|---|---|---|",
    ]
    for r in result.summary:
        q = f"{r['q']:g}" + (" (dropout baseline)" if r["baseline"] else "")
        cells = ([("model's" if r["p"] is None else f"{r['p']:g}")] if with_p else []) + [q, str(r["n"])]
        cells += [format_mean_std(r[f"{k}_mean"], r[f"{k}_std"]) for k in (m, "hoyer", "eval_loss")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![sweep]({FILES['plot']})", "", "## Runs", "", f"| run | {m} | hoyer | eval_loss | steps |"]
    lines.append("|---|---|---|---|---|")
    for r in result.runs:
        values = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k)) for k in (m, "hoyer", "eval_loss")]
        lines.append(f"| [{r['dir']}]({r['dir']}/report.md) | " + " | ".join(values) + f" | {r['steps']} |")
    lines += ["", "## Options (every run)", "", "```json", json.dumps(_shared_options(args), indent=2), "```", ""]
    path.write_text("\n".join(lines))
    return path


def write_plot(path: Path, result: SweepResult) -> Path:
    """``sweep.png``: the metric (left axis) and Hoyer sparsity (right axis) against q, error bars over seeds.

    One colour per p; the dropout baseline (q = 2) is a horizontal line with a ±1 std band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, label = headline(result.task)
    m = result.metric
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax2 = ax.twinx()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ps = list(dict.fromkeys(r["p"] for r in result.summary))
    for i, p in enumerate(ps):
        rows = [r for r in result.summary if r["p"] == p]
        colour = colours[i % len(colours)]
        tag = "" if len(ps) == 1 and p is None else (" (model's p)" if p is None else f" (p={p:g})")
        qs = [r["q"] for r in rows]

        def err(k: str, rows: list[dict[str, Any]] = rows) -> list[float]:
            return [r[f"{k}_std"] or 0.0 for r in rows]

        means = [r[f"{m}_mean"] for r in rows]
        ax.errorbar(qs, means, yerr=err(m), color=colour, marker="o", capsize=3, label=f"{m}{tag}")
        hoyer = [r["hoyer_mean"] for r in rows]
        ax2.errorbar(qs, hoyer, yerr=err("hoyer"), color=colour, marker="s", ls="--", capsize=3, label=f"Hoyer{tag}")
        base = next((r for r in rows if r["baseline"]), None)
        if base is not None and base[f"{m}_mean"] is not None:
            mean, std = base[f"{m}_mean"], base[f"{m}_std"] or 0.0
            ax.axhline(mean, color=colour, ls=":", lw=1.2, label=f"dropout baseline (q={BASELINE_Q:g}){tag}")
            if std:
                ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12)
    ax.set(xlabel="q (Sparseout exponent; 2 = dropout)", ylabel=f"{label}, solid")
    ax2.set_ylabel("Hoyer sparsity, dashed (0 dense .. 1 one-hot)")
    n = sorted({r["n"] for r in result.summary})
    ax.set_title(f"Sweep over q: mean ± std over {'/'.join(map(str, n))} seed(s)")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sweep(
    args: FinetuneArgs,
    qs: Sequence[float] = DEFAULT_QS,
    ps: Sequence[float | None] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    log: Callable[[str], None] = print,
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

    state = PartialState(cpu=not torch.cuda.is_available())
    status = _run_grid(args, points, root, state, log)
    result = _summarise(args, list(qs), ps, list(seeds), points, root, status, state)
    if state.use_distributed:
        state.wait_for_everyone()
        state.destroy_process_group()
    return result


def _run_grid(
    args: FinetuneArgs, points: list[GridPoint], root: Path, state: Any, log: Callable[[str], None]
) -> dict[GridPoint, str]:
    from hf_sparseout.training.runner import finetune

    states = {pt: _run_state(root / pt.relative_dir, args.overwrite_output_dir) for pt in points}
    state.wait_for_everyone()  # every process has read the directory before anything is written
    if state.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        (root / ARGS_FILE).write_text(json.dumps(_shared_options(args), indent=2, default=str))
    todo = sum(s != "finished" for s in states.values())
    log(f"sweep: {len(points)} runs in {root} ({len(points) - todo} finished, {todo} to train)")
    status: dict[GridPoint, str] = {}
    for i, pt in enumerate(points, 1):
        if states[pt] == "finished":
            log(f"[{i}/{len(points)} {pt.label}] finished earlier: skipped")
            status[pt] = "skipped"
            continue
        log(f"[{i}/{len(points)} {pt.label}] {'resuming' if states[pt] == 'resume' else 'training'}")
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
        finetune(run_args, log=lambda msg, pt=pt: log(f"[{pt.label}] {msg}"), end_training=False)
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
        write_markdown(paths["markdown"], result, args)
        write_plot(paths["plot"], result)
    return result
