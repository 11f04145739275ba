"""Option types shared by every command (``Annotated`` aliases, as the `hf` CLI does)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class OutputFormat(str, Enum):
    """How a command prints its result."""

    text = "text"
    json = "json"


class ReportFormat(str, Enum):
    """How ``inspect`` prints its report: the shared text|json, plus ``table``, its old spelling of text."""

    text = "text"
    json = "json"
    table = "table"  # deprecated alias of text (inspect's vocabulary before 0.2)


class AttentionMode(str, Enum):
    """What happens to attention-probability dropout."""

    sparseout = "sparseout"
    keep = "keep"


class GradientMode(str, Enum):
    """Sparseout's backward rule."""

    reference = "reference"
    exact = "exact"


class LogLevel(str, Enum):
    """Which log lines a command prints (main process only under ``accelerate launch``)."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


SPARSEOUT = "Sparseout"

FormatOpt = Annotated[
    OutputFormat, typer.Option("--format", help="Output format: human-readable text or JSON.", case_sensitive=False)
]
LogLevelOpt = Annotated[
    LogLevel,
    typer.Option(
        "--log-level",
        help="Progress lines shown (main process only under accelerate launch): debug, info, warning, error.",
        case_sensitive=False,
        rich_help_panel="Output",
    ),
]
POpt = Annotated[
    float | None,
    typer.Option(
        "--p",
        help="Drop probability for every patched site (default: keep each site's own p).",
        rich_help_panel=SPARSEOUT,
    ),
]
QOpt = Annotated[
    float,
    typer.Option("--q", help="Sparseout exponent: q<2 sparser, q=2 dropout, q>2 denser.", rich_help_panel=SPARSEOUT),
]
TargetsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--targets",
        help="Sites to patch: names or dotted suffixes (repeat or comma-separate), or one 're:<regex>'. Default: all.",
        rich_help_panel=SPARSEOUT,
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Sites to leave alone (same syntax as --targets).", rich_help_panel=SPARSEOUT),
]
AttentionOpt = Annotated[
    AttentionMode,
    typer.Option(
        "--attention",
        help="Attention-probability dropout: make it Sparseout, or keep it plain.",
        rich_help_panel=SPARSEOUT,
    ),
]
InsertOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--insert",
        help="Module names/suffixes whose outputs get a new Sparseout site (e.g. mlp.act_fn), or 'mlp': the "
        "MLP hidden units of any supported family; needs --p (0 for measured identity sites).",
        rich_help_panel=SPARSEOUT,
    ),
]
GradientOpt = Annotated[
    GradientMode,
    typer.Option(
        "--gradient",
        help="Backward rule: the authors' (reference) or the true derivative (exact).",
        rich_help_panel=SPARSEOUT,
    ),
]


def insert_patterns(values: list[str] | None) -> list[str] | str | None:
    """As :func:`split_patterns`, except that a lone ``mlp`` is the ``insert="mlp"`` preset (the MLP hidden units)."""
    patterns = split_patterns(values)
    return "mlp" if patterns == ["mlp"] else patterns


def split_patterns(values: list[str] | None) -> list[str] | str | None:
    """``--targets a,b --targets c`` -> ``["a", "b", "c"]``; ``--targets 're:...'`` -> the regex string."""
    if not values:
        return None
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    regexes = [v for v in items if v.startswith("re:")]
    if regexes:
        if len(items) != 1:
            raise typer.BadParameter("a 're:<regex>' pattern must be given alone")
        return regexes[0][3:]
    return items
