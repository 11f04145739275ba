"""`hf-sparseout inspect`: list a model's dropout sites and what a patch would do (a dry run)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hf_sparseout.training.args import FinetuneArgs
from hf_sparseout_cli.errors import CliError
from hf_sparseout_cli.options import (
    AttentionMode,
    AttentionOpt,
    ExcludeOpt,
    GradientMode,
    GradientOpt,
    InsertOpt,
    POpt,
    QOpt,
    ReportFormat,
    TargetsOpt,
    insert_patterns,
    split_patterns,
)

DEFAULTS = FinetuneArgs()
"""finetune's defaults: inspect's Sparseout options default to the same values, so it previews finetune's patch."""
SHARED_OPTIONS = ("p", "q", "targets", "exclude", "attention", "insert", "gradient")


def _shown(value: object) -> str:
    value = getattr(value, "value", value)  # an Enum option
    if isinstance(value, list):
        return ",".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def previewed_patch(values: dict[str, object]) -> str:
    """One line saying which patch is previewed: finetune's default one, or the options that differ from it.

    ``values``: the command's Sparseout options as given (lists of patterns, Enums), by name.
    """
    default = ", ".join(
        f"{name}={_shown(getattr(DEFAULTS, name))}" for name in SHARED_OPTIONS if getattr(DEFAULTS, name) is not None
    )
    changed = [
        name for name in SHARED_OPTIONS if getattr(values[name], "value", values[name]) != getattr(DEFAULTS, name)
    ]
    if not changed:
        return f"Previews finetune's default patch ({default}; each site keeps its own p)."
    flags = " ".join(f"--{name} {_shown(values[name])}" for name in changed)
    return f"Previews {flags}, not finetune's default patch ({default})."


def sparseout_config(p, q, targets, exclude, attention, insert, gradient):
    """Build a :class:`SparseoutConfig` from CLI values, turning bad values into a CliError."""
    from hf_sparseout import SparseoutConfig

    try:
        return SparseoutConfig(
            p=p,
            q=q,
            targets=split_patterns(targets),
            exclude=split_patterns(exclude),
            attention=attention.value,
            insert=insert_patterns(insert),
            gradient=gradient.value,
        )
    except ValueError as err:
        raise CliError(str(err), "see hf-sparseout inspect --help for the option syntax") from err


def inspect(
    model: Annotated[str, typer.Argument(help="A local save_pretrained directory or a Hub model id.")],
    p: POpt = DEFAULTS.p,
    q: QOpt = DEFAULTS.q,
    targets: TargetsOpt = DEFAULTS.targets,
    exclude: ExcludeOpt = DEFAULTS.exclude,
    attention: AttentionOpt = AttentionMode(DEFAULTS.attention),
    insert: InsertOpt = DEFAULTS.insert,
    gradient: GradientOpt = GradientMode(DEFAULTS.gradient),
    task: Annotated[
        str,
        typer.Option("--task", help="Head to load: auto (from config.architectures), causal-lm, classification, base."),
    ] = "auto",
    attn_implementation: Annotated[
        str | None, typer.Option("--attn-implementation", help="Attention implementation to load with: eager or sdpa.")
    ] = None,
    fmt: Annotated[
        ReportFormat,
        typer.Option(
            "--format", help="text or json (as every command; 'table' is the deprecated text).", case_sensitive=False
        ),
    ] = ReportFormat.text,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also patch the loaded copy and count, in one training-mode forward, which dropouts reach torch "
            "as Sparseout and which as plain dropout (hf_sparseout.verify); exit 1 if any stays plain (other than "
            "attention dropout kept plain by --attention keep) or the report disagrees.",
        ),
    ] = False,
) -> None:
    """List every dropout site of MODEL and what the patch would do to it (nothing is modified).

    The Sparseout options default to finetune's, so with none given this previews the patch finetune
    applies by default (attention dropout kept plain); the output's first line says which patch it shows.
    With --verify, the loaded copy is patched and checked (MODEL on disk is never modified).

    Examples:

      hf-sparseout inspect ../shared/models/tiny-gpt2

      hf-sparseout inspect ../shared/models/tiny-gpt2 --verify

      hf-sparseout inspect minilm --q 1.0 --exclude embeddings.dropout --attention sparseout --format json

      hf-sparseout inspect path/to/my-llama --p 0.1 --insert mlp.act_fn
    """
    import hf_sparseout
    from hf_sparseout.loading import ModelNotAvailableError, load_model

    # Errors are raised as CliError (an HfSparseoutError) and printed once by the app's group (exit 2).
    config = sparseout_config(p, q, targets, exclude, attention, insert, gradient)
    try:
        loaded = load_model(model, task=task, attn_implementation=attn_implementation)
    except (ModelNotAvailableError, ValueError) as err:
        raise CliError(str(err), "MODEL is a local directory or a Hub id; offline, use a local path") from err
    try:
        report = (hf_sparseout.patch if verify else hf_sparseout.inspect)(loaded, config)
    except ValueError as err:
        raise CliError(str(err), "adjust --targets/--exclude/--insert to the names listed") from err
    if fmt is ReportFormat.table:
        typer.echo("Note: --format table is deprecated; it is --format text now, as in every command.", err=True)
    options = {"p": p, "q": q, "targets": targets, "exclude": exclude, "attention": attention}
    preview = previewed_patch(options | {"insert": insert, "gradient": gradient})
    typer.echo(preview, err=fmt is ReportFormat.json)  # JSON on stdout stays parseable
    if not verify:
        typer.echo(report.to_json() if fmt is ReportFormat.json else report.to_table())
        return
    checked = hf_sparseout.verify(loaded)
    if fmt is ReportFormat.json:
        typer.echo(json.dumps({"report": report.to_dict(), "verify": checked.to_dict()}, indent=2))
    else:
        typer.echo(f"{report.to_table()}\n\n{checked.to_table()}")
    if not checked.ok:
        raise typer.Exit(code=1)
