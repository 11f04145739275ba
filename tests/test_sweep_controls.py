"""The sweep's controls in one grid: p = 0 once per seed (and penalty), dropout per p; a true no-noise p = 0."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hf_sparseout.errors import UsageError
from hf_sparseout.sweep.grid import BASELINE_Q, GridPoint, grid, point_args
from hf_sparseout.sweep.report import aggregate, write_markdown
from hf_sparseout.training.args import FinetuneArgs
from hf_sparseout.training.loop import sparseout_config


def test_p0_is_trained_once_per_seed_whatever_the_q_and_noise_axes():
    points = grid(FinetuneArgs(), [1.5, 2.0], [0.0, 0.1], [0, 1], noises=["raw", "matched"])
    p0 = [pt for pt in points if pt.p == 0]
    assert [(pt.q, pt.noise, pt.seed) for pt in p0] == [(BASELINE_Q, None, 0), (BASELINE_Q, None, 1)]
    assert len(points) == 2 + 2 * (2 + 1)  # p = 0.1: q = 1.5 in two modes + dropout, per seed
    assert {pt.relative_dir for pt in p0} == {"p0/q2/seed0", "p0/q2/seed1"}  # an old sweep's p = 0 runs resume


def test_p0_runs_keep_the_penalty_axis():
    """The L_q penalty at p = 0 is a real arm: one p = 0 run per weight and seed."""
    points = grid(FinetuneArgs(), [1.0, 3.0], [0.0], [0], lq_penalties=[0.0, 1.0])
    assert [pt.relative_dir for pt in points] == ["p0/lq0/q2/seed0", "p0/lq1/q2/seed0"]


def test_noise_axis_over_p0_only_is_an_error():
    """--p 0 --noise raw,matched would train the same run twice."""
    with pytest.raises(UsageError, match="no effect"):
        grid(FinetuneArgs(), [1.5], [0.0], [0], noises=["raw", "matched"])


def test_p0_and_dropout_points_are_explicit_no_noise_and_raw():
    """Each control's options are explicit: q = 2 and raw noise (what dropout is), attention at 0 for p = 0."""
    args = FinetuneArgs(noise="matched", attention="keep")
    p0 = point_args(args, GridPoint(0.0, BASELINE_Q, 0))
    assert (p0.p, p0.q, p0.noise) == (0.0, BASELINE_Q, "raw")
    assert point_args(args, GridPoint(0.1, BASELINE_Q, 0)).noise == "raw"
    assert point_args(args, GridPoint(0.1, 1.5, 0)).noise == "matched"
    config = sparseout_config(p0, p0.q)
    assert (config.p, config.attention) == (0.0, "sparseout")  # attention probabilities at p = 0 as well


def test_finetune_p0_control_zeroes_attention_too():
    """finetune's p0 control (run with p = 0) is the same no-noise patch as the sweep's p = 0 point."""
    args = FinetuneArgs(p=0.1, attention="keep")
    assert sparseout_config(args, 2.0, p=0.0).attention == "sparseout"
    assert sparseout_config(args, 1.5).attention == "keep"  # the studied runs keep --attention


def test_p0_row_is_no_dropout_baseline_and_says_so(tmp_path):
    records = [
        {"p": p, "q": 2.0, "seed": s, "perplexity": 10.0 + s + p, "hoyer": 0.2, "eval_loss": 2.0}
        for p in (0.0, 0.1)
        for s in (0, 1)
    ]
    rows = {r["p"]: r for r in aggregate(records, "perplexity")}
    assert not rows[0.0]["baseline"] and rows[0.1]["baseline"]
    result = SimpleNamespace(task="causal-lm", metric="perplexity", summary=list(rows.values()), runs=[])
    text = write_markdown(tmp_path / "sweep.md", result, {}).read_text()
    assert "| 0 | – (p=0) | 2 |" in text
    assert "p = 0 (q shown as –): every site at p = 0, attention probabilities included" in text


@pytest.mark.slow  # trains six tiny runs through the CLI
def test_one_command_trains_every_arm_with_one_report(tmp_path):
    import json

    from finetune_helpers import FAST, invoke_cli, write_text_corpus

    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    common = [*FAST, "--max-steps", "2", "--max-eval-samples", "4", "--attention", "keep"]
    result = invoke_cli(
        "sweep", "--p", "0,0.3", "--q", "1.5", "--noise", "raw,matched", "--seeds", "2",
        "--dataset", str(data), *common, "--output-dir", str(out), "--log-level", "info",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    stored = json.loads((out / "sweep.json").read_text())
    assert sorted(r["dir"] for r in stored["runs"]) == sorted(
        f"{d}/seed{s}" for d in ("p0/q2", "p0.3/q2", "p0.3/noise-raw/q1.5", "p0.3/noise-matched/q1.5") for s in (0, 1)
    )
    p0 = json.loads((out / "p0/q2/seed0/metrics.json").read_text())
    assert [r["run"] for r in p0["summary"]] == ["p=0"] and p0["args"]["noise"] == "raw"
    attention = [s for s in p0["runs"]["p=0"]["sites"] if s["kind"] == "attention"]
    assert attention and all(s["sparseout"] and s["new_p"] == 0.0 for s in attention)  # despite --attention keep
    dropout = json.loads((out / "p0.3/q2/seed0/metrics.json").read_text())
    assert [r["run"] for r in dropout["summary"]] == ["dropout"]
    rows = {(r["p"], r.get("noise"), r["q"]): r for r in stored["summary"]}
    matched = {(c["against"], c["metric"]): c for c in rows[0.3, "matched", 1.5]["comparisons"]}
    assert {a for a, _ in matched} == {"dropout", "p=0"}
    assert all(c["test"] == "paired-t" and c["n"] == 2 for c in matched.values())
    assert "[dropout p=0.3 seed0]" in result.output and "[p=0 seed1]" in result.output
    assert "[sparseout]" not in result.output.split("[dropout p=0.3 seed0]")[1].split("\n")[0]
    md = (out / "sweep.md").read_text()
    assert "## Against the controls" in md and "– (p=0)" in md
