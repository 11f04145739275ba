"""The thresholds file (hf_sparseout.metrics.threshold_file): every hand edit is a ThresholdError with a hint."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from hf_sparseout.errors import HfSparseoutError
from hf_sparseout.metrics import threshold, threshold_sites
from hf_sparseout.metrics.threshold import Calibration, ThresholdError, apply_thresholds, calibrate
from tests.threshold_helpers import batches, tiny_gpt2

SITE = "transformer.h.0.mlp.c_fc"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """A valid thresholds document of the 2-layer tiny GPT-2 (targets 0.3 and 0.6)."""
    return calibrate(tiny_gpt2(), batches(1), targets=[0.3, 0.6]).to_dict()


def test_threshold_error_is_the_projects_error_and_still_a_value_error() -> None:
    assert threshold_sites.ThresholdError is threshold.ThresholdError
    assert issubclass(ThresholdError, HfSparseoutError) and issubclass(ThresholdError, ValueError)
    err = ThresholdError("bad", "do this")
    assert (err.message, err.hint, str(err)) == ("bad", "do this", "bad")


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path
        for key in parents:
            doc = doc[key]
        doc[last] = value

    return edit


def _drop(path: tuple) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path
        for key in parents:
            doc = doc[key]
        del doc[last]

    return edit


def _shorten(doc: dict) -> None:
    doc["sites"][SITE]["thresholds"] = doc["sites"][SITE]["thresholds"][:1]


def _sites_as_list(doc: dict) -> None:
    doc["sites"] = list(doc["sites"].values())


EDITS = {
    "thresholds list shortened": (_shorten, "thresholds"),
    "site field missing": (_drop(("sites", SITE, "seen")), "seen"),
    "site field added": (_set(("sites", SITE, "colour"), "red"), "colour"),
    "targets missing": (_drop(("targets",)), "targets"),
    "sites as a list": (_sites_as_list, "sites"),
    "site as a number": (_set(("sites", SITE), 0.5), SITE),
    "Infinity threshold": (_set(("sites", SITE, "thresholds", 1), math.inf), "finite"),
    "NaN threshold": (_set(("sites", SITE, "thresholds", 0), math.nan), "finite"),
    "negative threshold": (_set(("sites", SITE, "thresholds", 0), -0.5), ">= 0"),
    "threshold as text": (_set(("sites", SITE, "thresholds", 0), "0.5"), "number"),
    "threshold as a bool": (_set(("sites", SITE, "thresholds", 0), True), "number"),
    "threshold too big for a float": (_set(("sites", SITE, "thresholds", 0), 10**400), "finite"),
    "targets unsorted": (_set(("targets",), [0.6, 0.3]), "increasing"),
    "target of 1": (_set(("targets",), [0.3, 1.0]), "[0, 1)"),
    "targets empty": (_set(("targets",), []), "targets"),
    "version missing": (_drop(("version",)), "version"),
    "version as text": (_set(("version",), "1"), "version"),
    "format missing": (_drop(("format",)), "format"),
    "unknown top-level field": (_set(("thresholds",), {}), "thresholds"),
    "model_type a number": (_set(("model_type",), 2), "model_type"),
    "weight_numel negative": (_set(("sites", SITE, "weight_numel"), -3), "weight_numel"),
    "zero_fraction above 1": (_set(("sites", SITE, "zero_fraction"), 1.5), "zero_fraction"),
    "exact not a bool": (_set(("sites", SITE, "exact"), 1), "exact"),
    "meta a list": (_set(("meta",), []), "meta"),
    "no sites": (_set(("sites",), {}), "sites"),
    "empty site name": (lambda doc: doc["sites"].__setitem__("", doc["sites"].pop(SITE)), "site name"),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_hand_edited_file_is_a_threshold_error_with_a_hint(document, tmp_path, edit) -> None:
    change, mentioned = EDITS[edit]
    doc = copy.deepcopy(document)
    change(doc)
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ThresholdError) as info:
        Calibration.load(path)
    assert mentioned in info.value.message and info.value.hint


@pytest.mark.parametrize(
    "text", ["[1, 2]", "not json", '{"format": ', "\xff\xfe", "[" * 100_000 + "]" * 100_000], ids=str.__len__
)
def test_unreadable_files_are_threshold_errors(tmp_path, text) -> None:
    path = tmp_path / "thresholds.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ThresholdError) as info:
        Calibration.load(path)
    assert info.value.hint


def test_a_valid_file_round_trips(document, tmp_path) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(document))
    assert Calibration.load(path).to_dict() == document


@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0, "0.1", True])
def test_apply_refuses_non_finite_or_negative_thresholds(value) -> None:
    model = tiny_gpt2()
    with pytest.raises(ThresholdError, match="finite numbers >= 0") as info:
        apply_thresholds(model, {SITE: value})
    assert info.value.hint
    assert not any(m._forward_pre_hooks for m in model.modules())  # nothing installed
    x = batches(1)[0]
    with torch.no_grad():
        model(**x)
