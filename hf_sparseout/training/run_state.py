"""The records of one training run: what every run shares (:class:`RunInputs`), one prepared run
(:class:`RunContext`, passed to each step), what it produced (:class:`RunResult`) and one optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from hf_sparseout.training.args import FinetuneArgs, UsageError
from hf_sparseout.training.diagnostics import EvalRecord, best_eval, grad_norm_summary
from hf_sparseout.training.evaluation import Batch

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.scheduler import AcceleratedScheduler
    from datasets import Dataset
    from tqdm import tqdm

    from hf_sparseout.metrics.threshold import SparsityCurve
    from hf_sparseout.patcher.report import SiteReport
    from hf_sparseout.regularizers import LqPenalty
    from hf_sparseout.training.best_model import BestRecord

Collate = Callable[[list[dict[str, Any]]], Batch]
"""Examples of the tokenised dataset → one batch of tensors (``default_data_collator``, or padding)."""


@dataclass
class RunResult:
    """What one run produced."""

    name: str
    q: float
    report: SiteReport
    evals: list[EvalRecord] = field(default_factory=list)
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    learning_rate: list[tuple[int, float]] = field(default_factory=list)
    sparsity: dict[str, Any] = field(default_factory=dict)
    """The last evaluation's ``summarize`` output: ``overall`` and per-site metrics (JSON-ready)."""
    global_step: int = 0
    train_seconds: float = 0.0
    throughput: float = 0.0
    throughput_unit: str = "tokens/s"
    peak_memory_mb: float | None = None
    model: nn.Module | None = None
    """The trained model as ``accelerator.prepare`` returned it (wrapped under DDP)."""
    curve: SparsityCurve | None = None
    """The final evaluation's ``SparsityCurve`` (``--sparsity-curve``), else None."""
    p: float | None = None
    """The p every site got (``None``: each site's own), e.g. 0 for the p = 0 control."""
    penalty: bool = False
    """Whether this run trained with ``--lq-penalty``."""
    init: dict[str, float] = field(default_factory=dict)
    """Sparsity of the untrained model on the eval data (``hoyer``, ``relative_near_zero_fraction``)."""
    grad_norms: list[tuple[int, float]] = field(default_factory=list)
    """Gradient norm before clipping at every optimizer step."""
    log_every: int = 1
    step_seconds: list[float] = field(default_factory=list)
    """Wall time of each optimizer step this process trained (evaluations and checkpoints excluded)."""
    conditions: dict[str, Any] = field(default_factory=dict)
    """What the step times ran under (``timing.run_conditions``, with ``load_end``)."""
    nonfinite_loss_steps: list[int] = field(default_factory=list)
    """Optimizer steps whose training loss was not finite (never applied; ``--nan-policy``)."""
    skipped_steps: int = 0
    """Of those, the steps skipped by ``--nan-policy skip`` (counted in ``global_step``)."""
    stopped_early: dict[str, Any] | None = None
    """``{"step", "reason"}`` when training ended before its last step (a non-finite loss, early stopping)."""
    best: BestRecord | None = None
    """``--load-best-model-at-end``: the best evaluation (its step, metric and value)."""
    best_final: EvalRecord | None = None
    """``--load-best-model-at-end`` with a best before the last step: the best model's final evaluation."""
    analysis_errors: dict[str, str] = field(default_factory=dict)
    """Optional end-of-run analyses that failed (``sparsity_curve``: the error), after the model was saved."""
    refused: UsageError | None = field(default=None, repr=False)
    """An analysis refused for the run's options: raised once everything is saved (exit 2)."""

    @property
    def final(self) -> EvalRecord:
        """The final evaluation of the model the run keeps (with overall Hoyer sparsity): the last one, or
        with ``--load-best-model-at-end`` the best model's."""
        if self.best_final is not None:
            return self.best_final
        return self.evals[-1] if self.evals else {}

    @property
    def last(self) -> EvalRecord:
        """The evaluation at the run's last step."""
        return self.evals[-1] if self.evals else {}

    def diagnostics(self, task: str) -> dict[str, Any]:
        """``best_eval_*`` and its step, ``hoyer_init`` and ``grad_norm`` (median, max, per logging step)."""
        return {
            **best_eval(self.evals, task),
            "hoyer_init": self.init.get("hoyer"),
            "relative_near_zero_fraction_init": self.init.get("relative_near_zero_fraction"),
            "grad_norm": grad_norm_summary(self.grad_norms, self.log_every),
        }


