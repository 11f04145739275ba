"""Fixed log-spaced bins for streaming histograms of activation magnitudes ``|a|``.

Bin layout for ``bins`` log-spaced bins over ``[low, high)``: index 0 holds exact zeros,
index 1 magnitudes in ``(0, low)``, indices ``2 .. bins + 1`` the log-spaced bins, and index
``bins + 2`` magnitudes ``>= high`` (and non-finite values). The edges never depend on the
data, so counts from many batches and processes add up, and memory is ``bins + 3`` numbers.
"""

from __future__ import annotations

import math

import torch

DEFAULT_BINS: int = 72
DEFAULT_RANGE: tuple[float, float] = (1e-6, 1e3)
"""Nine decades, 8 bins each: attention probabilities down to 1e-6, hidden states up to 1e3."""


def check_range(bins: int, value_range: tuple[float, float]) -> None:
    """Raise ``ValueError`` unless ``bins >= 1`` and ``0 < low < high`` are finite."""
    low, high = value_range
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"histogram bins must be an integer >= 1, got {bins!r}")
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise ValueError(f"histogram range must be finite with 0 < low < high, got {value_range!r}")


def edges(bins: int = DEFAULT_BINS, value_range: tuple[float, float] = DEFAULT_RANGE) -> torch.Tensor:
    """The ``bins + 1`` float64 edges of the log-spaced bins."""
    low, high = value_range
    return torch.logspace(math.log10(low), math.log10(high), bins + 1, dtype=torch.float64)


def bin_index(a: torch.Tensor, bins: int, value_range: tuple[float, float]) -> torch.Tensor:
    """The bin (see the module docstring) of each magnitude in ``a`` (a float tensor of ``|x|``)."""
    low, high = value_range
    lo, width = math.log10(low), (math.log10(high) - math.log10(low)) / bins
    pos = torch.nan_to_num(a, nan=math.inf).log10_().sub_(lo).div_(width).floor_()
    idx = pos.clamp_(-1, bins).to(torch.long).add_(2)
    return idx.masked_fill_(a == 0, 0)
