"""finetune a tiny model, then reload its output: with hf-sparseout (same patch) and with plain transformers."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_helpers import FAST, invoke, write_text_corpus
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_sparseout

pytestmark = pytest.mark.slow  # trains, saves and reloads end to end


def test_finetune_save_reload_same_report_and_eval_outputs(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    result = invoke(
        "--output-dir",
        str(out),
        "--dataset",
        str(data),
        *FAST,
        "--max-steps",
        "3",
        "--q",
        "1.25",
        "--exclude",
        "transformer.drop",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output[-2000:]
    saved_sites = json.loads((out / "metrics.json").read_text())["runs"]["sparseout"]["sites"]

    reloaded = hf_sparseout.from_pretrained(out, task="causal-lm")
    report = hf_sparseout.get_report(reloaded)
    keys = ("name", "kind", "sparseout", "new_p", "q", "reason")
    assert [{k: s.__dict__[k] for k in keys} for s in report.sites] == [{k: s[k] for k in keys} for s in saved_sites]
    assert report.site("transformer.drop").reason == "excluded"

    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # no hf-sparseout involved
    assert not any(isinstance(m, hf_sparseout.Sparseout) for m in plain.modules())
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(["the quick brown fox jumps", "a penny saved is a penny earned"], return_tensors="pt", padding=True)
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**ids).logits, plain(**ids).logits)
    reloaded.train()
    torch.manual_seed(0)
    with torch.no_grad():
        noisy = reloaded(**ids).logits
    assert not torch.equal(noisy, plain(**ids).logits)  # and the patch is live in training
