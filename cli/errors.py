"""User-facing errors: one line saying what is wrong, one saying what to do, exit code 2."""

from __future__ import annotations

import typer
from rich.console import Console

_err = Console(stderr=True, highlight=False)


class CliError(Exception):
    """An error caused by the user's input or environment, with an actionable hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def fail(err: CliError) -> None:
    """Print ``err`` (and its hint) to stderr and exit with code 2."""
    _err.print(f"[bold red]Error:[/] {err.message}")
    if err.hint:
        _err.print(f"[yellow]Hint:[/] {err.hint}")
    raise typer.Exit(code=2)
