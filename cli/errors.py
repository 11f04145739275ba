"""User-facing errors: one line saying what is wrong, one saying what to do, exit code 2."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TypeVar

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


T = TypeVar("T")


def run_job(job: Callable[[], T], interrupted: str) -> T:
    """Run a long job: a ``UsageError`` becomes an error + hint (exit 2); Ctrl-C prints ``interrupted`` (exit 130).

    SIGINT is raised as ``KeyboardInterrupt`` while the job runs (whatever handler was installed), so an
    interrupted checkpoint write is cleaned up by the job itself.
    """
    from hf_sparseout.training.args import UsageError

    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return job()
    except UsageError as err:
        fail(CliError(str(err), err.hint))
    except KeyboardInterrupt:
        typer.echo(f"Interrupted: {interrupted}", err=True)
        raise typer.Exit(code=130) from None
    finally:
        signal.signal(signal.SIGINT, previous)
