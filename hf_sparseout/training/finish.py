"""The end of a run: timing, the final evaluation, the sparsity curve, and saving the trained model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hf_sparseout.logs import get_logger
from hf_sparseout.training import threshold_curve
from hf_sparseout.training.eval_record import evaluate_and_record
from hf_sparseout.training.run_state import RunContext, RunResult

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

logger = get_logger(__name__)


def finish(ctx: RunContext) -> None:
    """Close the progress bar, record time, throughput and peak memory, run the final evaluation and,
    with ``--sparsity-curve``, the thresholding curve."""
    result = ctx.result
    if ctx.bar is not None:
        ctx.bar.close()
    result.train_seconds = time.perf_counter() - ctx.start
    result.throughput = ctx.seen_units / max(result.train_seconds, 1e-9)
    result.throughput_unit = "tokens/s" if ctx.task == "causal-lm" else "samples/s"
    if torch.cuda.is_available():
        result.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    evaluate_and_record(ctx)
    if ctx.args.sparsity_curve:
        record_sparsity_curve(ctx)


def record_sparsity_curve(ctx: RunContext) -> None:
    """``--sparsity-curve``: the thresholding curve of the trained model, against the final evaluation."""
    result = ctx.result
    reference = {k: v for k, v in result.final.items() if isinstance(v, float)}
    curve = threshold_curve.final_curve(ctx, reference)
    result.curve = curve
    result.evals[-1].update(sparsity_at_1pct=curve.sparsity_at_1pct, sparsity_at_5pct=curve.sparsity_at_5pct)
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
