"""One writer per output directory: an advisory lock that ``finetune`` and ``sweep`` hold while they run.

The lock is ``.hf-sparseout.lock`` in the directory: an OS file lock (``flock``, through ``filelock``)
that the kernel releases when its holder exits, however it exits, so a lock file left by a killed
process blocks nothing. The file holds the holder's record (pid, host, command line, start time),
which the refused writer's error names. A sweep holds its root for its lifetime and each of its runs
holds its run directory; a writer also refuses a directory inside one that another process holds
(a ``finetune`` started by hand into a running sweep's run directory). Under ``accelerate launch``
only the main process takes the lock: the other processes are the same run.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hf_sparseout.errors import OutputDirError

LOCK_FILE = ".hf-sparseout.lock"
_HELD: dict[Path, FileLock] = {}  # the directories this process holds


class OutputDirBusyError(OutputDirError):
    """The output directory (or one around it) is held by another hf-sparseout process."""


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` / ``accelerate launch`` group, or a process started alone."""
    return os.environ.get("RANK", "0") == "0"


def holder(directory: str | Path) -> dict[str, Any] | None:
    """The record of the process that holds (or last held) ``directory``'s lock; None if unreadable."""
    try:
        record = json.loads((Path(directory) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(fd: int) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": shlex.join(sys.argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)


def _busy(directory: Path, held: Path) -> OutputDirBusyError:
    record = holder(held) or {}
    who = (
        f"pid {record.get('pid', '?')} on {record.get('host', '?')}, started {record.get('started', '?')}: "
        f"{record.get('command', '?')}"
        if record
        else "a process whose record is not readable"
    )
    where = f"{str(directory)!r}" if held == directory else f"{str(directory)!r} is inside {str(held)!r}, which"
    return OutputDirBusyError(
        f"{where} is being written by another hf-sparseout process ({who})",
        "wait for it to finish (or stop it), or choose another --output-dir; "
        "a lock left by a process that died does not block",
    )


def _held_by_another(directory: Path) -> bool:
    """Probe ``directory``'s lock (only where a lock file exists, and not where this process holds it)."""
    if directory in _HELD or not (directory / LOCK_FILE).is_file():
        return False
    probe = FileLock(directory / LOCK_FILE, timeout=0, thread_local=False)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


def refuse_if_held(directory: str | Path) -> None:
    """``OutputDirBusyError`` when another process holds ``directory`` or a directory around it; writes nothing.

    Only the main process of a launched group checks: the others run under its lock.
    """
    if not is_main_process():
        return
    directory = Path(directory).expanduser().resolve()
    for where in (directory, *directory.parents):
        if _held_by_another(where):
            raise _busy(directory, where)


@contextmanager
def hold_output_dir(directory: str | Path, *, main_process: bool | None = None) -> Iterator[Path]:
    """Hold ``directory``'s lock for the ``with`` block (creating the directory); yields it, resolved.

    ``OutputDirBusyError`` when another process holds it or a directory around it. Re-entrant within a
    process. On exit the lock file is removed, and so are the directories it created if nothing else was
    written there. ``main_process`` False (another process of a launched group) takes no lock.
    """
    directory = Path(directory).expanduser().resolve()
    if not (is_main_process() if main_process is None else main_process) or directory in _HELD:
        yield directory
        return
    refuse_if_held(directory)
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory / LOCK_FILE, timeout=0, thread_local=False, on_acquired=_write_record)
    try:
        lock.acquire()
    except Timeout:
        raise _busy(directory, directory) from None
    _HELD[directory] = lock
    try:
        yield directory
    finally:
        del _HELD[directory]
        (directory / LOCK_FILE).unlink(missing_ok=True)  # while held: a waiting opener retries on a new file
        lock.release()
        for made in created:  # deepest first; only the empty ones
            try:
                made.rmdir()
            except OSError:
                break


def entries(directory: Path) -> list[Path]:
    """The entries of ``directory`` other than its lock file (what makes an output directory non-empty)."""
    return [p for p in directory.iterdir() if p.name != LOCK_FILE]
