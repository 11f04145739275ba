"""What the thresholding hooks read: a site's input tensor, the batch's real-token mask, devices and processes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hf_sparseout.metrics.masking import Weights, weights_for
from hf_sparseout.metrics.threshold_sites import ThresholdError


class MaskSource:
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


def real_values(w: Weights, x: torch.Tensor) -> torch.Tensor:
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


def site_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The floating-point, non-empty tensor a site is called with (positional or ``input``/``hidden_states``)."""
    x = args[0] if args else kwargs.get("input", kwargs.get("hidden_states"))
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0 and x.numel() > 0:
        return x
    return None


def distributed() -> Any:
    """``torch.distributed`` when several processes run, else ``None``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors moved to ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
