"""``--load-best-model-at-end``: which evaluation is the best (``TrainingArguments``' rules), the one copy of
its weights on disk, and early stopping (``EarlyStoppingCallback``'s count, threshold 0).

The copy lives in ``checkpoints/<run>/best`` (``model.safetensors``: ``accelerator.get_state_dict``, each
storage once; ``best.json``: the step and the metric), written to ``.tmp-best`` and renamed only once
complete, like a checkpoint, so an interrupt leaves the previous copy whole. The :class:`BestRecord` travels in every
checkpoint's ``trainer_state.json``: a resumed run knows the best so far and its count without improvement.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from hf_sparseout.training.args import BEST_METRICS, UsageError
from hf_sparseout.training.diagnostics import EvalRecord

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

BEST_DIR = "best"
RECORD_FILE = "best.json"
WEIGHTS_FILE = "model.safetensors"
HIGHER_IS_BETTER = frozenset({"accuracy", "f1_macro", "hoyer", "relative_near_zero_fraction"})
"""Metrics where higher is better (the others, ``eval_loss`` and ``perplexity``: lower)."""
TASK_METRICS = {"perplexity": "causal-lm", "accuracy": "classification", "f1_macro": "classification"}
"""Metrics only one task has."""

assert HIGHER_IS_BETTER | {"eval_loss", "perplexity"} == set(BEST_METRICS)


class BestRecord(TypedDict):
    """The best evaluation so far: ``step`` and ``value`` (None before the first), its metric and direction,
    and ``evals_without_improvement`` since it (early stopping's count)."""

    metric: str
    greater_is_better: bool
    step: int | None
    value: float | None
    evals_without_improvement: int


def default_metric(task: str) -> str:
    """The task's headline metric: perplexity (causal LM) or accuracy (classification)."""
    return "perplexity" if task == "causal-lm" else "accuracy"


def new_record(metric: str, greater_is_better: bool | None = None) -> BestRecord:
    """No evaluation yet; ``greater_is_better`` None: inferred from ``metric`` (losses lower, the rest higher)."""
    greater = metric in HIGHER_IS_BETTER if greater_is_better is None else greater_is_better
    return {"metric": metric, "greater_is_better": greater, "step": None, "value": None, "evals_without_improvement": 0}


def check_metric(metric: str | None, task: str) -> None:
    """``UsageError`` when ``--metric-for-best-model`` is not measured for ``task`` (before training)."""
    if metric is not None and TASK_METRICS.get(metric, task) != task:
        others = [m for m in BEST_METRICS if TASK_METRICS.get(m, task) == task]
        raise UsageError(f"--metric-for-best-model {metric} is not measured for {task}", f"one of: {', '.join(others)}")


def update(record: BestRecord, evaluation: EvalRecord) -> bool:
    """Count ``evaluation`` against the best so far; True when it is strictly better (then it is the best).

    A missing or non-finite value is never better. Otherwise the count of evaluations without
    improvement goes up by one (``EarlyStoppingCallback`` with threshold 0).
    """
    value = evaluation.get(record["metric"])
    better = isinstance(value, (int, float)) and math.isfinite(value)
    if better and record["value"] is not None:
        better = value > record["value"] if record["greater_is_better"] else value < record["value"]
    if better:
        record.update(step=int(evaluation["step"]), value=float(value), evals_without_improvement=0)
    else:
        record["evals_without_improvement"] += 1
    return better


def save_copy(accelerator: Accelerator, model: nn.Module, directory: Path, record: BestRecord) -> Path:
    """Write ``model``'s weights and ``record`` to ``directory/best`` atomically (every process calls this)."""
    final, tmp = directory / BEST_DIR, directory / f".tmp-{BEST_DIR}"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        state = accelerator.get_state_dict(model)  # on every process (gathered under FSDP / DeepSpeed)
        if accelerator.is_main_process:
            _write_weights(state, tmp)
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
            if final.exists():
                trash = directory / f".trash-{BEST_DIR}"
                shutil.rmtree(trash, ignore_errors=True)
                final.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(final)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def _write_weights(state: dict, directory: Path) -> None:
    """``directory/model.safetensors`` with each storage once (tied weights are saved under their first name)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    kept, storages = {}, set()
    for name, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr()
        if storage == 0 or storage not in storages:  # (empty tensors have no storage to share)
            storages.add(storage)
            kept[name] = tensor.detach().contiguous().cpu()
    save_file(kept, str(directory / WEIGHTS_FILE))


def saved_step(directory: Path) -> int | None:
    """The step of the copy in ``directory/best`` (None if there is none or it is unreadable)."""
    try:
        return int(json.loads((directory / BEST_DIR / RECORD_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_copy(accelerator: Accelerator, model: nn.Module, directory: Path, step: int) -> bool:
    """Load the copy of ``step`` into ``model`` (prepared; every process); False when the copy on disk is
    another step's or missing (a resume that ended before the step its copy was written at)."""
    from safetensors.torch import load_file

    accelerator.wait_for_everyone()
    if saved_step(directory) != step:
        return False
    target = accelerator.unwrap_model(model)
    state: dict = {}
    state.update(load_file(str(directory / BEST_DIR / WEIGHTS_FILE)))
    current = target.state_dict()
    missing = target.load_state_dict(state, strict=False).missing_keys  # copied in place: the optimizer's too
    loaded = {current[k].untyped_storage().data_ptr() for k in state if k in current}
    untied = [k for k in missing if current[k].untyped_storage().data_ptr() not in loaded]  # tied: saved once
    if untied or state.keys() - current.keys():
        raise RuntimeError(f"the best model's copy does not fit this model (missing {untied[:3]})")
    accelerator.wait_for_everyone()
    return True


__all__ = [
    "BEST_DIR",
    "HIGHER_IS_BETTER",
    "RECORD_FILE",
    "WEIGHTS_FILE",
    "BestRecord",
    "check_metric",
    "default_metric",
    "load_copy",
    "new_record",
    "save_copy",
    "saved_step",
    "update",
]
