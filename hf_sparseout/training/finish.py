"""The end of a run: timing, the final evaluation, the best model, saving it, then the optional analyses."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hf_sparseout.logs import get_logger
from hf_sparseout.training import best_model, threshold_curve, timing
from hf_sparseout.training.args import UsageError
from hf_sparseout.training.eval_record import evaluate_and_record, measure
from hf_sparseout.training.run_state import RunContext, RunResult

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

logger = get_logger(__name__)


def finish(ctx: RunContext) -> None:
    """Close the progress bar, record time, throughput and peak memory, run the final evaluation (unless the
    run stopped just after one) and, with ``--load-best-model-at-end``, load and evaluate the best model."""
    result = ctx.result
    if ctx.bar is not None:
        ctx.bar.close()
    result.train_seconds = time.perf_counter() - ctx.start
    result.conditions["load_end"] = timing.load_average()
    result.throughput = ctx.seen_units / max(result.train_seconds, 1e-9)
    result.throughput_unit = "tokens/s" if ctx.task == "causal-lm" else "samples/s"
    if torch.cuda.is_available():
        result.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    if not result.evals or ctx.last_eval_step != result.global_step:
        evaluate_and_record(ctx)
    if result.best is not None:
        restore_best(ctx)


def restore_best(ctx: RunContext) -> None:
    """``--load-best-model-at-end``: when the best evaluation is not the last, load its copy into the model
    and evaluate it again; that evaluation (at the best step, with the training loss recorded there) is
    the run's final one, and the per-site sparsity is the best model's."""
    result, best = ctx.result, ctx.result.best
    assert best is not None
    if best["step"] is None or best["step"] == result.last.get("step"):
        return
    if not best_model.load_copy(ctx.accelerator, ctx.model, ctx.ckpt_dir, best["step"]):
        result.analysis_errors["load_best_model"] = (
            f"the copy of the best model (step {best['step']}) is not on disk (a resume that ended before the "
            "step its copy was written at); the last model is kept"
        )
        logger.warning(f"[{ctx.name}] {result.analysis_errors['load_best_model']}")
        return
    metrics, sparsity = measure(ctx)
    at_best = next(e for e in result.evals if e["step"] == best["step"])
    result.best_final = {**at_best, **metrics}
    result.sparsity = sparsity
    logger.info(
        f"[{ctx.name}] loaded the best model (step {best['step']}, {best['metric']}={best['value']:.6g}); "
        f"re-evaluated: {best['metric']}={metrics.get(best['metric'], float('nan')):.6g}"
    )


def analyse(ctx: RunContext) -> None:
    """The optional end-of-run analyses (``--sparsity-curve``), run after the model and its files are saved.

    A failure never loses the run: it is recorded in ``RunResult.analysis_errors`` (metrics.json, report,
    summary); one refused for the run's options (a ``ThresholdError``) is also kept in ``RunResult.refused``,
    which ``finetune`` raises once everything is written (exit 2 with the hint).
    """
    from hf_sparseout.metrics.threshold_sites import ThresholdError

    if not ctx.args.sparsity_curve:
        return
    result = ctx.result
    loss = result.final.get("eval_loss")
    if not (isinstance(loss, (int, float)) and math.isfinite(loss)):
        result.analysis_errors["sparsity_curve"] = (
            f"sparsity curve not computed: the final evaluation is non-finite (eval_loss={loss})"
        )
    else:
        try:
            record_sparsity_curve(ctx)
            return
        except ThresholdError as err:
            result.analysis_errors["sparsity_curve"] = f"sparsity curve failed: {err}"
            result.refused = UsageError(
                f"the run finished and is saved in {ctx.args.output_dir!r}, but --sparsity-curve failed: "
                f"{str(err).split(' (hint: ')[0]}",
                err.hint or "see --sparsity-sites and --sparsity-targets",
            )
        except Exception as err:  # an optional analysis: recorded, the run is kept
            result.analysis_errors["sparsity_curve"] = f"sparsity curve failed: {type(err).__name__}: {err}"
    logger.warning(f"[{ctx.name}] {result.analysis_errors['sparsity_curve']}")


def record_sparsity_curve(ctx: RunContext) -> None:
    """``--sparsity-curve``: the thresholding curve of the kept model (``ctx.model``), on its own eval set."""
    result = ctx.result
    curve = threshold_curve.final_curve(ctx)
    result.curve = curve
    result.final.update(
        sparsity_at_1pct=curve.sparsity_at_1pct,
        sparsity_at_5pct=curve.sparsity_at_5pct,
        metric_at_sparsity=curve.metric_at_sparsity,
    )
    shown = ", ".join(f"{p.target:g}: {p.sparsity:.3f} -> {p.metrics[curve.metric]:.4g}" for p in curve.points)
    logger.info(f"[{ctx.name}] sparsity curve (target: reached -> {curve.metric}): {shown}")


def save_final(
    result: RunResult, accelerator: Accelerator, tokenizer: PreTrainedTokenizerBase, directory: Path
) -> None:
    """Save the trained (still patched) model and tokenizer atomically, in ``save_pretrained`` layout."""
    from hf_sparseout.hub import save_pretrained

    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(result.model)
    save_pretrained(
        model, directory, tokenizer, is_main_process=accelerator.is_main_process, save_function=accelerator.save
    )
    accelerator.wait_for_everyone()
