"""End-to-end `hf-sparseout finetune` runs on small local data (and slices of ../shared/data)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from architectures import SHARED, minilm_path
from finetune_helpers import FAST, invoke, json_tail, write_labelled_csv, write_text_corpus
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hf_sparseout.training import checkpoints

pytestmark = pytest.mark.slow  # end-to-end training runs


def _run(out, *args):
    result = invoke("--output-dir", str(out), "--format", "json", *args)
    assert result.exit_code == 0, result.output[-3000:]
    return json_tail(result.output)


def test_causal_lm_on_local_text_writes_everything(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    summary = _run(out, "--dataset", str(data), *FAST, "--max-steps", "4", "--eval-steps", "2", "--q", "1.0")
    assert summary["task"] == "causal-lm"
    metrics = json.loads((out / "metrics.json").read_text())
    evals = metrics["runs"]["sparseout"]["evals"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(math.isclose(e["perplexity"], math.exp(e["eval_loss"]), rel_tol=1e-9) for e in evals)
    assert all(0.0 <= e["hoyer"] <= 1.0 for e in evals)
    assert len(metrics["runs"]["sparseout"]["train_loss"]) == 4
    assert set(metrics["runs"]["sparseout"]["sparsity"]["sites"]) >= {"transformer.h.0.mlp.dropout"}
    for name in ("report.md", "training_loss.png", "eval_metric.png", "sparsity_per_site.png", "hf_sparseout_run.json"):
        assert (out / name).is_file(), name
    assert (out / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sparseout | 1 |" in (out / "report.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers
    assert json.loads((out / "config.json").read_text())["sparseout"]["q"] == 1.0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert "sparseout" in card.data.tags and card.data.library_name
    run = json.loads((out / "hf_sparseout_run.json").read_text())
    assert run["results"]["baseline"] is None and run["base_model"] is None and str(tmp_path) not in json.dumps(run)


def test_baseline_at_q2_is_the_same_run(tmp_path):
    """--baseline trains with dropout from the same seed and data order: with --q 2 both runs coincide."""
    data = write_text_corpus(tmp_path / "txt")
    _run(tmp_path / "out", "--dataset", str(data), *FAST, "--max-steps", "3", "--q", "2", "--baseline")
    runs = json.loads((tmp_path / "out" / "metrics.json").read_text())["runs"]
    assert list(runs) == ["sparseout", "dropout"]  # the main run is dropout too: the control has that name
    assert runs["sparseout"]["train_loss"] == runs["dropout"]["train_loss"]
    assert runs["sparseout"]["evals"] == runs["dropout"]["evals"]
    a = load_file(tmp_path / "out" / "model.safetensors")
    b = load_file(tmp_path / "out" / "baseline" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_baseline_differs_from_sparseout(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    summary = _run(tmp_path / "out", "--dataset", str(data), *FAST, "--max-steps", "3", "--q", "1.0", "--baseline")
    rows = {r["run"]: r for r in summary["summary"]}
    assert rows["sparseout"]["q"] == 1.0 and rows["dropout"]["q"] == 2.0
    assert rows["sparseout"]["perplexity"] != rows["dropout"]["perplexity"]


def test_classification_on_local_csv(tmp_path):
    csv = write_labelled_csv(tmp_path / "d.csv")
    out = tmp_path / "out"
    summary = _run(out, "--dataset", str(csv), "--from-config", "bert-tiny", "--max-steps", "4", "--batch-size", "8")
    assert summary["task"] == "classification"
    final = json.loads((out / "metrics.json").read_text())["runs"]["sparseout"]["evals"][-1]
    assert 0.0 <= final["accuracy"] <= 1.0 and 0.0 <= final["f1_macro"] <= 1.0 and final["eval_samples"] == 8
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "0", 1: "1"}


def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path):
    data = write_text_corpus(tmp_path / "txt", lines=60)
    common = ["--dataset", str(data), *FAST, "--lr-scheduler", "constant", "--q", "1.5", "--max-train-samples", "12"]
    _run(tmp_path / "straight", *common, "--max-steps", "5")
    _run(tmp_path / "resumed", *common, "--max-steps", "2", "--save-steps", "2")
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path / "resumed" / "checkpoints" / "sparseout")] == [
        "step-2"
    ]
    _run(tmp_path / "resumed", *common, "--max-steps", "5", "--resume-from-checkpoint", "latest")
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())["runs"]["sparseout"]
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["runs"]["sparseout"]
    assert resumed["train_loss"] == straight["train_loss"]  # 3 batches per epoch: the resume crosses an epoch
    assert resumed["evals"][-1] == straight["evals"][-1]
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupt_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from accelerate import Accelerator

    original, calls = Accelerator.save_state, []

    def save_state(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            (tmp_path / "partial").write_text("")  # the write has started...
            open(f"{output_dir}/model.safetensors", "wb").close() if __import__("os").path.isdir(output_dir) else None
            raise KeyboardInterrupt
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), "--dataset", str(data), *FAST, "--max-steps", "6", "--save-steps", "2")
    assert result.exit_code == 130
    assert "--resume-from-checkpoint latest" in result.output
    run_dir = out / "checkpoints" / "sparseout"
    assert [p.name for p in run_dir.iterdir()] == ["step-2"]
    assert checkpoints.read_state(run_dir / "step-2")["global_step"] == 2


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "data" / "ptb").is_dir(), reason="needs ../shared/data/ptb")
def test_ptb_slice(tmp_path):
    summary = _run(
        tmp_path / "out",
        "--dataset",
        str(SHARED / "data" / "ptb"),
        *FAST,
        "--max-train-samples",
        "32",
        "--max-eval-samples",
        "8",
        "--max-steps",
        "3",
    )
    (row,) = summary["summary"]
    assert row["steps"] == 3 and math.isfinite(row["perplexity"]) and row["perplexity"] > 1


@pytest.mark.shared_data
@pytest.mark.skipif(
    not (SHARED / "data" / "sst2").is_dir() or minilm_path() is None, reason="needs ../shared/data/sst2 and MiniLM"
)
def test_sst2_slice_with_pretrained_minilm_beats_chance(tmp_path):
    summary = _run(
        tmp_path / "out",
        "--dataset",
        str(SHARED / "data" / "sst2"),
        "--model",
        str(minilm_path()),
        "--text-column",
        "sentence",
        "--max-train-samples",
        "480",
        "--max-eval-samples",
        "200",
        "--max-steps",
        "30",
        "--batch-size",
        "16",
        "--learning-rate",
        "3e-4",
        "--max-length",
        "64",
    )
    (row,) = summary["summary"]
    # 200 dev sentences: chance is 0.5 with a standard deviation of 0.035; 0.6 is ~3 sigma above it.
    assert row["accuracy"] > 0.6, row
