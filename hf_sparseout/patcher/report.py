"""``SiteReport``: every dropout site of a model, what it is, and what the patch does to it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("module", "attention", "functional", "inserted", "config-only", "unattributed")


@dataclass
class Site:
    """One dropout site.

    Attributes:
        name: the site's name (a module path, ``<module>.<attribute>`` for a float probability,
            or ``<module>:<function>`` for a dropout whose probability is not an attribute).
        kind: ``module`` (an ``nn.Dropout`` called as a module), ``attention`` (its probability
            reaches attention: eager ``F.dropout`` on the probabilities or SDPA's ``dropout_p``),
            ``functional`` (a float attribute passed to ``F.dropout``), ``inserted`` (a new site
            on a module's output), ``config-only`` (a probability that is 0 in the config), or
            ``unattributed`` (a dropout hf-sparseout cannot redirect: a literal or computed probability,
            or channel/alpha dropout).
        p: the site's own probability; ``new_p`` / ``q``: what it gets when patched.
        calls: applications seen in one training-mode probe forward.
        sparseout: whether the site is (or will be) Sparseout; ``reason`` says why not.
        module: where the site's ``Sparseout`` module lives once patched.
        path: for patched attention sites, how the probabilities are computed in training: ``flash``
            (the fused Triton kernel, no N x N matrix), ``explicit`` (SDPA computed explicitly), or
            ``eager`` (the model's eager attention); ``None`` for other sites.
    """

    name: str
    kind: str
    p: float
    calls: int
    sparseout: bool = False
    new_p: float | None = None
    q: float | None = None
    reason: str | None = None
    module: str | None = None
    path: str | None = None


@dataclass
class SiteReport:
    """The result of :func:`hf_sparseout.inspect` or :func:`hf_sparseout.patch`."""

    model: str
    attn_implementation: str | None
    config: dict[str, Any]
    sites: list[Site] = field(default_factory=list)
    patched: bool = False

    @property
    def sparseout_sites(self) -> list[Site]:
        """Sites that are (or will be) Sparseout."""
        return [s for s in self.sites if s.sparseout]

    @property
    def plain_sites(self) -> list[Site]:
        """Sites with ``p > 0`` that stay (or will stay) plain dropout."""
        return [s for s in self.sites if not s.sparseout and s.p > 0]

    def site(self, name: str) -> Site:
        """The site called ``name`` (``KeyError`` listing the names if there is none)."""
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no site named {name!r}; sites: {[s.name for s in self.sites]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "model": self.model,
            "attn_implementation": self.attn_implementation,
            "patched": self.patched,
            "config": self.config,
            "summary": self.summary(),
            "sites": [asdict(s) for s in self.sites],
        }

    def to_json(self) -> str:
        """The report as JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> dict[str, int]:
        """Counts: sites, Sparseout sites, plain-dropout sites, per kind."""
        counts = {"sites": len(self.sites), "sparseout": len(self.sparseout_sites), "plain": len(self.plain_sites)}
        for kind in KINDS:
            counts[kind] = sum(s.kind == kind for s in self.sites)
        return counts

    def to_table(self) -> str:
        """A fixed-width text table, one row per site."""
        header = ("site", "kind", "p", "calls", "sparseout", "new p", "q", "note")
        rows = [
            (
                s.name,
                s.kind,
                f"{s.p:g}",
                str(s.calls),
                "yes" if s.sparseout else "no",
                "" if s.new_p is None else f"{s.new_p:g}",
                "" if s.q is None else f"{s.q:g}",
                s.reason or "",
            )
            for s in self.sites
        ]
        if any(s.path for s in self.sites):  # attention path column, only where there is one to show
            header = (*header[:-1], "path", header[-1])
            rows = [(*r[:-1], s.path or "", r[-1]) for r, s in zip(rows, self.sites, strict=True)]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        c = self.summary()
        state = "patched" if self.patched else "dry run"
        lines.append(
            f"{self.model} ({self.attn_implementation or 'n/a'} attention, {state}): {c['sites']} sites, "
            f"{c['sparseout']} Sparseout, {c['plain']} plain dropout"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()
