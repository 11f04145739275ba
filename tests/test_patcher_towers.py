"""Vision and speech towers (issue 15, item 6): ViT, CLIP's text and vision towers, Whisper and Wav2Vec2, tiny
random models from ``bench/tiny_towers.py`` fed inputs of their own kind through ``example_inputs``, checked
against the independent dropout oracle. ``python -m bench.coverage --towers all`` runs the same set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dropout_oracle import count_applications

import hf_sparseout
from hf_sparseout import SparseoutConfig
from hf_sparseout.patcher.probe import stochastic_skips

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives beside tests/, not installed
from bench.tiny_towers import TOWERS

CASES = [(name, "eager") for name in TOWERS] + [
    pytest.param(name, "sdpa", marks=pytest.mark.slow) for name in TOWERS if name != "clip-text"
]
CASES.insert(1, ("clip-text", "sdpa"))  # one SDPA tower in the fast tier


def _oracle(model, inputs) -> tuple[int, int]:
    """(plain, Sparseout) applications in one training forward, LayerDrop and SpecAugment off for comparable counts."""
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in stochastic_skips(model)]
    for obj, attr, _ in saved:
        setattr(obj, attr, 0.0)
    try:
        return count_applications(model, inputs)
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)


def _state(model) -> dict:
    return {
        "tensors": {k: v.clone() for k, v in [*model.named_parameters(), *model.named_buffers()]},
        "flags": [m.training for m in model.modules()],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
    }


def _same(a: dict, b: dict) -> bool:
    return (
        all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])
        and a["flags"] == b["flags"]
        and torch.equal(a["torch_rng"], b["torch_rng"])
        and bool((a["numpy_rng"] == b["numpy_rng"]).all())
    )


@pytest.mark.parametrize(("name", "impl"), CASES)
def test_tower_every_dropout_becomes_sparseout_with_inputs_of_its_own_kind(name, impl):
    model, inputs = TOWERS[name].build(impl)
    assert "input_ids" not in inputs or name == "clip-text"
    plain, _ = _oracle(model, inputs)
    assert plain > 0, "every dropout is 0.2 in the tiny config: some must apply"

    before = _state(model)
    hf_sparseout.inspect(model, example_inputs=inputs)
    assert _same(before, _state(model)), "inspect() changed the model or an RNG"

    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    left, sparse = _oracle(model, inputs)
    assert left == 0, f"{left} plain dropouts left\n{report}"
    assert sparse == plain
    assert len(report.plain_sites) == 0
    checked = hf_sparseout.verify(model, inputs)
    assert checked.ok, checked
    assert sum(c.calls for c in checked.sparseout) == plain


def test_specaugment_is_off_in_the_probe_so_numpy_rng_is_untouched():
    """Wav2Vec2 masks time spans in training (``mask_time_prob`` > 0) by drawing from NumPy's global RNG."""
    model, inputs = TOWERS["wav2vec2"].build()
    assert model.config.mask_time_prob > 0 and model.config.apply_spec_augment
    assert (model.config, "mask_time_prob") in stochastic_skips(model)
    np.random.seed(1)
    expected = np.random.get_state()[1].copy()
    hf_sparseout.inspect(model, example_inputs=inputs)
    hf_sparseout.verify(model, inputs)
    assert (np.random.get_state()[1] == expected).all()
    assert model.config.mask_time_prob > 0, "restored after the probe"
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    assert not [s for s in report.sites if "mask" in s.name], "SpecAugment is not a dropout site"
