"""``finetune --sparsity-curve``: the magnitude-thresholding curve at a run's final evaluation.

Calibration uses the first :data:`CALIBRATION_BATCHES` batches of the training set in order (the same
batches on every process; process 0's thresholds are used everywhere), so nothing of the eval set is
used to set thresholds; each target is then one pass over the eval set through ``evaluation.evaluate``
(gathered metrics, accelerate's padding samples excluded from the sparsity counts). The final eval's
metrics are the unthresholded reference, so the curve costs one calibration pass plus one eval pass per
target above 0.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn
from torch.utils.data import DataLoader

from hf_sparseout.metrics.threshold_sites import NAMED_SETS
from hf_sparseout.training.args import FinetuneArgs, UsageError

if TYPE_CHECKING:
    from hf_sparseout.metrics.threshold import SparsityCurve, ThresholdHooks
    from hf_sparseout.training.loop import RunContext

CALIBRATION_BATCHES = 8
THRESHOLDS_FILE = "thresholds.json"


def check_sites(model: nn.Module, args: FinetuneArgs) -> None:
    """Before training: ``--sparsity-sites`` (or the family default) must select modules of this model."""
    if not args.sparsity_curve:
        return
    from hf_sparseout.metrics.threshold_sites import ThresholdError, select_sites

    try:
        select_sites(model, _sites(args))
    except ThresholdError as err:
        raise UsageError(str(err).split(" (hint: ")[0], err.hint) from err


def _sites(args: FinetuneArgs) -> str | list[str] | None:
    sites = args.sparsity_sites
    if sites and len(sites) == 1 and sites[0] in NAMED_SETS:
        return sites[0]
    return sites or None


def final_curve(ctx: RunContext, reference: dict[str, float]) -> SparsityCurve:
    """The :class:`~hf_sparseout.metrics.threshold.SparsityCurve` of the run's trained (prepared) model,
    on its eval data; ``reference``: the final evaluation's metrics."""
    from hf_sparseout.metrics.threshold import DEFAULT_TARGETS, sparsity_curve
    from hf_sparseout.training.evaluation import evaluate

    args, accelerator, model, task = ctx.args, ctx.accelerator, ctx.model, ctx.task
    inputs = ctx.inputs
    loader = DataLoader(inputs.train_set, batch_size=args.batch_size, shuffle=False, collate_fn=inputs.collate)
    calibration = list(itertools.islice(loader, CALIBRATION_BATCHES))
    metric = "perplexity" if task == "causal-lm" else "accuracy"

    def evaluate_fn(_: nn.Module, hooks: ThresholdHooks) -> dict[str, float]:
        return evaluate(model, ctx.eval_dl, accelerator, task, inputs.num_labels, monitor=hooks)

    return sparsity_curve(
        accelerator.unwrap_model(model),
        calibration,
        evaluate_fn,
        metric=metric,
        targets=args.sparsity_targets or DEFAULT_TARGETS,
        sites=_sites(args),
        reference=reference,
    )


def save_thresholds(curve: SparsityCurve, directory: Path) -> Path:
    """Write the run's thresholds (every target) next to its model."""
    directory.mkdir(parents=True, exist_ok=True)
    return curve.calibration.save(directory / THRESHOLDS_FILE)
