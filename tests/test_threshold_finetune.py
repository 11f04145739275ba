"""`finetune --sparsity-curve` and `sweep --sparsity-curve`: the curve at the final eval, files, bad input."""

from __future__ import annotations

import json

import pytest
from finetune_helpers import FAST, invoke, write_text_corpus

from hf_sparseout.metrics.threshold import Calibration
from hf_sparseout.sweep.report import aggregate

CURVE = ["--sparsity-curve", "--sparsity-targets", "0.3,0.6"]
TINY = [*FAST, "--max-steps", "3", "--max-eval-samples", "8"]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow  # trains three runs end to end
def test_curve_for_every_run_in_metrics_report_plot_and_thresholds(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    result = invoke("--dataset", str(data), *TINY, "--baseline", "both", *CURVE, "--output-dir", str(out))
    assert result.exit_code == 0, result.output[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    runs = (("sparseout", out), ("dropout", out / "baseline"), ("p=0", out / "p0"))
    # each run's thresholds beside its own model (the p = 0 control's once went to baseline/ or nowhere)
    saved_files = [(directory / "thresholds.json").read_text() for _, directory in runs]
    assert len(set(saved_files)) == 3
    assert all((directory / "model.safetensors").is_file() for _, directory in runs)
    for name, directory in runs:
        run = metrics["runs"][name]
        curve, final = run["sparsity_curve"], run["evals"][-1]
        assert [p["target"] for p in curve["points"]] == [0.0, 0.3, 0.6]
        # the final eval is the unthresholded reference; the other targets are fresh eval passes
        # the unthresholded reference is measured on the curve's own (capped) eval set
        assert curve["reference"] == curve["points"][0]["metrics"]["perplexity"]
        assert curve["points"][0]["measured_on"] == "evaluation"
        assert curve["eval"]["samples"] == 8 and curve["eval"]["tokens"] == 8 * 16
        assert curve["calibration"]["samples"] > 0 and curve["calibration"]["tokens"] > 0
        assert final["metric_at_sparsity"] == curve["metric_at_sparsity"]
        reached = [p["sparsity"] for p in curve["points"]]
        assert reached[0] < 0.01 < reached[1] < reached[2] < 0.9
        assert final["sparsity_at_1pct"] == curve["sparsity_at_1pct"] is not None
        assert final["sparsity_at_5pct"] == curve["sparsity_at_5pct"] >= curve["sparsity_at_1pct"]
        row = next(r for r in metrics["summary"] if r["run"] == name)
        assert row["sparsity_at_1pct"] == curve["sparsity_at_1pct"]
        saved = Calibration.load(directory / "thresholds.json")
        assert saved.targets == [0.0, 0.3, 0.6]
        roles = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # teal: every matrix of the blocks
        assert set(saved.sites) == {f"transformer.h.{i}.{s}" for i in range(2) for s in roles}
        assert list(saved.sites) == curve["sites"]
        assert saved.meta["calibration"] == curve["calibration"]
    report = _flat((out / "report.md").read_text())
    assert "## Deployable sparsity" in report and "![sparsity curve](sparsity_curve.png)" in report
    ev, cal = (
        metrics["runs"]["sparseout"]["sparsity_curve"]["eval"],
        metrics["runs"]["sparseout"]["sparsity_curve"]["calibration"],
    )
    assert f"the first {ev['samples']} of the {ev['of']} eval blocks ({ev['tokens']} tokens" in report
    assert f"calibrated on {cal['samples']} training blocks ({cal['tokens']} tokens)" in report
    assert "perplexity at 0.25" in report
    assert (out / "sparsity_curve.png").read_bytes()[:4] == b"\x89PNG"


def _fails(tmp_path, *args: str, expect: str) -> None:
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), *args)
    assert result.exit_code == 2, result.output
    assert expect in _flat(result.output), result.output
    assert not (out / "metrics.json").exists(), "nothing may be written on bad input"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--sparsity-curve", "--sparsity-targets", "0.2,1.0"], "target sparsities must be in [0, 1)"),
        (["--sparsity-curve", "--sparsity-targets", "0.2,half"], "must be comma-separated numbers"),
        (["--sparsity-targets", "0.5"], "only used with --sparsity-curve"),
        (["--sparsity-curve", "--sparsity-sites", "mlp.nothing"], "match no module"),
        (["--sparsity-curve", "--sparsity-eval-samples", "0"], "--sparsity-eval-samples must be >= 1"),
        (["--sparsity-eval-samples", "8"], "only used with --sparsity-curve"),
    ],
)
def test_bad_curve_options_exit_2(tmp_path, args, expect):
    data = write_text_corpus(tmp_path / "txt")
    _fails(tmp_path, "--dataset", str(data), *TINY, *args, expect=expect)


def test_sites_eval_never_reaches_are_refused_before_training(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    site = "transformer.h.0.attn.attn_dropout"
    result = invoke(
        "--dataset", str(data), *TINY, "--sparsity-curve", "--sparsity-sites", site, "--output-dir", str(out)
    )
    assert result.exit_code == 2, result.output[-3000:]
    text = _flat(result.output)
    assert site in text and "eval" in text and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir()), "nothing trained, saved or checkpointed"


