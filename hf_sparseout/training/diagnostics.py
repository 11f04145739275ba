"""Per-run diagnostics of ``finetune``: gradient norms, the train/eval gap, the best evaluation.

Pure functions over what the loop records, so they are tested without training.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TypedDict

EvalRecord = dict[str, float | int | None]
"""One evaluation of a run as metrics.json keeps it: ``step``, the gathered metrics (``eval_loss``,
``perplexity`` or ``accuracy``, ...), overall sparsity, ``train_loss`` since the previous one (None if
no step), and ``lq_penalty`` / ``sparsity_at_*pct`` when the run has them."""


class GradNormWindow(TypedDict):
    """Median and max gradient norm over one logging window, ending at ``step``."""

    step: int
    median: float
    max: float


class GradNormSummary(TypedDict):
    """The ``grad_norm`` entry of metrics.json (see :func:`grad_norm_summary`)."""

    median: float | None
    max: float | None
    nonfinite: int
    every: int
    per_logging_step: list[GradNormWindow]


def best_eval(evals: Sequence[EvalRecord], task: str) -> dict[str, float | int]:
    """The best evaluation of a run: lowest perplexity (causal LM) or highest accuracy (classification).

    Returns ``{"best_eval_perplexity": v, "best_eval_step": s}`` (``best_eval_accuracy`` for
    classification; ties go to the earliest step), or ``{}`` when no evaluation has the metric.
    """
    key = "perplexity" if task == "causal-lm" else "accuracy"
    scored = [e for e in evals if isinstance(e.get(key), (int, float)) and not math.isnan(e[key])]
    if not scored:
        return {}
    sign = 1 if key == "perplexity" else -1
    best = min(scored, key=lambda e: (sign * e[key], e["step"]))
    return {f"best_eval_{key}": best[key], "best_eval_step": best["step"]}


def mean_since(train_loss: Sequence[Sequence[float]], after_step: int, up_to_step: int) -> float | None:
    """Mean of the finite logged training losses with ``after_step < step <= up_to_step`` (``None`` if none;
    a step skipped by ``--nan-policy skip`` has a non-finite loss)."""
    values = [loss for step, loss in train_loss if after_step < step <= up_to_step and math.isfinite(loss)]
    return sum(values) / len(values) if values else None


def grad_norm_summary(norms: Sequence[Sequence[float]], every: int) -> GradNormSummary:
    """Gradient norms before clipping, ``[(step, norm), ...]``, as the ``grad_norm`` entry of metrics.json.

    ``median`` and ``max`` over the run, and per window of ``every`` optimizer steps (the logging
    interval) ``{"step": last step, "median": .., "max": ..}``. Non-finite norms (an overflowed
    step under fp16) are counted in ``nonfinite`` and left out of the statistics.
    """
    finite = [(int(s), float(n)) for s, n in norms if math.isfinite(n)]
    out: GradNormSummary = {
        "median": statistics.median(n for _, n in finite) if finite else None,
        "max": max(n for _, n in finite) if finite else None,
        "nonfinite": len(norms) - len(finite),
        "every": every,
        "per_logging_step": [],
    }
    window: list[tuple[int, float]] = []
    for step, norm in finite:
        window.append((step, norm))
        if step % every == 0:
            values = [n for _, n in window]
            out["per_logging_step"].append({"step": step, "median": statistics.median(values), "max": max(values)})
            window = []
    if window:
        values = [n for _, n in window]
        out["per_logging_step"].append({"step": window[-1][0], "median": statistics.median(values), "max": max(values)})
    return out


__all__ = ["EvalRecord", "GradNormSummary", "GradNormWindow", "best_eval", "grad_norm_summary", "mean_since"]
