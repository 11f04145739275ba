"""Evaluation: token-weighted perplexity, accuracy and macro-F1, gathered across processes.

Every number is reduced from per-example sums gathered with ``accelerator.gather_for_metrics``
(which drops the samples duplicated to even out the last batch), never from per-batch means.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from accelerate import Accelerator
    from tqdm import tqdm

Batch = dict[str, torch.Tensor]
"""One collated batch: ``input_ids``, ``attention_mask``, ``labels``, ... as tensors."""


class EvalObserver(Protocol):
    """What watches an eval pass (``SparsityMonitor``, ``ThresholdHooks``): entered around it, and given
    each batch's attention mask (accelerate's duplicated samples zeroed) before the forward."""

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...

    def set_attention_mask(self, mask: torch.Tensor | None) -> None: ...


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token NLL, number of predicted tokens) per example; labels of -100 are ignored."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
    mask = shift_labels != -100
    return (nll * mask).sum(dim=1).double(), mask.sum(dim=1).double()


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
    """Unweighted mean of per-class F1 (a class absent from both predictions and labels is skipped)."""
    scores = []
    for c in range(num_labels):
        tp = ((predictions == c) & (labels == c)).sum().item()
        fp = ((predictions == c) & (labels != c)).sum().item()
        fn = ((predictions != c) & (labels == c)).sum().item()
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataloader: Iterable[Batch],
    accelerator: Accelerator,
    task: str,
    num_labels: int | None = None,
    monitor: EvalObserver | None = None,
    progress: tqdm | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on ``dataloader`` (already prepared); returns the gathered metrics.

    ``monitor`` (a ``SparsityMonitor``) is active during the same pass, so sparsity costs no extra pass.
    ``progress``: a bar to advance by one per batch instead of the pass's own "eval" bar (the sparsity
    curve's one bar over all its passes).
    """
    model.eval()
    with monitor if monitor is not None else contextlib.nullcontext():
        return _evaluate(model, dataloader, accelerator, task, num_labels, monitor, progress)


def _duplicate_free_mask(batch: Mapping[str, torch.Tensor], accelerator: Accelerator) -> torch.Tensor | None:
    """On the last batch of several processes, the (batch, seq) mask without accelerate's padding samples.

    With ``even_batches`` accelerate repeats samples to fill the last global batch;
    ``gather_for_metrics`` keeps the first ``remainder`` of the gathered batch, i.e. of the processes'
    batches in rank order. The monitor sees this process's batch, so it gets the same cut.
    """
    state = accelerator.gradient_state
    if accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
        return None
    ids = batch["input_ids"]
    local = ids.shape[0]
    real = max(0, min(local, state.remainder - accelerator.process_index * local))
    mask = batch["attention_mask"].clone() if "attention_mask" in batch else torch.ones_like(ids)
    mask[real:] = 0
    return mask


def _evaluate(
    model: nn.Module,
    dataloader: Iterable[Batch],
    accelerator: Accelerator,
    task: str,
    num_labels: int | None,
    monitor: EvalObserver | None = None,
    progress: tqdm | None = None,
) -> dict[str, float]:
    nll_sum = torch.zeros((), dtype=torch.float64)
    token_count = torch.zeros((), dtype=torch.float64)
    predictions, references = [], []
    from tqdm.auto import tqdm

    if progress is None:
        batches = tqdm(dataloader, desc="eval", leave=False, disable=not accelerator.is_local_main_process)
    else:
        batches = dataloader
    for batch in batches:
        if monitor is not None:
            monitor.set_attention_mask(_duplicate_free_mask(batch, accelerator))
        outputs = model(**{k: v for k, v in batch.items() if k != "labels"})
        if task == "causal-lm":
            nll, count = per_example_nll(outputs.logits, batch["labels"])
            nll, count = accelerator.gather_for_metrics((nll, count))
            nll_sum += nll.sum().cpu()
            token_count += count.sum().cpu()
        else:
            logits = outputs.logits
            nll = F.cross_entropy(logits.float(), batch["labels"], reduction="none").double()
            preds, labels, nll = accelerator.gather_for_metrics((logits.argmax(dim=-1), batch["labels"], nll))
            predictions.append(preds.cpu())
            references.append(labels.cpu())
            nll_sum += nll.sum().cpu()
            token_count += nll.numel()
        if progress is not None:
            progress.update(1)
    loss = (nll_sum / token_count).item() if token_count > 0 else float("nan")
    if task == "causal-lm":
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "eval_tokens": int(token_count.item())}
    preds, refs = torch.cat(predictions), torch.cat(references)
    return {
        "eval_loss": loss,
        "accuracy": (preds == refs).double().mean().item(),
        "f1_macro": macro_f1(preds, refs, num_labels or int(refs.max().item()) + 1),
        "eval_samples": int(refs.numel()),
    }
