"""One training run with accelerate: patched (Sparseout) or the dropout baseline.

The baseline is the same patch with ``q = 2``: Sparseout at q = 2 *is* inverted dropout (it calls
``F.dropout``), so the two runs share the model, the seed, the data order and the measured sites.

A run is a few named steps around one :class:`RunContext`, built by :func:`prepare_run` from the
:class:`RunInputs` every run of a ``finetune`` shares: :func:`prepare_run` (seed, model, patch,
optimizer, scheduler, ``accelerator.prepare``, resume) → :func:`measure_init` (the untrained model) →
:func:`train` (per batch :func:`train_step`; per optimizer step :func:`record_step`, then
:func:`evaluate_and_record` and :func:`save_checkpoint` when due) → :func:`finish` (timing, the final
evaluation, the sparsity curve).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import hf_sparseout
from hf_sparseout.logs import get_logger
from hf_sparseout.training import checkpoints, run_names, threshold_curve, timing
from hf_sparseout.training.args import FinetuneArgs, UsageError
from hf_sparseout.training.diagnostics import EvalRecord, best_eval, grad_norm_summary, mean_since
from hf_sparseout.training.evaluation import Batch, evaluate
from hf_sparseout.training.modeling import check_input_length, enable_checkpointing
from hf_sparseout.training.run_options import effective_noise
from hf_sparseout.training.sparsity import make_monitor, summarize

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.scheduler import AcceleratedScheduler
    from datasets import Dataset
    from tqdm import tqdm
    from transformers import PreTrainedTokenizerBase

    from hf_sparseout.metrics.threshold import SparsityCurve
    from hf_sparseout.patcher.report import SiteReport
    from hf_sparseout.regularizers import LqPenalty

logger = get_logger(__name__)

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

    @property
    def final(self) -> EvalRecord:
        """The last evaluation's metrics (with overall Hoyer sparsity)."""
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
    grad_norm: torch.Tensor | float | None
    """The gradient norm before clipping (None where accelerate cannot measure it)."""
    device: torch.device
    """The loss's device, where the next cycle's running loss starts."""


def sparseout_config(args: FinetuneArgs, q: float, p: float | None = None) -> hf_sparseout.SparseoutConfig:
    """The patch for a run: the user's Sparseout options, with ``q`` (and ``p``, if given) for this run.

    At p = 0 (the no-noise control) the attention probabilities are sites at p = 0 too, whatever
    ``--attention`` says. ``--noise`` is passed on when ``SparseoutConfig`` has a ``noise`` field (the
    scale-matched op of issue 14); without it ``--noise matched`` is a usage error and ``raw`` is the op itself.
    """
    extra: dict[str, str] = {}
    if "noise" in {f.name for f in dataclasses.fields(hf_sparseout.SparseoutConfig)}:
        # the controls of a matched run (q = 2, p = 0) have raw noise, or none: their config says raw
        extra["noise"] = "matched" if effective_noise(args.noise, q, args.p if p is None else p) == "matched" else "raw"
    elif args.noise != "raw":
        raise UsageError(
            f"--noise {args.noise} needs the scale-matched Sparseout op, which this hf-sparseout build does not have",
            "use --noise raw (the paper's op), or upgrade hf-sparseout",
        )
    p = args.p if p is None else p
    return hf_sparseout.SparseoutConfig(
        p=p,
        q=q,
        targets=args.targets,
        exclude=args.exclude,
        attention="sparseout" if p == 0 else args.attention,  # p = 0: no noise, attention probabilities too
        insert=args.insert,
        gradient=args.gradient,
        **extra,
    )


def run(inputs: RunInputs, name: str, q: float, p: float | None = None, penalty: bool = False) -> RunResult:
    """Train one model (``name`` = ``sparseout``, ``dropout`` or ``p=0``: ``run_names``) and evaluate it along the way.

    ``p`` overrides ``args.p`` for every site (0 for the p = 0 control); ``penalty`` adds
    ``--lq-penalty`` to the loss. Before training, the untrained model's sparsity on the eval data
    is measured (``RunResult.init``); every optimizer step records the gradient norm before clipping.
    """
    ctx = prepare_run(inputs, name, q, p, penalty)
    if not ctx.result.init:  # the untrained model on the same eval data (a resumed run kept its own)
        measure_init(ctx)
    train(ctx)
    finish(ctx)
    return ctx.result


