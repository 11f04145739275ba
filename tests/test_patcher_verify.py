"""hf_sparseout.verify against the independent oracle, and a failed patch that changes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from architectures import batch, build
from dropout_oracle import count_applications
from transformers import AutoConfig, AutoModelForCausalLM

import hf_sparseout
from hf_sparseout import SparseoutConfig


def _gpt2():
    model = build("gpt2", "causal-lm", "eager")
    return model, {**batch(model), "use_cache": False}


def test_verify_counts_what_the_oracle_counts_before_and_after_the_patch():
    model, inputs = _gpt2()
    oracle, _ = count_applications(model, inputs)
    plain = hf_sparseout.verify(model, inputs)
    assert not plain.patched and not plain.ok and plain.agrees
    assert sum(c.calls for c in plain.uncovered) == oracle and not plain.sparseout
    assert "transformer.drop:dropout" in {c.place for c in plain.uncovered}

    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    patched = hf_sparseout.verify(model, inputs)
    assert patched.ok and not patched.uncovered
    assert sum(c.calls for c in patched.sparseout) == oracle
    assert {c.site for c in patched.sparseout} == {s.name for s in report.sparseout_sites}
    data = json.loads(patched.to_json())
    assert data["ok"] is True and len(data["calls"]) == len(report.sparseout_sites)
    assert "OK" in patched.to_table().splitlines()[-1]


def test_verify_flags_a_report_that_does_not_match():
    model, inputs = _gpt2()
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    report.site("transformer.drop").calls = 5  # a report that lies about a site
    checked = hf_sparseout.verify(model, inputs)
    assert not checked.agrees and not checked.ok
    assert checked.disagreements == ["site transformer.drop: report says 5 calls, saw 1"]


def test_verify_leaves_the_model_as_it_was():
    model, inputs = _gpt2()
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    flags = [m.training for m in model.modules()]
    attrs = [dict(vars(m)) for m in model.modules()]
    rng = torch.get_rng_state()
    hf_sparseout.verify(model, inputs)
    assert [m.training for m in model.modules()] == flags
    assert all(dict(vars(m)).keys() == a.keys() for m, a in zip(model.modules(), attrs, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_failed_patch_leaves_model_and_config_as_they_were():
    # the site module for a float attribute would go where a submodule already is: patch fails halfway
    opt = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("opt", vocab_size=96, hidden_size=32, num_hidden_layers=1, ffn_dim=64,
                             num_attention_heads=2, word_embed_proj_dim=32, dropout=0.1, max_position_embeddings=64)
    )  # fmt: skip
    opt.model.decoder.layers[0].add_module("dropout_sparseout", torch.nn.Identity())
    opt_config = opt.config
    before = [(n, type(m), sorted(vars(m))) for n, m in opt.named_modules()]
    with pytest.raises(ValueError, match="already has a submodule 'dropout_sparseout'"):
        hf_sparseout.patch(opt, SparseoutConfig(q=1.5), example_inputs={**batch(opt), "use_cache": False})
    assert [(n, type(m), sorted(vars(m))) for n, m in opt.named_modules()] == before
    assert opt.config is opt_config and "sparseout" not in opt.config.to_dict()
    assert not hf_sparseout.is_patched(opt)
    assert all(m.config is opt_config for m in opt.modules() if "config" in vars(m))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_identity_sites_at_p0_are_counted_not_reported_as_disagreeing(impl):
    model = build("gpt2", "causal-lm", impl)
    inputs = {**batch(model), "use_cache": False}
    report = hf_sparseout.patch(model, SparseoutConfig(p=0.0, q=1.5, attention="sparseout"), example_inputs=inputs)
    checked = hf_sparseout.verify(model, inputs)
    assert checked.ok and checked.disagreements == [], checked.to_table()
    counted = {c.site for c in checked.sparseout if c.p == 0.0}
    modules = {s.name for s in report.sparseout_sites if s.kind != "attention"}
    assert modules <= counted  # every identity module site was seen, at p = 0


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_kept_plain_is_reported_as_kept_not_uncovered(impl):
    model = build("gpt2", "causal-lm", impl)
    inputs = {**batch(model), "use_cache": False}
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5, attention="keep"), example_inputs=inputs)
    checked = hf_sparseout.verify(model, inputs)
    kept = {s.name for s in report.plain_sites if s.reason == "attention='keep'"}
    assert kept and {c.site for c in checked.kept} == kept
    assert checked.ok and not checked.uncovered, checked.to_table()
    assert all(c.reached_as == "kept" for c in checked.kept)
    assert "kept plain" in checked.to_table() and json.loads(checked.to_json())["ok"] is True


def test_plain_dropout_the_report_does_not_keep_is_still_uncovered():
    model, inputs = _gpt2()
    hf_sparseout.patch(
        model, SparseoutConfig(q=1.5, attention="keep", exclude=["transformer.drop"]), example_inputs=inputs
    )
    checked = hf_sparseout.verify(model, inputs)
    assert [c.place for c in checked.uncovered] == ["transformer.drop:dropout"] and not checked.ok


def test_verify_on_a_torch_compile_wrapper_points_to_the_uncompiled_model():
    from hf_sparseout.errors import HfSparseoutError

    model, inputs = _gpt2()
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    compiled = torch.compile(model, backend="eager")  # lazy: nothing is compiled unless it is called
    with pytest.raises(HfSparseoutError, match=r"torch\.compile") as info:
        hf_sparseout.verify(compiled, inputs)
    assert "_orig_mod" in info.value.hint and isinstance(info.value, ValueError)
    assert hf_sparseout.verify(compiled._orig_mod, inputs).ok
