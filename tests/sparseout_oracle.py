"""An independent float64 oracle for the Sparseout op tests (written from the formulas, not from the op).

Given the keep mask ``m`` (reproducible: re-seed and call ``draw_mask``)::

    noise  = m / (1 - p) - 1
    out    = x + sign(x) * |x| ** (q / 2) * noise
    factor = 1 + min(c * |x| ** e, MAX_SCALE) * noise       (c, e) = (1, (q - 2) / 2)   reference
                                                            (c, e) = (q / 2, q / 2 - 1) exact
"""

from __future__ import annotations

import torch

from hf_sparseout.ops.sparseout import draw_mask

MAX_SCALE = 1e4  # the documented clamp, kept independent of the library's constant


def mask_for(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The mask the op draws for ``x`` right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return draw_mask(x, p)


def noise64(mask: torch.Tensor, p: float) -> torch.Tensor:
    return mask.double() / (1.0 - p) - 1.0


def out64(x: torch.Tensor, mask: torch.Tensor, p: float, q: float) -> torch.Tensor:
    """The training output in float64 (no saturation: may hold values beyond the input dtype's range)."""
    x64 = x.double()
    return x64 + torch.sign(x64) * x64.abs() ** (q / 2.0) * noise64(mask, p)


def factor64(x: torch.Tensor, mask: torch.Tensor, p: float, q: float, gradient: str) -> torch.Tensor:
    """The backward multiplier in float64, with the documented clamp of the power term."""
    ax = x.double().abs()
    coef, expo = (1.0, (q - 2.0) / 2.0) if gradient == "reference" else (q / 2.0, q / 2.0 - 1.0)
    if coef == 0.0:  # exact rule at q = 0: out = x + sign(x) * noise has derivative 1 (x != 0)
        return torch.ones_like(ax)
    power = (coef * ax**expo).clamp(max=MAX_SCALE)  # 0 ** negative = inf -> MAX_SCALE
    return 1.0 + power * noise64(mask, p)


def factor_bound(p: float) -> float:
    """The documented bound on ``|factor|``: ``1 + MAX_SCALE * max(1, p / (1 - p))``."""
    return 1.0 + MAX_SCALE * max(1.0, p / (1.0 - p))