# --- prepare ---------------------------------------------------------------------------------------


def prepare_run(inputs: RunInputs, name: str, q: float, p: float | None = None, penalty: bool = False) -> RunContext:
    """Seed, build and patch the model, then optimizer, scheduler and dataloaders through
    ``accelerator.prepare``; restore a checkpoint with ``--resume-from-checkpoint``."""
    from accelerate.utils import set_seed

    args, accelerator = inputs.args, inputs.accelerator
    set_seed(args.seed)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model, report = _patched_model(inputs, q, p)
    lq = _lq_penalty(model, args) if penalty else None
    generator = torch.Generator().manual_seed(args.seed)
    train_dl = DataLoader(
        inputs.train_set, batch_size=args.batch_size, shuffle=True, collate_fn=inputs.collate, generator=generator
    )
    eval_dl = DataLoader(inputs.eval_set, batch_size=args.batch_size, shuffle=False, collate_fn=inputs.collate)
    optimizer = _optimizer(model, args)
    total = _total_steps(args, len(train_dl), accelerator.num_processes)
    scheduler = _scheduler(args, optimizer, total, accelerator.num_processes)
    model, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, eval_dl, scheduler)
    result = RunResult(name, q, report, model=model, p=args.p if p is None else p, penalty=lq is not None)
    eval_every = args.eval_steps or (max(1, math.ceil(total / 4)) if args.offline_default else None)
    result.log_every = eval_every or max(1, math.ceil(total / 10))
    ctx = RunContext(
        inputs=inputs,
        name=name,
        q=q,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_dl=train_dl,
        eval_dl=eval_dl,
        lq=lq,
        result=result,
        signature=_signature(args, model, run_names.run_directory(args, name), q),
        ckpt_dir=checkpoints.run_dir(args.output_dir, run_names.run_directory(args, name)),
        total=total,
        eval_every=eval_every,
    )
    if args.resume_from_checkpoint:
        _resume(ctx, args.resume_from_checkpoint)
    ctx.last_eval_step = result.evals[-1]["step"] if result.evals else 0
    return ctx


def _patched_model(inputs: RunInputs, q: float, p: float | None) -> tuple[nn.Module, SiteReport]:
    """A fresh model, checked against the data's lengths, patched with this run's Sparseout config."""
    args = inputs.args
    model = inputs.make_model()
    check_input_length(model, args, inputs.task)
    if args.gradient_checkpointing:
        enable_checkpointing(model)
    try:
        report = hf_sparseout.patch(model, sparseout_config(args, q, p))
    except ValueError as err:  # a pattern that matches nothing in this model, nothing to patch, ...
        raise UsageError(str(err), "run hf-sparseout inspect on the model to see its sites") from err
    # --sparsity-sites must match, and be reached in eval, before any training
    threshold_curve.check_sites(model, args, threshold_curve.probe_batch(inputs))
    return model, report


def _lq_penalty(model: nn.Module, args: FinetuneArgs) -> LqPenalty | None:
    """``--lq-penalty`` on the patched sites (None without it)."""
    if not args.lq_penalty:
        return None
    try:
        return hf_sparseout.LqPenalty(model, q=args.lq_q or 1.0, weight=args.lq_penalty)
    except ValueError as err:
        raise UsageError(str(err), "see --lq-penalty, --lq-q and the sites in hf-sparseout inspect") from err


def _optimizer(model: nn.Module, args: FinetuneArgs) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def _total_steps(args: FinetuneArgs, batches: int, num_processes: int) -> int:
    """Optimizer steps of the run: ``--max-steps``, else ``--epochs`` of this process's share of ``batches``."""
    per_epoch = max(1, math.ceil(batches / max(1, num_processes) / args.gradient_accumulation_steps))
    return args.max_steps if args.max_steps is not None else max(1, math.ceil(args.epochs * per_epoch))


