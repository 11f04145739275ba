"""``FinetuneArgs``: every option of ``hf-sparseout finetune``, validated in one place."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hf_sparseout.errors import UsageError
from hf_sparseout.ops.sparseout import GRADIENT_MODES, NOISE_MODES
from hf_sparseout.patcher.config import ATTENTION_MODES

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
    model: str | None = field(default=None, metadata={"help": "Hub id or local directory to fine-tune."})
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
            "help": "At the final evaluation of every run, zero the smallest activations entering each weight "
            "matrix (magnitude thresholds calibrated on 8 training batches) at each target sparsity and report "
            "the metric against the sparsity reached; metrics.json gets sparsity_at_1pct / sparsity_at_5pct "
            "(largest sparsity within +1 % / +5 % perplexity, or 1 / 5 accuracy points, interpolated). "
            "Costs one calibration pass and one eval pass per target."
        },
    )
    sparsity_targets: list[float] | str | None = field(
        default=None,
        metadata={
            "help": "Target sparsities for --sparsity-curve, comma-separated, in [0, 1). Default: 0,0.1,...,0.7."
        },
    )
    sparsity_sites: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules whose input is thresholded (names, dotted suffixes or 're:<regex>'; repeat or "
            "comma-separate), or 'teal' (adds the attention output projection) or 'sparseout' (the Sparseout "
            "sites). Default: attention and MLP input projections and the MLP down-projection of the family."
        },
    )

    def validate(self) -> None:
        """Raise :class:`UsageError` for values no run could use."""
        if self.task is not None and self.task not in TASKS:
            raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.model and self.from_config:
            raise UsageError(
                "--model and --from-config are exclusive",
                "use --model to fine-tune, --from-config to train from scratch",
            )
        positive = {
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "block_size": self.block_size,
            "max_length": self.max_length,
        }
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("max_train_samples", "max_eval_samples", "eval_steps", "save_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not (self.save_minutes >= 0 and math.isfinite(self.save_minutes)):
            raise UsageError(f"--save-minutes must be >= 0 (0: only --save-steps), got {self.save_minutes}")
        if self.max_steps is not None and self.max_steps < 0:
            raise UsageError(f"--max-steps must be >= 0 (0 evaluates only), got {self.max_steps}")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise UsageError(f"--epochs must be > 0, got {self.epochs}")
        if not 0 < self.validation_split_percentage < 100:
            raise UsageError(
                f"--validation-split-percentage must be in (0, 100), got {self.validation_split_percentage}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UsageError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.lr_scheduler not in SCHEDULERS:
            raise UsageError(f"--lr-scheduler must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}")
        if self.mixed_precision not in PRECISIONS:
            raise UsageError(f"--mixed-precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")
        if self.push_to_hub and not self.hub_model_id:
            raise UsageError("--push-to-hub needs --hub-model-id", "e.g. --hub-model-id my-user/gpt2-sparseout")
        if self.hub_model_id and not self.push_to_hub:
            raise UsageError(
                "--hub-model-id is only used with --push-to-hub", "add --push-to-hub, or drop --hub-model-id"
            )
        if isinstance(self.baseline, str) and self.baseline not in BASELINES:
            raise UsageError(f"--baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.noise not in NOISE_MODES:
            raise UsageError(f"--noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
        if self.lq_penalty is not None and not (math.isfinite(self.lq_penalty) and self.lq_penalty > 0):
            raise UsageError(
                f"--lq-penalty must be a finite weight > 0, got {self.lq_penalty}", "e.g. --lq-penalty 1e-3"
            )
        if self.lq_q is not None and self.lq_penalty is None:
            raise UsageError("--lq-q is only used with --lq-penalty", "add --lq-penalty WEIGHT, or drop --lq-q")
        if self.lq_q is not None and not (math.isfinite(self.lq_q) and self.lq_q > 0):
            raise UsageError(f"--lq-q must be a finite exponent > 0, got {self.lq_q}", "e.g. --lq-q 1")
        if self.text_pair_column and self.task == "causal-lm":
            raise UsageError("--text-pair-column is for --task classification")
        if self.label_column and self.task == "causal-lm":
            raise UsageError("--label-column is for --task classification")
        self._validate_sparsity_curve()
        self._validate_best_model()

    def _validate_best_model(self) -> None:
        """``--nan-policy`` in its vocabulary; the best-model options only with ``--load-best-model-at-end``."""
        if self.nan_policy not in NAN_POLICIES:
            raise UsageError(f"--nan-policy must be one of {', '.join(NAN_POLICIES)}, got {self.nan_policy!r}")
        if self.metric_for_best_model is not None and self.metric_for_best_model not in BEST_METRICS:
            raise UsageError(
                f"--metric-for-best-model must be one of {', '.join(BEST_METRICS)}, got {self.metric_for_best_model!r}"
            )
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise UsageError(f"--early-stopping-patience must be >= 1, got {self.early_stopping_patience}")
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
        if not self.sparsity_curve and (self.sparsity_targets is not None or self.sparsity_sites):
            raise UsageError(
                "--sparsity-targets and --sparsity-sites are only used with --sparsity-curve",
                "add --sparsity-curve, or drop them",
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
