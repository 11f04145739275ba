"""`hf-sparseout sweep`'s noise and L_q-penalty axes: the grid, each run's options, the summary, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_helpers import FAST, invoke_cli, write_text_corpus

from hf_sparseout.errors import UsageError
from hf_sparseout.sweep.grid import BASELINE_Q, GridPoint, grid, point_args
from hf_sparseout.sweep.report import aggregate, lead_cells, lead_columns, series
from hf_sparseout.training.args import FinetuneArgs

TINY = [*FAST, "--max-steps", "2", "--max-eval-samples", "4"]


def test_noise_axis_trains_q2_once_per_p_and_seed():
    """Matched noise is raw noise at q = 2 (it is dropout), so the baseline is not repeated per mode."""
    points = grid(FinetuneArgs(), [1.0, 3.0], [0.1], [0, 1], noises=["raw", "matched"])
    assert len(points) == 2 * (2 * 2 + 1)  # per seed: 2 q x 2 modes + one q = 2
    baselines = [pt for pt in points if pt.baseline]
    assert [(pt.seed, pt.noise) for pt in baselines] == [(0, None), (1, None)]
    assert {pt.noise for pt in points if not pt.baseline} == {"raw", "matched"}
    assert GridPoint(0.1, 1.0, 0, "matched").relative_dir == "p0.1/noise-matched/q1/seed0"
    assert baselines[0].relative_dir == "p0.1/q2/seed0"
    assert point_args(FinetuneArgs(), GridPoint(0.1, 1.0, 0, "matched")).noise == "matched"
    # the dropout run says what it is: raw noise (matched is raw at q = 2), whatever the shared option
    assert point_args(FinetuneArgs(noise="matched"), baselines[0]).noise == "raw"


def test_penalty_axis_sets_weight_and_exponent_per_run():
    args = FinetuneArgs(lq_q=1.5)
    points = grid(args, [2.0], [0.0], [0], lq_penalties=[0.0, 10.0])
    assert [pt.relative_dir for pt in points] == ["p0/lq0/q2/seed0", "p0/lq10/q2/seed0"]
    off, on = (point_args(args, pt) for pt in points)
    assert (off.lq_penalty, off.lq_q) == (None, None)  # 0 on the axis: no penalty, and no exponent
    assert (on.lq_penalty, on.lq_q) == (10.0, 1.5)
    # the q = 2 baseline is trained per weight: the penalty changes training at q = 2 too
    with_baseline = grid(FinetuneArgs(), [1.0], [0.1], [0], lq_penalties=[0.0, 1.0])
    assert [(pt.q, pt.lq_penalty) for pt in with_baseline] == [(1.0, 0.0), (BASELINE_Q, 0.0), (1.0, 1.0), (2.0, 1.0)]


@pytest.mark.parametrize(
    ("kwargs", "expect"),
    [
        ({"noises": ["raw", "raw"]}, "--noise lists raw twice"),
        ({"noises": ["loud"]}, "not a noise mode"),
        ({"lq_penalties": [1.0, 1.0]}, "--lq-penalty lists 1 twice"),
        ({"lq_penalties": [-1.0, 1.0]}, ">= 0"),
        ({"lq_penalties": [float("inf"), 1.0]}, "finite"),
        ({"noises": ["raw", "matched"], "qs": [2.0]}, "no effect at q = 2"),  # an axis that changes nothing
    ],
)
def test_bad_axis_values_are_usage_errors(kwargs, expect):
    qs = kwargs.pop("qs", [1.0])
    with pytest.raises(UsageError, match=expect):
        grid(FinetuneArgs(), qs, [0.1], [0], **kwargs)


def _record(q, seed, throughput, noise=None, lq=None, ppl=10.0):
    return {
        **{"p": 0.1, "q": q, "seed": seed, "noise": noise, "lq_penalty": lq, "perplexity": ppl},
        **{"hoyer": 0.2, "eval_loss": 2.0, "throughput": throughput},
        **{"best_eval_perplexity": ppl - 1, "gap_at_best": 0.5},
    }


def test_aggregate_keeps_cells_apart_and_finds_each_baseline():
    records = [
        _record(2.0, 0, 100.0),
        _record(1.0, 0, 50.0, noise="raw", ppl=20.0),
        _record(1.0, 0, 25.0, noise="matched", ppl=30.0),
    ]
    rows = aggregate(records, "perplexity")
    assert [(r["noise"], r["q"]) for r in rows] == [(None, 2.0), ("matched", 1.0), ("raw", 1.0)]
    by_noise = {r["noise"]: r for r in rows}
    # each mode is timed against the one q = 2 run of its p and seed
    assert by_noise["raw"]["time_vs_dropout_mean"] == pytest.approx(2.0)
    assert by_noise["matched"]["time_vs_dropout_mean"] == pytest.approx(4.0)
    assert by_noise["matched"]["best_eval_perplexity_mean"] == pytest.approx(29.0)
    assert by_noise["raw"]["gap_at_best_mean"] == pytest.approx(0.5)
    # the plots draw the shared q = 2 row on both noise lines
    lines = dict(series(rows))
    assert [r["q"] for r in lines[0.1, "raw", None]] == [1.0, 2.0]
    assert [r["q"] for r in lines[0.1, "matched", None]] == [1.0, 2.0]
    assert (0.1, None, None) not in lines
    assert lead_columns(rows) == ["p", "noise"]
    assert lead_cells(by_noise[None], ["p", "noise"]) == ["0.1", "-"]
    # penalties: each weight has its own baseline
    penalised = aggregate([_record(2.0, 0, 100.0, lq=1.0), _record(2.0, 0, 80.0, lq=0.0)], "perplexity")
    assert [r["lq_penalty"] for r in penalised] == [0.0, 1.0]
    assert all(r["time_vs_dropout_mean"] == pytest.approx(1.0) for r in penalised)


def test_summary_without_axes_keeps_its_columns():
    rows = aggregate([_record(2.0, 0, 100.0)], "perplexity")
    assert "noise" not in rows[0] and "lq_penalty" not in rows[0]
    assert lead_columns(rows) == ["p"]


# ---- the command ----


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("axes-data") / "txt")


def _sweep_json(*args: str) -> dict:
    result = invoke_cli("sweep", "--format", "json", *args)
    assert result.exit_code == 0, result.output[-3000:]
    out = result.stdout
    return json.loads(out[out.index('{\n  "task"') :])


def _run_args(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["args"]


@pytest.mark.slow
def test_cli_noise_and_penalty_axes(tmp_path, data):
    out = tmp_path / "noise"
    printed = _sweep_json(
        "--q", "1", "--p", "0.3", "--noise", "raw,matched", "--seeds", "1",
        "--dataset", str(data), *TINY, "--output-dir", str(out),
    )  # fmt: skip
    assert [r["dir"] for r in printed["runs"]] == [
        "p0.3/noise-raw/q1/seed0",
        "p0.3/q2/seed0",
        "p0.3/noise-matched/q1/seed0",
    ]
    assert _run_args(out / "p0.3/noise-matched/q1/seed0")["noise"] == "matched"
    assert _run_args(out / "p0.3/noise-raw/q1/seed0")["noise"] == "raw"
    raw, matched = (next(r for r in printed["runs"] if r["noise"] == n) for n in ("raw", "matched"))
    assert raw["perplexity"] != matched["perplexity"]  # same seed and data: only the noise differs
    grid_json = json.loads((out / "sweep.json").read_text())["grid"]
    assert grid_json["noise"] == ["raw", "matched"] and grid_json["lq_penalty"] is None
    assert "| p | noise | q |" in (out / "sweep.md").read_text()

    out = tmp_path / "lq"
    printed = _sweep_json(
        "--q", "2", "--p", "0", "--no-baseline", "--lq-penalty", "0,5", "--lq-q", "1", "--seeds", "1",
        "--dataset", str(data), *TINY, "--output-dir", str(out),
    )  # fmt: skip
    assert [r["dir"] for r in printed["runs"]] == ["p0/lq0/q2/seed0", "p0/lq5/q2/seed0"]
    off, on = (_run_args(out / d) for d in ("p0/lq0/q2/seed0", "p0/lq5/q2/seed0"))
    assert (off["lq_penalty"], off["lq_q"], on["lq_penalty"], on["lq_q"]) == (None, None, 5.0, 1.0)
    assert printed["runs"][0]["eval_loss"] != printed["runs"][1]["eval_loss"]


@pytest.mark.slow
def test_cli_single_values_are_shared_options_not_levels(tmp_path, data):
    """One noise mode or one weight behaves as before the axes existed: no directory level."""
    out = tmp_path / "one"
    printed = _sweep_json(
        "--q", "1", "--p", "0.3", "--no-baseline", "--noise", "matched", "--lq-penalty", "2", "--seeds", "1",
        "--dataset", str(data), *TINY, "--output-dir", str(out),
    )  # fmt: skip
    assert [r["dir"] for r in printed["runs"]] == ["p0.3/q1/seed0"]
    run = _run_args(out / "p0.3/q1/seed0")
    assert (run["noise"], run["lq_penalty"], run["lq_q"]) == ("matched", 2.0, 1.0)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--noise", "loud"], "not a noise mode"),
        (["--lq-q", "1"], "--lq-q is only used with --lq-penalty"),
        (["--lq-penalty", "1,x"], "'x' is not a number"),
        (["--lq-penalty", "1,-1"], ">= 0"),
    ],
)
def test_cli_bad_axes_exit_2_and_write_nothing(tmp_path, args, expect):
    out = tmp_path / "bad"
    result = invoke_cli("sweep", "--q", "1", *args, *TINY, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert expect in result.output
    assert not out.exists()
