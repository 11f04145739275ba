"""``FinetuneArgs``: every option of ``hf-sparseout finetune``, validated in one place."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_sparseout.errors import UsageError

__all__ = ["PRECISIONS", "SCHEDULERS", "TASKS", "FinetuneArgs", "UsageError"]

TASKS = ("causal-lm", "classification")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("no", "fp16", "bf16")
BASELINES = ("dropout", "none", "both")
"""``--baseline`` kinds: plain dropout at the same sites (q = 2), p = 0 at the same sites, or both."""
NOISE_MODES = ("raw", "matched")


@dataclass
class FinetuneArgs:
    """Options of a fine-tuning run (see ``hf-sparseout finetune --help`` for each)."""

    # task and data
    task: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    validation_split_percentage: float = 10.0
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    block_size: int = 128
    max_length: int = 128
    # model
    model: str | None = None
    from_config: str | None = None
    tokenizer: str | None = None
    # sparseout
    p: float | None = None
    q: float = 1.5
    targets: list[str] | str | None = None
    exclude: list[str] | str | None = None
    attention: str = "sparseout"
    insert: list[str] | str | None = None
    gradient: str = "reference"
    baseline: bool | str | None = None
    noise: str = "raw"
    lq_penalty: float | None = None
    lq_q: float | None = None
    # training
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 42
    eval_steps: int | None = None
    save_steps: int | None = None
    save_minutes: float = 10.0
    save_total_limit: int | None = 2
    output_dir: str = "hf-sparseout-run"
    overwrite_output_dir: bool = False
    resume_from_checkpoint: str | None = None
    report_to: list[str] = field(default_factory=lambda: ["none"])
    push_to_hub: bool = False
    hub_model_id: str | None = None
    # deployable sparsity (magnitude thresholding at the final evaluation)
    sparsity_curve: bool = False
    sparsity_targets: list[float] | str | None = None
    sparsity_sites: list[str] | None = None

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
        4 evaluations: 6 epochs of the built-in LM corpus (3m23s for both runs on 2 idle CPU cores, 2026-11-30),
        or 3 epochs of the built-in classification set (2m20s with MiniLM).
        """
        if self.baseline is None:
            self.baseline = self.offline_default
        if self.lq_penalty is not None and self.lq_q is None:
            self.lq_q = 1.0
        if self.epochs is None:
            demo = 3.0 if self.task == "classification" else 6.0
            self.epochs = demo if self.offline_default and self.max_steps is None else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready hyperparameters."""
        return asdict(self)

    def to_json(self) -> str:
        """The options as JSON."""
        return json.dumps(self.to_dict(), indent=2)
