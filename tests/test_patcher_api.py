"""SparseoutConfig, patterns and their errors, overrides, insertion, reports, copies."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from architectures import batch, build
from dropout_oracle import count_applications

import hf_sparseout
from hf_sparseout import SparseoutConfig
from hf_sparseout.patcher.config import CONFIG_FORMAT_VERSION
from hf_sparseout.training.modeling import enable_checkpointing


def _gpt2():
    model = build("gpt2", "causal-lm", "eager")
    return model, {**batch(model), "use_cache": False}


def _llama():
    model = build("llama", "causal-lm", "sdpa")
    model.config.attention_dropout = 0.0
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.0
    return model, {**batch(model), "use_cache": False}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1.5}, "p=1.5"),
        ({"p": float("nan")}, "p=nan"),
        ({"q": -1.0}, "q=-1.0"),
        ({"gradient": "approx"}, "gradient='approx'"),
        ({"attention": "drop"}, "attention='drop'"),
        ({"targets": []}, "targets"),
        ({"overrides": {"attn": {"r": 1}}}, "overrides"),
        ({"overrides": {"attn": {"p": 2.0}}}, "p=2.0"),
        ({"insert": ["mlp.act_fn"]}, "insert adds new Sparseout sites"),
    ],
)
def test_invalid_config_is_a_value_error_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        SparseoutConfig(**kwargs)


def test_config_json_round_trip_and_versions():
    config = SparseoutConfig(p=0.2, q=1.0, targets=["mlp.dropout"], overrides={"attn_dropout": {"q": 3.0}})
    data = json.loads(config.to_json())
    assert data["format_version"] == CONFIG_FORMAT_VERSION and data["library_version"] == hf_sparseout.__version__
    assert SparseoutConfig.from_json(config.to_json()) == config


def test_config_from_newer_version_drops_unknown_keys_with_a_warning():
    data = {**SparseoutConfig(p=0.1).to_dict(), "future_field": 1}
    with pytest.warns(UserWarning, match="future_field"):
        assert SparseoutConfig.from_dict(data).p == 0.1
    with pytest.raises(ValueError, match="upgrade hf-sparseout"):
        SparseoutConfig.from_dict({**data, "format_version": CONFIG_FORMAT_VERSION + 1})
    with pytest.raises(ValueError, match="not valid JSON"):
        SparseoutConfig.from_json("{p: ")
    with pytest.raises(ValueError, match="q="):
        SparseoutConfig.from_dict({"q": "two"})


def test_targets_list_regex_and_exclude_select_sites():
    model, inputs = _gpt2()
    report = hf_sparseout.inspect(model, SparseoutConfig(targets=["mlp.dropout"]), example_inputs=inputs)
    assert {s.name for s in report.sparseout_sites} == {"transformer.h.0.mlp.dropout", "transformer.h.1.mlp.dropout"}
    assert report.site("transformer.drop").reason == "not in targets"
    report = hf_sparseout.inspect(model, SparseoutConfig(targets=r"transformer\.h\.1\..*"), example_inputs=inputs)
    assert (
        all(s.name.startswith("transformer.h.1.") for s in report.sparseout_sites) and len(report.sparseout_sites) == 3
    )
    report = hf_sparseout.inspect(model, SparseoutConfig(exclude=["attn_dropout"]), example_inputs=inputs)
    assert report.site("transformer.h.0.attn.attn_dropout").reason == "excluded"
    assert len(report.sparseout_sites) == 5


def test_overrides_set_per_site_p_and_q():
    model, inputs = _gpt2()
    config = SparseoutConfig(
        p=0.2, q=1.5, overrides={"attn_dropout": {"q": 3.0}, r".*\.h\.1\.mlp\.dropout": {"p": 0.4}}
    )
    report = hf_sparseout.patch(model, config, example_inputs=inputs)
    attn = report.site("transformer.h.0.attn.attn_dropout")
    assert (attn.new_p, attn.q) == (0.2, 3.0)
    assert (report.site("transformer.h.1.mlp.dropout").new_p, report.site("transformer.h.1.mlp.dropout").q) == (
        0.4,
        1.5,
    )
    assert model.transformer.h[1].mlp.dropout.p == 0.4 and model.transformer.h[0].attn.attn_dropout.q == 3.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"targets": ["no_such_dropout"]}, "targets"),
        ({"targets": r"encoder\..*"}, "targets"),
        ({"exclude": ["nope"]}, "exclude"),
        ({"overrides": {"nope": {"q": 1.0}}}, "overrides"),
        ({"p": 0.1, "insert": ["mlp.nope"]}, "insert"),
    ],
)
def test_a_pattern_that_matches_nothing_is_an_error_listing_names(kwargs, field):
    model, inputs = _gpt2()
    with pytest.raises(ValueError, match=field) as err:
        hf_sparseout.patch(model, SparseoutConfig(**kwargs), example_inputs=inputs)
    listed = "transformer.h.0.mlp" if field == "insert" else "transformer.h.0.attn.attn_dropout"
    assert listed in str(err.value)
    assert not hf_sparseout.is_patched(model)


def test_no_dropout_and_no_insert_is_an_error_suggesting_insert_points():
    model, inputs = _llama()
    with pytest.raises(ValueError, match=r"insert=\['mlp.act_fn'\]"):
        hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)


def test_insert_adds_sites_on_module_outputs_and_unpatch_removes_them():
    model, inputs = _llama()
    eval_before = model(**inputs).logits
    torch.manual_seed(0)
    model.train()
    train_before = model(**inputs).logits
    report = hf_sparseout.patch(model, SparseoutConfig(p=0.2, q=1.0, insert=["mlp.act_fn"]), example_inputs=inputs)
    inserted = [s for s in report.sites if s.kind == "inserted"]
    assert [s.name for s in inserted] == ["model.layers.0.mlp.act_fn", "model.layers.1.mlp.act_fn"]
    assert count_applications(model, inputs) == (0, 2)
    torch.manual_seed(0)
    assert not torch.equal(model(**inputs).logits, train_before)
    model.eval()
    assert torch.equal(model(**inputs).logits, eval_before)
    hf_sparseout.unpatch(model)
    assert not any(isinstance(m, hf_sparseout.Sparseout) for m in model.modules())
    assert all(not layer.mlp.act_fn._forward_hooks for layer in model.model.layers)
    model.train()
    torch.manual_seed(0)
    assert torch.equal(model(**inputs).logits, train_before)


def test_config_only_sites_are_enabled_only_when_selected():
    model = build("llama", "causal-lm", "eager")
    model.config.attention_dropout = 0.0
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.0
    inputs = {**batch(model), "use_cache": False}
    dry = hf_sparseout.inspect(model, SparseoutConfig(p=0.3), example_inputs=inputs)
    assert {s.kind for s in dry.sites} == {"config-only"} and not dry.sparseout_sites
    assert "select it with targets" in dry.sites[0].reason
    by_targets = hf_sparseout.inspect(
        model, SparseoutConfig(p=0.3, targets=["attention_dropout"]), example_inputs=inputs
    )
    assert [s.new_p for s in by_targets.sparseout_sites] == [0.3, 0.3]
    config = SparseoutConfig(q=1.5, overrides={"layers.1.self_attn.attention_dropout": {"p": 0.2}})
    report = hf_sparseout.patch(model, config, example_inputs=inputs)
    assert [s.name for s in report.sparseout_sites] == ["model.layers.1.self_attn.attention_dropout"]
    assert count_applications(model, inputs) == (0, 1)


def test_report_table_json_and_get_report():
    model, inputs = _gpt2()
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5, exclude=["drop"]), example_inputs=inputs)
    table = str(report)
    assert "transformer.h.0.attn.attn_dropout" in table and "excluded" in table
    assert "7 sites, 6 Sparseout, 1 plain dropout" in table
    data = json.loads(report.to_json())
    assert data["summary"]["attention"] == 2 and data["patched"] is True
    assert data["config"]["q"] == 1.5
    assert hf_sparseout.get_report(model) is report
    with pytest.raises(KeyError, match=r"transformer\.drop"):
        report.site("nope")


def test_probe_keeps_rng_state_and_training_flags():
    model, inputs = _gpt2()
    model.transformer.h[0].train()
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    hf_sparseout.inspect(model, example_inputs=inputs)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == flags


def test_deepcopy_of_a_patched_model_is_independent():
    model = build("bart", "causal-lm", "eager")
    inputs = {**batch(model), "use_cache": False}
    oracle, _ = count_applications(model, inputs)
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    clone = copy.deepcopy(model)
    assert count_applications(clone, inputs) == (0, oracle)
    marker = clone.model.decoder.layers[0].dropout
    assert marker.module is clone.model.decoder.layers[0].dropout_sparseout
    hf_sparseout.unpatch(model)
    assert hf_sparseout.is_patched(clone) and count_applications(clone, inputs) == (0, oracle)


def test_unpatch_restores_gradient_checkpointing_function():
    model = build("bart", "causal-lm", "eager")
    inputs = {**batch(model), "use_cache": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        enable_checkpointing(model)  # transformers' API of the installed version
    layer = model.model.decoder.layers[0]
    original = layer._gradient_checkpointing_func
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    model.train()
    model(**inputs).logits.sum().backward()
    assert layer._gradient_checkpointing_func is not original
    hf_sparseout.unpatch(model)
    assert layer._gradient_checkpointing_func is original


def test_unpatch_of_an_unpatched_model_is_an_error():
    model, _ = _gpt2()
    with pytest.raises(ValueError, match="not patched"):
        hf_sparseout.unpatch(model)


def test_patch_records_its_config_on_the_model_config_and_unpatch_removes_it():
    model, inputs = _gpt2()
    config = SparseoutConfig(q=1.25, exclude=["drop"])
    hf_sparseout.patch(model, config, example_inputs=inputs)
    assert model.config.sparseout == config.to_dict()
    assert json.loads(model.config.to_json_string())["sparseout"]["q"] == 1.25
    hf_sparseout.unpatch(model)
    assert not hasattr(model.config, "sparseout")


def test_channel_dropout_is_reported_as_plain_never_replaced():
    """Sparseout is element-wise: nn.Dropout2d (channel masks) stays as it is and the report says so."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.drop = torch.nn.Dropout(0.1)
            self.chan = torch.nn.Dropout2d(0.2)

        def forward(self, x):
            return self.chan(self.drop(self.lin(x)))

    net = Net()
    inputs = {"x": torch.randn(2, 3, 4, 4)}
    report = hf_sparseout.patch(net, SparseoutConfig(q=1.5), example_inputs=inputs)
    assert [s.name for s in report.sparseout_sites] == ["drop"]
    chan = report.site("chan:dropout2d")
    assert chan.kind == "unattributed" and not chan.sparseout and chan.p == 0.2
    assert type(net.chan) is torch.nn.Dropout2d and isinstance(net.drop, hf_sparseout.Sparseout)
