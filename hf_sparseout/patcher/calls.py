"""Reading and replacing the arguments of the torch calls the patcher watches.

One table for the probe and the redirection, so what the probe treats as a redirectable site is
exactly what :class:`~hf_sparseout.patcher.redirect.RedirectMode` redirects.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

DROPOUT_FUNCS: dict[Any, tuple[int, str, int, str]] = {
    F.dropout: (1, "p", 2, "training"),
    torch.dropout: (1, "p", 2, "train"),
    F.dropout1d: (1, "p", 2, "training"),
    F.dropout2d: (1, "p", 2, "training"),
    F.dropout3d: (1, "p", 2, "training"),
    F.alpha_dropout: (1, "p", 2, "training"),
    F.feature_alpha_dropout: (1, "p", 2, "training"),
}
"""Every dropout function: (index, name) of its probability and of its training flag."""

ELEMENTWISE = (F.dropout, torch.dropout)
"""The dropouts Sparseout replaces (element-wise masks); channel and alpha dropout are reported, not patched."""

SDPA_DROPOUT = (4, "dropout_p")
"""``scaled_dot_product_attention``'s dropout probability: (index, name)."""


def get_arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    """An argument passed by keyword ``name`` or at position ``index``, else ``default``."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def with_arg(args: tuple, kwargs: dict, index: int, name: str, value: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with that argument replaced by ``value`` where it was passed."""
    if name in kwargs or len(args) <= index:
        return args, {**kwargs, name: value}
    return (*args[:index], value, *args[index + 1 :]), kwargs