def _scheduler(
    args: FinetuneArgs, optimizer: torch.optim.Optimizer, total: int, num_processes: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The ``--lr-scheduler`` schedule for ``total`` optimizer steps, sized in process-steps.

    accelerate's prepared scheduler steps once per process for every optimizer step (it assumes a
    schedule sized for one process seeing N times the batches), so size it in process-steps: the
    learning rate at optimizer step k is then the same for any number of processes.
    """
    from transformers import get_scheduler

    n = num_processes
    return get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=int(args.warmup_ratio * total) * n,
        num_training_steps=max(total, 1) * n,
    )


def _signature(args: FinetuneArgs, model: nn.Module, name: str, q: float) -> dict[str, str | int | float]:
    """What a checkpoint must match to be resumed by this run: the model and its size, the run, q."""
    return {
        "model": args.model or args.from_config or "offline default",
        "parameters": sum(p.numel() for p in model.parameters()),
        "run": name,
        "q": q,
    }


def _resume(ctx: RunContext, spec: str) -> None:
    """Restore the prepared objects and the run's records from checkpoint ``spec`` (``latest`` or a path);
    nothing to do for ``latest`` before this run's first checkpoint."""
    path = checkpoints.resolve_resume(spec, ctx.ckpt_dir)
    if path is None:
        return
    state = checkpoints.load_checkpoint(ctx.accelerator, path, ctx.signature)
    result = ctx.result
    result.global_step, ctx.epoch, ctx.batch_in_epoch = state["global_step"], state["epoch"], state["batch_in_epoch"]
    result.evals, result.train_loss = state.get("evals", []), [tuple(x) for x in state.get("train_loss", [])]
    result.learning_rate = [tuple(x) for x in state.get("learning_rate", [])]
    result.init = state.get("init", {})
    result.grad_norms = [tuple(x) for x in state.get("grad_norms", [])]
    logger.info(f"[{ctx.name}] resumed from {path} at step {result.global_step}")


# --- evaluate --------------------------------------------------------------------------------------


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
    ctx.model.train()


# --- train -----------------------------------------------------------------------------------------


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
    ctx.running_loss = torch.zeros(())
    while ctx.result.global_step < ctx.total:
        if train_epoch(ctx):
            break
        ctx.epoch, ctx.batch_in_epoch = ctx.epoch + 1, 0


def train_epoch(ctx: RunContext) -> bool:
    """The rest of epoch ``ctx.epoch``; True when the run reached its last step before the epoch's end."""
    ctx.train_dl.set_epoch(ctx.epoch)
    loader = (
        ctx.accelerator.skip_first_batches(ctx.train_dl, ctx.batch_in_epoch) if ctx.batch_in_epoch else ctx.train_dl
    )
    for batch in loader:
        step = train_step(ctx, batch)
        if step is None:  # inside a gradient-accumulation cycle
            continue
        record_step(ctx, step)
        if ctx.eval_every and ctx.result.global_step % ctx.eval_every == 0 and ctx.result.global_step < ctx.total:
            evaluate_and_record(ctx)
        if checkpoint_due(ctx):
            save_checkpoint(ctx)
        ctx.step_start = time.perf_counter()  # the next step's time leaves out this evaluation and checkpoint
        if ctx.result.global_step >= ctx.total:
            return True
    return False


