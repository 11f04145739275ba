"""`hf-sparseout finetune`: fine-tune (or train from a config) with Sparseout, via accelerate."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from hf_sparseout_cli.errors import CliError, run_job
from hf_sparseout_cli.options import (
    AttentionMode,
    AttentionOpt,
    ExcludeOpt,
    GradientMode,
    GradientOpt,
    InsertOpt,
    LogLevel,
    LogLevelOpt,
    OutputFormat,
    POpt,
    TargetsOpt,
    insert_patterns,
    split_patterns,
)

if TYPE_CHECKING:
    from hf_sparseout.training.args import FinetuneArgs

DATA, MODEL, SPARSE, TRAIN, OUT = "Task and data", "Model", "Sparseout", "Training", "Output"
CURVE = "Deployable sparsity"


class Task(str, Enum):
    """What to train."""

    causal_lm = "causal-lm"
    classification = "classification"


class Scheduler(str, Enum):
    """Learning-rate schedule."""

    linear = "linear"
    cosine = "cosine"
    constant = "constant"


class Baseline(str, Enum):
    """Control runs beside the main one (same seed, data order and sites)."""

    dropout = "dropout"
    none = "none"
    both = "both"


class Noise(str, Enum):
    """Sparseout's noise scale: the paper's, or matched to dropout's total variance."""

    raw = "raw"
    matched = "matched"


def normalise_argv(argv: list[str]) -> list[str]:
    """A bare ``--baseline`` (last, or followed by another option) means ``--baseline=dropout``, as before."""
    out = []
    for i, token in enumerate(argv):
        bare = token == "--baseline" and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
        out.append("--baseline=dropout" if bare else token)
    return out


class FinetuneCommand(TyperCommand):
    """``finetune``'s Click command: accepts the bare ``--baseline`` flag beside ``--baseline KIND``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalise_argv(list(args)))


class Precision(str, Enum):
    """accelerate's mixed precision."""

    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


def args_from_params(params: Mapping[str, Any]) -> FinetuneArgs:
    """``FinetuneArgs`` from the parameters of :func:`finetune` (as it receives them, or as Click parsed them).

    Shared with ``hf-sparseout sweep``, which parses its pass-through options with this command's parser.
    Enums become their values, ``--targets``/``--exclude``/``--insert`` are split, ``--report-to`` defaults to none.
    """
    from hf_sparseout.training.args import FinetuneArgs

    values: dict[str, Any] = {}
    for f in dataclasses.fields(FinetuneArgs):
        value = params[f.name]
        values[f.name] = value.value if isinstance(value, Enum) else value
    for name in ("targets", "exclude"):
        values[name] = split_patterns(list(values[name]) if values[name] else None)
    sites = split_patterns(list(values["sparsity_sites"]) if values["sparsity_sites"] else None)
    values["sparsity_sites"] = [sites] if isinstance(sites, str) else sites
    values["insert"] = insert_patterns(list(values["insert"]) if values["insert"] else None)
    if params.get("no_baseline"):
        if values["baseline"] is not None:
            raise CliError(
                f"--baseline {values['baseline']} and --no-baseline contradict each other", "keep one of them"
            )
        values["baseline"] = False
    values["report_to"] = list(values["report_to"] or ["none"])
    return FinetuneArgs(**values)


