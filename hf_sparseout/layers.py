"""``nn.Module`` wrappers around the ops."""

from __future__ import annotations

import torch
from torch import nn

from hf_sparseout.ops.sparseout import check_args, sparseout


class Sparseout(nn.Module):
    """Sparseout as a module: a drop-in for ``nn.Dropout`` with an extra exponent ``q``.

    ``.p`` and ``.q`` are plain attributes (transformers reads ``module.p`` and passes it
    to its attention functions). Identity in eval mode. ``noise="matched"`` scales each call's
    noise to dropout's total variance (see :func:`hf_sparseout.sparseout`); the repr shows it
    only when it is not the default ``"raw"``.

    Example:
        >>> layer = Sparseout(p=0.1, q=1.5)
        >>> layer
        Sparseout(p=0.1, q=1.5, inplace=False, gradient='reference')
    """

    def __init__(
        self, p: float = 0.5, q: float = 2.0, inplace: bool = False, gradient: str = "reference", noise: str = "raw"
    ) -> None:
        super().__init__()
        check_args(p, q, gradient, noise)
        self.p = p
        self.q = q
        self.inplace = inplace
        self.gradient = gradient
        self.noise = noise

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        noise = getattr(self, "noise", "raw")  # modules pickled before the field existed
        return sparseout(input, self.p, self.q, self.training, self.inplace, self.gradient, noise)

    def extra_repr(self) -> str:
        text = f"p={float(self.p)!r}, q={float(self.q)!r}, inplace={self.inplace}, gradient={self.gradient!r}"
        noise = getattr(self, "noise", "raw")
        return text if noise == "raw" else f"{text}, noise={noise!r}"
