"""Property-based fuzz of the thresholds file: load + apply either works or raises ThresholdError, never another error.

Documents are valid calibrations (of the model under test, of a deeper and of a wider GPT-2) with up to
three mutations each: a field dropped, added or retyped (nan, inf, negative, huge numbers, strings,
lists, objects), a list shortened, another model_type. Derandomized, so every run draws the same examples.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_sparseout.errors import HfSparseoutError
from hf_sparseout.metrics.threshold import Calibration, ThresholdError, apply_thresholds, calibrate
from tests.threshold_helpers import batches, tiny_gpt2

NUMBERS = [math.nan, math.inf, -math.inf, -1.0, -1e-30, 0, 1e308, 10**400, 2**63, 0.5, 3]
ODD_VALUES = st.one_of(
    st.sampled_from(NUMBERS),
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.sampled_from(NUMBERS), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from(["bert", "gpt2", "llama", ""]),
)


@functools.cache
def model() -> torch.nn.Module:
    return tiny_gpt2()


@functools.cache
def bases() -> tuple[dict[str, Any], ...]:
    data = batches(1, seq=12)
    own = calibrate(model(), data, targets=[0.0, 0.3, 0.6]).to_dict()
    deeper = calibrate(tiny_gpt2(n_layer=3), data, targets=[0.5]).to_dict()
    wider = calibrate(tiny_gpt2(n_embd=48), data, targets=[0.2, 0.5]).to_dict()
    return own, deeper, wider


def _containers(doc: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every dict and list in ``doc`` (the root included)."""
    found = [path] if isinstance(doc, (dict, list)) else []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, value in items:
        found += _containers(value, (*path, key))
    return found


def _at(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def documents(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(bases())))
    for _ in range(draw(st.integers(0, 3))):
        paths = _containers(doc)
        if not paths:
            break
        target = _at(doc, draw(st.sampled_from(paths)))
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        action = draw(st.sampled_from(["drop", "add", "retype", "shorten"]))
        if action == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=6))] = draw(ODD_VALUES)
        elif action == "add":
            target.append(draw(ODD_VALUES))
        elif not keys:
            continue
        elif action == "drop":
            del target[draw(st.sampled_from(keys))]
        elif action == "retype":
            target[draw(st.sampled_from(keys))] = draw(ODD_VALUES)
        elif isinstance(target, list):
            del target[draw(st.integers(0, len(target) - 1)) :]
        else:
            for key in keys[draw(st.integers(0, len(keys) - 1)) :]:
                del target[key]
    if draw(st.booleans()) and draw(st.booleans()):  # a whole different document, now and then
        doc = draw(ODD_VALUES)
    return doc


FILE = Path(tempfile.mkdtemp(prefix="hf-sparseout-fuzz-")) / "thresholds.json"


@settings(max_examples=50, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_load_and_apply_work_or_raise_threshold_error(doc: Any) -> None:
    FILE.write_text(json.dumps(doc))  # nan/inf written as NaN/Infinity, as a hand edit could
    net = model()
    try:
        calibration = Calibration.load(FILE)
        hooks = apply_thresholds(net, calibration, target=calibration.targets[-1])
    except ThresholdError as err:
        assert isinstance(err, HfSparseoutError) and err.hint
        assert not any(m._forward_pre_hooks for m in net.modules())  # nothing left installed
        return
    try:
        assert all(math.isfinite(t) and t >= 0 for t in hooks.thresholds.values())
        with torch.no_grad():
            logits = net(**batches(1, seq=12)[0]).logits
        assert torch.isfinite(logits).all()
    finally:
        hooks.remove()
