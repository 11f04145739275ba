"""Deployable activation sparsity: training-free magnitude thresholding (TEAL-style) and its quality curve.

Three steps, each usable alone:

1. :func:`calibrate` runs the model (eval mode, no grad) on calibration batches and records, per
   site (the input of a weight matrix, see :mod:`hf_sparseout.metrics.threshold_sites`), the
   magnitudes ``|x|`` of the real tokens (padding excluded through the attention mask, as in
   :class:`~hf_sparseout.metrics.SparsityMonitor`). A target sparsity ``t`` gives the site the
   threshold below which a fraction ``t`` of those magnitudes lie (a quantile of ``|x|``: exact up
   to ``2 * max_samples`` values per site, a uniform sample beyond, with a stated error bound, see
   :mod:`hf_sparseout.metrics.quantile`). One pass serves every target. The result, a
   :class:`Calibration`, is JSON (``save`` / ``load``).
2. :func:`apply_thresholds` installs forward pre-hooks that zero ``x`` where ``|x| <= threshold``
   (eval mode only; weights untouched; ``remove()`` undoes it) and count the sparsity actually
   reached on the evaluated tokens (:meth:`ThresholdHooks.compute`).
3. :func:`sparsity_curve` evaluates the model at each target (one eval pass each) and reports the
   metric against the reached sparsity; :attr:`SparsityCurve.sparsity_at_1pct` (and ``5pct``) is
   the largest sparsity whose perplexity rises by at most 1 % (5 %) over the unthresholded model,
   linearly interpolated between the two measured targets around the crossing (accuracy-like
   metrics: a drop of at most 1 (5) points).

Sparsity, as TEAL reports it: the fraction of a site's input entries that are zero (after
thresholding; entries that were already 0 count), and model-wide the average over sites weighted by
the parameters of the weight matrix each site feeds (the fraction of weight columns a sparse kernel
can skip); ``activation_sparsity`` is the same fraction over all site entries pooled.

Each step has its module: :mod:`~hf_sparseout.metrics.threshold_calibrate`,
:mod:`~hf_sparseout.metrics.threshold_file` (the JSON format and targets),
:mod:`~hf_sparseout.metrics.threshold_apply`, :mod:`~hf_sparseout.metrics.threshold_curve`; this module
re-exports their public names.
"""

from __future__ import annotations

from hf_sparseout.metrics.threshold_apply import ThresholdHooks, apply_thresholds, check_calibration
from hf_sparseout.metrics.threshold_calibrate import calibrate
from hf_sparseout.metrics.threshold_curve import (
    LOWER_IS_BETTER,
    TOLERANCES,
    CurvePoint,
    EvaluateFn,
    SparsityCurve,
    batch_evaluator,
    sparsity_at,
    sparsity_curve,
)
from hf_sparseout.metrics.threshold_file import (
    DEFAULT_TARGETS,
    FORMAT,
    FORMAT_VERSION,
    Calibration,
    SiteCalibration,
    check_targets,
)
from hf_sparseout.metrics.threshold_sites import ThresholdError

__all__ = [
    "DEFAULT_TARGETS",
    "FORMAT",
    "FORMAT_VERSION",
    "LOWER_IS_BETTER",
    "TOLERANCES",
    "Calibration",
    "CurvePoint",
    "EvaluateFn",
    "SiteCalibration",
    "SparsityCurve",
    "ThresholdError",
    "ThresholdHooks",
    "apply_thresholds",
    "batch_evaluator",
    "calibrate",
    "check_calibration",
    "check_targets",
    "sparsity_at",
    "sparsity_curve",
]
