"""Paired statistics: one sweep cell against a control (dropout at the same p, or p = 0), per metric.

``compare(cell, control, metric)`` takes ``{seed: value}`` of both sides. When both have the same
seeds the runs pair (same seed: same data order and initialisation), and the test is a paired t-test on
the per-seed differences (``"paired-t"``); otherwise Welch's t-test (``"welch-t"``). The difference is
cell minus control; the verdict reads it in the metric's direction (:func:`direction_words`) at
:data:`ALPHA`. The distributions are scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

ALPHA = 0.05
ONE_SEED = "one seed"
SAME = "not distinguishable"
# metric (without a best_eval_ prefix) -> (verdict when the cell is higher, when it is lower)
DIRECTIONS: dict[str, tuple[str, str]] = {
    "perplexity": ("worse", "better"),
    "eval_loss": ("worse", "better"),
    "loss": ("worse", "better"),
    "accuracy": ("better", "worse"),
    "f1_macro": ("better", "worse"),
    "hoyer": ("sparser", "denser"),
    "sparsity_at_1pct": ("more prunable", "less prunable"),
    "sparsity_at_5pct": ("more prunable", "less prunable"),
}


def direction_words(metric: str) -> tuple[str, str]:
    """(verdict when the cell's value is higher, when lower) for ``metric`` (``best_eval_`` prefix allowed).

    Quality metrics say better/worse by their direction (perplexity and loss: lower is better); Hoyer
    and deployable sparsity use neutral words (sparser/denser, more/less prunable).
    """
    return DIRECTIONS[metric.removeprefix("best_eval_")]


def compare(cell: Mapping[Any, float], control: Mapping[Any, float], metric: str) -> dict[str, Any]:
    """``{n, n_against, mean_diff, ci95, p_value, statistic, test, verdict}`` of ``cell`` minus ``control``.

    ``cell``/``control``: ``{seed: value}``. Paired t when both have exactly the same seeds, Welch's t
    otherwise. With fewer than two values (two pairs) the verdict is ``"one seed"`` and ``ci95``,
    ``p_value`` and ``statistic`` are None. Differences without variance (identical runs, or a constant
    shift) give p = 1 for a zero difference and p = 0 otherwise, with a zero-width interval, not NaN.
    """
    from scipy import stats

    higher, lower = direction_words(metric)
    paired = set(cell) == set(control)
    a = [float(cell[s]) for s in sorted(cell)]
    b = [float(control[s]) for s in sorted(cell)] if paired else [float(v) for v in control.values()]
    mean_diff = _mean(a) - _mean(b)
    out: dict[str, Any] = {"n": len(a), "n_against": len(b), "mean_diff": mean_diff}
    out["test"] = "paired-t" if paired else "welch-t"
    if len(a) < 2 or len(b) < 2:
        return {**out, "ci95": None, "p_value": None, "statistic": None, "verdict": ONE_SEED}
    diffs = [x - y for x, y in zip(a, b, strict=True)] if paired else None
    flat = (_spread(diffs) == 0.0) if paired else (_spread(a) == 0.0 and _spread(b) == 0.0)
    if flat:  # no variance: scipy's t would be 0/0 or d/0
        p_value = 1.0 if mean_diff == 0.0 else 0.0
        statistic = 0.0 if mean_diff == 0.0 else math.copysign(math.inf, mean_diff)
        ci95 = [mean_diff, mean_diff]
    else:
        result = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(1.0 - ALPHA)
        p_value, statistic = float(result.pvalue), float(result.statistic)
        ci95 = [float(interval.low), float(interval.high)]
    verdict = SAME if p_value >= ALPHA or mean_diff == 0.0 else (higher if mean_diff > 0 else lower)
    statistic = None if math.isinf(statistic) else statistic  # JSON has no infinity
    return {**out, "ci95": ci95, "p_value": p_value, "statistic": statistic, "verdict": verdict}


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _spread(values: list[float] | None) -> float:
    return 0.0 if not values else max(values) - min(values)
