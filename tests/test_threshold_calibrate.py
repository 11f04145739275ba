"""calibrate: non-finite activations are refused by site; sites given as 're:<regex>' as everywhere else."""

from __future__ import annotations

import math

import pytest
import torch

from hf_sparseout.metrics.threshold import ThresholdError, calibrate
from tests.threshold_helpers import batches, tiny_gpt2


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_activations_are_refused_naming_the_sites(value) -> None:
    model = tiny_gpt2()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] = value  # feeds h.1.mlp.c_proj only
    with pytest.raises(ThresholdError, match="non-finite") as info:
        calibrate(model, batches(1), targets=[0.5])
    assert "transformer.h.1.mlp.c_proj" in info.value.message
    assert "transformer.h.0" not in info.value.message and info.value.hint


def test_sites_as_a_re_prefixed_regex_string_or_list() -> None:
    model = tiny_gpt2()
    expected = ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    assert list(calibrate(model, batches(1), sites=r"re:.*mlp\.c_fc", targets=[0.5]).sites) == expected
    assert list(calibrate(model, batches(1), sites=[r"re:.*h\.0\.mlp\.c_fc"], targets=[0.5]).sites) == expected[:1]


def test_an_invalid_regex_is_named_as_such() -> None:
    with pytest.raises(ThresholdError, match="regex") as info:
        calibrate(tiny_gpt2(), batches(1), sites="re:(mlp", targets=[0.5])
    assert info.value.hint


@pytest.mark.parametrize("sites", [5, [3], [""], {"a": 1}])
def test_sites_that_are_not_patterns_are_threshold_errors(sites) -> None:
    with pytest.raises(ThresholdError, match="site") as info:
        calibrate(tiny_gpt2(), batches(1), sites=sites, targets=[0.5])
    assert info.value.hint