def train_step(ctx: RunContext, batch: Batch) -> OptimizerStep | None:
    """Forward and backward on one batch (with the penalty's term); at the end of an accumulation cycle,
    clip and step. Returns the optimizer step taken, or None inside a cycle."""
    accelerator, args, lq = ctx.accelerator, ctx.args, ctx.lq
    with accelerator.accumulate(ctx.model):
        loss = ctx.model(**batch).loss
        if lq is not None:
            term = lq()
            accelerator.backward(loss + term)
            ctx.penalty_terms.append(term.detach())
        else:
            accelerator.backward(loss)
        if accelerator.sync_gradients:
            step_lr = ctx.scheduler.get_last_lr()[0]  # the rate this optimizer step uses
            # clip_grad_norm_ returns the norm before clipping; max_norm=inf only measures it
            clip = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
            grad_norm = accelerator.clip_grad_norm_(ctx.model.parameters(), clip)
        ctx.optimizer.step()
        ctx.scheduler.step()
        ctx.optimizer.zero_grad()
    ctx.batch_in_epoch += 1
    ctx.running_loss = ctx.running_loss.to(loss.device) + loss.detach().float() / args.gradient_accumulation_steps
    # tokens (causal LM: unpadded blocks) or samples, from shapes: no device sync per batch
    units = batch["input_ids"].numel() if ctx.task == "causal-lm" else len(batch["labels"])
    ctx.seen_units += units * accelerator.num_processes
    if not accelerator.sync_gradients:
        return None
    return OptimizerStep(lr=step_lr, grad_norm=grad_norm, device=loss.device)


def record_step(ctx: RunContext, step: OptimizerStep) -> None:
    """Count the optimizer step; record its training loss (the mean over processes), learning rate and
    gradient norm; update the progress bar and the trackers."""
    accelerator, result = ctx.accelerator, ctx.result
    result.global_step += 1
    running = ctx.running_loss
    if accelerator.num_processes > 1:  # the mean over every process's batch, as one process would see it
        running = accelerator.reduce(running, reduction="mean")
    # one sync per optimizer step, for the log, the progress bar and the gradient norm
    norm_t = torch.as_tensor(float("nan") if step.grad_norm is None else step.grad_norm, dtype=running.dtype)
    avg, norm = torch.stack([running, norm_t.to(running.device)]).tolist()
    result.step_seconds.append(time.perf_counter() - ctx.step_start)  # after the sync: the device's work too
    result.grad_norms.append((result.global_step, norm))
    ctx.running_loss = torch.zeros((), device=step.device)
    result.train_loss.append((result.global_step, avg))
    lr = step.lr
    result.learning_rate.append((result.global_step, lr))
    rate = ctx.seen_units / max(time.perf_counter() - ctx.start, 1e-9)
    assert ctx.bar is not None  # set by train()
    ctx.bar.set_postfix(
        loss=f"{avg:.3f}", lr=f"{lr:.2e}", **{"tok/s" if ctx.task == "causal-lm" else "samples/s": f"{rate:.0f}"}
    )
    ctx.bar.update(1)
    accelerator.log({f"{ctx.name}/train_loss": avg, f"{ctx.name}/lr": lr}, step=result.global_step)


# --- checkpoint ------------------------------------------------------------------------------------


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
    }
    checkpoints.save_checkpoint(ctx.accelerator, ctx.ckpt_dir, state, ctx.args.save_total_limit)


# --- finish ----------------------------------------------------------------------------------------


def finish(ctx: RunContext) -> None:
    """Close the progress bar, record time, throughput and peak memory, run the final evaluation and,
    with ``--sparsity-curve``, the thresholding curve."""
    result = ctx.result
    if ctx.bar is not None:
        ctx.bar.close()
    result.train_seconds = time.perf_counter() - ctx.start
    result.conditions["load_end"] = timing.load_average()
    result.throughput = ctx.seen_units / max(result.train_seconds, 1e-9)
    result.throughput_unit = "tokens/s" if ctx.task == "causal-lm" else "samples/s"
    if torch.cuda.is_available():
        result.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    evaluate_and_record(ctx)
    if ctx.args.sparsity_curve:
        record_sparsity_curve(ctx)


def record_sparsity_curve(ctx: RunContext) -> None:
    """``--sparsity-curve``: the thresholding curve of the run's model (``ctx.model``), on its own eval set."""
    result = ctx.result
    curve = threshold_curve.final_curve(ctx)
    result.curve = curve
    result.evals[-1].update(
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
