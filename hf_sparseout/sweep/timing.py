"""Training time against dropout from steady-state step times, or "not comparable".

A run records the wall time of every optimizer step (``step_seconds`` in metrics.json) and the conditions
it ran under (``training.timing.run_conditions``). :func:`steady_state` drops the warm-up (the first
:data:`WARMUP` of the steps, at least one) and takes the median and the interquartile range relative to it
(``spread``). A pair (a run and the dropout run of the same p, penalty and seed) is compared only when
:func:`pair_caveats` finds nothing: same host, device, processes and threads, steady step times in both
(spread at most :data:`MAX_SPREAD`) and a machine load that differed by at most :data:`MAX_LOAD_GAP`.
Runs written before step times were recorded fall back to the whole-run throughput ratio (basis
``"throughput"``: conditions unknown).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

WARMUP = 0.1
MAX_SPREAD = 0.25
MAX_LOAD_GAP = 1.0
SAME = ("host", "device", "processes", "threads")
STEPS, THROUGHPUT = "steady-state step time", "throughput"


def steady_state(step_seconds: Sequence[float] | None) -> dict[str, float] | None:
    """``{median, spread, steps}`` of the step times after the warm-up; None without step times.

    ``spread`` is the interquartile range over the median (0: every step took the same time).
    """
    import numpy as np

    if not step_seconds:
        return None
    skip = max(1, math.floor(WARMUP * len(step_seconds))) if len(step_seconds) > 1 else 0
    kept = np.asarray(step_seconds[skip:], dtype=float)
    median = float(np.median(kept))
    q1, q3 = np.percentile(kept, [25, 75])
    return {"median": median, "spread": float((q3 - q1) / median) if median > 0 else 0.0, "steps": len(kept)}


def _load(conditions: Mapping[str, Any]) -> float | None:
    values = [v for v in (conditions.get("load_start"), conditions.get("load_end")) if v is not None]
    return statistics.fmean(values) if values else None


def pair_caveats(run: Mapping[str, Any], dropout: Mapping[str, Any]) -> list[str]:
    """Why ``run`` and its ``dropout`` run cannot be timed against each other (empty: they can)."""
    caveats = []
    a, b = run.get("conditions") or {}, dropout.get("conditions") or {}
    for key in SAME:
        if a.get(key) != b.get(key):
            caveats.append(f"different {key} ({a.get(key)} / {b.get(key)})")
    la, lb = _load(a), _load(b)
    if la is not None and lb is not None and abs(la - lb) > MAX_LOAD_GAP:
        caveats.append(f"machine load differed ({la:.1f} / {lb:.1f})")
    for which, r in (("run", run), ("dropout run", dropout)):
        steady = steady_state(r.get("step_seconds"))
        if steady is None:
            caveats.append(f"no step times in the {which}")
        elif steady["spread"] > MAX_SPREAD:
            caveats.append(f"unsteady step times in the {which} (IQR {100 * steady['spread']:.0f} % of the median)")
    return caveats


def time_vs_dropout(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict[str, Any]:
    """Over (run, dropout run) pairs of one cell: ``time_vs_dropout_{mean,std,basis,n,caveats}``.

    The ratio is the run's steady median step time over the dropout run's (1.25: 25 % slower), for
    pairs without caveats; pairs of runs without step times use dropout's throughput over the run's.
    """
    ratios, bases, caveats = [], set(), []
    for run, dropout in pairs:
        if run is dropout:  # the dropout run against itself: 1 when it was timed at all
            if run.get("step_seconds") or run.get("throughput"):
                ratios.append(1.0)
                bases.add(STEPS if run.get("step_seconds") else THROUGHPUT)
            continue
        if run.get("step_seconds") is None and dropout.get("step_seconds") is None:
            if run.get("throughput") and dropout.get("throughput"):
                ratios.append(dropout["throughput"] / run["throughput"])
                bases.add(THROUGHPUT)
            continue
        found = pair_caveats(run, dropout)
        if found:
            caveats += [f"seed {run['seed']}: {c}" for c in found]
            continue
        ratios.append(steady_state(run["step_seconds"])["median"] / steady_state(dropout["step_seconds"])["median"])
        bases.add(STEPS)
    mean = statistics.fmean(ratios) if ratios else None
    std = statistics.stdev(ratios) if len(ratios) > 1 else None
    basis = bases.pop() if len(bases) == 1 else ("mixed" if bases else None)
    return {
        "time_vs_dropout_mean": mean,
        "time_vs_dropout_std": std,
        "time_vs_dropout_basis": basis,
        "time_vs_dropout_n": len(ratios),
        "time_vs_dropout_caveats": caveats,
    }
