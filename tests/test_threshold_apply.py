"""A calibration is applied only to the model it describes: same model_type, site set and weight sizes."""

from __future__ import annotations

import dataclasses

import pytest

from hf_sparseout.metrics.threshold import (
    Calibration,
    ThresholdError,
    apply_thresholds,
    batch_evaluator,
    calibrate,
    sparsity_curve,
)
from tests.threshold_helpers import batches, tiny_gpt2


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    """Thresholds of the 2-layer, 32-wide tiny GPT-2."""
    return calibrate(tiny_gpt2(), batches(1), targets=[0.5])


def _no_hooks(model) -> bool:
    return not any(m._forward_pre_hooks for m in model.modules())


def test_a_deeper_model_of_the_same_family_is_refused(calibration) -> None:
    deeper = tiny_gpt2(n_layer=4)  # the 2-layer sites are all modules of it: they used to install on half of them
    n = len(calibration.sites)
    with pytest.raises(ThresholdError, match=r"transformer\.h\.2\.mlp\.c_fc") as info:
        apply_thresholds(deeper, calibration, target=0.5)
    message = info.value.message
    assert f"{n} sites" in message and str(2 * n) in message and info.value.hint and _no_hooks(deeper)


def test_a_wider_model_is_refused_by_its_weight_sizes(calibration) -> None:
    wider = tiny_gpt2(n_embd=48)
    with pytest.raises(ThresholdError, match="weight_numel") as info:
        apply_thresholds(wider, calibration, target=0.5)
    assert "transformer.h.0.attn.c_attn" in info.value.message and _no_hooks(wider)


def test_another_model_type_is_refused(calibration) -> None:
    edited = dataclasses.replace(calibration, model_type="bert")
    model = tiny_gpt2()
    with pytest.raises(ThresholdError, match="model_type 'bert'") as info:
        apply_thresholds(model, edited, target=0.5)
    assert "gpt2" in info.value.message and info.value.hint and _no_hooks(model)


def test_a_calibration_passed_to_the_curve_is_checked_too(calibration) -> None:
    deeper = tiny_gpt2(n_layer=3)
    with pytest.raises(ThresholdError, match=r"transformer\.h\.2\."):
        sparsity_curve(deeper, calibration, batch_evaluator(batches(1)), targets=[0.5])


def test_the_models_own_calibration_still_applies(calibration) -> None:
    model = tiny_gpt2(seed=3)  # other weights, same architecture
    hooks = apply_thresholds(model, calibration, target=0.5)
    assert set(hooks.site_names) == set(calibration.sites)
    hooks.remove()
