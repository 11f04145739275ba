"""``finetune --sparsity-curve``: the magnitude-thresholding curve of a run's model, after its final evaluation.

* **Sites**: ``--sparsity-sites`` (default ``teal``: every weight matrix of the blocks), checked before
  training on the built model: every site must exist and be reached by an eval-mode forward
  (:func:`check_sites`).
* **Calibration**: on training blocks held out of training (:func:`split_calibration`: the last
  :data:`CALIBRATION_SAMPLES` examples of the training set, at most a tenth of it), never the eval set;
  process 0's thresholds are used everywhere. Count and tokens go to ``thresholds.json`` and ``metrics.json``.
* **Evaluation**: its own set, the first ``--sparsity-eval-samples`` examples of the eval set (default
  :data:`EVAL_SAMPLES`), one pass per target through ``evaluation.evaluate`` (gathered metrics,
  accelerate's padding samples excluded), target 0 (the unthresholded model, the reference of every
  relative figure) included, all on the model the run gives (``ctx.model``).

Cost: ``passes x batches`` forwards plus the calibration batches, estimated before it starts from the
last eval pass's time and logged; one progress bar covers every pass.

Why the default cap: the curve costs passes x examples forwards. 9 passes (:data:`CURVE_TARGETS`) of
32 blocks plus 64 calibration blocks are 352 block forwards, less than 20 optimizer steps at the default
batch of 8 cost (160 blocks, forward and backward about 3 forwards each: 480), the shortest run issue 25
timed (PTB, gpt2-mini), where a pass over the whole 742-block eval set per target made it 6,678. The
estimate printed before the curve says what it will cost on the run at hand. Classification counts
examples, which are short, and accuracy needs them: 512 examples resolve 0.2 accuracy points (the 1 %
headline's tolerance is 1 point).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from hf_sparseout.logs import get_logger
from hf_sparseout.metrics.threshold import SparsityCurve
from hf_sparseout.metrics.threshold_inputs import site_input
from hf_sparseout.metrics.threshold_quality import FIXED_SPARSITIES, metric_at_sparsity
from hf_sparseout.metrics.threshold_sites import NAMED_SETS
from hf_sparseout.training.args import FinetuneArgs, UsageError

if TYPE_CHECKING:
    from datasets import Dataset

    from hf_sparseout.metrics.threshold import ThresholdHooks
    from hf_sparseout.training.loop import RunContext, RunInputs

logger = get_logger(__name__)

CURVE_TARGETS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7)
"""Default targets of the curve: 0.1 steps to 0.7, plus 0.25 (TEAL's 25 %, 40 %, 50 % are all measured)."""
EVAL_SAMPLES: dict[str, int] = {"causal-lm": 32, "classification": 512}
"""Default ``--sparsity-eval-samples`` per task: blocks (causal LM) or examples (see the module docstring)."""
CALIBRATION_SAMPLES = 64
"""Training examples held out of training for calibration (8 batches of the default 8), at most a tenth."""
CALIBRATION_SHARE = 0.1
THRESHOLDS_FILE = "thresholds.json"


def _sites(args: FinetuneArgs) -> str | list[str] | None:
    sites = args.sparsity_sites
    if sites and len(sites) == 1 and sites[0] in NAMED_SETS:
        return sites[0]
    return sites or None


# --- before training -------------------------------------------------------------------------------


def split_calibration(train_set: Dataset, args: FinetuneArgs) -> tuple[Dataset, Dataset | None]:
    """(training set, calibration set): with ``--sparsity-curve`` the last ``min(64, max(1, n // 10))``
    examples are held out of training for calibration; without it, ``(train_set, None)``."""
    if not args.sparsity_curve:
        return train_set, None
    n = len(train_set)
    held = min(CALIBRATION_SAMPLES, max(1, int(n * CALIBRATION_SHARE)))
    if n - held < 1:
        raise UsageError(
            f"--sparsity-curve holds training examples out of training to calibrate its thresholds, but the "
            f"training set has only {n}",
            "use more training data (or --max-train-samples larger), or drop --sparsity-curve",
        )
    return train_set.select(range(n - held)), train_set.select(range(n - held, n))


def probe_batch(inputs: RunInputs) -> dict[str, Any] | None:
    """One eval example as a batch (labels dropped), for :func:`check_sites`; None without the curve."""
    if not inputs.args.sparsity_curve or len(inputs.eval_set) == 0:
        return None
    batch = inputs.collate([inputs.eval_set[0]])
    return {k: v for k, v in batch.items() if k != "labels"}


def check_sites(model: nn.Module, args: FinetuneArgs, example: Mapping[str, Any] | None = None) -> None:
    """Before training: the curve's sites must be modules of ``model`` and, given an ``example`` batch,
    reached by one eval-mode forward of it (a ``sparseout`` set may leave out sites eval never reaches,
    as calibration does, if it keeps some). ``UsageError`` naming the sites otherwise."""
    if not args.sparsity_curve:
        return
    from hf_sparseout.metrics.threshold_sites import ThresholdError, select_sites

    sites = _sites(args)
    try:
        selected = select_sites(model, sites)
    except ThresholdError as err:
        raise UsageError(err.message, err.hint) from err
    if example is None:
        return
    unreached = unreached_in_eval(model, selected, example)
    if unreached and (sites != "sparseout" or len(unreached) == len(selected)):
        raise UsageError(
            f"--sparsity-sites: {unreached} are never reached in eval mode (an eval-mode forward of one eval "
            "example did not call them), so the curve could not threshold them",
            "an attention-probability dropout is the identity in eval (models pass dropout 0 to attention) and "
            "never sees activations there; choose modules that run in eval, e.g. the default 'teal' (every "
            "weight matrix of the blocks) or weight matrices by name",
        )


def unreached_in_eval(model: nn.Module, sites: Mapping[str, nn.Module], example: Mapping[str, Any]) -> list[str]:
    """The ``sites`` that one eval-mode, no-grad forward of ``example`` never calls with an activation.

    The model's training flag and the global RNG state are restored.
    """
    seen: set[str] = set()

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if site_input(args, kwargs) is not None:  # what calibration would see there
                seen.add(name)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in sites.items()]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in example.items()}
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [n for n in sites if n not in seen]


