"""`hf-sparseout push`: upload a patched checkpoint to the Hugging Face Hub with a generated model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hf_sparseout_cli.options import FormatOpt, OutputFormat


def _size(n: int | None) -> str:
    if n is None:
        return "generated"
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KB" if n < 1024**2 else f"{n / 1024**2:.1f} MB"


def push(
    checkpoint_dir: Annotated[
        Path, typer.Argument(help="A directory written by hf_sparseout.save_pretrained or hf-sparseout finetune.")
    ],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repo: 'name' or 'namespace/name'.")],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo as private (if it does not exist yet).")
    ] = False,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch to push to (created if missing). Default: main.")
    ] = None,
    commit_message: Annotated[str | None, typer.Option("--commit-message", help="The commit's summary line.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the files and the model card; no network, nothing written.")
    ] = False,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Push CHECKPOINT_DIR to the Hub repo --repo-id, with a model card (README.md) generated from the run.

    The token comes from HF_TOKEN or `hf auth login`; it is never printed.

    Not uploaded: checkpoints/ (training state), baseline/, metrics.json and report.md (local paths).

    Under torchrun / accelerate launch only the main process (RANK 0) pushes.

    Examples:

      hf-sparseout push ./run --repo-id my-user/gpt2-sparseout --dry-run

      hf-sparseout push ./run --repo-id my-org/gpt2-sparseout --private --revision q1.5
    """
    from hf_sparseout.hub.push import push_checkpoint

    result = push_checkpoint(  # a PushError is printed by the app (hf_sparseout_cli.errors)
        checkpoint_dir,
        repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        dry_run=dry_run,
    )
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    if result.skipped:
        typer.echo(f"Nothing pushed: {result.skipped}.")
        return
    where = f"{result.repo_id}" + (f" (revision {result.revision})" if result.revision else "")
    if dry_run:
        typer.echo(f"Dry run: would push {len(result.files)} file(s) to {where}, commit {result.commit_message!r}:")
    else:
        typer.echo(f"Pushed {len(result.files)} file(s) to {where}:")
    for name in result.files:
        typer.echo(f"  {name}  ({_size(result.sizes.get(name))})")
    if dry_run:
        typer.echo(f"\nModel card (README.md, {result.card_source}):\n")
        typer.echo(result.card)
    else:
        typer.echo(f"Commit: {result.commit_url}")
