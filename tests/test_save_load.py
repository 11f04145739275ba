"""Patched checkpoints: save, reload with the same patch, plain transformers, PEFT adapters, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from architectures import batch, build
from transformers import AutoModelForCausalLM

import hf_sparseout
from hf_sparseout import Sparseout, SparseoutConfig
from hf_sparseout.hub import (
    AutoSparseoutModelForCausalLM,
    AutoSparseoutModelForSequenceClassification,
    CheckpointError,
    from_pretrained,
    patch_from_config,
    read_checkpoint_config,
    save_load,
    save_pretrained,
)


def train_steps(model: torch.nn.Module, steps: int = 3, labels: bool = True) -> None:
    """A few AdamW steps in training mode (Sparseout active), then eval mode."""
    inputs = batch(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    torch.manual_seed(1)
    for _ in range(steps):
        target = {"labels": inputs["input_ids"]} if labels else {"labels": torch.tensor([0, 1])}
        model(**inputs, **target).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def outputs(model: torch.nn.Module, training: bool = False) -> torch.Tensor:
    """Logits on the test batch: eval mode, or one training-mode forward from a fixed seed."""
    model.train(training)
    torch.manual_seed(123)
    with torch.no_grad():
        logits = model(**batch(model)).logits
    model.eval()
    return logits


def assert_reload_matches(original: torch.nn.Module, reloaded: torch.nn.Module) -> None:
    """Same site report, bit-identical eval outputs, and the same Sparseout noise in training mode.

    Reusable by the finetune round-trip test (finetune tiny -> save -> reload).
    """
    assert hf_sparseout.is_patched(reloaded)
    assert hf_sparseout.get_report(reloaded).to_dict() == hf_sparseout.get_report(original).to_dict()
    assert torch.equal(outputs(reloaded), outputs(original))
    assert torch.equal(outputs(reloaded, training=True), outputs(original, training=True))


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    """A tiny GPT-2, patched (q=1, attention kept plain), trained 3 steps, saved."""
    model = build("gpt2", "causal-lm", "eager")
    hf_sparseout.patch(model, SparseoutConfig(q=1.0, attention="keep"))
    train_steps(model)
    directory = save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "gpt2-sparseout")
    return model, directory


def test_round_trip_reapplies_the_patch(gpt2_checkpoint):
    model, directory = gpt2_checkpoint
    assert (directory / "model.safetensors").is_file()
    stored = json.loads((directory / "config.json").read_text())["sparseout"]
    assert stored == SparseoutConfig(q=1.0, attention="keep").to_dict()
    assert {"format_version", "library_version"} <= set(stored)
    assert_reload_matches(model, from_pretrained(directory, task="causal-lm", attn_implementation="eager"))
    assert_reload_matches(model, AutoSparseoutModelForCausalLM.from_pretrained(directory, attn_implementation="eager"))


def test_plain_transformers_loads_it_with_identical_eval_outputs(gpt2_checkpoint):
    model, directory = gpt2_checkpoint
    plain = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    assert not hf_sparseout.is_patched(plain)
    assert not any(isinstance(m, Sparseout) for m in plain.modules())
    assert torch.equal(outputs(plain), outputs(model))
    # the weights kept the base model's names: nothing missing, nothing unexpected
    assert set(plain.state_dict()) == set(model.state_dict())
    report = patch_from_config(plain)  # re-apply later, from config.sparseout
    assert report.to_dict() == hf_sparseout.get_report(model).to_dict()


def test_classification_round_trip(tmp_path):
    model = build("bert", "seq-cls", "eager")
    hf_sparseout.patch(model, SparseoutConfig(p=0.2, q=1.5, exclude=["bert.embeddings.dropout"]))
    train_steps(model, labels=False)
    save_pretrained(model, tmp_path / "bert")
    auto = AutoSparseoutModelForSequenceClassification
    reloaded = auto.from_pretrained(tmp_path / "bert", attn_implementation="eager")
    assert_reload_matches(model, reloaded)
    assert not hf_sparseout.get_report(reloaded).site("bert.embeddings.dropout").sparseout


def test_falcon_config_json_keeps_the_original_probabilities(tmp_path):
    model = build("falcon", "causal-lm", "eager")
    hf_sparseout.patch(model, SparseoutConfig(p=0.3))
    site = hf_sparseout.get_report(model).site("config.hidden_dropout")
    assert site.sparseout and site.p == pytest.approx(0.1)
    assert model.config.hidden_dropout == pytest.approx(0.3)  # the patched value, read at run time
    save_pretrained(model, tmp_path / "falcon")
    saved = json.loads((tmp_path / "falcon" / "config.json").read_text())
    assert saved["hidden_dropout"] == pytest.approx(0.1)
    assert saved["attention_dropout"] == pytest.approx(0.1)
    assert saved["sparseout"]["p"] == pytest.approx(0.3)
    assert model.config.hidden_dropout == pytest.approx(0.3)  # still patched after the save
    assert type(model.config.hidden_dropout) is not float
    assert_reload_matches(model, from_pretrained(tmp_path / "falcon", attn_implementation="eager"))


def _edit_block(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["sparseout"] = {**config["sparseout"], **changes} if changes else config["sparseout"]
    path.write_text(json.dumps(config))


def _set_block(directory: Path, block) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["sparseout"] = block
    path.write_text(json.dumps(config))


@pytest.fixture
def small_checkpoint(tmp_path):
    model = build("gpt2", "causal-lm", "eager")
    hf_sparseout.patch(model, SparseoutConfig(q=1.2))
    return model, save_pretrained(model, tmp_path / "ckpt")


def test_newer_keys_are_dropped_with_a_warning(small_checkpoint):
    model, directory = small_checkpoint
    _edit_block(directory, future_option=True, library_version="9.9.9")
    with pytest.warns(UserWarning, match="future_option"):
        reloaded = from_pretrained(directory, attn_implementation="eager")
    assert hf_sparseout.get_report(reloaded).config["q"] == pytest.approx(1.2)
    assert torch.equal(outputs(reloaded), outputs(model))


def test_newer_format_version_asks_for_an_upgrade(small_checkpoint):
    _, directory = small_checkpoint
    _edit_block(directory, format_version=99)
    with pytest.raises(CheckpointError, match="upgrade hf-sparseout"):
        from_pretrained(directory)


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ({"q": "one", "format_version": 1}, "not a valid Sparseout configuration"),
        ({"p": 7.0, "format_version": 1}, "not a valid Sparseout configuration"),
        ("q=1.5", "must be a JSON object"),
        ({"targets": [], "format_version": 1}, "targets"),
    ],
)
def test_corrupted_block_is_a_clear_error(small_checkpoint, block, match):
    _, directory = small_checkpoint
    _set_block(directory, block)
    with pytest.raises(CheckpointError, match=match) as info:
        from_pretrained(directory)
    assert "config.json" in str(info.value)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint_config(directory)


def test_unpatched_checkpoint_needs_a_config(tmp_path):
    model = build("gpt2", "causal-lm", "eager")
    save_pretrained(model, tmp_path / "plain")
    assert "sparseout" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="not patched"):
        from_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="no 'sparseout' block"):
        patch_from_config(AutoModelForCausalLM.from_pretrained(tmp_path / "plain"))
    reloaded = from_pretrained(tmp_path / "plain", sparseout_config=SparseoutConfig(q=1.0))
    assert hf_sparseout.get_report(reloaded).config["q"] == 1.0


def test_unpatch_after_reload_removes_the_block(small_checkpoint, tmp_path):
    _, directory = small_checkpoint
    reloaded = from_pretrained(directory)
    hf_sparseout.unpatch(reloaded)
    # the loaded block came back with the config: unpatch restores the model as it was loaded
    assert isinstance(reloaded.config.sparseout, dict)
    del reloaded.config.sparseout
    reloaded.save_pretrained(tmp_path / "unpatched")
    assert "sparseout" not in json.loads((tmp_path / "unpatched" / "config.json").read_text())


# --- atomic save ------------------------------------------------------------------------------


def _siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name != directory.name)


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    model = build("gpt2", "causal-lm", "eager")
    hf_sparseout.patch(model, SparseoutConfig(q=1.0))
    real = type(model).save_pretrained

    def crash(self, directory, **kwargs):
        real(self, directory, **kwargs)
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(model), "save_pretrained", crash)
    out = tmp_path / "runs" / "final"
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(model, out)
    assert not out.exists()
    assert list((tmp_path / "runs").iterdir()) == []


def test_save_into_a_finetune_output_keeps_its_other_files(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "sparseout" / "step-2").mkdir(parents=True)
    (out / "checkpoints" / "sparseout" / "step-2" / "trainer_state.json").write_text("{}")
    (out / "metrics.json").write_text("{}")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale shard of an earlier save")
    (out / "model.safetensors.index.json").write_text("{}")
    (out / "model-notes.json").write_text("{}")  # not a weight file: kept
    model = build("gpt2", "causal-lm", "eager")
    hf_sparseout.patch(model, SparseoutConfig(q=1.0))
    save_pretrained(model, out)
    names = {p.name for p in out.iterdir()}
    assert {"checkpoints", "metrics.json", "config.json", "model.safetensors"} <= names
    assert "model-00001-of-00002.safetensors" not in names and "model.safetensors.index.json" not in names
    assert "model-notes.json" in names
    assert (out / "checkpoints" / "sparseout" / "step-2" / "trainer_state.json").is_file()
    assert _siblings(out) == []
    assert torch.equal(outputs(from_pretrained(out, attn_implementation="eager")), outputs(model))


def test_interrupted_move_into_an_existing_dir_is_never_loadable_as_a_mix(tmp_path, monkeypatch):
    out = tmp_path / "run"
    old = build("gpt2", "causal-lm", "eager", seed=1)
    hf_sparseout.patch(old, SparseoutConfig(q=1.0))
    save_pretrained(old, out)
    (out / "metrics.json").write_text("{}")
    new = build("gpt2", "causal-lm", "eager", seed=2)
    hf_sparseout.patch(new, SparseoutConfig(q=1.5))
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(save_load.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(new, out)
    assert calls[-1] != "config.json"  # config.json is moved in last ...
    assert not (out / "config.json").exists()  # ... and the old one was removed first
    assert (out / "metrics.json").is_file()
    assert _siblings(out) == []


def test_tokenizer_is_saved_and_other_processes_write_nothing(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "a": 2}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")), pad_token="[PAD]"
    )
    model = build("gpt2", "causal-lm", "eager")
    hf_sparseout.patch(model, SparseoutConfig(q=1.0))
    assert save_pretrained(model, tmp_path / "rank1", tokenizer, is_main_process=False) == tmp_path / "rank1"
    assert not (tmp_path / "rank1").exists()
    save_pretrained(model, tmp_path / "main", tokenizer)
    assert (tmp_path / "main" / "tokenizer.json").is_file()
    assert (tmp_path / "main" / "config.json").is_file()


# --- PEFT adapters ----------------------------------------------------------------------------


def _lora(seed: int = 0):
    peft = pytest.importorskip("peft", reason="peft is an optional extra")
    base = build("gpt2", "causal-lm", "eager", seed=seed)
    return peft, peft.get_peft_model(base, peft.LoraConfig(target_modules=["c_attn"], lora_dropout=0.2, r=4))


def test_peft_adapter_round_trip(tmp_path):
    peft, model = _lora()
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.0))
    assert any("lora_dropout" in s.name for s in report.sparseout_sites)
    train_steps(model, steps=2)
    directory = save_pretrained(model, tmp_path / "adapter")
    assert (directory / "adapter_model.safetensors").is_file() and not (directory / "config.json").exists()
    sidecar = json.loads((directory / "sparseout_config.json").read_text())
    assert sidecar == {"sparseout": SparseoutConfig(q=1.0).to_dict(), "applied_to": "peft_model"}

    reloaded = from_pretrained(directory, base_model=build("gpt2", "causal-lm", "eager"))
    assert isinstance(reloaded, peft.PeftModel)
    assert_reload_matches(model, reloaded)

    # loaded by PEFT itself, then patched from the adapter directory
    plain = peft.PeftModel.from_pretrained(build("gpt2", "causal-lm", "eager"), directory).eval()
    assert torch.equal(outputs(plain), outputs(model))
    assert patch_from_config(plain, directory).to_dict() == report.to_dict()


def test_peft_adapter_over_a_patched_base_model(tmp_path):
    peft = pytest.importorskip("peft", reason="peft is an optional extra")
    base = build("gpt2", "causal-lm", "eager")
    base_report = hf_sparseout.patch(base, SparseoutConfig(q=1.3, attention="keep"))
    model = peft.get_peft_model(base, peft.LoraConfig(target_modules=["c_attn"], lora_dropout=0.2, r=4))
    save_pretrained(model, tmp_path / "adapter")
    assert read_checkpoint_config(tmp_path / "adapter")[1] == "base_model"
    reloaded = from_pretrained(tmp_path / "adapter", base_model=build("gpt2", "causal-lm", "eager"))
    assert "_hf_sparseout_state" not in vars(reloaded)  # the base model carries the patch, not the wrapper
    assert hf_sparseout.get_report(reloaded.get_base_model()).to_dict() == base_report.to_dict()
    wrapped = peft.PeftModel.from_pretrained(build("gpt2", "causal-lm", "eager"), tmp_path / "adapter")
    with pytest.raises(ValueError, match="Patch the base model first"):
        patch_from_config(wrapped, tmp_path / "adapter")


def test_adapter_without_sidecar_is_not_a_patched_checkpoint(tmp_path):
    _, model = _lora()
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(CheckpointError, match=r"PEFT adapter without sparseout_config\.json"):
        read_checkpoint_config(tmp_path / "adapter")