@dataclass(frozen=True)
class RunInputs:
    """What every run of one ``finetune`` shares (built once by ``runner.finetune``)."""

    args: FinetuneArgs
    accelerator: Accelerator
    make_model: Callable[[], nn.Module]
    """A fresh, unpatched model with the task's head (called once per run, after seeding)."""
    train_set: Dataset
    eval_set: Dataset
    collate: Collate
    task: str
    num_labels: int | None
    calibration_set: Dataset | None = None
    """``--sparsity-curve``: training examples held out of training to calibrate thresholds (else None)."""


@dataclass
class RunContext:
    """One run, prepared by :func:`prepare_run` and passed to each of its steps."""

    inputs: RunInputs
    name: str
    """``sparseout``, ``dropout`` or ``p=0`` (``run_names``): the log prefix and the tracker prefix."""
    q: float
    model: nn.Module
    """Prepared by accelerate (wrapped under DDP); ``accelerator.unwrap_model`` gives the patched model."""
    optimizer: AcceleratedOptimizer
    scheduler: AcceleratedScheduler
    """Sized in process-steps: accelerate steps a prepared scheduler once per process (see ``_scheduler``)."""
    train_dl: DataLoader
    eval_dl: DataLoader
    lq: LqPenalty | None
    """The ``--lq-penalty`` term (main run only), else None."""
    result: RunResult
    """Filled in by the steps (and by a resume), returned by :func:`run`."""
    signature: dict[str, str | int | float]
    ckpt_dir: Path
    total: int
    """Optimizer steps of the run."""
    eval_every: int | None
    """Optimizer steps between evaluations (None: only the final one)."""
    # Where the run is, in the data and between evaluations (a resume restores the first two).
    epoch: int = 0
    batch_in_epoch: int = 0
    last_eval_step: int = 0
    penalty_terms: list[torch.Tensor] = field(default_factory=list)
    """The penalty's terms since the previous evaluation (their mean is logged as ``lq_penalty``)."""
    # Set by :func:`train`.
    running_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    """This process's loss summed over the current accumulation cycle (divided by its length)."""
    running_penalty: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    """This process's ``--lq-penalty`` terms summed over the current accumulation cycle (0 without it)."""
    seen_units: int = 0
    """Tokens (causal LM) or samples seen by every process, for the throughput."""
    start: float = 0.0
    """``time.perf_counter()`` when training started."""
    step_start: float = 0.0
    """``time.perf_counter()`` when the current optimizer step started (after the previous step's evaluation)."""
    last_save: float = 0.0
    """``time.monotonic()`` at the start of training or the last checkpoint (``--save-minutes``)."""
    bar: tqdm | None = None
    last_eval_seconds: float | None = None
    """How long the last eval pass took (the sparsity curve's cost estimate scales it)."""
    stop: bool = False
    """Set by a step that ends training early (``RunResult.stopped_early`` says why)."""

    @property
    def args(self) -> FinetuneArgs:
        return self.inputs.args

    @property
    def accelerator(self) -> Accelerator:
        return self.inputs.accelerator

    @property
    def task(self) -> str:
        return self.inputs.task


@dataclass(frozen=True)
class OptimizerStep:
    """A batch that ended an accumulation cycle: what :func:`record_step` logs about the step it took."""

    lr: float
    """The learning rate this optimizer step used."""
    loss: float
    """The cycle's training loss, the mean over processes (not finite: the step was not applied)."""
    grad_norm: float
    """The gradient norm before clipping (NaN where accelerate cannot measure it)."""
    device: torch.device
    """The loss's device, where the next cycle's running loss starts."""
    penalty: float = 0.0
    """The cycle's ``--lq-penalty`` terms, summed, mean over processes (0 without it)."""

    @property
    def applied(self) -> bool:
        """Whether the optimizer step was taken (its loss and penalty are finite)."""
        return math.isfinite(self.loss) and math.isfinite(self.penalty)
