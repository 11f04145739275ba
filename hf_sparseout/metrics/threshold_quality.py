"""Quality at fixed sparsities (TEAL's way of reporting): the metric's relative change at 25 %, 40 %, 50 %.

:func:`metric_at_sparsity` reads a measured sparsity-quality curve (the points of
:func:`hf_sparseout.metrics.threshold.sparsity_curve`) at given model-wide sparsities.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hf_sparseout.metrics.threshold import CurvePoint

FIXED_SPARSITIES: tuple[float, ...] = (0.25, 0.4, 0.5)
"""The sparsities of ``metric_at_sparsity`` (TEAL reports 25 %, 40 % and 50 %)."""


def metric_at_sparsity(
    points: Sequence[CurvePoint],
    reference: float,
    metric: str,
    sparsities: Sequence[float] = FIXED_SPARSITIES,
) -> dict[str, float | None]:
    """``{"0.25": change, ...}``: the metric's relative change against ``reference`` (the unthresholded
    model) at each model-wide sparsity, ``(value - reference) / reference``.

    The value at sparsity ``s`` is linearly interpolated between the two measured points whose reached
    sparsity lies on either side of ``s`` (exact when a point reached ``s``); the curve's default
    targets include 0.25, 0.4 and 0.5, so those neighbours are close. ``None`` where ``s`` lies outside
    the measured range (never extrapolated) or the reference is 0. Positive is a rise (worse perplexity,
    better accuracy).
    """
    ordered = sorted((p.sparsity, float(p.metrics[metric])) for p in points if p.sparsity == p.sparsity)
    result: dict[str, float | None] = {}
    for s in sparsities:
        value = None
        for (s0, v0), (s1, v1) in pairwise(ordered):
            if s0 <= s <= s1:
                value = v0 if s1 == s0 else v0 + (v1 - v0) * (s - s0) / (s1 - s0)
                break
        if value is None and ordered and len(ordered) == 1 and ordered[0][0] == s:
            value = ordered[0][1]
        result[f"{s:g}"] = None if value is None or reference == 0 else value / reference - 1.0
    return result
