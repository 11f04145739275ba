"""The options a run was trained with, normalised, so that two runs (or a run and a command) can be compared.

``run_options.json`` is written into a run's directory when its training starts (so an interrupted run
is described too); ``metrics.json`` keeps the options of the finished run under ``args``. Both go
through :func:`effective_options`: defaults that depend on other options resolved (``--lq-q 1`` spelled
out equals the default), options that change nothing about the trained model or its metrics left out
(where the files go, checkpoint cadence, trackers), ``--epochs`` dropped when ``--max-steps`` decides,
and the noise mode the run really had (:func:`effective_noise`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hf_sparseout.training.args import FinetuneArgs

RUN_OPTIONS_FILE = "run_options.json"
FORMAT = 1
NOT_COMPARED = (
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_model_id",
    "report_to",
    "save_steps",
    "save_minutes",
    "save_total_limit",
    "baseline",  # which control runs sit beside the main run; the main run is the same
)
"""Options that do not change what a run's main model is trained on or how it is measured."""


def effective_noise(noise: str, q: float, p: float | None) -> str:
    """The noise a run really has: ``none`` at p = 0 (identity), ``raw`` at q = 2 (plain dropout), else ``noise``."""
    if p == 0:
        return "none"
    return "raw" if q == 2 else noise


def effective_options(args: FinetuneArgs) -> dict[str, Any]:
    """``args`` as the run trains with them, JSON-ready, without :data:`NOT_COMPARED` (see the module docstring)."""
    resolved = dataclasses.replace(args)
    resolved.resolve_defaults()
    options = json.loads(json.dumps(resolved.to_dict(), default=str))
    if resolved.max_steps is not None:
        options["epochs"] = None  # ignored with --max-steps
    options["noise"] = effective_noise(resolved.noise, resolved.q, resolved.p)
    for name in NOT_COMPARED:
        options.pop(name, None)
    return options


def write_run_options(directory: Path, args: FinetuneArgs, task: str | None = None) -> Path:
    """Write ``run_options.json`` (the effective options, with the task inferred from the data when ``args``
    has none) into a run's directory; returns its path."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / RUN_OPTIONS_FILE
    options = {**effective_options(args), "task": args.task or task}
    path.write_text(json.dumps({"format": FORMAT, "options": options}, indent=2))
    return path


def options_from_dict(values: dict[str, Any]) -> dict[str, Any]:
    """The effective options of a ``FinetuneArgs.to_dict()`` (``metrics.json``'s ``args``); unknown keys dropped."""
    known = {f.name for f in dataclasses.fields(FinetuneArgs)}
    return effective_options(FinetuneArgs(**{k: v for k, v in values.items() if k in known}))


def recorded_options(run_dir: Path) -> dict[str, Any] | None:
    """What a run directory says its run was trained with: a finished run's ``metrics.json`` ``args``, else
    ``run_options.json``; None when neither is readable (a run written before these records)."""
    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        if metrics.get("summary") and isinstance(metrics.get("args"), dict):
            return {**options_from_dict(metrics["args"]), "task": metrics["args"].get("task") or metrics.get("task")}
    except (OSError, ValueError, TypeError):
        pass
    try:
        return json.loads((run_dir / RUN_OPTIONS_FILE).read_text())["options"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def differing(recorded: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The option names whose values differ between a run's record and what a command would train it with
    (sorted). The record holds the task the run inferred; a command without ``--task`` infers it again
    from the same data (``dataset`` and the columns are compared), so the task is compared only when given."""
    return sorted(
        k
        for k in set(recorded) | set(expected)
        if recorded.get(k) != expected.get(k) and not (k == "task" and expected.get(k) is None)
    )
