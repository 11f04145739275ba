"""Checks of ``finetune``'s site patterns (``--targets``, ``--exclude``, ``--insert``, ``--sparsity-sites``)
before any data or model is read: an empty pattern list and a regex that does not compile are errors."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hf_sparseout.errors import UsageError

if TYPE_CHECKING:
    from hf_sparseout.training.args import FinetuneArgs

__all__ = ["check_patterns"]

_EXAMPLES = {
    "targets": "--targets mlp.dropout, or --targets 're:.*attn.*', or omit it to patch every site",
    "exclude": "--exclude attn.attn_dropout, or omit it",
    "insert": "--insert mlp, or --insert mlp.act",
    "sparsity_sites": "--sparsity-sites teal, or --sparsity-sites 're:.*mlp.c_fc', or omit it for the defaults",
}


def check_patterns(args: FinetuneArgs) -> None:
    """Raise :class:`UsageError` for an empty pattern list or a regex that does not compile.

    ``None`` is "not given" (the default); an empty list is what ``--targets ""`` or ``--targets ,`` gives,
    and is refused rather than read as the default. ``targets``/``exclude`` as a string are one regex
    (``re:<regex>`` on the command line); each ``sparsity_sites`` entry is a name, a dotted suffix or a
    full-match regex, so an entry that does not compile as a regex could match nothing (module names hold
    no ``[`` ``(`` ``*`` ``+`` ``?`` ``\\``).
    """
    for name in ("targets", "exclude", "insert", "sparsity_sites"):
        value = getattr(args, name)
        if value is None:
            continue
        option = "--" + name.replace("_", "-")
        entries = [value] if isinstance(value, str) else list(value)
        if not entries or any(not str(e).strip() for e in entries):
            raise UsageError(f"{option} is empty (no pattern in {value!r})", f"e.g. {_EXAMPLES[name]}")
        if name == "insert" or (isinstance(value, list) and name != "sparsity_sites"):
            continue  # names and dotted suffixes, never regexes
        for entry in entries:
            try:
                re.compile(entry)
            except re.error as err:
                raise UsageError(
                    f"{option}: invalid regex {entry!r} ({err})",
                    f"fix the regular expression (Python re syntax, full match), e.g. {_EXAMPLES[name]}",
                ) from err