# --- the curve -------------------------------------------------------------------------------------


@dataclass
class RunSparsityCurve(SparsityCurve):
    """A finetune run's :class:`SparsityCurve`, with what it was measured on and TEAL's fixed-sparsity figures."""

    evaluation: dict[str, Any] = field(default_factory=dict)
    """The curve's eval set: ``samples``, ``tokens`` (per pass), ``of`` (the eval set's size), ``passes``."""
    estimated_seconds: float | None = None
    """The cost estimated before it started (from the last eval pass); ``seconds`` has the measured one."""

    @property
    def metric_at_sparsity(self) -> dict[str, float | None]:
        """``{"0.25": .., "0.4": .., "0.5": ..}``: relative change of the metric against the unthresholded
        model at those model-wide sparsities, interpolated between measured points (see
        :func:`~hf_sparseout.metrics.threshold_quality.metric_at_sparsity`)."""
        return metric_at_sparsity(self.points, self.reference, self.metric, FIXED_SPARSITIES)

    def to_dict(self) -> dict[str, Any]:
        """:meth:`SparsityCurve.to_dict` plus ``metric_at_sparsity``, ``eval``, ``calibration`` and the estimate."""
        return {
            **super().to_dict(),
            "metric_at_sparsity": self.metric_at_sparsity,
            "metric_at_sparsity_rule": (
                f"relative change of {self.metric} against the unthresholded model (target 0, same eval set) at "
                "these parameter-weighted sparsities, linearly interpolated between the two measured points around "
                "each; null outside the measured range"
            ),
            "eval": self.evaluation,
            "calibration": self.calibration.meta.get("calibration"),
            "estimated_seconds": self.estimated_seconds,
        }


def eval_samples(args: FinetuneArgs, task: str) -> int:
    """Examples per curve pass: ``--sparsity-eval-samples``, else the task's :data:`EVAL_SAMPLES`."""
    return args.sparsity_eval_samples or EVAL_SAMPLES.get(task, EVAL_SAMPLES["causal-lm"])


def _tokens(dataset: Dataset) -> int:
    """Tokens the model reads from ``dataset`` (its attention masks' ones, else its input lengths)."""
    column = "attention_mask" if "attention_mask" in dataset.column_names else "input_ids"
    if column == "attention_mask":
        return int(sum(sum(row) for row in dataset[column]))
    return int(sum(len(row) for row in dataset[column]))


def _eval_loader(ctx: RunContext) -> tuple[Dataset, DataLoader]:
    """The curve's eval set (the first ``eval_samples`` examples) and its prepared loader (the run's own
    when the cap covers the whole eval set)."""
    inputs, args = ctx.inputs, ctx.args
    n = eval_samples(args, ctx.task)
    if n >= len(inputs.eval_set):
        return inputs.eval_set, ctx.eval_dl
    subset = inputs.eval_set.select(range(n))
    loader = DataLoader(subset, batch_size=args.batch_size, shuffle=False, collate_fn=inputs.collate)
    return subset, ctx.accelerator.prepare_data_loader(loader)


