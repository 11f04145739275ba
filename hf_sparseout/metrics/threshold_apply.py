"""``apply_thresholds``: eval-mode pre-hooks zeroing ``|x| <= threshold`` at each site, and the sparsity reached."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hf_sparseout.metrics.threshold_file import Calibration
from hf_sparseout.metrics.threshold_inputs import MaskSource, distributed, site_input
from hf_sparseout.metrics.threshold_sites import ThresholdError, select_sites, weight_numel
from hf_sparseout.patcher.patterns import abbreviate


def _usable(threshold: Any) -> bool:
    """A finite number >= 0 (not a bool)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        return False
    try:
        return math.isfinite(threshold) and threshold >= 0
    except OverflowError:  # an int too large for a float
        return False


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
        bad = {n: t for n, t in thresholds.items() if not _usable(t)}
        if bad:
            raise ThresholdError(
                f"thresholds must be finite numbers >= 0, got {bad}",
                "use Calibration.at(target); an infinite threshold would zero the whole input",
            )
        if not thresholds:
            raise ThresholdError("no thresholds to apply", "pass {site: threshold}, e.g. Calibration.at(0.5)")
        self.model = model
        self.thresholds = {name: float(t) for name, t in thresholds.items()}
        self.site_names = list(self.thresholds)
        self._modules = {name: named[name] for name in self.site_names}
        self._weights = {name: weight_numel(m) for name, m in self._modules.items()}
        self._masks = MaskSource(model)
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
            x = site_input(args, kwargs)
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
        dist = distributed() if sync else None
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
    with the ``target`` to use, which must describe ``model`` (:func:`check_calibration`).
    """
    if isinstance(thresholds, Calibration):
        check_calibration(model, thresholds)
        if target is None:
            raise ThresholdError("a Calibration needs a target", f"pass target=, one of {thresholds.targets}")
        thresholds = thresholds.at(target)
    return ThresholdHooks(model, thresholds).install()


_OTHER_MODEL = (
    "thresholds are per model: calibrate on this one (hf_sparseout.metrics.threshold.calibrate, or finetune "
    "--sparsity-curve, which writes thresholds.json beside the model)"
)


def check_calibration(model: nn.Module, calibration: Calibration) -> None:
    """Refuse a calibration of another model: its ``model_type``, its site set and each site's weight size must match.

    The site set is what :func:`~hf_sparseout.metrics.threshold_sites.select_sites` gives on ``model`` for
    the calibration's ``sites_spec`` (less the sites it skipped as unused in eval), so thresholds of a
    shallower model of the same family do not install on part of a deeper one, nor those of a narrower
    model on a wider one.

    Raises:
        ThresholdError: naming what differs.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if calibration.model_type != model_type:
        raise ThresholdError(
            f"these thresholds were calibrated on model_type {calibration.model_type!r}, "
            f"but {type(model).__name__} is model_type {model_type!r}",
            _OTHER_MODEL,
        )
    expected = select_sites(model, calibration.sites_spec)
    skipped = calibration.meta.get("skipped_unused_in_eval")
    skipped = {s for s in skipped if isinstance(s, str)} if isinstance(skipped, list) else set()
    names = [n for n in expected if n not in skipped]
    missing = [n for n in names if n not in calibration.sites]
    extra = [n for n in calibration.sites if n not in expected]
    if missing or extra:
        spec = "default sites" if calibration.sites_spec is None else f"sites for sites={calibration.sites_spec!r}"
        parts = [f"no threshold for {abbreviate(missing, 6)}"] if missing else []
        parts += [f"not sites of this model: {abbreviate(extra, 6)}"] if extra else []
        raise ThresholdError(
            f"these thresholds cover {len(calibration.sites)} sites, but {type(model).__name__} has {len(names)} "
            f"{spec}; {'; '.join(parts)}",
            _OTHER_MODEL,
        )
    sizes = [
        f"{name}: weight_numel {site.weight_numel} calibrated, {weight_numel(expected[name])} here"
        for name, site in calibration.sites.items()
        if site.weight_numel != weight_numel(expected[name])
    ]
    if sizes:
        raise ThresholdError(
            f"these thresholds come from a model of other sizes ({len(sizes)} sites differ): {abbreviate(sizes, 3)}",
            _OTHER_MODEL,
        )
