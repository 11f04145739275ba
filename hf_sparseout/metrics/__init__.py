"""Activation-sparsity metrics, the streaming SparsityMonitor, plots and the `evaluate` module."""

from pathlib import Path

from hf_sparseout.metrics.functions import (
    DEFAULT_NEAR_ZERO_THRESHOLD,
    DEFAULT_RELATIVE_NEAR_ZERO,
    hoyer,
    l1_l2_ratio,
    mean_abs,
    near_zero_fraction,
    relative_near_zero_fraction,
    zero_fraction,
)
from hf_sparseout.metrics.monitor import SparsityMonitor
from hf_sparseout.metrics.plotting import plot_sparsity


def evaluate_module_path() -> str:
    """The folder of the ``activation_sparsity`` metric: ``evaluate.load(evaluate_module_path())`` runs offline."""
    return str(Path(__file__).resolve().parent / "evaluate" / "activation_sparsity")


__all__ = [
    "DEFAULT_NEAR_ZERO_THRESHOLD",
    "DEFAULT_RELATIVE_NEAR_ZERO",
    "SparsityMonitor",
    "evaluate_module_path",
    "hoyer",
    "l1_l2_ratio",
    "mean_abs",
    "near_zero_fraction",
    "plot_sparsity",
    "relative_near_zero_fraction",
    "zero_fraction",
]
