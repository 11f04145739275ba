"""``finetune(args)``: data → tokenizer → model → Sparseout run (+ dropout and/or p = 0 controls) → files."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hf_sparseout.errors import HfSparseoutError
from hf_sparseout.integrations.distributed import check_launch
from hf_sparseout.library_noise import quiet_known_library_messages
from hf_sparseout.logs import get_logger
from hf_sparseout.optional import MATPLOTLIB, require
from hf_sparseout.outdir_lock import entries, hold_output_dir, refuse_if_held
from hf_sparseout.training import checkpoints, reporting, run_names
from hf_sparseout.training.args import FinetuneArgs, UsageError
from hf_sparseout.training.best_model import check_metric
from hf_sparseout.training.data import check_dataset_source, infer_task, load_raw, pick_splits, prepare, text_column
from hf_sparseout.training.loop import RunInputs, RunResult, analyse, save_final, sparseout_config, train_run
from hf_sparseout.training.modeling import build_model, config_from, default_model, load_tokenizer, train_tokenizer
from hf_sparseout.training.run_files import RunFiles
from hf_sparseout.training.run_options import RUN_OPTIONS_FILE, write_run_options
from hf_sparseout.training.threshold_curve import split_calibration

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

logger = get_logger(__name__)

CONTROLS = tuple(run_names.DIRECTORIES.values())
"""The directories of the control runs beside the main one: ``baseline`` (the ``dropout`` run, q = 2) and
``p0`` (the ``p=0`` run), same sites (``run_names``)."""
control_runs = run_names.controls


@dataclass
class FinetuneOutcome:
    """What ``finetune`` returns: the runs, the task and where everything was written."""

    task: str
    results: list[RunResult]
    output_dir: Path
    files: dict[str, str]
    is_main_process: bool = True

    def summary(self) -> list[reporting.SummaryRow]:
        """One row per run (final metrics, sparsity, throughput)."""
        return reporting.summary_rows(self.results, self.task)


def _checkpoints_in(out: Path) -> dict[str, list[Path]]:
    """The complete checkpoints of each run that has any (oldest first)."""
    runs = {r: checkpoints.list_checkpoints(checkpoints.run_dir(out, r)) for r in ("sparseout", *CONTROLS)}
    return {r: found for r, found in runs.items() if found}


def check_output_dir(args: FinetuneArgs) -> Path:
    """Check the output location before anything is trained; return it (symlinks resolved).

    Refuses a non-empty directory unless overwriting or resuming, a file, and a location this process
    cannot write (the directory itself, or its parent where the final save is staged) — so a run never
    trains to the end and then fails to save; a directory another process holds (``outdir_lock``) is
    refused naming that process. Nothing is written or removed here (``clear_output_dir`` does, once held).
    """
    from hf_sparseout.hub.save_load import check_writable

    out = Path(args.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {str(out)!r} is a file", "choose a directory path")
    out = out.resolve()
    refuse_if_held(out)  # another process writing here (or a sweep around it) is named before any other error
    non_empty = out.is_dir() and bool(entries(out))
    if args.resume_from_checkpoint:
        if args.resume_from_checkpoint == "latest" and not _checkpoints_in(out):
            raise UsageError(
                f"no checkpoint to resume from in {str(out / 'checkpoints')!r}",
                "checkpoints are written every --save-steps steps and every --save-minutes minutes; "
                "drop --resume-from-checkpoint to start again",
            )
    elif non_empty and not args.overwrite_output_dir:
        resumable = bool(_checkpoints_in(out))
        raise UsageError(
            f"output directory {str(out)!r} is not empty",
            "pass --overwrite-output-dir to replace it"
            + (", or --resume-from-checkpoint latest to continue its run" if resumable else "")
            + ", or choose another --output-dir",
        )
    check_writable(out)
    return out


def clear_output_dir(out: Path, args: FinetuneArgs) -> None:
    """Under the output directory's lock: with ``--overwrite-output-dir`` (not resuming) the previous run's
    checkpoints and controls are removed; staging directories left by a killed save are removed."""
    from hf_sparseout.hub.save_load import remove_stale_staging

    if args.overwrite_output_dir and not args.resume_from_checkpoint:
        for stale in ("checkpoints", *CONTROLS):
            shutil.rmtree(out / stale, ignore_errors=True)
    remove_stale_staging(out)
    for control in CONTROLS:
        remove_stale_staging(out / control)


def interrupted_message(args: FinetuneArgs) -> str:
    """What an interrupted ``finetune`` left: a checkpoint to resume from, or nothing to resume."""
    out = Path(args.output_dir).expanduser().resolve()
    latest = [str(found[-1].relative_to(out)) for found in _checkpoints_in(out).values()]
    if latest:
        return f"complete checkpoints are intact ({', '.join(latest)}); continue with --resume-from-checkpoint latest"
    return (
        "no checkpoint had been written yet (every --save-steps steps and every --save-minutes minutes, "
        "default 10), so there is nothing to resume; run the command again"
    )


def _accelerator(args: FinetuneArgs) -> Accelerator:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    trackers = [t for t in args.report_to if t != "none"]
    _check_trackers(trackers)
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UsageError(
            "--mixed-precision fp16 needs a CUDA device (on the CPU it would silently train in float32)",
            "use --mixed-precision bf16 on the CPU, or no",
        )
    try:
        accelerator = Accelerator(
            # Without CUDA, processes started by torchrun / `accelerate launch --multi_gpu` join a gloo group.
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=trackers or None,
            project_dir=args.output_dir,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
    except (ValueError, ImportError, RuntimeError) as err:
        raise UsageError(f"accelerate could not start: {err}", "check --mixed-precision and --report-to") from err
    check_launch(accelerator)  # N launched processes are one run, and a requested FSDP/DeepSpeed is used
    return accelerator


def _check_trackers(trackers: list[str]) -> None:
    """Each ``--report-to`` tracker must be installed: accelerate would only warn and log nothing."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in trackers:
        if name == "all":
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            raise UsageError(
                f"--report-to {name!r} is not an accelerate tracker", f"one of: none, {', '.join(LOGGER_TYPE_TO_CLASS)}"
            )
        if name not in available:
            raise UsageError(
                f"--report-to {name} needs the {name!r} package, which is not installed",
                f"pip install {name}, or drop --report-to {name}",
            )


