"""``LqPenalty``: an explicit L_q activation penalty at a patched model's Sparseout sites.

Khan & Stavness (2019) motivate Sparseout as an implicit ``L_q`` penalty on the activations it
is applied to. :class:`LqPenalty` is the explicit one, on the same activations, so the two can
be compared (or combined): ``weight * mean over sites of mean(|x| ** q)``, where ``x`` is the
tensor entering each selected Sparseout site (before any noise) in the last forward pass, and
padded positions do not count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hf_sparseout.errors import UsageError
from hf_sparseout.layers import Sparseout
from hf_sparseout.metrics.masking import weights_for
from hf_sparseout.metrics.monitor import _in_backward
from hf_sparseout.patcher.model import get_report, is_patched
from hf_sparseout.patcher.patterns import abbreviate, select, unmatched

MAX_Q: float = 4.0
"""Largest exponent :class:`LqPenalty` accepts. ``|x| ** q`` is computed in float32, which holds it without
underflow to 0 or overflow to inf for ``1e-9 < |x| < 1e9`` when ``q <= 4``; at ``q = 50`` every ``|x| < 0.17``
underflows, so the penalty and its gradient silently vanish for typical activations."""


def _check_number(name: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise UsageError(
            f"LqPenalty: {name} must be a finite number {bound}, got {name}={value!r}",
            "q is the exponent of |x| ** q (e.g. 1); weight scales the penalty added to the loss (e.g. 1e-3)",
        )
    return float(value)


_TARGETS = "name patched sites (names or dotted suffixes, e.g. ['mlp.dropout']), one regex string, or None for all"


def _check_q(q: Any) -> float:
    q = _check_number("q", q, positive=True)
    if q > MAX_Q:
        raise UsageError(
            f"LqPenalty: q must be at most {MAX_Q:g}, got q={q!r}",
            f"|x| ** q underflows to 0 in float32 for small activations at large q (at q=50, every |x| < 0.17), "
            f"so the penalty and its gradient would vanish; use 0 < q <= {MAX_Q:g} (1 is the L1 penalty)",
        )
    return q


def abs_pow(x: torch.Tensor, q: float) -> torch.Tensor:
    """``|x| ** q`` in float32 or wider, with gradient 0 (not NaN) where ``x == 0``.

    For ``q < 1`` the gradient ``q * |x| ** (q - 1)`` is unbounded as ``x -> 0``; exact zeros
    (padding, causal attention zeros, ReLU outputs) get the subgradient 0.
    """
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    # x * sign(x) rather than abs(x): autograd then saves the fresh sign tensor, not x, so a site
    # that modifies its input in place (inplace dropout) after this hook does not break backward.
    a = x * x.detach().sign()
    if q >= 1:
        return a.pow(q)
    nonzero = a > 0
    return torch.where(nonzero, torch.where(nonzero, a, torch.ones_like(a)).pow(q), torch.zeros_like(a))


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _find_patched(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The patched model itself or the first patched submodule (e.g. inside a PEFT wrapper), with its prefix."""
    for name, module in model.named_modules():
        if is_patched(module):
            return name, module
    return None


