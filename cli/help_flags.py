"""Flags in ``--help`` without a value type: typer 0.29's rich help shows ``<bool>`` after every flag
(``--overwrite-output-dir <bool>``, even ``--help <bool>``), as if it took a value; click's own help and
typer's plain help show none. :func:`hide_flag_types` makes the rich help agree with them."""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_display_type_rich = TyperOption.display_type_rich


def _value_type(self: TyperOption, ctx: Any) -> str | None:
    """No type for a flag (it takes no value); the option's own type display otherwise."""
    if self.is_flag or self.count:
        return None
    return _display_type_rich(self, ctx)


def hide_flag_types() -> None:
    """Show no value type for flags in every command's rich help (idempotent)."""
    TyperOption.display_type_rich = _value_type  # type: ignore[method-assign]
