"""docs/RESULTS.md against the data kept in docs/results/: the report's numbers are the sweeps' numbers.

Each sweep's ``sweep.json`` summary must be what ``aggregate`` computes from the per-run ``metrics.json``
files kept beside it, and every (p, q) row of the report's main tables must show that summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.results_tables import ARMS
from hf_sparseout.sweep.grid import GridPoint
from hf_sparseout.sweep.report import aggregate
from hf_sparseout.sweep.run import read_record

DOCS = Path(__file__).resolve().parents[1] / "docs"
SWEEPS = {"ptb": ("perplexity", 1), "sst2": ("accuracy", 3)}


def _sweep(name: str) -> dict:
    return json.loads((DOCS / "results" / name / "sweep.json").read_text())


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_kept_runs_reproduce_the_summary(name):
    data = _sweep(name)
    metric, _ = SWEEPS[name]
    root = DOCS / "results" / name
    records = [read_record(root, GridPoint(r["p"], r["q"], r["seed"]), r["status"])[1] for r in data["runs"]]
    assert len(records) == 30  # 5 q x 2 p x 3 seeds
    again = aggregate(records, metric)
    assert len(again) == len(data["summary"]) == 10
    for mine, kept in zip(again, data["summary"], strict=True):
        assert (mine["p"], mine["q"], mine["n"]) == (kept["p"], kept["q"], 3)
        for key in (f"{metric}_mean", f"{metric}_std", "hoyer_mean", "hoyer_std", "time_vs_dropout_mean"):
            assert mine[key] == pytest.approx(kept[key], rel=1e-9), key


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_report_tables_show_the_summary(name):
    text = (DOCS / "RESULTS.md").read_text()
    metric, digits = SWEEPS[name]
    for row in _sweep(name)["summary"]:
        m = f"{row[f'{metric}_mean']:.{digits}f} ± {row[f'{metric}_std']:.{digits}f}"
        h = f"{row['hoyer_mean']:.4f} ± {row['hoyer_std']:.4f}"
        q = f"{row['q']:g}" + (" (dropout)" if row["baseline"] else "")
        if row["baseline"]:  # the dropout row is bold
            q, m, h = (f"**{c}**" for c in (q, m, h))
        cells = [f"{row['p']:g}", q, m, h]
        assert "| " + " | ".join(cells) + " |" in text, (name, row["p"], row["q"])


# ---- v2: the regime where regularisation matters (issue 14), one sweep directory per arm ----

V2 = DOCS / "results" / "v2"
V2_ARMS = ARMS  # directory -> the label in the report's first column (the cells are formatted here, independently)
V2_RUNS = {"p0": 3, "dropout": 6, "raw": 9, "matched": 9, "lq_1": 3, "lq_10": 3}


def _v2(arm: str) -> dict:
    return json.loads((V2 / arm / "sweep.json").read_text())


def _cell(row: dict, key: str, digits: int, signed: bool = False) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    text = (f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}") + f" ± {std:.{digits}f}"
    return text


@pytest.mark.parametrize("arm", sorted(V2_ARMS))
def test_v2_kept_runs_reproduce_the_summary(arm):
    data = _v2(arm)
    records = [read_record(V2 / arm, GridPoint(r["p"], r["q"], r["seed"]), r["status"])[1] for r in data["runs"]]
    assert len(records) == V2_RUNS[arm]
    assert {r["dir"] for r in records} == {r["dir"] for r in data["runs"]}
    again = aggregate(records, "perplexity")
    assert len(again) == len(data["summary"])
    keys = ("best_eval_perplexity", "best_step", "gap_at_best", "perplexity", "grad_norm_median", "hoyer")
    keys += ("hoyer_at_best", "hoyer_change", "mean_abs", "relative_near_zero_fraction")
    keys += ("sparsity_at_1pct", "sparsity_at_5pct")
    for mine, kept in zip(again, data["summary"], strict=True):
        assert (mine["p"], mine["q"], mine["n"]) == (kept["p"], kept["q"], 3)
        for key in keys:
            for stat in ("mean", "std"):
                assert mine[f"{key}_{stat}"] == pytest.approx(kept[f"{key}_{stat}"], rel=1e-9), key


@pytest.mark.parametrize("arm", sorted(V2_ARMS))
def test_v2_report_tables_show_the_summary(arm):
    text = (DOCS / "RESULTS.md").read_text()
    for row in _v2(arm)["summary"]:
        lead = [V2_ARMS[arm], f"{row['p']:g}", f"{row['q']:g}"]
        quality = [_cell(row, "best_eval_perplexity", 1), _cell(row, "best_step", 0), _cell(row, "gap_at_best", 2)]
        quality += [_cell(row, "perplexity", 1), _cell(row, "grad_norm_median", 2)]
        sparsity = [_cell(row, "hoyer_at_best", 4), _cell(row, "hoyer", 4), _cell(row, "hoyer_change", 4, signed=True)]
        sparsity += [_cell(row, "mean_abs", 3), _cell(row, "relative_near_zero_fraction", 4)]
        sparsity += [_cell(row, "sparsity_at_1pct", 3)]
        sparsity += [_cell(row, "sparsity_at_5pct", 3)]
        for cells in (quality, sparsity):
            assert "| " + " | ".join(lead + cells) + " |" in text, (arm, row["p"], row["q"], cells)


def test_v2_attention_default_figures_are_the_kept_runs():
    """The README/RESULTS evidence for ``--attention keep``: seed-0 runs with and without Sparseout there."""
    text = (DOCS / "RESULTS.md").read_text()
    for q in ("1", "1.5"):
        runs = {}
        for mode, arm in (("sparseout", "attention"), ("keep", "raw")):
            data = json.loads((V2 / arm / f"p0.1/q{q}/seed0/metrics.json").read_text())
            assert data["args"]["attention"] == mode and data["args"]["seed"] == 0
            runs[mode] = data["summary"][0]
        quoted = [f"{runs[m]['best_eval_perplexity']:.1f}" for m in ("sparseout", "keep")]
        assert f"{quoted[0]} against {quoted[1]}" in text, (q, quoted)
    grad = [f"{g:.2f}" for g in _q1_grad_norms()]
    assert f"(gradient norm {grad[0]} against {grad[1]})" in text


def _q1_grad_norms() -> list[float]:
    return [
        json.loads((V2 / arm / "p0.1/q1/seed0/metrics.json").read_text())["summary"][0]["grad_norm_median"]
        for arm in ("attention", "raw")
    ]


def test_v2_minilm_defaults_table_shows_the_kept_sweeps():
    """The attention/noise table behind finetune's defaults: each row is a kept sweep's summary."""
    text = (DOCS / "RESULTS.md").read_text()
    for mode in ("keep", "sparseout"):
        data = json.loads((V2 / f"minilm_{mode}" / "sweep.json").read_text())
        assert data["options"]["attention"] == mode and data["grid"]["noise"] == ["raw", "matched"]
        for row in data["summary"]:
            assert row["n"] == 3
            acc = f"{row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f}"
            grad = f"{row['grad_norm_median_mean']:.2f} ± {row['grad_norm_median_std']:.2f}"
            assert f"| {mode} | {row['noise']} | {acc} | {grad} |" in text, (mode, row["noise"])


def test_v2_paired_verdicts_are_scipy_on_the_kept_runs():
    """bench.results_stats: each arm against dropout p = 0.1 and p = 0, seed by seed, from the kept metrics."""
    from scipy import stats as sps

    from bench.results_stats import comparisons, table

    rows = comparisons(V2)
    by = {(r["arm"], r["p"], r["q"], r["against"], r["metric"]): r for r in rows}
    control = {r["seed"]: r for r in _v2("p0")["runs"]}
    dropout = {r["seed"]: r for r in _v2("dropout")["runs"] if r["p"] == 0.1}
    assert set(control) == set(dropout) == {0, 1, 2}
    first = {
        (arm, seed): json.loads((V2 / arm / run["dir"] / "metrics.json").read_text())["summary"][0]
        for arm, runs in (("dropout", dropout), ("p0", control))
        for seed, run in runs.items()
    }
    a = [first["dropout", s]["best_eval_perplexity"] for s in range(3)]
    b = [first["p0", s]["best_eval_perplexity"] for s in range(3)]
    got = by["dropout", 0.1, 2.0, "p = 0", "best_eval_perplexity"]
    ref = sps.ttest_rel(a, b)
    assert got["test"] == "paired-t" and got["n"] == 3
    assert got["statistic"] == pytest.approx(ref.statistic) and got["p_value"] == pytest.approx(ref.pvalue)
    assert got["verdict"] == (
        "not distinguishable" if ref.pvalue >= 0.05 else "worse" if ref.statistic > 0 else "better"
    )
    # every arm cell against both controls (the controls not against themselves), three metrics each
    assert ("p0", 0.0, 2.0, "p = 0", "hoyer") not in by and ("dropout", 0.1, 2.0, "dropout p = 0.1", "hoyer") not in by
    assert ("p0", 0.0, 2.0, "dropout p = 0.1", "hoyer") not in by  # the control is the reference, not a cell
    assert ("raw", 0.1, 1.0, "dropout p = 0.1", "sparsity_at_1pct") in by
    lines = table(rows)
    assert len(lines) == 2 + len(rows)
