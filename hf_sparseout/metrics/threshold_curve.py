"""The sparsity-quality curve: the metric at each target sparsity, and the largest sparsity within a tolerance."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from hf_sparseout.metrics.quantile import DEFAULT_MAX_SAMPLES
from hf_sparseout.metrics.threshold_apply import ThresholdHooks, apply_thresholds, check_calibration
from hf_sparseout.metrics.threshold_calibrate import calibrate
from hf_sparseout.metrics.threshold_file import DEFAULT_TARGETS, Calibration, check_targets
from hf_sparseout.metrics.threshold_inputs import model_device, to_device
from hf_sparseout.metrics.threshold_sites import ThresholdError

TOLERANCES: tuple[float, ...] = (0.01, 0.05)
"""Quality losses of the headline figures: 1 % / 5 % perplexity rise, or 1 / 5 accuracy points."""
LOWER_IS_BETTER: frozenset[str] = frozenset({"perplexity", "eval_loss", "loss"})


@dataclass
class CurvePoint:
    """One target of the curve: the sparsity reached and the metrics measured with those thresholds."""

    target: float
    sparsity: float
    activation_sparsity: float
    metrics: dict[str, float]
    sites: dict[str, float]
    measured_on: str = "evaluation"
    """``"evaluation"``; ``"calibration"`` for the target-0 point taken from a given reference."""


def sparsity_at(points: Sequence[CurvePoint], reference: float, metric: str, tolerance: float) -> float | None:
    """Largest reached sparsity whose ``metric`` stays within ``tolerance`` of ``reference``, interpolated.

    Within: perplexity-like (lower is better) ``<= reference * (1 + tolerance)``; otherwise (accuracy)
    ``>= reference - tolerance`` (0.01 = one point on a 0..1 scale). Points are taken in order of
    reached sparsity; at the first point outside, the answer is linearly interpolated between it and
    the previous point (the curve between two measured targets is assumed straight). When every
    point is within, the largest measured sparsity (a lower bound); ``None`` if the first point is outside.
    """
    ordered = sorted((p for p in points if not math.isnan(p.sparsity)), key=lambda p: p.sparsity)
    lower = metric in LOWER_IS_BETTER
    limit = reference * (1 + tolerance) if lower else reference - tolerance

    def excess(p: CurvePoint) -> float:  # > 0: outside the tolerance
        value = p.metrics[metric]
        return value - limit if lower else limit - value

    previous = None
    for point in ordered:
        if excess(point) > 0:
            if previous is None:
                return None
            e0, e1 = excess(previous), excess(point)
            frac = -e0 / (e1 - e0) if e1 != e0 else 0.0
            return previous.sparsity + frac * (point.sparsity - previous.sparsity)
        previous = point
    return previous.sparsity if previous is not None else None


@dataclass
class SparsityCurve:
    """Metric against reached sparsity over target sparsities, with the headline figures."""

    metric: str
    reference: float
    """The metric of the unthresholded model."""
    points: list[CurvePoint]
    calibration: Calibration
    seconds: dict[str, float] = field(default_factory=dict)

    def sparsity_at(self, tolerance: float) -> float | None:
        """See :func:`sparsity_at` (interpolated; a lower bound when no target left the tolerance)."""
        return sparsity_at(self.points, self.reference, self.metric, tolerance)

    @property
    def sparsity_at_1pct(self) -> float | None:
        """Largest sparsity with at most 1 % perplexity rise (or 1 accuracy point lost), interpolated."""
        return self.sparsity_at(0.01)

    @property
    def sparsity_at_5pct(self) -> float | None:
        """As :attr:`sparsity_at_1pct` with 5 % (5 points)."""
        return self.sparsity_at(0.05)

    def bounded(self, tolerance: float) -> bool:
        """Whether some measured target left the tolerance (else the headline is only a lower bound)."""
        value = self.sparsity_at(tolerance)
        return value is None or value < max(p.sparsity for p in self.points)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (thresholds excluded: see ``calibration.save``)."""
        tolerance_rule = (
            "perplexity rise relative to the unthresholded model"
            if self.metric in LOWER_IS_BETTER
            else "absolute drop (0.01 = one point)"
        )
        return {
            "metric": self.metric,
            "reference": self.reference,
            "sparsity_at_1pct": self.sparsity_at_1pct,
            "sparsity_at_5pct": self.sparsity_at_5pct,
            "headline": (
                f"largest reached sparsity within tolerance ({tolerance_rule}), linearly interpolated between "
                "measured targets; a lower bound when every target stayed within"
            ),
            "bounded_1pct": self.bounded(0.01),
            "bounded_5pct": self.bounded(0.05),
            "weighting": "parameters of the weight matrix fed by each site (TEAL); activation_sparsity: pooled",
            "points": [asdict(p) for p in self.points],
            "sites": list(self.calibration.sites),
            "sites_spec": self.calibration.sites_spec,
            "seconds": self.seconds,
        }


EvaluateFn = Callable[[nn.Module, ThresholdHooks], Mapping[str, float]]
"""``evaluate_fn(model, hooks) -> metrics``: evaluate with the hooks installed (they may be used as
a monitor: entered, and given per-batch attention masks with ``set_attention_mask``)."""


