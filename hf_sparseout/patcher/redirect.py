"""Redirect dropout calls whose ``p`` is a site marker to that site's Sparseout module.

transformers reads many dropout probabilities as floats (``F.dropout(h, p=self.dropout)``,
``attention_interface(..., dropout=self.attn_dropout.p)``, SDPA's ``dropout_p``). The patcher
replaces those floats with :class:`SiteP`, a ``float`` that also carries its Sparseout module,
and runs the owning module's forward under :class:`RedirectMode`, a thread-local
``TorchFunctionMode`` that sends exactly those calls to the site's module (through its
``__call__``, so hooks such as the sparsity monitor see them). Calls with ordinary floats pass
through untouched, so other models and threads are unaffected.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from hf_sparseout.patcher.calls import DROPOUT_FUNCS, ELEMENTWISE, SDPA_DROPOUT, get_arg, with_arg


class SiteP(float):
    """A dropout probability that knows which Sparseout module should apply it."""

    site: str
    module: nn.Module

    def __new__(cls, value: float, site: str, module: nn.Module) -> SiteP:
        obj = super().__new__(cls, value)
        obj.site = site
        obj.module = module
        return obj

    def __repr__(self) -> str:
        return float.__repr__(self)

    def __reduce__(self) -> tuple:
        # copy.deepcopy / pickle: rebuild with the (copied) module, so a copy redirects to its own site.
        return (SiteP, (float(self), self.site, self.module))


def attention_with_site(site: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """``scaled_dot_product_attention`` with ``site`` (a Sparseout module) on the probabilities.

    The flash Triton kernel (:mod:`hf_sparseout.kernels.attention_op`) when the call qualifies (CUDA, triton,
    supported shape and dtype, no hooks on the site); otherwise computed explicitly (scores, softmax, the
    site's module on the probabilities, matmul), also when the kernel fails to compile or launch
    (``explicit (flash failed: <cause>)``, warned once). ``site.attention_path`` records the path of the last call.
    """
    query, key, value = (get_arg(args, kwargs, i, n, None) for i, n in enumerate(("query", "key", "value")))
    attn_mask = get_arg(args, kwargs, 3, "attn_mask", None)
    is_causal = get_arg(args, kwargs, 5, "is_causal", False)
    scale = get_arg(args, kwargs, 6, "scale", None)
    from hf_sparseout.kernels.attention_op import flash_path_reason, sparseout_attention_or_reason

    why = "hooks on the site need the probabilities" if site._forward_hooks or site._forward_pre_hooks else None
    why = why or flash_path_reason(
        query, key, value, attn_mask, float(site.q), getattr(site, "noise", "raw"), kwargs.get("enable_gqa", False)
    )
    site.attention_path = "flash" if why is None else f"explicit: {why}"
    if why is None:
        out, failed = sparseout_attention_or_reason(
            query, key, value, attn_mask, is_causal, scale, float(site.p), float(site.q), site.gradient
        )
        if out is not None:
            return out
        site.attention_path = f"explicit (flash failed: {failed})"
    if kwargs.get("enable_gqa", False) and key.size(-3) != query.size(-3):
        groups = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(groups, dim=-3), value.repeat_interleave(groups, dim=-3)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    q_len, k_len = query.size(-2), key.size(-2)
    if is_causal:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).nan_to_num(0.0).to(query.dtype)
    return torch.matmul(site(probs), value)


class RedirectMode(TorchFunctionMode):
    """Send dropout and SDPA calls whose probability is a :class:`SiteP` to its Sparseout module.

    ``by_value`` maps exact probability values to site modules, for readers that pass
    ``float(p)`` (a plain float) instead of the attribute itself; the patch gives those sites a
    value no other probability of the model has.
    """

    def __init__(self, by_value: dict[float, nn.Module] | None = None) -> None:
        super().__init__()
        self.by_value = by_value or {}

    def _site(self, p: Any) -> nn.Module | None:
        if isinstance(p, SiteP):
            return p.module
        if self.by_value and type(p) is float:
            return self.by_value.get(p)
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in ELEMENTWISE:
            p_index, p_name, t_index, t_name = DROPOUT_FUNCS[func]
            site = self._site(get_arg(args, kwargs, p_index, p_name, 0.5))
            if site is not None:
                x = get_arg(args, kwargs, 0, "input", None)
                if get_arg(args, kwargs, t_index, t_name, True) or not site.training:
                    # In eval the module is the identity, but calling it lets hooks (SparsityMonitor) see the site.
                    return site(x)
                return x
        elif func is F.scaled_dot_product_attention:
            p = get_arg(args, kwargs, *SDPA_DROPOUT, 0.0)
            site = self._site(p)
            if site is not None:
                if site.training and p > 0:
                    return attention_with_site(site, args, kwargs)
                args, kwargs = with_arg(args, kwargs, *SDPA_DROPOUT, 0.0)
        return func(*args, **kwargs)


class _UnderRedirect:
    """Call ``fn`` under :class:`RedirectMode` (picklable, unlike a lambda)."""

    def __init__(self, fn: Any, by_value: dict[float, nn.Module] | None = None) -> None:
        self.fn = fn
        self.by_value = by_value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with RedirectMode(self.by_value):
            return self.fn(*args, **kwargs)


class RedirectingCheckpoint:
    """Wraps a layer's ``_gradient_checkpointing_func`` so the recomputation is redirected too.

    transformers' ``GradientCheckpointingLayer`` checkpoints the class's ``forward`` (not the
    instance's), and the backward pass may recompute it on another thread: the function it
    checkpoints must enter the mode itself.
    """

    def __init__(self, inner: Any, by_value: dict[float, nn.Module] | None = None) -> None:
        self.inner = inner
        self.by_value = by_value

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inner(_UnderRedirect(fn, self.by_value), *args, **kwargs)


class RedirectingForward:
    """An instance-level ``forward`` that runs the previous one under :class:`RedirectMode`.

    A callable object rather than a closure, so ``copy.deepcopy`` of a patched model re-binds
    it to the copy. If the module has a gradient-checkpointing function (set whenever
    ``gradient_checkpointing_enable`` runs), it is wrapped on the way in.
    """

    def __init__(self, module: nn.Module, inner: Any, by_value: dict[float, nn.Module] | None = None) -> None:
        self.module = module
        self.inner = inner
        self.by_value = by_value
        functools.update_wrapper(self, inner)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ckpt = self.module.__dict__.get("_gradient_checkpointing_func")
        if ckpt is not None and not isinstance(ckpt, RedirectingCheckpoint):
            self.module._gradient_checkpointing_func = RedirectingCheckpoint(ckpt, self.by_value)
        with RedirectMode(self.by_value):
            return self.inner(*args, **kwargs)


class InsertHook:
    """A forward hook that applies a Sparseout module to its module's tensor output."""

    def __init__(self, site: nn.Module) -> None:
        self.site = site

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return self.site(output)
        return output
