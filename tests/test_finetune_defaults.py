"""The offline default run: built-in corpus, a tokenizer trained on it, baseline on, no network."""

from __future__ import annotations

import json

import pytest
from architectures import minilm_path
from finetune_helpers import invoke, json_tail

from hf_sparseout.training.args import FinetuneArgs


def test_defaults_resolve_to_the_demonstration_run():
    args = FinetuneArgs()
    args.resolve_defaults()
    assert args.offline_default and args.baseline is True and args.epochs == 5.0
    own = FinetuneArgs(dataset="data.txt")
    own.resolve_defaults()
    assert own.baseline is False and own.epochs == 1.0
    classification = FinetuneArgs(task="classification")
    classification.resolve_defaults()
    assert classification.baseline is True and classification.epochs == 3.0
    explicit = FinetuneArgs(baseline=False, max_steps=10)
    explicit.resolve_defaults()
    assert explicit.baseline is False and explicit.epochs == 1.0


@pytest.mark.slow
def test_default_causal_lm_run_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), "--max-steps", "2", "--block-size", "32", "--format", "json")
    assert result.exit_code == 0, result.output[-2000:]
    summary = json_tail(result.output)
    assert summary["task"] == "causal-lm" and [r["run"] for r in summary["summary"]] == ["sparseout", "dropout"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == "built-in corpus: pydoc help topics"
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "BPE" and len(tokenizer["model"]["vocab"]) > 1000
    assert json.loads((out / "config.json").read_text())["n_layer"] == 2  # the gpt2-tiny preset


@pytest.mark.slow
@pytest.mark.skipif(minilm_path() is None, reason="the classification default uses MiniLM when it is installed")
def test_default_classification_run_uses_minilm(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    result = invoke(
        "--output-dir",
        str(out),
        "--task",
        "classification",
        "--max-steps",
        "2",
        "--no-baseline",
        "--max-eval-samples",
        "16",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output[-2000:]
    (row,) = json_tail(result.output)["summary"]
    # all-MiniLM-L6-v2 has 20 dropout sites; by default the 6 attention-probability ones stay plain dropout
    assert row["sites"] == 14 and row["measured"] == 14 and 0.0 <= row["accuracy"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and set(config["id2label"].values()) == {
        "text",
        "data formats",
        "numbers",
        "system",
    }