def _calibration_set(inputs: RunInputs) -> tuple[Dataset, str]:
    """The held-out calibration set, or (a ``RunInputs`` built without one) the first training examples."""
    if inputs.calibration_set is not None:
        return inputs.calibration_set, "training examples held out of training (the last of the training set)"
    n = min(CALIBRATION_SAMPLES, len(inputs.train_set))
    return inputs.train_set.select(range(n)), "the first training examples (not held out of training)"


def estimate_seconds(last_eval_seconds: float | None, last_eval_batches: int, curve_batches: int) -> float | None:
    """The curve's cost from the last eval pass: its time per batch times the curve's batches (None unknown)."""
    if last_eval_seconds is None or last_eval_batches <= 0:
        return None
    return last_eval_seconds / last_eval_batches * curve_batches


def final_curve(ctx: RunContext) -> RunSparsityCurve:
    """The :class:`RunSparsityCurve` of ``ctx.model`` (the run's model as given, prepared): calibrated on
    the held-out training examples, measured on the curve's own eval set (see the module docstring)."""
    from tqdm.auto import tqdm

    from hf_sparseout.metrics.threshold import calibrate, check_targets, sparsity_curve
    from hf_sparseout.training.evaluation import evaluate

    args, accelerator, task, inputs = ctx.args, ctx.accelerator, ctx.task, ctx.inputs
    model = accelerator.unwrap_model(ctx.model)
    targets = check_targets([0.0, *(args.sparsity_targets or CURVE_TARGETS)])
    eval_set, eval_dl = _eval_loader(ctx)
    calib_set, source = _calibration_set(inputs)
    calib_batches = list(DataLoader(calib_set, batch_size=args.batch_size, shuffle=False, collate_fn=inputs.collate))
    unit = "blocks" if task == "causal-lm" else "examples"
    evaluation = {
        "samples": len(eval_set),
        "tokens": _tokens(eval_set),
        "of": len(inputs.eval_set),
        "passes": len(targets),
        "unit": unit,
    }
    calibration_info = {"samples": len(calib_set), "tokens": _tokens(calib_set), "batches": len(calib_batches)}
    calibration_info["source"] = source
    curve_batches = len(targets) * len(eval_dl)
    estimate = estimate_seconds(
        getattr(ctx, "last_eval_seconds", None), len(ctx.eval_dl), curve_batches + len(calib_batches)
    )
    cost = (
        f"about {estimate:.0f} s estimated from the last eval ({len(ctx.eval_dl)} batches in "
        f"{ctx.last_eval_seconds:.1f} s)"  # estimate is None when the run has no timed eval
        if estimate is not None
        else "time unknown (no eval timed yet)"
    )
    logger.info(
        f"[{ctx.name}] sparsity curve: {len(targets)} passes x {len(eval_dl)} batches over {len(eval_set)} of "
        f"{len(inputs.eval_set)} eval {unit} ({evaluation['tokens']} tokens a pass; --sparsity-eval-samples) + "
        f"calibration on {len(calib_set)} held-out training {unit} ({calibration_info['tokens']} tokens): {cost}"
    )
    trained = ctx.result.train_seconds if ctx.result.global_step > 0 else 0.0
    if estimate is not None and trained and estimate > trained:
        logger.warning(
            f"[{ctx.name}] the sparsity curve will take longer than the training run "
            f"({ctx.result.train_seconds:.0f} s); lower --sparsity-eval-samples or give fewer --sparsity-targets"
        )
    start = time.perf_counter()
    calibration = calibrate(model, calib_batches, _sites(args), targets)
    calibration.meta["calibration"] = calibration_info
    calibrated = time.perf_counter()
    bar = tqdm(total=curve_batches, desc=f"{ctx.name} sparsity curve", disable=not accelerator.is_local_main_process)
    metric = "perplexity" if task == "causal-lm" else "accuracy"

    def evaluate_fn(_: nn.Module, hooks: ThresholdHooks) -> dict[str, float]:
        return evaluate(ctx.model, eval_dl, accelerator, task, inputs.num_labels, monitor=hooks, progress=bar)

    try:
        curve = sparsity_curve(model, calibration, evaluate_fn, metric=metric, targets=targets)
    finally:
        bar.close()
    curve.seconds["calibration"] = calibrated - start
    curve.seconds["total"] = time.perf_counter() - start
    values = {f.name: getattr(curve, f.name) for f in fields(curve)}
    return RunSparsityCurve(**values, evaluation=evaluation, estimated_seconds=estimate)


def save_thresholds(curve: SparsityCurve, directory: Path) -> Path:
    """Write the run's thresholds (every target) next to its model."""
    directory.mkdir(parents=True, exist_ok=True)
    return curve.calibration.save(directory / THRESHOLDS_FILE)