def _check_push(args: FinetuneArgs) -> None:
    """Before training: a valid repo id and a token (never printed), so a long run does not fail at the end."""
    from huggingface_hub import get_token

    from hf_sparseout.hub.push import PushError, validate_repo_id

    try:
        validate_repo_id(args.hub_model_id)
    except PushError as err:
        raise UsageError(str(err), getattr(err, "hint", None)) from err
    if not get_token():
        raise UsageError("--push-to-hub needs a Hugging Face token", "set HF_TOKEN or run `hf auth login`")


def _push(out: Path, args: FinetuneArgs) -> str:
    from hf_sparseout.hub import push_checkpoint
    from hf_sparseout.hub.push import PushError

    try:
        result = push_checkpoint(
            out, args.hub_model_id, ignore_patterns=["checkpoints/*", *(f"{c}/*" for c in CONTROLS)]
        )
    except PushError as err:
        raise UsageError(
            f"the run finished and is saved in {str(out)!r}, but the push failed: {err}",
            getattr(err, "hint", None) or f"retry with: hf-sparseout push {out} --repo-id {args.hub_model_id}",
        ) from err
    logger.info(f"pushed {len(result.files)} files to {args.hub_model_id}")
    return args.hub_model_id


def check_args(args: FinetuneArgs) -> None:
    """Everything about ``args`` that can be checked before any file is read or written: the options
    (:meth:`FinetuneArgs.validate`, defaults resolved), the Sparseout config, and that a local ``--model``,
    ``--tokenizer``, ``--from-config`` or ``--dataset`` exists (``--model minilm`` resolved); ``UsageError``."""
    args.validate()
    args.resolve_defaults()
    try:
        sparseout_config(args, args.q)
    except ValueError as err:
        raise UsageError(
            str(err), "see --p, --q, --targets, --exclude, --insert in hf-sparseout finetune --help"
        ) from err
    check_sources(args)


def check_sources(args: FinetuneArgs) -> None:
    """The model, tokenizer, config and dataset paths, before the data is read or a model built."""
    from hf_sparseout.errors import ModelNotAvailableError
    from hf_sparseout.loading import check_local_source, check_model_available, resolve_alias

    try:
        if args.model:
            args.model = resolve_alias(args.model)
            check_model_available(args.model, "--model")
        if args.tokenizer:
            args.tokenizer = resolve_alias(args.tokenizer)
            check_local_source(args.tokenizer, "--tokenizer", need_config=False)
    except ModelNotAvailableError as err:
        raise UsageError(err.message, err.hint) from err
    if args.from_config:
        config_from(args.from_config)
    check_dataset_source(args)


