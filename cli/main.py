"""The Typer application behind the `hf-sparseout` console script."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
import typer.rich_utils

from hf_sparseout.version import __version__
from hf_sparseout_cli.env_cmd import env
from hf_sparseout_cli.errors import ErrorReportingGroup
from hf_sparseout_cli.finetune_cmd import FinetuneCommand, finetune
from hf_sparseout_cli.help_flags import hide_flag_types
from hf_sparseout_cli.inspect_cmd import inspect
from hf_sparseout_cli.push_cmd import push
from hf_sparseout_cli.sweep_cmd import CONTEXT_SETTINGS, sweep

# Piped output (a log file, CI, `| less`) has no terminal width and rich would cut help and tables at
# 80 columns ("--resume-from-checkpo…"); print 120 wide there unless COLUMNS / TERMINAL_WIDTH say otherwise.
WIDE = 120
if typer.rich_utils.MAX_WIDTH is None and "COLUMNS" not in os.environ and not sys.stdout.isatty():
    typer.rich_utils.MAX_WIDTH = WIDE
hide_flag_types()

app = typer.Typer(
    name="hf-sparseout",
    cls=ErrorReportingGroup,
    help="Sparseout for Hugging Face transformers: patch models, measure activation sparsity, fine-tune.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"hf-sparseout {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Sparseout for Hugging Face transformers."""


app.command("finetune", cls=FinetuneCommand)(finetune)
app.command("inspect")(inspect)
app.command("push")(push)
app.command("sweep", context_settings=CONTEXT_SETTINGS)(sweep)
app.command("env")(env)


def main() -> None:
    """Console-script entry point."""
    app()
