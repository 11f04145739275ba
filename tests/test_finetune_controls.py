"""finetune's controls and diagnostics: --baseline dropout|none|both, --lq-penalty, --insert mlp, metrics.json keys."""

from __future__ import annotations

import json
import statistics

import pytest
from finetune_helpers import FAST, invoke, json_tail, write_text_corpus


def _run(out, *args):
    result = invoke("--output-dir", str(out), "--format", "json", *args)
    assert result.exit_code == 0, result.output[-3000:]
    return json_tail(result.output)


@pytest.mark.slow  # trains two runs end to end
def test_p0_control_is_the_same_run_and_every_diagnostic_is_recorded(tmp_path):
    """--baseline none trains at p = 0 at the same sites, from the same seed and data order."""
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    steps = ["--max-steps", "6", "--eval-steps", "3"]
    sites = ["--attention", "sparseout"]  # attention-probability sites too: they must be labelled not measured
    summary = _run(out, "--dataset", str(data), *FAST, *steps, *sites, "--p", "0", "--q", "1.0", "--baseline", "none")
    metrics = json.loads((out / "metrics.json").read_text())
    runs = metrics["runs"]
    # the main run is at p = 0 too, but the p=0 control beside it has that name
    assert list(runs) == ["sparseout", "p=0"]
    # p = 0 everywhere in both runs: identity sites, so the two runs are one run twice
    assert runs["sparseout"]["train_loss"] == runs["p=0"]["train_loss"]
    assert [s["name"] for s in runs["p=0"]["sites"]] == [s["name"] for s in runs["sparseout"]["sites"]]
    assert all(s["new_p"] == 0.0 for s in runs["p=0"]["sites"] if s["sparseout"])
    assert (out / "p0" / "model.safetensors").is_file()
    for run in runs.values():
        evals = run["evals"]
        assert [e["step"] for e in evals] == [3, 6]
        losses = [loss for _, loss in run["train_loss"]]
        assert evals[0]["train_loss"] == pytest.approx(statistics.mean(losses[:3]))
        assert evals[1]["train_loss"] == pytest.approx(statistics.mean(losses[3:]))
        assert all(0 <= e["relative_near_zero_fraction"] <= 1 for e in evals)
        best = min(evals, key=lambda e: e["perplexity"])
        assert run["best_eval_perplexity"] == best["perplexity"] and run["best_eval_step"] == best["step"]
        assert 0 < run["hoyer_init"] < 1 and run["hoyer_init"] != evals[-1]["hoyer"]
        grad = run["grad_norm"]
        assert grad["max"] >= grad["median"] > 0 and len(grad["per_logging_step"]) >= 1
        # attention-probability sites are never applied in eval: labelled, not silently dropped
        assert "transformer.h.0.attn.attn_dropout" in run["sites_not_measured"]
    rows = {r["run"]: r for r in summary["summary"]}
    assert set(rows) == {"sparseout", "p=0"}
    assert {"best_eval_perplexity", "hoyer_init", "grad_norm_median"} <= set(rows["p=0"])
    report = (out / "report.md").read_text()
    assert "not measured" in report and "hoyer_init" in report


@pytest.mark.slow  # trains three runs end to end
def test_both_baselines_penalty_and_mlp_units(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    _run(
        out,
        "--dataset",
        str(data),
        *FAST,
        "--max-steps",
        "4",
        "--eval-steps",
        "2",
        "--p",
        "0.3",
        "--q",
        "1.0",
        "--insert",
        "mlp",
        "--attention",
        "keep",
        "--baseline",
        "both",
        "--lq-penalty",
        "0.5",
        "--lq-q",
        "1",
    )
    runs = json.loads((out / "metrics.json").read_text())["runs"]
    assert list(runs) == ["sparseout", "dropout", "p=0"]  # named for what they are (issue 25)
    assert (out / "baseline" / "model.safetensors").is_file() and (out / "p0" / "model.safetensors").is_file()
    report = (out / "report.md").read_text()
    assert "| dropout | 0.3 | 2 |" in report and "| p=0 | 0 | – |" in report  # q means nothing at p = 0
    # the p=0 control is a true no-noise run: attention probabilities at p = 0 too, whatever --attention says
    attention = [s for s in runs["p=0"]["sites"] if s["kind"] == "attention"]
    assert attention and all(s["sparseout"] and s["new_p"] == 0.0 for s in attention)
    assert not any(s["sparseout"] for s in runs["dropout"]["sites"] if s["kind"] == "attention")
    for name, run in runs.items():
        inserted = [s["name"] for s in run["sites"] if s["kind"] == "inserted"]
        assert inserted == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"], name
        assert "transformer.h.0.mlp.act.sparseout" in run["sparsity"]["sites"]  # measured at its module
    assert {s["new_p"] for s in runs["p=0"]["sites"] if s["sparseout"]} == {0.0}
    assert {s["new_p"] for s in runs["dropout"]["sites"] if s["sparseout"]} == {0.3}
    # the penalty is on the main run only: logged there, absent from the controls
    assert all(e["lq_penalty"] > 0 for e in runs["sparseout"]["evals"])
    assert all("lq_penalty" not in e for run in ("dropout", "p=0") for e in runs[run]["evals"])


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--lq-q", "1"], "--lq-q is only used with --lq-penalty"),
        (["--lq-penalty", "-1"], "--lq-penalty must be"),
        (["--lq-penalty", "0.1", "--lq-q", "0"], "--lq-q must be"),
        (["--baseline", "bogus"], "bogus"),
        (["--baseline", "none", "--no-baseline"], "--no-baseline"),
    ],
)
def test_bad_control_options(tmp_path, args, expect):
    result = invoke("--output-dir", str(tmp_path / "out"), *FAST, *args)
    assert result.exit_code == 2, result.output
    assert expect in result.output
    assert not (tmp_path / "out").exists()


def test_bare_baseline_flags_keep_working():
    from hf_sparseout_cli.finetune_cmd import normalise_argv

    assert normalise_argv(["--baseline"]) == ["--baseline=dropout"]
    assert normalise_argv(["--baseline", "--q", "2"]) == ["--baseline=dropout", "--q", "2"]
    assert normalise_argv(["--baseline", "none", "--q", "2"]) == ["--baseline", "none", "--q", "2"]
    assert normalise_argv(["--no-baseline"]) == ["--no-baseline"]


def test_noise_reaches_the_patch_config():
    from hf_sparseout.training.args import FinetuneArgs
    from hf_sparseout.training.loop import sparseout_config

    assert sparseout_config(FinetuneArgs(noise="matched", p=0.1), 1.5).noise == "matched"
    assert sparseout_config(FinetuneArgs(p=0.1), 1.5).noise == "raw"  # the paper's noise stays the default
    assert sparseout_config(FinetuneArgs(p=0.1), 1.5).attention == "keep"
    assert sparseout_config(FinetuneArgs(p=0.1, attention="sparseout"), 1.5).attention == "sparseout"
    assert sparseout_config(FinetuneArgs(p=0.1), 1.5, p=0.0).p == 0.0