def sparsity_curve(
    model: nn.Module,
    calibration: Calibration | Iterable[Mapping[str, Any]],
    evaluate_fn: EvaluateFn,
    *,
    metric: str = "perplexity",
    targets: Iterable[float] | None = None,
    sites: str | Sequence[str] | None = None,
    reference: Mapping[str, float] | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> SparsityCurve:
    """The sparsity-quality curve: one calibration pass, then one evaluation per target.

    Args:
        model: the model (evaluated in eval mode; its training flag is restored).
        calibration: a :class:`Calibration`, or calibration batches to calibrate on (then ``sites``
            and ``max_samples`` apply).
        evaluate_fn: ``evaluate_fn(model, hooks) -> {metric: value, ...}`` (see :func:`batch_evaluator`).
        metric: the key of the metric in ``evaluate_fn``'s result; ``perplexity``/``eval_loss`` are
            lower-is-better, anything else (``accuracy``) higher-is-better.
        targets: target sparsities (default :data:`DEFAULT_TARGETS`, or the calibration's).
        reference: metrics of the unthresholded model already measured on the same evaluation data
            (e.g. the run's final eval); if given, target 0 is not re-evaluated (its sparsity is the
            calibration's fraction of exact zeros). Otherwise target 0 (added if missing) is
            evaluated with threshold 0, which is the unthresholded model.

    Returns:
        A :class:`SparsityCurve`.
    """
    import time

    start = time.perf_counter()
    if isinstance(calibration, Calibration):
        check_calibration(model, calibration)
        targets = check_targets(targets if targets is not None else calibration.targets)
        for t in targets:
            if t > 0:
                calibration.index(t)
        calib = calibration
    else:
        targets = check_targets(targets if targets is not None else DEFAULT_TARGETS)
        calib = calibrate(model, calibration, sites, sorted({0.0, *targets}), max_samples=max_samples)
    seconds = {"calibration": time.perf_counter() - start}
    if 0.0 not in targets:
        targets = [0.0, *targets]
    points: list[CurvePoint] = []
    was_training = model.training
    try:
        for target in targets:
            t0 = time.perf_counter()
            if target == 0.0 and reference is not None:
                sites_zero = {name: s.zero_fraction for name, s in calib.sites.items()}
                weights = {name: s.weight_numel for name, s in calib.sites.items()}
                seen = {name: s.seen for name, s in calib.sites.items()}
                pooled = sum(sites_zero[n] * seen[n] for n in seen) / max(sum(seen.values()), 1)
                if all(w is not None for w in weights.values()):
                    wsum = sum(weights.values())
                    sparsity = sum(sites_zero[n] * weights[n] for n in weights) / wsum
                else:
                    sparsity = pooled
                points.append(CurvePoint(0.0, sparsity, pooled, dict(reference), sites_zero, "calibration"))
                continue
            thresholds = {name: 0.0 for name in calib.sites} if target == 0.0 else calib.at(target)
            hooks = apply_thresholds(model, thresholds)
            try:
                metrics = dict(evaluate_fn(model, hooks))
            finally:
                hooks.remove()
            if metric not in metrics:
                raise ThresholdError(
                    f"evaluate_fn returned no {metric!r} (got {sorted(metrics)})", "pass metric= one of those keys"
                )
            reached = hooks.compute()
            points.append(
                CurvePoint(target, reached["sparsity"], reached["activation_sparsity"], metrics, reached["sites"])
            )
            seconds[f"target_{target:g}"] = time.perf_counter() - t0
    finally:
        model.train(was_training)
    ref_point = points[0]
    if metric not in ref_point.metrics:
        raise ThresholdError(f"reference metrics have no {metric!r}", f"got {sorted(ref_point.metrics)}")
    return SparsityCurve(metric, float(ref_point.metrics[metric]), points, calib, seconds)


def batch_evaluator(batches: Iterable[Mapping[str, Any]], task: str = "causal-lm") -> EvaluateFn:
    """An ``evaluate_fn`` over fixed batches on one process.

    ``causal-lm``: token-weighted ``perplexity`` and ``eval_loss`` from ``labels`` (or ``input_ids``;
    -100 and padding ignored). ``classification``: ``accuracy`` and ``eval_loss`` from ``labels``.
    """
    if task not in ("causal-lm", "classification"):
        raise ThresholdError(f"unknown task {task!r}", "use 'causal-lm' or 'classification'")
    batches = list(batches)

    @torch.no_grad()
    def evaluate(model: nn.Module, hooks: ThresholdHooks) -> dict[str, float]:
        from hf_sparseout.training.evaluation import per_example_nll

        model.eval()
        device = model_device(model)
        total, count, correct = 0.0, 0.0, 0
        for raw in batches:
            batch = to_device(raw, device)
            out = model(**{k: v for k, v in batch.items() if k != "labels"})
            if task == "causal-lm":
                labels = batch.get("labels", batch["input_ids"])
                if "attention_mask" in batch and "labels" not in batch:
                    labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
                nll, n = per_example_nll(out.logits, labels)
                total, count = total + float(nll.sum()), count + float(n.sum())
            else:
                logits = out.logits.float()
                total += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
                count += batch["labels"].numel()
        loss = total / count if count else math.nan
        if task == "causal-lm":
            return {"perplexity": math.exp(min(loss, 700.0)), "eval_loss": loss}
        return {"accuracy": correct / count if count else math.nan, "eval_loss": loss}

    return evaluate