def finetune(
    task: Annotated[
        Task | None,
        typer.Option(help="Inferred when obvious (a label column means classification).", rich_help_panel=DATA),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Hub dataset name, or a local file/directory (.txt .csv .tsv .json .jsonl .parquet). "
            "Default: a built-in offline corpus.",
            rich_help_panel=DATA,
        ),
    ] = None,
    dataset_config: Annotated[
        str | None, typer.Option(help="Hub dataset configuration name.", rich_help_panel=DATA)
    ] = None,
    train_split: Annotated[str, typer.Option(help="Training split.", rich_help_panel=DATA)] = "train",
    eval_split: Annotated[
        str | None,
        typer.Option(
            help="Eval split (default: validation/valid/dev/test, else carved from train).", rich_help_panel=DATA
        ),
    ] = None,
    validation_split_percentage: Annotated[
        float,
        typer.Option(help="Percent of train carved as eval when the data has no eval split.", rich_help_panel=DATA),
    ] = 10.0,
    text_column: Annotated[
        str | None, typer.Option(help="Text column (auto: text, sentence, ...).", rich_help_panel=DATA)
    ] = None,
    text_pair_column: Annotated[
        str | None, typer.Option(help="Second text column for pair classification.", rich_help_panel=DATA)
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="Label column (auto: label, labels, ...).", rich_help_panel=DATA)
    ] = None,
    max_train_samples: Annotated[
        int | None, typer.Option(help="Cap on training examples (blocks for causal LM).", rich_help_panel=DATA)
    ] = None,
    max_eval_samples: Annotated[
        int | None, typer.Option(help="Cap on eval examples (blocks for causal LM).", rich_help_panel=DATA)
    ] = None,
    block_size: Annotated[int, typer.Option(help="Causal LM: tokens per training block.", rich_help_panel=DATA)] = 128,
    max_length: Annotated[
        int, typer.Option(help="Classification: truncate inputs to this many tokens.", rich_help_panel=DATA)
    ] = 128,
    model: Annotated[
        str | None, typer.Option(help="Hub id or local directory to fine-tune.", rich_help_panel=MODEL)
    ] = None,
    from_config: Annotated[
        str | None,
        typer.Option(
            help="Train from scratch: a preset (gpt2-tiny, gpt2-mini, gpt2-small, llama-tiny, bert-tiny) "
            "or a config.json.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="Tokenizer (default: the model's; with --from-config, a BPE trained on the data).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    p: POpt = None,
    q: Annotated[
        float,
        typer.Option("--q", help="Sparseout exponent: q<2 sparser, q=2 dropout, q>2 denser.", rich_help_panel=SPARSE),
    ] = 1.5,
    targets: TargetsOpt = None,
    exclude: ExcludeOpt = None,
    attention: AttentionOpt = AttentionMode.sparseout,
    insert: InsertOpt = None,
    gradient: GradientOpt = GradientMode.reference,
    baseline: Annotated[
        Baseline | None,
        typer.Option(
            "--baseline",
            help="Control runs (same seed, data order and sites): dropout (q=2 at the same p; a bare --baseline), "
            "none (p=0: no noise), or both. Default: dropout for the offline default run, none otherwise.",
            rich_help_panel=SPARSE,
        ),
    ] = None,
    no_baseline: Annotated[
        bool,
        typer.Option("--no-baseline", help="No control run (also for the offline default).", rich_help_panel=SPARSE),
    ] = False,
    noise: Annotated[
        Noise,
        typer.Option(
            help="Sparseout noise: raw (the paper's) or matched (scaled to dropout's total variance per call).",
            rich_help_panel=SPARSE,
        ),
    ] = Noise.raw,
    lq_penalty: Annotated[
        float | None,
        typer.Option(
            help="Add WEIGHT * mean over sites of mean(|x|^Q) of the activations entering the sites to the loss "
            "(main run only; with --p 0 the penalty alone).",
            rich_help_panel=SPARSE,
        ),
    ] = None,
    lq_q: Annotated[
        float | None, typer.Option(help="Exponent Q of --lq-penalty (default 1).", rich_help_panel=SPARSE)
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option(
            help="Training epochs (ignored with --max-steps). Default: 1, or 6 for the offline default run.",
            rich_help_panel=TRAIN,
        ),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (0: evaluate only).", rich_help_panel=TRAIN)
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Per-device batch size.", rich_help_panel=TRAIN)] = 8,
    gradient_accumulation_steps: Annotated[
        int, typer.Option(help="Batches per optimizer step.", rich_help_panel=TRAIN)
    ] = 1,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate (AdamW).", rich_help_panel=TRAIN)] = 5e-4,
    weight_decay: Annotated[
        float, typer.Option(help="AdamW weight decay (not on biases and norms).", rich_help_panel=TRAIN)
    ] = 0.0,
    lr_scheduler: Annotated[
        Scheduler, typer.Option(help="Learning-rate schedule.", rich_help_panel=TRAIN)
    ] = Scheduler.linear,
    warmup_ratio: Annotated[
        float, typer.Option(help="Fraction of steps for linear warmup.", rich_help_panel=TRAIN)
    ] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping (0: off).", rich_help_panel=TRAIN)] = 1.0,
    mixed_precision: Annotated[
        Precision, typer.Option(help="accelerate mixed precision.", rich_help_panel=TRAIN)
    ] = Precision.no,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Recompute activations in backward.", rich_help_panel=TRAIN)
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Seed for initialisation, data order and masks.", rich_help_panel=TRAIN)
    ] = 42,
    eval_steps: Annotated[
        int | None, typer.Option(help="Evaluate every N steps (always at the end).", rich_help_panel=TRAIN)
    ] = None,
    save_steps: Annotated[
        int | None, typer.Option(help="Checkpoint (accelerate save_state) every N steps.", rich_help_panel=TRAIN)
    ] = None,
    save_minutes: Annotated[
        float,
        typer.Option(
            help="Also checkpoint when this many minutes have passed since the last one (0: only --save-steps).",
            rich_help_panel=TRAIN,
        ),
    ] = 10.0,
    save_total_limit: Annotated[
        int | None, typer.Option(help="Keep only the last N checkpoints.", rich_help_panel=TRAIN)
    ] = 2,
    resume_from_checkpoint: Annotated[
        str | None, typer.Option(help="'latest' or a checkpoints/<run>/step-N directory.", rich_help_panel=TRAIN)
    ] = None,
    report_to: Annotated[
        list[str] | None,
        typer.Option(help="accelerate trackers: none, tensorboard, wandb, ... (repeatable).", rich_help_panel=OUT),
    ] = None,
    output_dir: Annotated[
        str, typer.Option(help="Where the model, metrics.json, report.md and plots go.", rich_help_panel=OUT)
    ] = "hf-sparseout-run",
    overwrite_output_dir: Annotated[
        bool, typer.Option("--overwrite-output-dir", help="Allow a non-empty output directory.", rich_help_panel=OUT)
    ] = False,
    push_to_hub: Annotated[
        bool,
        typer.Option(
            "--push-to-hub", help="Push the final model and its card (main process only).", rich_help_panel=OUT
        ),
    ] = False,
    hub_model_id: Annotated[
        str | None, typer.Option(help="Repository id for --push-to-hub.", rich_help_panel=OUT)
    ] = None,
    sparsity_curve: Annotated[
        bool,
        typer.Option(
            "--sparsity-curve",
            help="At the final evaluation of every run, zero the smallest activations entering each weight "
            "matrix (magnitude thresholds calibrated on 8 training batches) at each target sparsity and report "
            "the metric against the sparsity reached; metrics.json gets sparsity_at_1pct / sparsity_at_5pct "
            "(largest sparsity within +1 % / +5 % perplexity, or 1 / 5 accuracy points, interpolated). "
            "Costs one calibration pass and one eval pass per target.",
            rich_help_panel=CURVE,
        ),
    ] = False,
    sparsity_targets: Annotated[
        str | None,
        typer.Option(
            help="Target sparsities for --sparsity-curve, comma-separated, in [0, 1). Default: 0,0.1,...,0.7.",
            rich_help_panel=CURVE,
        ),
    ] = None,
    sparsity_sites: Annotated[
        list[str] | None,
        typer.Option(
            help="Modules whose input is thresholded (names, dotted suffixes or 're:<regex>'; repeat or "
            "comma-separate), or 'teal' (adds the attention output projection) or 'sparseout' (the Sparseout "
            "sites). Default: attention and MLP input projections and the MLP down-projection of the family.",
            rich_help_panel=CURVE,
        ),
    ] = None,
    fmt: Annotated[
        OutputFormat,
        typer.Option(
            "--format", help="Final summary as a table (text) or JSON.", case_sensitive=False, rich_help_panel=OUT
        ),
    ] = OutputFormat.text,
    log_level: LogLevelOpt = LogLevel.info,
) -> None:
    """Fine-tune a model with Sparseout and report perplexity (or accuracy) alongside activation sparsity.

    With no --model and no --dataset it runs offline (3m23s measured on 2 idle CPU
    cores; longer on a busy machine): a small GPT-2 built from a preset, a tokenizer trained on
    a corpus of Python's own help pages, Sparseout and a dropout baseline at the same sites
    (--baseline is on by default there), and a table of perplexity and sparsity for both.

    Examples:

      hf-sparseout finetune

      hf-sparseout finetune --task classification --q 2.5 --output-dir runs/cls

      hf-sparseout finetune --dataset ./ptb --from-config gpt2-mini --q 1.5 --p 0.1 --baseline --max-steps 500
      --output-dir runs/ptb

      hf-sparseout finetune --model ./minilm --dataset ../shared/data/sst2 --text-column sentence --q 2.5
      --output-dir runs/sst2

      accelerate launch --multi_gpu --num_processes 2 -m hf_sparseout_cli finetune --max-steps 100
      --output-dir runs/ddp
    """
    params = dict(locals())  # the options, before anything else is bound
    import sys

    from hf_sparseout import logs
    from hf_sparseout.training.reporting import print_summary
    from hf_sparseout.training.runner import finetune as run_finetune
    from hf_sparseout.training.runner import interrupted_message

    args = args_from_params(params)  # a CliError is printed by the app's group (exit 2)
    logs.configure(log_level.value, sys.stderr if fmt is OutputFormat.json else sys.stdout)
    outcome = run_job(
        lambda: run_finetune(args),
        lambda: interrupted_message(args),
    )
    if not outcome.is_main_process:  # under accelerate launch the summary is printed once
        return
    if fmt is OutputFormat.json:
        typer.echo(
            json.dumps(
                {
                    "task": outcome.task,
                    "output_dir": str(outcome.output_dir),
                    "summary": outcome.summary(),
                    "files": outcome.files,
                },
                indent=2,
                default=float,
            )
        )
    else:
        print_summary(outcome.results, outcome.task)
        typer.echo(f"Wrote {outcome.output_dir}/ (model, metrics.json, report.md, plots)")
