"""docs/RESULTS.md against the data kept in docs/results/: the report's numbers are the sweeps' numbers.

Each sweep's ``sweep.json`` summary must be what ``aggregate`` computes from the per-run ``metrics.json``
files kept beside it, and every (p, q) row of the report's main tables must show that summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
