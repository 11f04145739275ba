"""An independent oracle for the patcher tests: count the dropouts a forward pass applies.

Written separately from the library's probe on purpose: it counts every dropout applied with
``p > 0`` in training (``F.dropout``/``torch.dropout`` and friends, ``dropout_p > 0`` reaching
SDPA), and every Sparseout module application with ``p > 0``.
"""

from __future__ import annotations

import sys
from pathlib import Path

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


_TORCH_DIR = str(Path(torch.__file__).parent)


def _caller() -> tuple[str, int]:
    """The first frame outside torch and this file: the line of model code that called the dropout."""
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_TORCH_DIR) or frame.f_code.co_filename == __file__
    ):
        frame = frame.f_back
    return (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("?", 0)


class PlainDropoutCounter(TorchFunctionMode):
    """Counts plain dropout applications with p > 0 (thread-local, like every torch function mode).

    ``places``: the distinct source lines (file, line) that made them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.places: set[tuple[str, int]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        applied = False
        if func in _DROPOUTS:
            i, name, j, tname = _DROPOUTS[func]
            applied = float(_get(args, kwargs, i, name, 0.5)) > 0 and bool(_get(args, kwargs, j, tname, True))
        elif func is F.scaled_dot_product_attention:
            applied = float(_get(args, kwargs, 4, "dropout_p", 0.0)) > 0
        if applied:
            self.count += 1
            self.places.add(_caller())
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
