"""Every error hf-sparseout raises for bad input or environment: one base with a message and a hint.

``HfSparseoutError(message, hint)``: ``str(err)`` is the message (what is wrong), ``err.hint`` what to do
(or None). Subclasses keep the built-in base that callers already catch (``ValueError``, ``OSError``).
The CLI prints any of them as ``Error: ...`` / ``Hint: ...`` and exits 2 (``hf_sparseout_cli.errors``).
"""

from __future__ import annotations


class HfSparseoutError(Exception):
    """Base of the project's user-facing errors: ``message`` says what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(HfSparseoutError, ValueError):
    """Bad options or input data for a command (``finetune``, ``sweep``, ...)."""


class OutputDirError(UsageError):
    """The output location cannot be written (checked before any training)."""


class CheckpointError(HfSparseoutError, ValueError):
    """A directory is not a patched checkpoint, or its Sparseout configuration is corrupted."""


class ModelNotAvailableError(HfSparseoutError, OSError):
    """The model is neither a local directory nor reachable on the Hub."""


class PushError(HfSparseoutError):
    """A push that cannot go ahead."""


class MissingDependencyError(HfSparseoutError, ImportError):
    """An optional package that a requested feature needs is not installed (the hint is the pip command)."""
