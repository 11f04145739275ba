"""Training a run: epochs, one batch (forward, backward, clip, step) and the record of each optimizer step."""

from __future__ import annotations

import math
import time

import torch

from hf_sparseout.logs import get_logger
from hf_sparseout.training import run_names, timing
from hf_sparseout.training.checkpointing import checkpoint_due, save_checkpoint
from hf_sparseout.training.eval_record import evaluate_and_record
from hf_sparseout.training.evaluation import Batch
from hf_sparseout.training.run_state import OptimizerStep, RunContext

logger = get_logger(__name__)


def train(ctx: RunContext) -> None:
    """Train to ``ctx.total`` optimizer steps, epoch after epoch (from the resumed position)."""
    from tqdm.auto import tqdm

    ctx.bar = tqdm(
        total=ctx.total,
        initial=ctx.result.global_step,
        desc=run_names.run_label(ctx.name, ctx.q),
        disable=not ctx.accelerator.is_local_main_process,
    )
    ctx.result.conditions = timing.run_conditions(ctx.accelerator.num_processes)
    ctx.start, ctx.seen_units = time.perf_counter(), 0
    ctx.step_start = ctx.start
    ctx.last_save = time.monotonic()
    ctx.model.train()
    ctx.running_loss, ctx.running_penalty = torch.zeros(()), torch.zeros(())
    while ctx.result.global_step < ctx.total and not ctx.stop:
        if train_epoch(ctx):
            break
        ctx.epoch, ctx.batch_in_epoch = ctx.epoch + 1, 0


def train_epoch(ctx: RunContext) -> bool:
    """The rest of epoch ``ctx.epoch``; True when the run reached its last step (or stopped) before the
    epoch's end."""
    ctx.train_dl.set_epoch(ctx.epoch)
    loader = (
        ctx.accelerator.skip_first_batches(ctx.train_dl, ctx.batch_in_epoch) if ctx.batch_in_epoch else ctx.train_dl
    )
    for batch in loader:
        step = train_step(ctx, batch)
        if step is None:  # inside a gradient-accumulation cycle
            continue
        if not step.applied and not nonfinite_step(ctx, step):
            return True
        record_step(ctx, step)
        if ctx.eval_every and ctx.result.global_step % ctx.eval_every == 0 and ctx.result.global_step < ctx.total:
            evaluate_and_record(ctx)
        if checkpoint_due(ctx):
            save_checkpoint(ctx)
        ctx.step_start = time.perf_counter()  # the next step's time leaves out this evaluation and checkpoint
        if ctx.stop or ctx.result.global_step >= ctx.total:
            return True
    return False


def nonfinite_step(ctx: RunContext, step: OptimizerStep) -> bool:
    """A step whose loss was not finite (not applied): record it; True to train on (``--nan-policy skip``),
    False to stop (``stop``: the model stays that of the last finite step)."""
    result, number = ctx.result, ctx.result.global_step + 1
    what = f"training loss ({step.loss})" if not math.isfinite(step.loss) else f"L_q penalty term ({step.penalty})"
    result.nonfinite_loss_steps.append(number)
    if ctx.args.nan_policy == "skip":
        result.skipped_steps += 1
        logger.warning(f"[{ctx.name}] step {number}: non-finite {what}, step skipped")
        return True
    reason = f"non-finite {what} at step {number}"
    result.stopped_early = {"step": number, "reason": reason}
    logger.warning(
        f"[{ctx.name}] stopped: {reason}; the model of step {result.global_step} (the last finite one) is evaluated "
        "and saved (--nan-policy skip trains on without the step)"
    )
    ctx.stop = True
    return False


