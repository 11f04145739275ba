"""Faults put into a finetune run from outside: a NaN weight, a non-finite loss at chosen steps; and the
saved weights of a run, to compare two runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
from torch import nn


def wrap_build_model(monkeypatch: pytest.MonkeyPatch, change: Callable[[nn.Module], None]) -> None:
    """Every model ``finetune`` builds goes through ``change`` first (``runner.build_model`` wrapped)."""
    from hf_sparseout.training import runner

    original = runner.build_model

    def build(*args, **kwargs):
        model = original(*args, **kwargs)
        change(model)
        return model

    monkeypatch.setattr(runner, "build_model", build)


def nan_weight(model: nn.Module) -> None:
    """One weight of the first layer-norm set to NaN (every forward from then on gives NaN)."""
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "ln" in n or "norm" in n).view(-1)[0] = float("nan")


def nonfinite_loss_at(steps: Iterable[int]) -> Callable[[nn.Module], None]:
    """A change that makes the loss of the ``steps``-th training forwards (1-based) NaN (the patch's probe,
    a training-mode forward without gradients, is not counted)."""
    bad = set(steps)

    def change(model: nn.Module) -> None:
        seen = {"n": 0}

        def hook(module: nn.Module, args: object, output: object) -> object:
            if not (module.training and torch.is_grad_enabled()):
                return output
            seen["n"] += 1
            if seen["n"] in bad:
                output.loss = output.loss * float("nan")
            return output

        model.register_forward_hook(hook)

    return change


def saved_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``directory/model.safetensors``."""
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-identical tensors under the same names."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
