"""One training run with accelerate: patched (Sparseout) or the dropout baseline.

The baseline is the same patch with ``q = 2``: Sparseout at q = 2 *is* inverted dropout (it calls
``F.dropout``), so the two runs share the model, the seed, the data order and the measured sites.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import hf_sparseout
from hf_sparseout.logs import get_logger
from hf_sparseout.training import checkpoints, threshold_curve
from hf_sparseout.training.args import FinetuneArgs, UsageError
from hf_sparseout.training.diagnostics import best_eval, grad_norm_summary, mean_since
from hf_sparseout.training.evaluation import evaluate
from hf_sparseout.training.modeling import check_input_length, enable_checkpointing
from hf_sparseout.training.sparsity import make_monitor, summarize

logger = get_logger(__name__)


@dataclass
class RunResult:
    """What one run produced."""

    name: str
    q: float
    report: Any
    evals: list[dict[str, Any]] = field(default_factory=list)
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    learning_rate: list[tuple[int, float]] = field(default_factory=list)
    sparsity: dict[str, Any] = field(default_factory=dict)
    global_step: int = 0
    train_seconds: float = 0.0
    throughput: float = 0.0
    throughput_unit: str = "tokens/s"
    peak_memory_mb: float | None = None
    model: Any = None
    curve: Any = None
    """The final evaluation's ``SparsityCurve`` (``--sparsity-curve``), else None."""
    p: float | None = None
    """The p every site got (``None``: each site's own), e.g. 0 for the p = 0 control."""
    penalty: bool = False
    """Whether this run trained with ``--lq-penalty``."""
    init: dict[str, Any] = field(default_factory=dict)
    """Sparsity of the untrained model on the eval data (``hoyer``, ``relative_near_zero_fraction``)."""
    grad_norms: list[tuple[int, float]] = field(default_factory=list)
    """Gradient norm before clipping at every optimizer step."""
    log_every: int = 1

    @property
    def final(self) -> dict[str, Any]:
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


def sparseout_config(args: FinetuneArgs, q: float, p: float | None = None) -> hf_sparseout.SparseoutConfig:
    """The patch for a run: the user's Sparseout options, with ``q`` (and ``p``, if given) for this run.

    ``--noise`` is passed on when ``SparseoutConfig`` has a ``noise`` field (the scale-matched op of
    issue 14); without it ``--noise matched`` is a usage error and ``raw`` is the op itself.
    """
    extra: dict[str, Any] = {}
    if "noise" in {f.name for f in dataclasses.fields(hf_sparseout.SparseoutConfig)}:
        extra["noise"] = args.noise
    elif args.noise != "raw":
        raise UsageError(
            f"--noise {args.noise} needs the scale-matched Sparseout op, which this hf-sparseout build does not have",
            "use --noise raw (the paper's op), or upgrade hf-sparseout",
        )
    return hf_sparseout.SparseoutConfig(
        p=args.p if p is None else p,
        q=q,
        targets=args.targets,
        exclude=args.exclude,
        attention=args.attention,
        insert=args.insert,
        gradient=args.gradient,
        **extra,
    )


def _optimizer(model: torch.nn.Module, args: FinetuneArgs) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def _checkpoint_due(args: FinetuneArgs, step: int, last_save: float, accelerator: Any) -> bool:
    """Every ``--save-steps`` steps, and when ``--save-minutes`` have passed since the last checkpoint.

    The time rule is decided by the main process and shared, so every process saves at the same step.
    """
    if args.save_steps and step % args.save_steps == 0:
        return True
    if not args.save_minutes:
        return False
    due = time.monotonic() - last_save >= 60.0 * args.save_minutes
    if accelerator.num_processes > 1:
        flag = torch.tensor(float(due and accelerator.is_main_process), device=accelerator.device)
        due = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
    return due


