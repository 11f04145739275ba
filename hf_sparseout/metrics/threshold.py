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
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_sparseout.metrics.masking import Weights, weights_for
from hf_sparseout.metrics.quantile import DEFAULT_MAX_SAMPLES, MagnitudeSample
from hf_sparseout.metrics.threshold_sites import ThresholdError, family_of, select_sites, weight_numel

DEFAULT_TARGETS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""Uniform per-site target sparsities of the default curve."""
TOLERANCES: tuple[float, ...] = (0.01, 0.05)
"""Quality losses of the headline figures: 1 % / 5 % perplexity rise, or 1 / 5 accuracy points."""
LOWER_IS_BETTER: frozenset[str] = frozenset({"perplexity", "eval_loss", "loss"})
FORMAT = "hf-sparseout-thresholds"
FORMAT_VERSION = 1

__all__ = [
    "DEFAULT_TARGETS",
    "Calibration",
    "CurvePoint",
    "SparsityCurve",
    "ThresholdError",
    "ThresholdHooks",
    "apply_thresholds",
    "batch_evaluator",
    "calibrate",
    "check_targets",
    "sparsity_at",
    "sparsity_curve",
]


def check_targets(targets: Iterable[float]) -> list[float]:
    """Targets as a sorted, de-duplicated list of floats in ``[0, 1)``; ``ThresholdError`` otherwise."""
    try:
        values = [float(t) for t in targets]
    except (TypeError, ValueError) as err:
        raise ThresholdError(f"targets must be numbers, got {targets!r}", "e.g. targets=[0, 0.1, 0.2]") from err
    bad = [t for t in values if not (0.0 <= t < 1.0)]
    if bad or not values:
        raise ThresholdError(
            f"target sparsities must be in [0, 1), got {bad or 'none'}",
            "give fractions, e.g. 0,0.1,0.2,...,0.7 (0.5 = half of each site's inputs zeroed); 1 would zero all",
        )
    return sorted(set(values))


# -- padding masks ---------------------------------------------------------------------------------


class _MaskSource:
    """The batch's ``(batch, seq)`` attention mask: set by hand, or read from the root model's kwargs."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.manual: torch.Tensor | None = None
        self.auto: torch.Tensor | None = None
        self._cache: dict[torch.device, torch.Tensor] = {}

    def hooks(self) -> list[Any]:
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            mask = kwargs.get("attention_mask")
            self.auto = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            self._cache.clear()

        def post(module: nn.Module, args: tuple, output: Any) -> None:
            self.auto = None
            self._cache.clear()

        return [
            self.model.register_forward_pre_hook(pre, with_kwargs=True),
            self.model.register_forward_hook(post, always_call=True),
        ]

    def set(self, mask: torch.Tensor | None) -> None:
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 2):
            raise ThresholdError(
                f"attention mask must be a (batch, seq) tensor, got {getattr(mask, 'shape', mask)!r}",
                "pass the batch's attention_mask, or None to read it from the model's inputs",
            )
        self.manual = mask
        self._cache.clear()

    def weights(self, x: torch.Tensor) -> Weights:
        mask = self.manual if self.manual is not None else self.auto
        if mask is not None:
            cached = self._cache.get(x.device)
            if cached is None:
                cached = self._cache[x.device] = (mask.detach().to(x.device) != 0).to(torch.float32)
            mask = cached
        return weights_for(x, mask)


def _real_values(w: Weights, x: torch.Tensor) -> torch.Tensor:
    """The entries of ``x`` at real (unpadded) positions, flattened."""
    if w.cols is None:
        if w.rows is None:
            return x.reshape(-1)
        rows = w.rows.expand(x.shape[:-1]) > 0  # select whole vectors: no full-size mask
        return x[rows].reshape(-1)
    keep = torch.ones(x.shape, dtype=torch.bool, device=x.device) & (w.cols > 0)
    if w.rows is not None:
        keep &= w.rows.unsqueeze(-1) > 0
    return x[keep]


def _input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    x = args[0] if args else kwargs.get("input", kwargs.get("hidden_states"))
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0 and x.numel() > 0:
        return x
    return None


def _distributed() -> Any:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


# -- calibration -----------------------------------------------------------------------------------


@dataclass
class SiteCalibration:
    """One site's calibration: a threshold per target and how it was obtained."""

    thresholds: list[float]
    seen: int
    """Magnitudes seen (real tokens only)."""
    samples: int
    """Magnitudes held when the quantiles were read (``== seen`` when exact)."""
    exact: bool
    error_bound: float
    """DKW bound on the zeroed fraction at 99.9 % confidence (0 when exact)."""
    zero_fraction: float
    """Fraction of the calibration magnitudes that were exactly 0 (natural sparsity)."""
    weight_numel: int | None


