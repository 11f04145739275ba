"""``calibrate``: per-site magnitude thresholds for every target sparsity, in one eval pass over calibration batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hf_sparseout.metrics.quantile import DEFAULT_MAX_SAMPLES, MagnitudeSample
from hf_sparseout.metrics.threshold_file import DEFAULT_TARGETS, Calibration, SiteCalibration, check_targets
from hf_sparseout.metrics.threshold_inputs import (
    MaskSource,
    distributed,
    model_device,
    real_values,
    site_input,
    to_device,
)
from hf_sparseout.metrics.threshold_sites import ThresholdError, family_of, select_sites, weight_numel
from hf_sparseout.patcher.patterns import abbreviate


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    sites: str | Sequence[str] | None = None,
    targets: Iterable[float] = DEFAULT_TARGETS,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
    sync: bool = True,
) -> Calibration:
    """Calibrate per-site magnitude thresholds for every target in one pass over ``batches``.

    Args:
        model: any ``nn.Module`` called as ``model(**batch)`` (run in eval mode, restored after).
        batches: dicts of tensors (``labels`` is dropped); an ``attention_mask`` excludes padding.
        sites: ``None`` (the family's default), ``"teal"``, ``"sparseout"`` or module patterns
            (see :func:`~hf_sparseout.metrics.threshold_sites.select_sites`). With ``"sparseout"``,
            sites the model does not run in eval (attention probabilities) are left out and listed
            in ``meta["skipped_unused_in_eval"]``; any other site that sees nothing is an error.
        targets: target sparsities in ``[0, 1)``; 0 gives threshold 0 (the identity).
        max_samples: magnitudes kept per site before uniform sampling starts (memory ~8 bytes each).
        seed: seed of the sampling.
        sync: under ``torch.distributed``, use process 0's thresholds on every process.

    Raises:
        ThresholdError: bad targets or sites, no batches, a site that saw no activation, or NaN/inf
            activations (naming the sites where they appear).
    """
    targets = check_targets(targets)
    selected = select_sites(model, sites)
    masks = MaskSource(model)
    samples = {name: MagnitudeSample(max_samples, seed=seed + i) for i, name in enumerate(selected)}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = site_input(args, kwargs)
            if x is None:
                return
            samples[name].add(real_values(masks.weights(x), x.detach()).abs())

        return hook

    handles = masks.hooks() + [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in selected.items()]
    was_training = model.training
    model.eval()
    count = 0
    device = model_device(model)
    try:
        for batch in batches:
            model(**{k: v for k, v in to_device(batch, device).items() if k != "labels"})
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ThresholdError("the calibration set is empty", "pass at least one batch of calibration data")
    nonfinite = [name for name, s in samples.items() if s.nonfinite]
    if nonfinite:
        first = samples[nonfinite[0]]
        raise ThresholdError(
            f"non-finite activations (NaN or inf) at {len(nonfinite)} threshold site(s): {abbreviate(nonfinite, 6)} "
            f"({first.nonfinite} of {first.nonfinite + first.seen} values at the first)",
            "the model computes NaN/inf on these batches: look for NaN or inf weights (a diverged run) or an "
            "overflow in half precision; thresholds of such activations would be meaningless",
        )
    unseen = [name for name, s in samples.items() if s.seen == 0 and not s.nonfinite]
    skipped = []
    if unseen and sites == "sparseout" and len(unseen) < len(samples):
        # Attention-probability sites are not applied by the model in eval mode: nothing to threshold there.
        skipped = unseen
        selected = {name: module for name, module in selected.items() if name not in unseen}
    elif unseen:
        raise ThresholdError(
            f"threshold sites {unseen} saw no activation in eval mode",
            "choose modules that run in eval (attention-probability dropout sites do not), or check the batches",
        )
    result = {}
    for name, module in selected.items():
        s = samples[name]
        result[name] = SiteCalibration(
            thresholds=s.thresholds(targets),
            seen=s.seen,
            samples=len(s),
            exact=s.exact,
            error_bound=s.error_bound(),
            zero_fraction=s.zeros / s.seen,
            weight_numel=weight_numel(module),
        )
    dist = distributed() if sync else None
    if dist is not None:
        flat = torch.tensor([t for site in result.values() for t in site.thresholds], dtype=torch.float64)
        flat = flat.to(device if dist.get_backend() != "gloo" else "cpu")
        dist.broadcast(flat, src=0)
        values = flat.cpu().tolist()
        for i, site in enumerate(result.values()):
            site.thresholds = values[i * len(targets) : (i + 1) * len(targets)]
    spec = sites if sites is None or isinstance(sites, str) else list(sites)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    meta = {"family": family_of(model), "max_samples": max_samples, "seed": seed, "skipped_unused_in_eval": skipped}
    return Calibration(targets, result, model_type, spec, count, meta)
