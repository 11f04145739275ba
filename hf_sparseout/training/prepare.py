"""Preparing one run: the patch, seed, model, optimizer, scheduler, ``accelerator.prepare`` and a resume."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.utils.data import DataLoader

import hf_sparseout
from hf_sparseout.logs import get_logger
from hf_sparseout.patcher.report import SiteReport
from hf_sparseout.regularizers import LqPenalty
from hf_sparseout.training import best_model, checkpoints, run_names, threshold_curve
from hf_sparseout.training.args import FinetuneArgs, UsageError
from hf_sparseout.training.modeling import check_input_length, enable_checkpointing
from hf_sparseout.training.run_options import effective_noise
from hf_sparseout.training.run_state import RunContext, RunInputs, RunResult

logger = get_logger(__name__)


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
    if args.load_best_model_at_end:
        result.best = best_model.new_record(
            args.metric_for_best_model or best_model.default_metric(inputs.task), args.greater_is_better
        )
        if args.early_stopping_patience and eval_every is None:
            raise UsageError(
                "--early-stopping-patience counts evaluations, and this run evaluates only at the end",
                "add --eval-steps N",
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
    result.nonfinite_loss_steps = list(state.get("nonfinite_loss_steps", []))
    result.skipped_steps = int(state.get("skipped_steps", 0))
    stored = state.get("best")
    if (
        result.best is not None
        and stored
        and (stored["metric"], stored["greater_is_better"])
        == (
            result.best["metric"],
            result.best["greater_is_better"],
        )
    ):
        result.best = stored  # the best so far and its count without improvement
    logger.info(f"[{ctx.name}] resumed from {path} at step {result.global_step}")
