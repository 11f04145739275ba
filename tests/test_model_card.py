"""The model card: Hub metadata parsed back with huggingface_hub, the body, nothing local in it."""

from __future__ import annotations

import getpass
import os

import pytest
from architectures import build
from huggingface_hub import ModelCard
from run_dirs import write_run_dir

import hf_sparseout
from hf_sparseout import SparseoutConfig
from hf_sparseout.hub import CheckpointError, render_model_card, save_pretrained, write_model_card
from hf_sparseout.hub.card import template_text


def _metrics(card: ModelCard) -> dict[str, float]:
    return {r.metric_type: r.metric_value for r in card.data.eval_results}


def test_card_metadata_parses_back(tmp_path):
    run = write_run_dir(tmp_path / "run")
    path = write_model_card(tmp_path / "run", repo_id="my-user/gpt2-sparseout")
    assert path == tmp_path / "run" / "README.md"
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers"
    assert data.base_model == "openai-community/gpt2"
    assert {"sparseout", "hf-sparseout", "text-generation"} <= set(data.tags)
    assert data.datasets == ["ptb_text_only"]
    assert data.pipeline_tag == "text-generation"
    assert data.license == "mit"
    assert data.model_name == "gpt2-sparseout"
    metrics = _metrics(card)
    assert metrics["perplexity"] == pytest.approx(run["results"]["sparseout"]["perplexity"], rel=1e-5)
    assert metrics["activation_sparsity"] == pytest.approx(run["results"]["sparseout"]["hoyer"], rel=1e-5)
    assert {r.dataset_type for r in data.eval_results} == {"ptb_text_only"}
    assert {r.task_type for r in data.eval_results} == {"text-generation"}


def test_card_body(tmp_path):
    run = write_run_dir(tmp_path / "run")
    text = render_model_card(tmp_path / "run", repo_id="my-user/gpt2-sparseout")
    body = ModelCard(text).text
    assert "Sparseout" in body and "| q | 1.5 |" in body
    sparse = [s["name"] for s in run["sites"] if s["sparseout"]]
    plain = [s["name"] for s in run["sites"] if not s["sparseout"] and s["p"] > 0]
    assert sparse and plain  # attention="keep" leaves the attention dropout plain
    assert all(f"`{name}`" in body for name in sparse + plain)
    assert "dropout baseline" in body
    assert "| Perplexity | 25.01 | 27.42 |" in body  # Sparseout vs baseline, 4 significant digits
    assert "![Hoyer sparsity per site](sparsity_per_site.png)" in body
    assert "training_loss.png" in body and "eval_metric.png" not in body  # only plots that exist
    assert "| learning_rate | 0.0005 |" in body
    assert 'hf_sparseout.from_pretrained("my-user/gpt2-sparseout", task="causal-lm")' in body
    assert 'AutoModelForCausalLM.from_pretrained("my-user/gpt2-sparseout")' in body


def test_card_holds_nothing_local(tmp_path):
    directory = tmp_path / "run"
    write_run_dir(directory, base_model=str(tmp_path / "my-local-gpt2"))
    text = render_model_card(directory)
    card = ModelCard(text)
    assert card.data.base_model is None
    for secret in (str(tmp_path), os.path.expanduser("~"), "/home/alice", "hf_should_never_appear", "hub_token"):
        assert secret not in text
    user = getpass.getuser()
    if user not in ("root", ""):
        assert f"/{user}/" not in text
    assert "| logging_dir | (local path) |" in text
    assert "<namespace>/<model-name>" in text  # no repo id given: a placeholder, not a guess


def test_classification_card_without_baseline(tmp_path):
    run = write_run_dir(tmp_path / "cls", task="classification", baseline=False)
    card = ModelCard(render_model_card(tmp_path / "cls", repo_id="org/minilm-sst2-sparseout"))
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.datasets == ["stanfordnlp/sst2"]
    metrics = _metrics(card)
    assert metrics["accuracy"] == pytest.approx(run["results"]["sparseout"]["accuracy"])
    assert metrics["f1"] == pytest.approx(run["results"]["sparseout"]["f1_macro"])
    assert "perplexity" not in metrics
    assert "dropout baseline" not in card.text
    assert "AutoModelForSequenceClassification" in card.text


def test_minimal_card_from_a_hand_saved_checkpoint(tmp_path):
    model = build("gpt2", "causal-lm", "eager")
    hf_sparseout.patch(model, SparseoutConfig(p=0.05, q=1.25, exclude=["transformer.drop"]))
    save_pretrained(model, tmp_path / "ckpt")
    card = ModelCard.load(write_model_card(tmp_path / "ckpt", repo_id="me/tiny"))
    assert card.data.pipeline_tag == "text-generation"
    assert "sparseout" in card.data.tags
    assert card.data.eval_results is None  # no run, no results
    assert "| p | 0.05 |" in card.text and "| q | 1.25 |" in card.text
    assert "`transformer.drop`" in card.text  # the exclude pattern
    assert "AutoModelForCausalLM" in card.text


def test_minimal_card_of_a_peft_adapter(tmp_path):
    peft = pytest.importorskip("peft", reason="peft is an optional extra")
    model = peft.get_peft_model(build("gpt2", "causal-lm", "eager"), peft.LoraConfig(target_modules=["c_attn"], r=4))
    hf_sparseout.patch(model, SparseoutConfig(q=1.0))
    save_pretrained(model, tmp_path / "adapter")
    card = ModelCard(render_model_card(tmp_path / "adapter", repo_id="me/lora"))
    assert card.data.library_name == "peft"
    assert "PeftModel.from_pretrained" in card.text


def test_no_configuration_no_card(tmp_path):
    model = build("gpt2", "causal-lm", "eager")
    save_pretrained(model, tmp_path / "plain")
    with pytest.raises(CheckpointError, match="no 'sparseout' block"):
        render_model_card(tmp_path / "plain")


def test_template_ships_as_package_data():
    text = template_text()
    assert "{{ card_data }}" in text and "generated by hf-sparseout" in text