class LqPenalty:
    """``weight * mean over sites of mean(|x| ** q)`` of the activations entering a patched model's sites.

    Each selected :class:`~hf_sparseout.Sparseout` site gets a forward pre-hook that adds
    ``sum(|x| ** q)`` and the element count of its input over the real (non-padded) positions;
    :meth:`penalty` (or calling the object) returns ``weight * mean_s(sum_s / count_s)`` over the
    sites seen in the last forward of ``model``, as a differentiable scalar: add it to the loss.

    Sites: ``targets=None`` selects every patched site except attention-probability sites (their
    rows sum to 1, so ``mean(|x|)`` is a constant, and they are not called at all when their
    ``p`` is 0 under SDPA); ``targets`` (a list of site names or dotted suffixes, or one regex, as
    in :class:`~hf_sparseout.SparseoutConfig`) selects sites by their report names, attention
    sites included. Sites patched at ``p = 0`` (``SparseoutConfig(p=0.0)``) are identities that
    still call their hooks, which gives the penalty alone.

    Padding: the ``attention_mask`` keyword of each call of ``model`` selects what counts, as in
    :class:`~hf_sparseout.SparsityMonitor` (see :mod:`hf_sparseout.metrics.masking`).
    Recomputation during backward (gradient checkpointing) is not counted twice; with reentrant
    checkpointing the activations inside a checkpointed block carry no gradient, so the penalty
    does not train them: use ``gradient_checkpointing_kwargs={"use_reentrant": False}``.

    Example:
        >>> penalty = LqPenalty(model, q=1.0, weight=1e-3)  # doctest: +SKIP
        >>> loss = model(**batch).loss + penalty()  # doctest: +SKIP
        >>> penalty.remove()  # doctest: +SKIP

    Raises:
        ValueError: ``q`` is not a finite number in ``(0, MAX_Q]`` or ``weight`` not a finite number >= 0
            (both :class:`~hf_sparseout.errors.UsageError`, with a hint), the
            model has no patched sites, or a ``targets`` pattern matches no site (the message
            lists the sites).
    """

    def __init__(
        self,
        model: nn.Module,
        q: float,
        weight: float,
        targets: str | Sequence[str] | None = None,
    ) -> None:
        self.q = _check_q(q)
        self.weight = _check_number("weight", weight, positive=False)
        if isinstance(targets, (list, tuple)):
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise UsageError(
                    f"LqPenalty: targets must be a non-empty list of site names, got {targets!r}", _TARGETS
                )
            targets = list(targets)
        elif targets is not None and not (isinstance(targets, str) and targets):
            raise UsageError(
                f"LqPenalty: targets must be a list of site names or a regex string, got {targets!r}", _TARGETS
            )
        self.model = model
        self.modules: dict[str, nn.Module] = self._select(model, targets)
        self.site_names: list[str] = list(self.modules)
        self._sums: dict[str, list[torch.Tensor]] = {}
        self._mask: torch.Tensor | None = None
        self._handles: list[Any] = [
            model.register_forward_pre_hook(self._root_pre, with_kwargs=True),
            model.register_forward_hook(self._root_post, always_call=True),
        ]
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._site_hook(name), with_kwargs=True))

    @staticmethod
    def _select(model: nn.Module, targets: str | list[str] | None) -> dict[str, nn.Module]:
        found = _find_patched(model)
        if found is None:
            raise ValueError(
                f"LqPenalty: {type(model).__name__} has no patched Sparseout sites: call hf_sparseout.patch(model, "
                "SparseoutConfig(...)) first (SparseoutConfig(p=0.0) gives identity sites for the penalty alone)"
            )
        prefix, patched = found
        sites = get_report(patched).sparseout_sites
        names = [s.name for s in sites]
        missing = unmatched(targets, names)
        if missing:
            raise UsageError(
                f"LqPenalty: targets pattern(s) {missing} match no patched site; sites: {abbreviate(names)}", _TARGETS
            )
        chosen = [s for s in sites if select(targets, s.name) and (targets is not None or s.kind != "attention")]
        if not chosen:
            raise ValueError(
                "LqPenalty: every patched site is an attention-probability site, which targets=None leaves out; "
                f"name them with targets to penalise them anyway: {abbreviate(names)}"
            )
        out: dict[str, nn.Module] = {}
        for site in chosen:
            module = patched.get_submodule(site.module)
            if not isinstance(module, Sparseout):  # defensive: the report and the module tree disagree
                raise ValueError(f"LqPenalty: site {site.name} has no Sparseout module at {site.module}")
            out[f"{prefix}.{site.name}" if prefix else site.name] = module
        return out

    # -- hooks ---------------------------------------------------------------------------------

    def _root_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if _in_backward():
            return
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        self._sums = {}

    def _root_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not _in_backward():
            self._mask = None

    def _site_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() > 0 and not _in_backward():
                # Our own (identity) saved-tensor hooks: inside a non-reentrant checkpointed block the
                # penalty's tensors are kept as usual instead of being counted by the checkpoint, whose
                # recomputation (where this hook does nothing) must save exactly what the forward saved.
                with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
                    self._add(name, x)

        return hook

    def _add(self, name: str, x: torch.Tensor) -> None:
        mask = None if self._mask is None else (self._mask.detach().to(x.device) != 0).to(torch.float32)
        w = weights_for(x, mask)
        powered = abs_pow(x, self.q)
        if w.cols is not None:
            powered = powered * w.cols
        per_vector = powered.sum(-1)
        n = w.n if isinstance(w.n, int) else w.n.to(per_vector.dtype).expand(per_vector.shape)
        if w.rows is not None:
            rows = w.rows.to(per_vector.dtype).expand(per_vector.shape)
            total, count = (per_vector * rows).sum(), (rows * n).sum().detach()
        else:
            total = per_vector.sum()
            count = per_vector.new_tensor(float(per_vector.numel() * n)) if isinstance(n, int) else n.sum()
        previous = self._sums.get(name)
        self._sums[name] = [total, count] if previous is None else [previous[0] + total, previous[1] + count]

    # -- results -------------------------------------------------------------------------------

    def site_means(self) -> dict[str, torch.Tensor]:
        """``mean(|x| ** q)`` per site seen in the last forward (differentiable tensors, padding excluded)."""
        return {name: total / count.clamp_min(1) for name, (total, count) in self._sums.items()}

    def penalty(self) -> torch.Tensor:
        """``weight * mean over sites of mean(|x| ** q)`` for the last forward of the model.

        Raises:
            RuntimeError: no selected site was called since the last forward began (e.g. no
                forward yet, or the penalty was removed).
        """
        means = self.site_means()
        if not means:
            raise RuntimeError(
                "LqPenalty: no selected site was called in the last forward (none yet, or the penalty was removed); "
                f"sites: {abbreviate(self.site_names, 10)}"
            )
        return self.weight * torch.stack(list(means.values())).mean()

    __call__ = penalty

    def remove(self) -> None:
        """Remove every hook this penalty installed and forget the last forward."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._sums = {}
        self._mask = None

    def __enter__(self) -> LqPenalty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


__all__ = ["MAX_Q", "LqPenalty", "abs_pow"]