@dataclass
class Calibration:
    """Per-site magnitude thresholds for each target sparsity; JSON via :meth:`save` / :meth:`load`."""

    targets: list[float]
    sites: dict[str, SiteCalibration]
    model_type: str | None = None
    sites_spec: Any = None
    batches: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def index(self, target: float) -> int:
        """Position of ``target`` in :attr:`targets` (within 1e-9); ``ThresholdError`` if not calibrated."""
        for i, t in enumerate(self.targets):
            if abs(t - float(target)) <= 1e-9:
                return i
        raise ThresholdError(
            f"target {target!r} was not calibrated; calibrated targets: {self.targets}",
            "calibrate with that target in targets=[...]",
        )

    def at(self, target: float) -> dict[str, float]:
        """``{site: threshold}`` for one calibrated target (what :func:`apply_thresholds` takes)."""
        i = self.index(target)
        return {name: site.thresholds[i] for name, site in self.sites.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (format tag and version included)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "targets": self.targets,
            "model_type": self.model_type,
            "sites_spec": self.sites_spec,
            "batches": self.batches,
            "meta": self.meta,
            "sites": {name: asdict(site) for name, site in self.sites.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`; ``ThresholdError`` for anything else."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ThresholdError(
                "not an hf-sparseout thresholds file (no 'format': 'hf-sparseout-thresholds')",
                "load a file written by Calibration.save (a finetune run's thresholds.json)",
            )
        if data.get("version") != FORMAT_VERSION:
            raise ThresholdError(
                f"thresholds format version {data.get('version')!r} is not supported (this is {FORMAT_VERSION})",
                "recalibrate with this version of hf-sparseout",
            )
        sites = {name: SiteCalibration(**site) for name, site in data["sites"].items()}
        return cls(
            targets=[float(t) for t in data["targets"]],
            sites=sites,
            model_type=data.get("model_type"),
            sites_spec=data.get("sites_spec"),
            batches=int(data.get("batches", 0)),
            meta=dict(data.get("meta", {})),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibration as JSON (via a temporary file and a rename); returns the path."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a file written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ThresholdError(f"cannot read thresholds from {str(path)!r}: {err}", "pass a thresholds JSON") from err
        return cls.from_dict(data)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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
        ThresholdError: bad targets or sites, no batches, or a site that saw no activation.
    """
    targets = check_targets(targets)
    selected = select_sites(model, sites)
    masks = _MaskSource(model)
    samples = {name: MagnitudeSample(max_samples, seed=seed + i) for i, name in enumerate(selected)}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = _input(args, kwargs)
            if x is None:
                return
            samples[name].add(_real_values(masks.weights(x), x.detach()).abs())

        return hook

    handles = masks.hooks() + [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in selected.items()]
    was_training = model.training
    model.eval()
    count = 0
    device = _model_device(model)
    try:
        for batch in batches:
            model(**{k: v for k, v in _to_device(batch, device).items() if k != "labels"})
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ThresholdError("the calibration set is empty", "pass at least one batch of calibration data")
    unseen = [name for name, s in samples.items() if s.seen == 0]
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
    dist = _distributed() if sync else None
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


# -- applying thresholds ---------------------------------------------------------------------------


class ThresholdHooks:
    """Eval-mode forward pre-hooks zeroing ``|x| <= threshold`` (``hardshrink``), counting the sparsity reached.

    Installed by :func:`apply_thresholds`; :meth:`remove` (or leaving ``with``) takes them off.
    Training-mode forwards pass through untouched; weights are never changed. Reached sparsity is
    counted over real tokens (the attention mask of each root call, or :meth:`set_attention_mask`),
    as running float64 sums on the device (no synchronisation until :meth:`compute`).
    """

    def __init__(self, model: nn.Module, thresholds: Mapping[str, float]) -> None:
        named = dict(model.named_modules())
        missing = [name for name in thresholds if name not in named]
        if missing:
            raise ThresholdError(
                f"threshold site(s) {missing} are not modules of {type(model).__name__}",
                "apply thresholds calibrated on this model's architecture (same module names)",
            )
        bad = {n: t for n, t in thresholds.items() if not (isinstance(t, (int, float)) and t >= 0)}
        if bad:
            raise ThresholdError(f"thresholds must be numbers >= 0, got {bad}", "use Calibration.at(target)")
        if not thresholds:
            raise ThresholdError("no thresholds to apply", "pass {site: threshold}, e.g. Calibration.at(0.5)")
        self.model = model
        self.thresholds = {name: float(t) for name, t in thresholds.items()}
        self.site_names = list(self.thresholds)
        self._modules = {name: named[name] for name in self.site_names}
        self._weights = {name: weight_numel(m) for name, m in self._modules.items()}
        self._masks = _MaskSource(model)
        self._state: torch.Tensor | None = None
        self._handles: list[Any] = []

    @property
    def active(self) -> bool:
        """Whether the hooks are installed."""
        return bool(self._handles)

    def install(self) -> ThresholdHooks:
        """Install the hooks (no-op when installed); counts so far are kept."""
        if not self._handles:
            self._handles = self._masks.hooks()
            for index, (name, module) in enumerate(self._modules.items()):
                hook = self._hook(index, self.thresholds[name])
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def remove(self) -> None:
        """Remove the hooks: the model computes exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> ThresholdHooks:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def set_attention_mask(self, mask: torch.Tensor | None) -> None:
        """Count only the real tokens of this ``(batch, seq)`` mask from now on (``None``: read it from the inputs)."""
        self._masks.set(mask)

    def _hook(self, index: int, threshold: float) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if module.training:
                return None
            x = _input(args, kwargs)
            if x is None:
                return None
            # hardshrink: x where |x| > threshold, else 0 (one fused op; |x| == threshold has measure 0)
            out = x if threshold == 0 else torch.nn.functional.hardshrink(x, threshold)
            self._count(index, out)
            if threshold == 0:
                return None
            if args:
                return (out, *args[1:]), kwargs
            key = "input" if "input" in kwargs else "hidden_states"
            return args, {**kwargs, key: out}

        return hook

    @torch.no_grad()
    def _count(self, index: int, out: torch.Tensor) -> None:
        w = self._masks.weights(out)
        if self._state is None:
            self._state = torch.zeros(len(self.site_names), 2, dtype=torch.float64, device=out.device)
        if w.cols is None:
            # Non-zeros per feature over the real vectors as one (1, vectors) @ (vectors, features) product:
            # several times faster on CPU than reducing a bool tensor per vector.
            n = out.shape[-1]
            flat = out.reshape(-1, n).abs().sign_().float()
            if w.rows is None:
                vectors = torch.tensor(float(flat.shape[0]), dtype=torch.float64, device=out.device)
                nonzero = flat.sum(dtype=torch.float64)
            else:
                rows = w.rows.expand(out.shape[:-1]).reshape(1, -1).float()
                vectors, nonzero = rows.sum(dtype=torch.float64), (rows @ flat).sum(dtype=torch.float64)
            self._state[index, 0] += vectors * n - nonzero
            self._state[index, 1] += vectors * n
            return
        # attention-shaped tensors: masked key columns are never counted
        per_vector = ((out == 0) & (w.cols > 0)).sum(-1, dtype=torch.float32)
        elements = w.n.to(per_vector.dtype).expand_as(per_vector)
        if w.rows is not None:
            rows = w.rows.expand(per_vector.shape)
            per_vector, elements = per_vector * rows, elements * rows
        self._state[index, 0] += per_vector.sum().double()
        self._state[index, 1] += elements.sum().double()

    def reset(self) -> None:
        """Forget the counts."""
        if self._state is not None:
            self._state.zero_()

    def compute(self, sync: bool = True) -> dict[str, Any]:
        """Reached sparsity per site and model-wide (see the module docstring), all-reduced when ``sync``.

        Returns ``{"sparsity", "activation_sparsity", "weighting", "sites": {name: fraction}}``;
        ``sparsity`` is parameter-weighted when every site feeds a 2-d weight, else element-weighted
        (``weighting`` says which). Call it on every process under ``torch.distributed``.
        """
        state = self._state.cpu() if self._state is not None else torch.zeros(len(self.site_names), 2)
        dist = _distributed() if sync else None
        if dist is not None:
            on = self._state.device if self._state is not None and dist.get_backend() != "gloo" else "cpu"
            state = state.double().to(on)
            dist.all_reduce(state, op=dist.ReduceOp.SUM)
            state = state.cpu()
        zeros, elements = state[:, 0].double(), state[:, 1].double()
        fractions = torch.where(elements > 0, zeros / elements.clamp_min(1), torch.full_like(zeros, math.nan))
        sites = {name: float(fractions[i]) for i, name in enumerate(self.site_names)}
        total = float(elements.sum())
        pooled = float(zeros.sum()) / total if total > 0 else math.nan
        weights = [self._weights[name] for name in self.site_names]
        seen = [(f, w) for f, w in zip(sites.values(), weights, strict=True) if not math.isnan(f)]
        if seen and all(w is not None for w in weights):
            sparsity = sum(f * w for f, w in seen) / sum(w for _, w in seen)
            weighting = "parameters"
        else:
            sparsity, weighting = pooled, "elements"
        return {"sparsity": sparsity, "activation_sparsity": pooled, "weighting": weighting, "sites": sites}


def apply_thresholds(
    model: nn.Module, thresholds: Mapping[str, float] | Calibration, target: float | None = None
) -> ThresholdHooks:
    """Zero ``|x| <= threshold`` at the input of each site in eval mode; returns the installed, removable hooks.

    ``thresholds`` is ``{site: threshold}`` (e.g. ``Calibration.at(0.5)``), or a :class:`Calibration`
    with the ``target`` to use.
    """
    if isinstance(thresholds, Calibration):
        if target is None:
            raise ThresholdError("a Calibration needs a target", f"pass target=, one of {thresholds.targets}")
        thresholds = thresholds.at(target)
    return ThresholdHooks(model, thresholds).install()


# -- the sparsity-quality curve --------------------------------------------------------------------


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
        device = _model_device(model)
        total, count, correct = 0.0, 0.0, 0
        for raw in batches:
            batch = _to_device(raw, device)
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
