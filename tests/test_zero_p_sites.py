"""SparseoutConfig(p=0): the same sites as at p > 0, as identities (the p = 0 control)."""

from __future__ import annotations

import pytest
import torch
from architectures import batch, build

import hf_sparseout
from hf_sparseout import Sparseout, SparseoutConfig


@pytest.mark.parametrize(
    ("arch", "head", "extra"),
    [
        ("gpt2", "causal-lm", {}),
        ("bert", "seq-cls", {}),
        ("bart", "causal-lm", {}),
        ("llama", "causal-lm", {"insert": "mlp"}),
        ("gpt2", "causal-lm", {"insert": "mlp", "attention": "keep"}),
    ],
)
def test_p0_patches_exactly_the_sites_of_p_positive_as_identities(arch, head, extra):
    model = build(arch, head, "eager")
    inputs = batch(model)
    noisy = hf_sparseout.inspect(model, SparseoutConfig(p=0.1, q=1.0, **extra), example_inputs=inputs)
    report = hf_sparseout.patch(model, SparseoutConfig(p=0.0, q=1.0, **extra), example_inputs=inputs)
    assert [s.name for s in report.sparseout_sites] == [s.name for s in noisy.sparseout_sites]
    assert all(s.new_p == 0.0 and "identity" in s.reason for s in report.sparseout_sites)
    model.eval()
    with torch.no_grad():
        want = model(**inputs).logits
        model.train()  # every patched site is an identity: training mode equals eval mode where nothing else is random
        if extra.get("attention") != "keep":
            torch.testing.assert_close(model(**inputs).logits, want)


def test_an_override_to_p0_keeps_that_site_as_an_identity():
    model = build("gpt2", "causal-lm", "eager")
    config = SparseoutConfig(p=0.2, q=1.0, overrides={"h.0.mlp.dropout": {"p": 0.0}})
    report = hf_sparseout.patch(model, config, example_inputs=batch(model))
    site = report.site("transformer.h.0.mlp.dropout")
    assert site.sparseout and site.new_p == 0.0
    assert isinstance(model.transformer.h[0].mlp.dropout, Sparseout) and model.transformer.h[0].mlp.dropout.p == 0.0
    assert report.site("transformer.h.1.mlp.dropout").new_p == 0.2
