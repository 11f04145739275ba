"""The project's one logger: accelerate's multi-process logger, main process only by default.

Every message of ``finetune`` and ``sweep`` goes through :func:`get_logger` (logger name ``hf_sparseout``),
so under ``accelerate launch --num_processes N`` each line appears once (pass ``main_process_only=False``
for a per-process line). The library installs no handler: as a Python library it prints only warnings
(Python's last-resort handler); the CLI calls :func:`configure` (``--log-level``) to print info lines,
message only, to stdout (stderr with ``--format json``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

from accelerate.logging import MultiProcessAdapter

LOGGER_NAME = "hf_sparseout"
LEVELS = ("debug", "info", "warning", "error")
_prefix: ContextVar[str] = ContextVar("hf_sparseout_log_prefix", default="")
_handler: logging.Handler | None = None


def _env_is_main_process() -> bool:
    """Before accelerate's state exists: rank 0 of a torchrun/accelerate launch, or a plain process."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


class _Adapter(MultiProcessAdapter):
    """accelerate's adapter, plus a context prefix (``[q=1.5 seed=0]`` in a sweep) and no failure before
    accelerate's state exists (then the launcher's ``RANK`` decides which process is the main one)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        prefix = _prefix.get()
        return (f"{prefix} {msg}" if prefix else msg), kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        from accelerate.state import PartialState

        if PartialState._shared_state:
            super().log(level, msg, *args, **kwargs)
            return
        main_only = kwargs.pop("main_process_only", True)
        kwargs.pop("in_order", None)
        if self.isEnabledFor(level) and (_env_is_main_process() or not main_only):
            msg, kwargs = self.process(msg, kwargs)
            self.logger.log(level, msg, *args, **kwargs)


def get_logger(name: str = LOGGER_NAME) -> _Adapter:
    """The multi-process logger (a child of ``hf_sparseout`` for any other ``name``)."""
    if name != LOGGER_NAME and not name.startswith(LOGGER_NAME + "."):
        name = f"{LOGGER_NAME}.{name}"
    return _Adapter(logging.getLogger(name), {})


def configure(level: str = "info", stream: IO[str] | None = None) -> None:
    """Print the project's log lines at ``level`` and above to ``stream`` (default stdout), message only.

    Replaces the handler a previous call installed (the CLI calls this once per command).
    """
    global _handler
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    root = logging.getLogger(LOGGER_NAME)
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream or sys.stdout)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(_handler)
    root.setLevel(level.upper())
    root.propagate = False


def reset() -> None:
    """Undo :func:`configure`: its handler removed, the level unset, records propagating again."""
    global _handler
    root = logging.getLogger(LOGGER_NAME)
    if _handler is not None:
        root.removeHandler(_handler)
        _handler = None
    root.setLevel(logging.NOTSET)
    root.propagate = True


@contextmanager
def log_prefix(prefix: str) -> Iterator[None]:
    """Prefix every log line emitted inside the block (nested prefixes are joined)."""
    outer = _prefix.get()
    token = _prefix.set(f"{outer} {prefix}".strip())
    try:
        yield
    finally:
        _prefix.reset(token)