@quiet_known_library_messages()
def finetune(args: FinetuneArgs, end_training: bool = True) -> FinetuneOutcome:
    """Run ``hf-sparseout finetune`` with ``args``; ``UsageError`` for bad input, before anything is written.

    ``end_training=False`` keeps accelerate's trackers and process group alive for a caller that runs
    several fine-tunings in one process (``sweep``): torch cannot re-create the default process group
    from torchrun's store in the same process.
    """
    check_args(args)
    require("matplotlib", feature="finetune's plots", install=MATPLOTLIB)  # before any training
    out = check_output_dir(args)
    if args.push_to_hub:
        _check_push(args)
    with hold_output_dir(out):  # one writer: a second finetune or sweep here is refused before it trains
        clear_output_dir(out, args)
        return _train(args, out, end_training)


def _train(args: FinetuneArgs, out: Path, end_training: bool) -> FinetuneOutcome:
    """``finetune`` once the output directory is checked and held: data, model, runs, files."""
    from transformers import DataCollatorWithPadding, default_data_collator

    task = args.task or ("causal-lm" if args.dataset is None else None)
    raw, source, dataset_names = load_raw(args, task or "causal-lm")
    task = task or infer_task(raw, args)
    check_metric(args.metric_for_best_model, task)  # --metric-for-best-model is measured for this task
    model_name, from_config = default_model(args, task)
    tokenizer_name = args.tokenizer or model_name
    train, evaluation = pick_splits(raw, args, task)
    if tokenizer_name:
        tokenizer = load_tokenizer(tokenizer_name, "--tokenizer" if args.tokenizer else "--model")
    else:
        tokenizer = train_tokenizer([t for t in train[text_column(train, args)] if isinstance(t, str)])
    prepared = prepare(args, tokenizer, task, train, evaluation)
    train_set, calibration_set = split_calibration(prepared.train, args)  # --sparsity-curve's held-out examples
    held_out = ""
    if calibration_set is not None:
        held_out = f" (+ {len(calibration_set)} held out to calibrate the sparsity curve)"
    logger.info(
        f"task: {task}; data: {source}; model: {model_name or 'from config ' + str(from_config)}; "
        f"train {len(train_set)}{held_out} / eval {len(prepared.eval)} "
        f"{'blocks' if task == 'causal-lm' else 'examples'}"
    )
    collate = default_data_collator if task == "causal-lm" else DataCollatorWithPadding(tokenizer)

    def make_model() -> nn.Module:
        return build_model(model_name, from_config, task, tokenizer, prepared.label_names)

    accelerator = _accelerator(args)
    accelerator.init_trackers("hf-sparseout", config={k: str(v) for k, v in args.to_dict().items()})
    inputs = RunInputs(
        args=args,
        accelerator=accelerator,
        make_model=make_model,
        train_set=train_set,
        eval_set=prepared.eval,
        collate=collate,
        task=task,
        num_labels=prepared.num_labels,
        calibration_set=calibration_set,
    )
    if accelerator.is_main_process:  # what this run is trained with, before it starts (sweeps compare it)
        write_run_options(out, args, task)
    try:
        # The controls share the seed, data order and sites; only the main run gets --lq-penalty.
        contexts = [train_run(inputs, run_names.main_name(args), args.q, penalty=True)]
        for name in control_runs(args.baseline):
            contexts.append(train_run(inputs, name, 2.0, p=0.0 if name == run_names.P0 else None))
    except HfSparseoutError:  # bad input found while preparing a run (a pattern matching nothing): leave nothing
        if accelerator.is_main_process and not _checkpoints_in(out):
            (out / RUN_OPTIONS_FILE).unlink(missing_ok=True)
        raise
    results = [ctx.result for ctx in contexts]
    # the main run's model at the top, each control's in its directory
    directories = [out, *(out / run_names.run_directory(args, result.name) for result in results[1:])]
    # What the runs produced is saved before anything optional that can fail: models, then their files.
    for result, directory in zip(results, directories, strict=True):
        save_final(result, accelerator, tokenizer, directory)
    report = RunFiles(out, args, results, task, source, dataset_names, from_config is not None)
    files = report.write(accelerator)
    if args.sparsity_curve:  # the optional analyses, then their figures (or errors) into the same files
        for ctx in contexts:
            analyse(ctx)
        files = report.write(accelerator, directories)
    if accelerator.is_main_process and args.push_to_hub:
        files["pushed_to"] = _push(out, args)
    if end_training:
        accelerator.end_training()
    else:
        for tracker in accelerator.trackers:
            tracker.finish()
    refused = next((r.refused for r in results if r.refused is not None), None)
    if refused is not None:  # an analysis refused for the options: everything is on disk, exit 2 with the hint
        raise refused
    return FinetuneOutcome(task, results, out, files, is_main_process=accelerator.is_main_process)