def test_check_sites_passes_reached_sites_and_names_the_others():
    import torch
    from curve_helpers import tiny_gpt2

    import hf_sparseout
    from hf_sparseout.training.args import FinetuneArgs, UsageError
    from hf_sparseout.training.threshold_curve import check_sites

    model = tiny_gpt2()
    hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(p=0.1, q=1.5, attention="sparseout"))
    example = {"input_ids": torch.randint(1, 100, (1, 8))}
    sites = ["transformer.h.0.mlp.c_fc", ".*attn\\.attn_dropout"]
    with pytest.raises(UsageError, match="never reached in eval mode") as info:
        check_sites(model, FinetuneArgs(sparsity_curve=True, sparsity_sites=sites), example)
    assert "transformer.h.1.attn.attn_dropout" in str(info.value) and "c_fc" not in str(info.value)
    assert "attention" in info.value.hint
    assert model.training  # the check leaves the model as it found it
    for ok in (["transformer.h.0.mlp.c_fc"], ["sparseout"], None):  # sparseout: unreached ones are skipped
        check_sites(model, FinetuneArgs(sparsity_curve=True, sparsity_sites=ok), example)


def test_sweep_aggregates_the_headline_over_seeds():
    records = [
        {"p": None, "q": 1.5, "seed": 0, "perplexity": 10.0, "sparsity_at_1pct": 0.30, "sparsity_at_5pct": 0.5},
        {"p": None, "q": 1.5, "seed": 1, "perplexity": 11.0, "sparsity_at_1pct": 0.40, "sparsity_at_5pct": None},
        {"p": None, "q": 2.0, "seed": 0, "perplexity": 9.0},
    ]
    rows = {r["q"]: r for r in aggregate(records, "perplexity")}
    assert rows[1.5]["sparsity_at_1pct_mean"] == pytest.approx(0.35)
    assert rows[1.5]["sparsity_at_1pct_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert rows[1.5]["sparsity_at_5pct_mean"] == 0.5 and rows[1.5]["sparsity_at_5pct_std"] is None
    assert rows[2.0]["sparsity_at_1pct_mean"] is None


@pytest.mark.slow  # a sweep of two training runs
def test_sweep_passes_the_curve_to_every_run_and_reports_mean_std(tmp_path):
    from accelerate.state import AcceleratorState
    from typer.testing import CliRunner

    from hf_sparseout_cli.main import app

    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "sweep"
    args = ["sweep", "--q", "1.5", "--seeds", "2", "--no-baseline", "--dataset", str(data), *TINY, *CURVE]
    try:
        result = CliRunner().invoke(app, [*args, "--output-dir", str(out)])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert result.exit_code == 0, result.output[-3000:]
    values = []
    for seed_dir in sorted((out / "q1.5").iterdir()):
        (row,) = json.loads((seed_dir / "metrics.json").read_text())["summary"]
        assert (seed_dir / "thresholds.json").is_file()
        values.append(row["sparsity_at_1pct"])
    assert len(values) == 2 and all(v is not None for v in values)
    (summary,) = json.loads((out / "sweep.json").read_text())["summary"]
    assert summary["sparsity_at_1pct_mean"] == pytest.approx(sum(values) / 2)
    assert "## Deployable sparsity" in (out / "sweep.md").read_text()


@pytest.mark.slow  # launches 1 and 2 processes
def test_two_processes_give_the_one_process_curve(tmp_path):
    """Under `accelerate launch` (2 CPU processes, gloo) every curve point equals the 1-process run's.

    The curve's 7 eval blocks (of 9) in batches of 2: the last batch is uneven, so accelerate's duplicated
    samples must be left out of the reached-sparsity counts as they are of the perplexity.
    """
    from finetune_helpers import LAUNCH, SINGLE
    from finetune_helpers import run_metrics as _run

    data = write_text_corpus(tmp_path / "txt")
    common = ["--dataset", str(data), *FAST, "--max-eval-samples", "9", "--batch-size", "2", "--max-steps", "0"]
    common += ["--sparsity-eval-samples", "7"]  # the curve's own set: the first 7 of the 9 eval blocks
    one = _run(SINGLE, tmp_path / "one", *common, *CURVE)
    two = _run(LAUNCH, tmp_path / "two", *common, *CURVE)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    c1, c2 = one["runs"]["sparseout"]["sparsity_curve"], two["runs"]["sparseout"]["sparsity_curve"]
    assert len(c1["points"]) == len(c2["points"]) == 3
    assert c1["eval"]["samples"] == c2["eval"]["samples"] == 7
    for p1, p2 in zip(c1["points"], c2["points"], strict=True):
        assert p1["metrics"]["perplexity"] == pytest.approx(p2["metrics"]["perplexity"], rel=1e-6)
        assert p1["sparsity"] == pytest.approx(p2["sparsity"], rel=1e-6, abs=1e-9)
        assert p1["sites"] == pytest.approx(p2["sites"], rel=1e-6, abs=1e-9)
    t1 = Calibration.load(tmp_path / "one" / "thresholds.json")
    t2 = Calibration.load(tmp_path / "two" / "thresholds.json")
    assert t1.at(0.6) == pytest.approx(t2.at(0.6), rel=1e-6)
