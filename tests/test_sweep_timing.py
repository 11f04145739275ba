"""Time against dropout from steady-state step times, with its spread, or "not comparable"."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import numpy as np
import pytest

from hf_sparseout.sweep.report import aggregate, write_markdown
from hf_sparseout.sweep.timing import MAX_SPREAD, pair_caveats, steady_state
from hf_sparseout.training.timing import run_conditions

HOST = {"host": "a", "device": "cpu", "processes": 1, "threads": 2, "load_start": 1.0, "load_end": 1.1}


def _steps(median, n=20, first=5.0, jitter=0.01):
    """A warm-up step, then steady steps around ``median``."""
    return [first] + [median * (1 + jitter * ((i % 3) - 1)) for i in range(n - 1)]


def _rec(q, seed, steps, throughput=100.0, conditions=HOST, p=0.1):
    return {
        **{"p": p, "q": q, "seed": seed, "perplexity": 10.0, "hoyer": 0.2, "eval_loss": 2.0},
        **{"throughput": throughput, "step_seconds": steps, "conditions": conditions},
    }


def test_steady_state_drops_the_warm_up_and_reports_the_spread():
    steps = [9.0, 1.0, 1.2, 0.8, 1.1, 1.0, 0.9, 1.05, 1.3, 1.0, 0.95]
    got = steady_state(steps)
    kept = np.array(steps[1:])  # the first 10 % (at least one step) is warm-up
    q1, q3 = np.percentile(kept, [25, 75])
    assert got["steps"] == len(kept)
    assert got["median"] == pytest.approx(float(np.median(kept)))
    assert got["spread"] == pytest.approx((q3 - q1) / np.median(kept))
    assert steady_state([]) is None


def test_time_vs_dropout_is_the_ratio_of_steady_medians_not_throughput():
    """A slow first step (compilation, caches) or throughput would skew it; the steady medians do not."""
    records = [_rec(2.0, s, _steps(0.10, first=9.0), throughput=1000.0) for s in (0, 1)]
    records += [_rec(1.5, 0, _steps(0.12), throughput=1.0), _rec(1.5, 1, _steps(0.13), throughput=1.0)]
    rows = {r["q"]: r for r in aggregate(records, "perplexity")}
    ratios = [steady_state(_steps(m))["median"] / steady_state(_steps(0.10, first=9.0))["median"] for m in (0.12, 0.13)]
    assert rows[1.5]["time_vs_dropout_mean"] == pytest.approx(statistics.fmean(ratios))
    assert rows[1.5]["time_vs_dropout_std"] == pytest.approx(statistics.stdev(ratios))
    assert rows[1.5]["time_vs_dropout_basis"] == "steady-state step time"
    assert rows[1.5]["time_vs_dropout_caveats"] == []


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        ({**HOST, "host": "b"}, "host"),
        ({**HOST, "threads": 16}, "threads"),
        ({**HOST, "load_start": 3.5, "load_end": 3.4}, "load"),
    ],
)
def test_pairs_under_other_conditions_are_not_comparable(other, reason):
    records = [_rec(2.0, 0, _steps(0.10)), _rec(1.5, 0, _steps(0.05), conditions=other)]
    row = next(r for r in aggregate(records, "perplexity") if r["q"] == 1.5)
    assert row["time_vs_dropout_mean"] is None
    assert any(reason in c for c in row["time_vs_dropout_caveats"])
    assert pair_caveats(records[1], records[0])


def test_unsteady_step_times_are_not_comparable():
    """One run slowed by another job part of the time: its step times spread, the ratio is dropped."""
    noisy = [0.1] * 10 + [0.3] * 10
    assert steady_state(noisy)["spread"] > MAX_SPREAD
    records = [_rec(2.0, 0, noisy), _rec(1.5, 0, _steps(0.1))]
    row = next(r for r in aggregate(records, "perplexity") if r["q"] == 1.5)
    assert row["time_vs_dropout_mean"] is None and any("unsteady" in c for c in row["time_vs_dropout_caveats"])
    dropout = next(r for r in aggregate(records, "perplexity") if r["q"] == 2.0)
    assert dropout["time_vs_dropout_mean"] == 1.0 and dropout["time_vs_dropout_caveats"] == []  # itself


def test_runs_without_step_times_keep_the_throughput_ratio_marked():
    records = [_rec(2.0, 0, None, throughput=100.0, conditions=None)]
    records += [_rec(1.5, 0, None, throughput=80.0, conditions=None)]
    row = next(r for r in aggregate(records, "perplexity") if r["q"] == 1.5)
    assert row["time_vs_dropout_mean"] == pytest.approx(1.25) and row["time_vs_dropout_basis"] == "throughput"


def test_sweep_md_says_not_comparable_and_why(tmp_path):
    records = [_rec(2.0, 0, _steps(0.10)), _rec(1.5, 0, _steps(0.05), conditions={**HOST, "host": "b"})]
    result = SimpleNamespace(task="causal-lm", metric="perplexity", summary=aggregate(records, "perplexity"), runs=[])
    text = write_markdown(tmp_path / "sweep.md", result, {}).read_text()
    line = next(x for x in text.splitlines() if x.startswith("| 0.1 | 1.5 |"))
    assert line.rstrip(" |").endswith("not comparable")
    assert "host" in text.split("## ")[0]  # the caveat, under the table


def test_run_conditions_name_the_machine():
    got = run_conditions(processes=2)
    assert got["processes"] == 2 and got["threads"] >= 1 and got["host"] and got["device"]
