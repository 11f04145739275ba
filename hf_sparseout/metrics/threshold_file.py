"""The thresholds file: :class:`Calibration` (per-site thresholds per target) as versioned JSON, and the targets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_sparseout.metrics.threshold_schema import FORMAT, FORMAT_VERSION, check_document
from hf_sparseout.metrics.threshold_sites import ThresholdError

DEFAULT_TARGETS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""Uniform per-site target sparsities of the default curve."""


def check_targets(targets: Iterable[float]) -> list[float]:
    """Targets as a sorted, de-duplicated list of floats in ``[0, 1)``; ``ThresholdError`` otherwise."""
    try:
        values = [float(t) for t in targets]
    except (TypeError, ValueError, OverflowError) as err:
        raise ThresholdError(f"targets must be numbers, got {targets!r}", "e.g. targets=[0, 0.1, 0.2]") from err
    bad = [t for t in values if not (0.0 <= t < 1.0)]
    if bad or not values:
        raise ThresholdError(
            f"target sparsities must be in [0, 1), got {bad or 'none'}",
            "give fractions, e.g. 0,0.1,0.2,...,0.7 (0.5 = half of each site's inputs zeroed); 1 would zero all",
        )
    return sorted(set(values))


@dataclass
class SiteCalibration:
    """One site's calibration: a threshold per target and how it was obtained."""

    thresholds: list[float]
    seen: int
    """Magnitudes seen (real tokens only)."""
    samples: int
    """Magnitudes held when the quantiles were read (``== seen`` when exact)."""
    exact: bool
    error_bound: float
    """DKW bound on the zeroed fraction at 99.9 % confidence (0 when exact)."""
    zero_fraction: float
    """Fraction of the calibration magnitudes that were exactly 0 (natural sparsity)."""
    weight_numel: int | None


@dataclass
class Calibration:
    """Per-site magnitude thresholds for each target sparsity; JSON via :meth:`save` / :meth:`load`."""

    targets: list[float]
    sites: dict[str, SiteCalibration]
    model_type: str | None = None
    sites_spec: Any = None
    batches: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def index(self, target: float) -> int:
        """Position of ``target`` in :attr:`targets` (within 1e-9); ``ThresholdError`` if not calibrated."""
        for i, t in enumerate(self.targets):
            if abs(t - float(target)) <= 1e-9:
                return i
        raise ThresholdError(
            f"target {target!r} was not calibrated; calibrated targets: {self.targets}",
            "calibrate with that target in targets=[...]",
        )

    def at(self, target: float) -> dict[str, float]:
        """``{site: threshold}`` for one calibrated target (what :func:`apply_thresholds` takes)."""
        i = self.index(target)
        return {name: site.thresholds[i] for name, site in self.sites.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (format tag and version included)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "targets": self.targets,
            "model_type": self.model_type,
            "sites_spec": self.sites_spec,
            "batches": self.batches,
            "meta": self.meta,
            "sites": {name: asdict(site) for name, site in self.sites.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`; a ``ThresholdError`` naming the field otherwise (``threshold_schema``)."""
        check_document(data)
        sites = {
            name: SiteCalibration(**{**site, "thresholds": [float(t) for t in site["thresholds"]]})
            for name, site in data["sites"].items()
        }
        return cls(
            targets=[float(t) for t in data["targets"]],
            sites=sites,
            model_type=data["model_type"],
            sites_spec=data["sites_spec"],
            batches=data["batches"],
            meta=dict(data["meta"]),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibration as JSON (via a temporary file and a rename); returns the path."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a file written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:  # ValueError: JSON syntax, encoding, huge integers
            raise ThresholdError(f"cannot read thresholds from {str(path)!r}: {err}", "pass a thresholds JSON") from err
        return cls.from_dict(data)
