"""User-facing errors: one line saying what is wrong, one saying what to do, exit code 2."""

from __future__ import annotations

import signal
import threading
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


def run_job(job: Callable[[], T], interrupted: str | Callable[[], str]) -> T:
    """Run a long job: any ``HfSparseoutError`` becomes an error + hint (exit 2); Ctrl-C or SIGTERM prints
    ``interrupted`` (a string, or a function called then so the message describes what is on disk)
    and exits 130 (143 for SIGTERM).

    SIGINT and SIGTERM are raised as ``KeyboardInterrupt`` while the job runs (whatever handlers were
    installed), so an interrupted checkpoint or final save is cleaned up by the job itself.
    """
    from hf_sparseout.errors import HfSparseoutError

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
    except HfSparseoutError as err:
        fail(CliError(err.message, err.hint))
    except KeyboardInterrupt:
        message = interrupted() if callable(interrupted) else interrupted
        typer.echo(f"Interrupted: {message}", err=True)
        raise typer.Exit(code=143 if signal.SIGTERM in received else 130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
