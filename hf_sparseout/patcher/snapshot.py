"""Take and restore everything an instrumented forward pass could change on a model.

A training-mode forward can update buffers (I-BERT's ``QuantAct`` running ``x_min``/``x_max``,
BatchNorm statistics), reassign attributes (caches), flip training flags, and leave hooks behind
if it fails. :class:`ModelSnapshot` records, per module, its instance attributes (a shallow copy
of ``__dict__``), its training flag, its hook dictionaries, its buffers (object and value) and its
parameters (object and version counter), plus the instance attributes of every config object
reachable from the model; :meth:`ModelSnapshot.restore` puts all of it back. Parameters are not
copied (that would double the model's memory): a parameter written in place during the pass is an
error, since nothing in a forward under ``torch.no_grad`` should do that.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_DICTS = (
    "_modules",
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


class ModelSnapshot:
    """The restorable state of ``model`` and of the ``configs`` given (see the module docstring)."""

    def __init__(self, model: nn.Module, configs: list[Any] = ()) -> None:
        self.modules: list[tuple[nn.Module, dict[str, Any]]] = []
        self.dicts: list[tuple[dict, dict]] = []
        self.buffers: list[tuple[dict, dict[str, Any], dict[str, torch.Tensor | None]]] = []
        self.params: list[tuple[dict, dict[str, Any], dict[str, int]]] = []
        for module in model.modules():
            self.modules.append((module, dict(vars(module))))
            for name in _DICTS:
                hooks = vars(module).get(name)
                if isinstance(hooks, dict):
                    self.dicts.append((hooks, dict(hooks)))
            buffers = module._buffers
            values = {k: None if b is None else b.detach().clone() for k, b in buffers.items()}
            self.buffers.append((buffers, dict(buffers), values))
            params = module._parameters
            self.params.append((params, dict(params), {k: p._version for k, p in params.items() if p is not None}))
        self.configs = [(config, dict(vars(config))) for config in configs]

    def restore(self) -> None:
        """Put back attributes, training flags, hooks, buffers (objects and values) and config attributes.

        Raises ``RuntimeError`` (after restoring everything else) if a parameter was written in place.
        """
        for target, saved in [*self.modules, *self.configs]:
            current = vars(target)
            for key in [k for k in current if k not in saved]:
                del current[key]
            for key, value in saved.items():
                if current.get(key, saved) is not value:
                    current[key] = value
        for hooks, saved in self.dicts:
            hooks.clear()
            hooks.update(saved)
        for buffers, saved, values in self.buffers:
            buffers.clear()
            buffers.update(saved)
            with torch.no_grad():
                for key, value in values.items():
                    if value is not None and not torch.equal(saved[key], value):
                        saved[key].copy_(value)
        changed = []
        for params, saved, versions in self.params:
            params.clear()
            params.update(saved)
            changed += [k for k, v in versions.items() if saved[k]._version != v]
        if changed:
            raise RuntimeError(
                f"the forward pass wrote parameters {changed[:5]} in place; hf-sparseout cannot undo that "
                "(report it with the model type)"
            )
