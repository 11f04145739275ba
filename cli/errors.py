"""User-facing errors: one line saying what is wrong, one saying what to do, exit code 2.

Every command raises ``hf_sparseout.errors.HfSparseoutError`` (or ``CliError``, its CLI subclass) for bad
input; :class:`ErrorReportingGroup`, the app's group, prints it once and picks the exit code.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from hf_sparseout.errors import HfSparseoutError

_err = Console(stderr=True, highlight=False)


class CliError(HfSparseoutError):
    """An error found by the CLI itself (option syntax, a sweep's own options), with an actionable hint."""


EXIT_USAGE = 2
"""Exit code of every ``HfSparseoutError``: bad input or environment, nothing was written."""


def report(err: HfSparseoutError) -> int:
    """Print ``err`` (and its hint) to stderr; return the exit code for it."""
    message = err.message if isinstance(err, HfSparseoutError) else str(err)
    _err.print(f"[bold red]Error:[/] {escape(message)}")
    if getattr(err, "hint", None):
        _err.print(f"[yellow]Hint:[/] {escape(err.hint)}")
    return EXIT_USAGE


class ErrorReportingGroup(TyperGroup):
    """The app's group: any ``HfSparseoutError`` a command raises is printed once, here, and exits 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except HfSparseoutError as err:
            raise typer.Exit(code=report(err)) from None


T = TypeVar("T")


def run_job(job: Callable[[], T], interrupted: str | Callable[[], str]) -> T:
    """Run a long job: Ctrl-C or SIGTERM prints
    ``interrupted`` (a string, or a function called then so the message describes what is on disk)
    and exits 130 (143 for SIGTERM).

    SIGINT and SIGTERM are raised as ``KeyboardInterrupt`` while the job runs (whatever handlers were
    installed), so an interrupted checkpoint or final save is cleaned up by the job itself.
    """
    received: list[int] = []

    def _raise(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        for sig in previous:
            signal.signal(sig, _raise)
        return job()
    except KeyboardInterrupt:
        message = interrupted() if callable(interrupted) else interrupted
        typer.echo(f"Interrupted: {message}", err=True)
        raise typer.Exit(code=143 if signal.SIGTERM in received else 130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
