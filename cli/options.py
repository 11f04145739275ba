"""Option types shared by every command (``Annotated`` aliases, as the `hf` CLI does).

The Sparseout options shared by ``finetune`` and ``inspect`` take their help text from the
``FinetuneArgs`` field of the same name (``help_for``), and every choice of a library option is an
Enum built from the library's vocabulary (``choice_enum``), so neither is written twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Annotated, Any

import typer

from hf_sparseout.training.args import ATTENTION_MODES, GRADIENT_MODES, help_for


def choice_enum(name: str, values: Iterable[str], doc: str) -> Any:
    """A ``str`` Enum named ``name`` whose values are ``values`` (member names: ``-`` replaced by ``_``).

    Typer offers an Enum's values as the option's choices; building the Enum from the library's tuple
    keeps one vocabulary. Typed ``Any``: a type checker cannot see the members of an Enum built at run time.
    """
    enum = Enum(name, [(value.replace("-", "_"), value) for value in values], type=str, module=__name__)
    enum.__doc__ = doc
    return enum


class OutputFormat(str, Enum):
    """How a command prints its result: the one ``--format`` vocabulary of every command."""

    text = "text"
    json = "json"


# inspect's --format: the shared text|json, plus ``table``, its old spelling of text (deprecated alias, before 0.2).
DEPRECATED_FORMATS = ("table",)
ReportFormat = choice_enum(
    "ReportFormat",
    [*(f.value for f in OutputFormat), *DEPRECATED_FORMATS],
    "How ``inspect`` prints its report: the shared text|json, plus ``table``, its old spelling of text.",
)
AttentionMode = choice_enum("AttentionMode", ATTENTION_MODES, "What happens to attention-probability dropout.")
GradientMode = choice_enum("GradientMode", GRADIENT_MODES, "Sparseout's backward rule.")


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
POpt = Annotated[float | None, typer.Option("--p", help=help_for("p"), rich_help_panel=SPARSEOUT)]
QOpt = Annotated[float, typer.Option("--q", help=help_for("q"), rich_help_panel=SPARSEOUT)]
TargetsOpt = Annotated[list[str] | None, typer.Option("--targets", help=help_for("targets"), rich_help_panel=SPARSEOUT)]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", help=help_for("exclude"), rich_help_panel=SPARSEOUT)]
AttentionOpt = Annotated[
    AttentionMode, typer.Option("--attention", help=help_for("attention"), rich_help_panel=SPARSEOUT)
]
InsertOpt = Annotated[list[str] | None, typer.Option("--insert", help=help_for("insert"), rich_help_panel=SPARSEOUT)]
GradientOpt = Annotated[GradientMode, typer.Option("--gradient", help=help_for("gradient"), rich_help_panel=SPARSEOUT)]


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