def train_step(ctx: RunContext, batch: Batch) -> OptimizerStep | None:
    """Forward and backward on one batch (with the penalty's term); at the end of an accumulation cycle,
    clip and step, unless the cycle's loss (mean over processes) is not finite. Returns the optimizer step
    (taken or not), or None inside a cycle."""
    accelerator, args, lq = ctx.accelerator, ctx.args, ctx.lq
    applied = True
    with accelerator.accumulate(ctx.model):
        loss = ctx.model(**batch).loss
        if lq is not None:
            term = lq()
            accelerator.backward(loss + term)
            ctx.penalty_terms.append(term.detach())
            ctx.running_penalty = ctx.running_penalty.to(loss.device) + term.detach().float()
        else:
            accelerator.backward(loss)
        ctx.running_loss = ctx.running_loss.to(loss.device) + loss.detach().float() / args.gradient_accumulation_steps
        if accelerator.sync_gradients:
            step_lr = ctx.scheduler.get_last_lr()[0]  # the rate this optimizer step uses
            # clip_grad_norm_ returns the norm before clipping; max_norm=inf only measures it
            clip = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
            grad_norm = accelerator.clip_grad_norm_(ctx.model.parameters(), clip)
            avg, penalty, norm = _synced(ctx, grad_norm)
            applied = math.isfinite(avg) and math.isfinite(penalty)
        # a step with a non-finite loss is not applied, and the schedule waits (as on an fp16 overflow); under
        # fp16 the gradient scaler skips it by itself (its gradients are not finite) and must see the step
        if applied or accelerator.scaler is not None:
            ctx.optimizer.step()
        if applied:
            ctx.scheduler.step()
        ctx.optimizer.zero_grad()
    ctx.batch_in_epoch += 1
    # tokens (causal LM: unpadded blocks) or samples, from shapes: no device sync per batch
    units = batch["input_ids"].numel() if ctx.task == "causal-lm" else len(batch["labels"])
    ctx.seen_units += units * accelerator.num_processes
    if not accelerator.sync_gradients:
        return None
    ctx.running_loss = torch.zeros((), device=loss.device)
    ctx.running_penalty = torch.zeros((), device=loss.device)
    return OptimizerStep(lr=step_lr, loss=avg, grad_norm=norm, device=loss.device, penalty=penalty)


def _synced(ctx: RunContext, grad_norm: torch.Tensor | float | None) -> tuple[float, float, float]:
    """(the cycle's loss and L_q penalty, means over every process's batch as one process would see them;
    the gradient norm): one sync per optimizer step, for the step's decision, the log, the progress bar and
    the norm."""
    running = torch.stack([ctx.running_loss, ctx.running_penalty.to(ctx.running_loss.device)])
    if ctx.accelerator.num_processes > 1:
        running = ctx.accelerator.reduce(running, reduction="mean")
    norm_t = torch.as_tensor(float("nan") if grad_norm is None else grad_norm, dtype=running.dtype)
    avg, penalty, norm = torch.cat([running, norm_t.to(running.device).reshape(1)]).tolist()
    return avg, penalty, norm


def record_step(ctx: RunContext, step: OptimizerStep) -> None:
    """Count the optimizer step; record its training loss (the mean over processes), learning rate and
    gradient norm; update the progress bar and the trackers."""
    accelerator, result = ctx.accelerator, ctx.result
    result.global_step += 1
    avg, norm, lr = step.loss, step.grad_norm, step.lr
    result.step_seconds.append(time.perf_counter() - ctx.step_start)  # after the step's sync: the device's work too
    result.grad_norms.append((result.global_step, norm))
    result.train_loss.append((result.global_step, avg))
    result.learning_rate.append((result.global_step, lr))
    rate = ctx.seen_units / max(time.perf_counter() - ctx.start, 1e-9)
    assert ctx.bar is not None  # set by train()
    ctx.bar.set_postfix(
        loss=f"{avg:.3f}", lr=f"{lr:.2e}", **{"tok/s" if ctx.task == "causal-lm" else "samples/s": f"{rate:.0f}"}
    )
    ctx.bar.update(1)
    accelerator.log({f"{ctx.name}/train_loss": avg, f"{ctx.name}/lr": lr}, step=result.global_step)
