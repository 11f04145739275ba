"""``SparseoutConfig``: what to patch and how, as a versioned, JSON-serialisable dataclass."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from hf_sparseout.ops.sparseout import GRADIENT_MODES, NOISE_MODES, check_args
from hf_sparseout.version import __version__

CONFIG_FORMAT_VERSION = 2
"""Bumped when the meaning of a field changes; readers refuse newer formats they cannot read.
2: ``noise`` added (format 1 configurations load with ``noise="raw"``, what they meant)."""

ATTENTION_MODES = ("sparseout", "keep")


@dataclass
class SparseoutConfig:
    """How to turn a model's dropout sites into Sparseout.

    Attributes:
        p: drop probability for every patched site; ``None`` keeps each site's own ``p``.
            ``p = 0`` keeps the selected sites as identity Sparseout modules (no noise, still
            measured by :class:`~hf_sparseout.SparsityMonitor` and :class:`~hf_sparseout.LqPenalty`):
            the p = 0 control at the same sites.
        q: the Sparseout exponent (``q < 2`` sparser, ``q = 2`` dropout, ``q > 2`` denser).
        targets: which sites to patch. A list of names matches a site whose name equals an
            entry or ends with ``"." + entry`` (PEFT's ``target_modules`` rule); a single
            string is a regular expression matched against the whole site name. ``None``: all.
        exclude: sites to leave alone, same matching rules as ``targets``.
        overrides: per-site values: ``{pattern: {"p": ..., "q": ...}}``; a pattern is a name
            suffix or, failing that, a full-match regular expression. Later keys win.
        attention: ``"sparseout"`` turns attention-probability dropout into Sparseout;
            ``"keep"`` leaves it as plain dropout (and the report says so).
        insert: module-name patterns (suffix list or regex, as ``targets``) whose outputs get
            a new Sparseout site, for architectures without dropout (e.g. ``["mlp.act_fn"]``);
            or ``"mlp"``: the post-activation module of every MLP block (the hidden units),
            resolved per family (:data:`hf_sparseout.patcher.placements.MLP_ACTIVATIONS`; other
            families raise, listing the supported ones). Needs ``p`` set: ``p > 0`` for noise,
            ``p = 0`` for identity sites that are measured only.
        gradient: ``"reference"`` (the authors' backward) or ``"exact"``.
        noise: ``"raw"`` (the paper's noise, default) or ``"matched"`` (each call's noise scaled by
            ``c = sqrt(sum(x**2) / sum(|x|**q))``, so its total variance equals dropout's at the same p).
    """

    p: float | None = None
    q: float = 1.5
    targets: list[str] | str | None = None
    exclude: list[str] | str | None = None
    overrides: dict[str, dict[str, float]] = field(default_factory=dict)
    attention: Literal["sparseout", "keep"] = "sparseout"
    insert: list[str] | str | None = None
    gradient: Literal["reference", "exact"] = "reference"
    noise: Literal["raw", "matched"] = "raw"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` with the offending field if the configuration is invalid."""
        check_args(0.5 if self.p is None else self.p, self.q, self.gradient, self.noise)
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got attention={self.attention!r}")
        for name in ("targets", "exclude", "insert"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if not value or not all(isinstance(v, str) and v for v in value):
                    raise ValueError(f"{name} must be a non-empty list of non-empty strings, got {value!r}")
                setattr(self, name, list(value))
            elif value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"{name} must be a list of names or a regex string, got {value!r}")
            elif isinstance(value, str):
                try:
                    re.compile(value)
                except re.error as err:
                    raise ValueError(f"{name} is not a valid regular expression ({err}): {value!r}") from err
        if not isinstance(self.overrides, dict):
            raise ValueError(f"overrides must be a dict of pattern -> {{'p': ..., 'q': ...}}, got {self.overrides!r}")
        for pattern, values in self.overrides.items():
            if not isinstance(values, dict) or not values or set(values) - {"p", "q"}:
                raise ValueError(
                    f"overrides[{pattern!r}] must be a non-empty dict with keys 'p' and/or 'q', got {values!r}"
                )
            check_args(values.get("p", 0.5), values.get("q", 2.0), "reference")
        if self.insert is not None:
            insert_ps = [v["p"] for v in self.overrides.values() if "p" in v]
            if self.p is None and not insert_ps:
                raise ValueError(
                    "insert adds new Sparseout sites, which have no p of their own: set p > 0 "
                    f"(or p = 0 for identity sites that are only measured), e.g. SparseoutConfig(p=0.1, "
                    f"insert={self.insert!r})"
                )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the format and library versions."""
        data = dataclasses.asdict(self)
        data["format_version"] = CONFIG_FORMAT_VERSION
        data["library_version"] = __version__
        return data

    def to_json(self) -> str:
        """The configuration as a JSON string."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparseoutConfig:
        """Build a config from :meth:`to_dict` output.

        Unknown keys (written by a newer library) are dropped with a warning; a newer
        ``format_version`` or a malformed value raises ``ValueError``.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a Sparseout configuration must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", CONFIG_FORMAT_VERSION)
        data.pop("library_version", None)
        if not isinstance(version, int) or version > CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"this Sparseout configuration has format_version={version!r}; hf-sparseout {__version__} "
                f"reads up to {CONFIG_FORMAT_VERSION}: upgrade hf-sparseout"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown Sparseout configuration keys {unknown}", UserWarning, stacklevel=2)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise ValueError(f"malformed Sparseout configuration: {err}") from err

    @classmethod
    def from_json(cls, text: str) -> SparseoutConfig:
        """Parse :meth:`to_json` output (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"the Sparseout configuration is not valid JSON: {err}") from err
        return cls.from_dict(data)


def is_finite_probability(value: Any) -> bool:
    """True for a real number in ``[0, 1]`` (bools excluded)."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value <= 1.0
    )


__all__ = ["ATTENTION_MODES", "CONFIG_FORMAT_VERSION", "GRADIENT_MODES", "NOISE_MODES", "SparseoutConfig"]
