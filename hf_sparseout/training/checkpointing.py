"""When a run checkpoints (``--save-steps``, ``--save-minutes``) and what its checkpoint holds; the disk
format (atomic write, rotation, resume) is ``checkpoints.py``."""

from __future__ import annotations

import time

import torch

from hf_sparseout.training import checkpoints
from hf_sparseout.training.run_state import RunContext


def checkpoint_due(ctx: RunContext) -> bool:
    """Every ``--save-steps`` steps, and when ``--save-minutes`` have passed since the last checkpoint.

    The time rule is decided by the main process and shared, so every process saves at the same step.
    """
    args, accelerator = ctx.args, ctx.accelerator
    if args.save_steps and ctx.result.global_step % args.save_steps == 0:
        return True
    if not args.save_minutes:
        return False
    due = time.monotonic() - ctx.last_save >= 60.0 * args.save_minutes
    if accelerator.num_processes > 1:
        flag = torch.tensor(float(due and accelerator.is_main_process), device=accelerator.device)
        due = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
    return due


def save_checkpoint(ctx: RunContext) -> None:
    """``checkpoints.save_checkpoint`` with the run's position and records (what a resume restores)."""
    ctx.last_save = time.monotonic()
    result = ctx.result
    state: checkpoints.CheckpointState = {
        "global_step": result.global_step,
        "epoch": ctx.epoch,
        "batch_in_epoch": ctx.batch_in_epoch,
        "evals": result.evals,
        "train_loss": result.train_loss,
        "learning_rate": result.learning_rate,
        "signature": ctx.signature,
        "init": result.init,
        "grad_norms": result.grad_norms,
        "nonfinite_loss_steps": result.nonfinite_loss_steps,
        "skipped_steps": result.skipped_steps,
        "best": result.best,
    }
    checkpoints.save_checkpoint(ctx.accelerator, ctx.ckpt_dir, state, ctx.args.save_total_limit)
