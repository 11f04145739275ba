"""Option types shared by every command (``Annotated`` aliases, as the `hf` CLI does)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class OutputFormat(str, Enum):
    """How a command prints its result."""

    text = "text"
    json = "json"


FormatOpt = Annotated[
    OutputFormat, typer.Option("--format", help="Output format: human-readable text or JSON.", case_sensitive=False)
]