def _signature(args: FinetuneArgs, model: torch.nn.Module, name: str, q: float) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run: the model and its size, the run, q."""
    return {
        "model": args.model or args.from_config or "offline default",
        "parameters": sum(p.numel() for p in model.parameters()),
        "run": name,
        "q": q,
    }


def run(
    name: str,
    q: float,
    args: FinetuneArgs,
    accelerator: Any,
    make_model: Any,
    train_set: Any,
    eval_set: Any,
    collate: Any,
    task: str,
    num_labels: int | None,
    p: float | None = None,
    penalty: bool = False,
) -> RunResult:
    """Train one model (``name`` = ``sparseout``, ``baseline`` or ``p0``) and evaluate it along the way.

    ``p`` overrides ``args.p`` for every site (0 for the p = 0 control); ``penalty`` adds
    ``--lq-penalty`` to the loss. Before training, the untrained model's sparsity on the eval data
    is measured (``RunResult.init``); every optimizer step records the gradient norm before clipping.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    set_seed(args.seed)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model = make_model()
    check_input_length(model, args, task)
    if args.gradient_checkpointing:
        enable_checkpointing(model)
    try:
        report = hf_sparseout.patch(model, sparseout_config(args, q, p))
    except ValueError as err:  # a pattern that matches nothing in this model, nothing to patch, ...
        raise UsageError(str(err), "run hf-sparseout inspect on the model to see its sites") from err
    threshold_curve.check_sites(model, args)  # --sparsity-sites must match before any training
    lq = None
    if penalty and args.lq_penalty:
        try:
            lq = hf_sparseout.LqPenalty(model, q=args.lq_q or 1.0, weight=args.lq_penalty)
        except ValueError as err:
            raise UsageError(str(err), "see --lq-penalty, --lq-q and the sites in hf-sparseout inspect") from err
    generator = torch.Generator().manual_seed(args.seed)
    train_dl = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate, generator=generator)
    eval_dl = DataLoader(eval_set, batch_size=args.batch_size, shuffle=False, collate_fn=collate)
    optimizer = _optimizer(model, args)
    per_epoch = max(1, math.ceil(len(train_dl) / max(1, accelerator.num_processes) / args.gradient_accumulation_steps))
    total = args.max_steps if args.max_steps is not None else max(1, math.ceil(args.epochs * per_epoch))
    # accelerate's prepared scheduler steps once per process for every optimizer step (it assumes a
    # schedule sized for one process seeing N times the batches), so size it in process-steps: the
    # learning rate at optimizer step k is then the same for any number of processes.
    n = accelerator.num_processes
    scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=int(args.warmup_ratio * total) * n,
        num_training_steps=max(total, 1) * n,
    )
    model, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, eval_dl, scheduler)
    result = RunResult(name, q, report, model=model, p=args.p if p is None else p, penalty=lq is not None)
    signature = _signature(args, model, name, q)
    ckpt_dir = checkpoints.run_dir(args.output_dir, name)
    epoch = batch_in_epoch = 0
    if args.resume_from_checkpoint:
        path = checkpoints.resolve_resume(args.resume_from_checkpoint, ckpt_dir)
        if path is not None:
            state = checkpoints.load_checkpoint(accelerator, path, signature)
            result.global_step, epoch, batch_in_epoch = state["global_step"], state["epoch"], state["batch_in_epoch"]
            result.evals, result.train_loss = state.get("evals", []), [tuple(x) for x in state.get("train_loss", [])]
            result.learning_rate = [tuple(x) for x in state.get("learning_rate", [])]
            result.init = state.get("init", {})
            result.grad_norms = [tuple(x) for x in state.get("grad_norms", [])]
            logger.info(f"[{name}] resumed from {path} at step {result.global_step}")

    last_eval = {"step": result.evals[-1]["step"] if result.evals else 0}
    penalty_terms: list[torch.Tensor] = []

    def measure() -> tuple[dict[str, Any], dict[str, Any]]:
        monitor = make_monitor(accelerator.unwrap_model(model))
        metrics = evaluate(model, eval_dl, accelerator, task, num_labels, monitor=monitor)
        sparsity = summarize(monitor)
        metrics["hoyer"] = sparsity["overall"]["hoyer"]
        metrics["relative_near_zero_fraction"] = sparsity["overall"]["relative_near_zero_fraction"]
        return metrics, sparsity

    if not result.init:  # the untrained model on the same eval data (a resumed run kept its own)
        metrics, _ = measure()
        result.init = {k: metrics[k] for k in ("hoyer", "relative_near_zero_fraction")}

    def do_eval() -> None:
        metrics, sparsity = measure()
        # the mean training loss (in training mode, with the noise) since the previous evaluation
        metrics["train_loss"] = mean_since(result.train_loss, last_eval["step"], result.global_step)
        if lq is not None and penalty_terms:
            metrics["lq_penalty"] = torch.stack(penalty_terms).float().mean().item()
            penalty_terms.clear()
        last_eval["step"] = result.global_step
        result.sparsity = sparsity
        result.evals.append({"step": result.global_step, **metrics})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        logger.info(f"[{name}] eval @ step {result.global_step}: {shown}")
        accelerator.log({f"{name}/{k}": v for k, v in metrics.items()}, step=result.global_step)
        model.train()

    bar = tqdm(
        total=total, initial=result.global_step, desc=f"{name} (q={q:g})", disable=not accelerator.is_local_main_process
    )
    start, seen_units = time.perf_counter(), 0
    last_save = time.monotonic()
    eval_every = args.eval_steps or (max(1, math.ceil(total / 4)) if args.offline_default else None)
    result.log_every = eval_every or max(1, math.ceil(total / 10))
    model.train()
    running = torch.zeros(())
    while result.global_step < total:
        train_dl.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_dl, batch_in_epoch) if batch_in_epoch else train_dl
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                if lq is not None:
                    term = lq()
                    accelerator.backward(loss + term)
                    penalty_terms.append(term.detach())
                else:
                    accelerator.backward(loss)
                if accelerator.sync_gradients:
                    step_lr = scheduler.get_last_lr()[0]  # the rate this optimizer step uses
                    # clip_grad_norm_ returns the norm before clipping; max_norm=inf only measures it
                    clip = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            batch_in_epoch += 1
            running = running.to(loss.device) + loss.detach().float() / args.gradient_accumulation_steps
            # tokens (causal LM: unpadded blocks) or samples, from shapes: no device sync per batch
            units = batch["input_ids"].numel() if task == "causal-lm" else len(batch["labels"])
            seen_units += units * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            result.global_step += 1
            if accelerator.num_processes > 1:  # the mean over every process's batch, as one process would see it
                running = accelerator.reduce(running, reduction="mean")
            # one sync per optimizer step, for the log, the progress bar and the gradient norm
            norm_t = torch.as_tensor(float("nan") if grad_norm is None else grad_norm, dtype=running.dtype)
            avg, norm = torch.stack([running, norm_t.to(running.device)]).tolist()
            result.grad_norms.append((result.global_step, norm))
            running = torch.zeros((), device=loss.device)
            result.train_loss.append((result.global_step, avg))
            lr = step_lr
            result.learning_rate.append((result.global_step, lr))
            rate = seen_units / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(
                loss=f"{avg:.3f}", lr=f"{lr:.2e}", **{"tok/s" if task == "causal-lm" else "samples/s": f"{rate:.0f}"}
            )
            bar.update(1)
            accelerator.log({f"{name}/train_loss": avg, f"{name}/lr": lr}, step=result.global_step)
            if eval_every and result.global_step % eval_every == 0 and result.global_step < total:
                do_eval()
            if _checkpoint_due(args, result.global_step, last_save, accelerator):
                last_save = time.monotonic()
                state = {
                    "global_step": result.global_step,
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "evals": result.evals,
                    "train_loss": result.train_loss,
                    "learning_rate": result.learning_rate,
                    "signature": signature,
                    "init": result.init,
                    "grad_norms": result.grad_norms,
                }
                checkpoints.save_checkpoint(accelerator, ckpt_dir, state, args.save_total_limit)
            if result.global_step >= total:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
            continue
        break
    bar.close()
    result.train_seconds = time.perf_counter() - start
    result.throughput = seen_units / max(result.train_seconds, 1e-9)
    result.throughput_unit = "tokens/s" if task == "causal-lm" else "samples/s"
    if torch.cuda.is_available():
        result.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    do_eval()
    if args.sparsity_curve:
        reference = {k: v for k, v in result.final.items() if isinstance(v, float)}
        curve = threshold_curve.final_curve(
            model, accelerator, eval_dl, train_set, collate, args, task, num_labels, reference
        )
        result.curve = curve
        result.evals[-1].update(sparsity_at_1pct=curve.sparsity_at_1pct, sparsity_at_5pct=curve.sparsity_at_5pct)
        shown = ", ".join(f"{p.target:g}: {p.sparsity:.3f} -> {p.metrics[curve.metric]:.4g}" for p in curve.points)
        logger.info(f"[{name}] sparsity curve (target: reached -> {curve.metric}): {shown}")
    return result


def save_final(result: RunResult, accelerator: Any, tokenizer: Any, directory: Path) -> None:
    """Save the trained (still patched) model and tokenizer atomically, in ``save_pretrained`` layout."""
    from hf_sparseout.hub import save_pretrained

    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(result.model)
    save_pretrained(
        model, directory, tokenizer, is_main_process=accelerator.is_main_process, save_function=accelerator.save
    )
    accelerator.wait_for_everyone()
