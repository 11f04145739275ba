"""Name matching shared by ``targets``, ``exclude``, ``overrides`` and ``insert``."""

from __future__ import annotations

import re
from collections.abc import Iterable


def name_matches(pattern: str, name: str) -> bool:
    """A name matches a pattern that equals it, is a dotted suffix of it, or fully matches it as a regex."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def select(spec: list[str] | str | None, name: str) -> bool:
    """PEFT's rule: a list matches by exact name or dotted suffix; a string is a full-match regex."""
    if spec is None:
        return True
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == s or name.endswith("." + s) for s in spec)


def unmatched(spec: list[str] | str | None, names: Iterable[str]) -> list[str]:
    """The entries of ``spec`` (or the regex itself) that select none of ``names``."""
    names = list(names)
    if spec is None:
        return []
    if isinstance(spec, str):
        return [] if any(select(spec, n) for n in names) else [spec]
    return [s for s in spec if not any(select([s], n) for n in names)]


def abbreviate(names: Iterable[str], limit: int = 40) -> str:
    """A comma-separated list of names, cut after ``limit`` with a count of the rest."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
