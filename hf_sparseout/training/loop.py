"""One training run with accelerate: patched (Sparseout) or the dropout baseline.

The baseline is the same patch with ``q = 2``: Sparseout at q = 2 *is* inverted dropout (it calls
``F.dropout``), so the two runs share the model, the seed, the data order and the measured sites.

A run is a few named steps around one :class:`RunContext`, built by :func:`prepare_run` from the
:class:`RunInputs` every run of a ``finetune`` shares: :func:`prepare_run` (seed, model, patch,
optimizer, scheduler, ``accelerator.prepare``, resume) → :func:`measure_init` (the untrained model) →
:func:`train` (per batch :func:`train_step`; per optimizer step :func:`record_step`, then
:func:`evaluate_and_record` and :func:`save_checkpoint` when due) → :func:`finish` (timing, the final
evaluation, the best model) → (``finetune`` saves the model and its files) → :func:`analyse` (the sparsity
curve, whose failure is recorded, never fatal).

The steps live in modules named for them: ``run_state`` (the records), ``prepare``, ``steps`` (training),
``eval_record``, ``checkpointing`` and ``finish``; their public names are re-exported here.
"""

from __future__ import annotations

from hf_sparseout.training.checkpointing import checkpoint_due, save_checkpoint
from hf_sparseout.training.eval_record import evaluate_and_record, measure, measure_init
from hf_sparseout.training.finish import analyse, finish, record_sparsity_curve, restore_best, save_final
from hf_sparseout.training.prepare import prepare_run, sparseout_config
from hf_sparseout.training.run_state import Collate, OptimizerStep, RunContext, RunInputs, RunResult
from hf_sparseout.training.steps import record_step, train, train_epoch, train_step

__all__ = [
    "Collate",
    "OptimizerStep",
    "RunContext",
    "RunInputs",
    "RunResult",
    "analyse",
    "checkpoint_due",
    "evaluate_and_record",
    "finish",
    "measure",
    "measure_init",
    "prepare_run",
    "record_sparsity_curve",
    "record_step",
    "restore_best",
    "run",
    "save_checkpoint",
    "save_final",
    "sparseout_config",
    "train",
    "train_epoch",
    "train_run",
    "train_step",
]


def run(inputs: RunInputs, name: str, q: float, p: float | None = None, penalty: bool = False) -> RunResult:
    """Train one model (``name`` = ``sparseout``, ``dropout`` or ``p=0``: ``run_names``), evaluate it along the
    way, then run the optional analyses (``finetune`` saves in between: it uses :func:`train_run` and :func:`analyse`).

    ``p`` overrides ``args.p`` for every site (0 for the p = 0 control); ``penalty`` adds
    ``--lq-penalty`` to the loss. Before training, the untrained model's sparsity on the eval data
    is measured (``RunResult.init``); every optimizer step records the gradient norm before clipping.
    """
    ctx = train_run(inputs, name, q, p, penalty)
    analyse(ctx)
    return ctx.result


def train_run(inputs: RunInputs, name: str, q: float, p: float | None = None, penalty: bool = False) -> RunContext:
    """:func:`prepare_run` → :func:`measure_init` → :func:`train` → :func:`finish`: the run, trained and finally
    evaluated (the best model loaded with ``--load-best-model-at-end``), its context kept for :func:`analyse`."""
    ctx = prepare_run(inputs, name, q, p, penalty)
    if not ctx.result.init:  # the untrained model on the same eval data (a resumed run kept its own)
        measure_init(ctx)
    train(ctx)
    finish(ctx)
    return ctx
