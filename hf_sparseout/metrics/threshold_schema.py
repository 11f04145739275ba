"""The schema of ``thresholds.json`` (format ``hf-sparseout-thresholds``, version 1), checked field by field.

:func:`check_document` accepts exactly what :meth:`Calibration.to_dict` writes: every field present, no
other field, each of its type (a JSON ``true`` is not a number), numbers finite, thresholds ``>= 0`` and
one per target, targets strictly increasing in ``[0, 1)``. Anything else is a :class:`ThresholdError`
naming the field, so a hand-edited file fails on load, not later inside a hook.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from hf_sparseout.metrics.threshold_sites import ThresholdError

FORMAT = "hf-sparseout-thresholds"
FORMAT_VERSION = 1
TOP_FIELDS: tuple[str, ...] = ("format", "version", "targets", "model_type", "sites_spec", "batches", "meta", "sites")
SITE_FIELDS: tuple[str, ...] = (
    "thresholds",
    "seen",
    "samples",
    "exact",
    "error_bound",
    "zero_fraction",
    "weight_numel",
)
_HINT = "recalibrate (hf_sparseout.metrics.threshold.calibrate) or restore the file Calibration.save wrote"


def _fail(message: str, hint: str = _HINT) -> ThresholdError:
    return ThresholdError(f"thresholds file: {message}", hint)


def _number(where: str, value: Any, low: float = 0.0, high: float = math.inf) -> float:
    """``value`` as a finite float in ``[low, high]``; a ThresholdError naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _fail(f"{where} must be a finite number, got {value!r}")
    if not low <= number <= high:
        bound = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise _fail(f"{where} must be {bound}, got {value!r}")
    return number


def _integer(where: str, value: Any, low: int = 0, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(f"{where} must be an integer >= {low}{' or null' if optional else ''}, got {value!r}")


def _fields(where: str, value: Any, expected: tuple[str, ...]) -> None:
    if not isinstance(value, Mapping):
        raise _fail(f"{where} must be an object with {', '.join(expected)}; got {type(value).__name__}")
    missing = [k for k in expected if k not in value]
    extra = [str(k) for k in value if k not in expected]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])
        raise _fail(f"{where} has {' and '.join(parts)} field(s); expected exactly {list(expected)}")


def check_targets_field(targets: Any) -> list[float]:
    """The file's ``targets``: a non-empty, strictly increasing list of finite numbers in ``[0, 1)``."""
    if not isinstance(targets, list) or not targets:
        raise _fail(f"targets must be a non-empty list of target sparsities, got {targets!r}")
    values = [_number(f"targets[{i}]", t, 0.0, 1.0) for i, t in enumerate(targets)]
    if any(t >= 1.0 for t in values):
        raise _fail(f"targets must be in [0, 1), got {targets!r}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise _fail(f"targets must be strictly increasing (thresholds follow their order), got {targets!r}")
    return values


def _check_site(name: Any, site: Any, n_targets: int) -> None:
    if not isinstance(name, str) or not name:
        raise _fail(f"site name {name!r} must be a non-empty module name")
    where = f"site {name!r}"
    _fields(where, site, SITE_FIELDS)
    thresholds = site["thresholds"]
    if not isinstance(thresholds, list) or len(thresholds) != n_targets:
        got = len(thresholds) if isinstance(thresholds, list) else type(thresholds).__name__
        raise _fail(f"{where}: thresholds must be a list of one number per target ({n_targets}), got {got}")
    for i, t in enumerate(thresholds):
        _number(f"{where}: thresholds[{i}]", t)
    _integer(f"{where}: seen", site["seen"])
    _integer(f"{where}: samples", site["samples"])
    _integer(f"{where}: weight_numel", site["weight_numel"], low=1, optional=True)
    if not isinstance(site["exact"], bool):
        raise _fail(f"{where}: exact must be true or false, got {site['exact']!r}")
    _number(f"{where}: error_bound", site["error_bound"])
    _number(f"{where}: zero_fraction", site["zero_fraction"], 0.0, 1.0)


def check_document(data: Any) -> None:
    """Raise a :class:`ThresholdError` (with a hint) unless ``data`` is a version-1 thresholds document."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ThresholdError(
            f"not an hf-sparseout thresholds file (no 'format': '{FORMAT}')",
            "load a file written by Calibration.save (a finetune run's thresholds.json)",
        )
    version = data.get("version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise ThresholdError(
            f"thresholds format version {version!r} is not supported (this is {FORMAT_VERSION})",
            "recalibrate with this version of hf-sparseout",
        )
    _fields("the document", data, TOP_FIELDS)
    n_targets = len(check_targets_field(data["targets"]))
    if data["model_type"] is not None and not isinstance(data["model_type"], str):
        raise _fail(f"model_type must be a string or null, got {data['model_type']!r}")
    spec = data["sites_spec"]
    strings = isinstance(spec, list) and all(isinstance(s, str) for s in spec)
    if not (spec is None or isinstance(spec, str) or strings):
        raise _fail(f"sites_spec must be null, a string or a list of strings, got {spec!r}")
    _integer("batches", data["batches"])
    if not isinstance(data["meta"], Mapping):
        raise _fail(f"meta must be an object, got {type(data['meta']).__name__}")
    sites = data["sites"]
    if not isinstance(sites, Mapping) or not sites:
        got = type(sites).__name__ if not isinstance(sites, Mapping) else "none"
        raise _fail(f"sites must be an object of {{module name: site}} with at least one site, got {got}")
    for name, site in sites.items():
        _check_site(name, site, n_targets)
