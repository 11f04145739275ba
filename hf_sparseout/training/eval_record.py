"""Evaluating a run: one eval pass with a ``SparsityMonitor``, recorded with the training loss since the last."""

from __future__ import annotations

import time
from typing import Any

import torch

from hf_sparseout.logs import get_logger
from hf_sparseout.training import best_model
from hf_sparseout.training.diagnostics import EvalRecord, mean_since
from hf_sparseout.training.evaluation import evaluate
from hf_sparseout.training.run_state import RunContext
from hf_sparseout.training.sparsity import make_monitor, summarize

logger = get_logger(__name__)


def measure(ctx: RunContext) -> tuple[EvalRecord, dict[str, Any]]:
    """One eval pass with a ``SparsityMonitor``: (gathered metrics with overall sparsity, ``summarize`` output)."""
    monitor = make_monitor(ctx.accelerator.unwrap_model(ctx.model))
    start = time.perf_counter()
    metrics: EvalRecord = dict(
        evaluate(ctx.model, ctx.eval_dl, ctx.accelerator, ctx.task, ctx.inputs.num_labels, monitor=monitor)
    )
    ctx.last_eval_seconds = time.perf_counter() - start
    sparsity = summarize(monitor)
    metrics["hoyer"] = sparsity["overall"]["hoyer"]
    metrics["relative_near_zero_fraction"] = sparsity["overall"]["relative_near_zero_fraction"]
    return metrics, sparsity


def measure_init(ctx: RunContext) -> None:
    """``RunResult.init``: the sparsity of the untrained model on the eval data."""
    metrics, _ = measure(ctx)
    ctx.result.init = {k: metrics[k] for k in ("hoyer", "relative_near_zero_fraction")}


def evaluate_and_record(ctx: RunContext) -> None:
    """Evaluate; record it with the training loss (and penalty) since the previous evaluation; log it; train on."""
    result = ctx.result
    metrics, sparsity = measure(ctx)
    # the mean training loss (in training mode, with the noise) since the previous evaluation
    metrics["train_loss"] = mean_since(result.train_loss, ctx.last_eval_step, result.global_step)
    if ctx.lq is not None and ctx.penalty_terms:
        metrics["lq_penalty"] = torch.stack(ctx.penalty_terms).float().mean().item()
        ctx.penalty_terms.clear()
    ctx.last_eval_step = result.global_step
    result.sparsity = sparsity
    result.evals.append({"step": result.global_step, **metrics})
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    logger.info(f"[{ctx.name}] eval @ step {result.global_step}: {shown}")
    ctx.accelerator.log({f"{ctx.name}/{k}": v for k, v in metrics.items()}, step=result.global_step)
    if result.best is not None:
        track_best(ctx)
    ctx.model.train()


def track_best(ctx: RunContext) -> None:
    """``--load-best-model-at-end``: count the evaluation just recorded against the best so far; write the
    model's copy when it is better; ask training to stop after ``--early-stopping-patience`` evaluations
    without improvement (the decision is the same on every process: the metrics are gathered)."""
    result, best = ctx.result, ctx.result.best
    assert best is not None
    if best_model.update(best, result.evals[-1]):
        best_model.save_copy(ctx.accelerator, ctx.model, ctx.ckpt_dir, best)
        return
    patience = ctx.args.early_stopping_patience
    if patience and best["evals_without_improvement"] >= patience and result.global_step < ctx.total:
        reason = (
            f"early stopping: {patience} evaluation{'s' if patience > 1 else ''} without improving "
            f"{best['metric']} (best {best['value']:.6g} at step {best['step']})"
        )
        result.stopped_early = {"step": result.global_step, "reason": reason}
        logger.info(f"[{ctx.name}] {reason}")
        ctx.stop = True
