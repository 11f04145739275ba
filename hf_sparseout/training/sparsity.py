"""Activation sparsity during ``finetune`` evaluations, through :class:`SparsityMonitor`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from hf_sparseout.metrics.monitor import SparsityMonitor


def make_monitor(model: nn.Module) -> SparsityMonitor:
    """A monitor on every Sparseout site of the (patched) model; both runs are patched, so sites match."""
    from hf_sparseout.metrics.monitor import SparsityMonitor

    return SparsityMonitor(model)


def summarize(monitor: SparsityMonitor) -> dict[str, Any]:
    """Overall and per-site metrics, reduced across processes; sites unseen in eval are left out.

    In eval, attention-probability sites are not applied by the model at all (it passes
    ``dropout=0.0``), so only module and functional sites are measured.
    """
    result = monitor.compute()
    sites = {name: values for name, values in result["sites"].items() if values["vectors"] > 0}
    return {"overall": result["overall"], "sites": sites}
