"""An independent oracle for the patcher tests: count the dropouts a forward pass applies.

Written separately from the library's probe on purpose: it counts every dropout applied with
``p > 0`` in training (``F.dropout``/``torch.dropout`` and friends, ``dropout_p > 0`` reaching
SDPA), and every Sparseout module application with ``p > 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import hf_sparseout

_DROPOUTS = {
    F.dropout: (1, "p", 2, "training"),
    torch.dropout: (1, "p", 2, "train"),
    F.dropout1d: (1, "p", 2, "training"),
    F.dropout2d: (1, "p", 2, "training"),
    F.dropout3d: (1, "p", 2, "training"),
    F.alpha_dropout: (1, "p", 2, "training"),
    F.feature_alpha_dropout: (1, "p", 2, "training"),
}


def _get(args, kwargs, i, name, default):
    return kwargs[name] if name in kwargs else (args[i] if len(args) > i else default)


class PlainDropoutCounter(TorchFunctionMode):
    """Counts plain dropout applications with p > 0 (thread-local, like every torch function mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DROPOUTS:
            i, name, j, tname = _DROPOUTS[func]
            if float(_get(args, kwargs, i, name, 0.5)) > 0 and _get(args, kwargs, j, tname, True):
                self.count += 1
        elif func is F.scaled_dot_product_attention and float(_get(args, kwargs, 4, "dropout_p", 0.0)) > 0:
            self.count += 1
        return func(*args, **kwargs)


class SparseoutCounter:
    """Counts Sparseout module applications with p > 0 in training mode, via forward pre-hooks."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self.handles = [
            m.register_forward_pre_hook(self._hook) for m in model.modules() if isinstance(m, hf_sparseout.Sparseout)
        ]

    def _hook(self, module, args) -> None:
        if module.training and module.p > 0:
            self.count += 1

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def count_applications(model: torch.nn.Module, inputs: dict) -> tuple[int, int]:
    """(plain dropouts with p > 0, Sparseout applications) in one training-mode forward."""
    was_training = model.training
    model.train()
    sparse = SparseoutCounter(model)
    try:
        with torch.no_grad(), PlainDropoutCounter() as plain:
            model(**inputs)
    finally:
        sparse.remove()
        model.train(was_training)
    return plain.count, sparse.count
