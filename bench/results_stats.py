"""Paired verdicts for docs/RESULTS.md's v2 grid: every arm against dropout p = 0.1 and the p = 0 control.

    python -m bench.results_stats [docs/results/v2]

Reads every kept run's ``metrics.json`` (``sweep.run.read_record``) under ``docs/results/v2/<arm>/`` and
compares each cell, seed by seed, with the two controls on best-eval perplexity, final Hoyer and deployable
sparsity at +1 % (``hf_sparseout.sweep.stats.compare``: the statistics ``hf-sparseout sweep`` writes).
Prints one markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.results_tables import ARMS
from hf_sparseout.sweep.grid import GridPoint
from hf_sparseout.sweep.report import STAT_HEADERS, stat_cells
from hf_sparseout.sweep.run import read_record
from hf_sparseout.sweep.stats import compare

CONTROLS = {"dropout p = 0.1": ("dropout", 0.1, 2.0), "p = 0": ("p0", 0.0, 2.0)}  # name -> (arm, p, q)
METRICS = {
    "best_eval_perplexity": "best-eval perplexity",
    "hoyer": "final Hoyer",
    "sparsity_at_1pct": "sparsity at +1 %",
}


def cells(root: Path) -> dict[tuple[str, float, float], dict[int, dict[str, Any]]]:
    """(arm, p, q) -> {seed: record} for every kept run of the arms present under ``root``."""
    out: dict[tuple[str, float, float], dict[int, dict[str, Any]]] = {}
    for arm in (a for a in ARMS if (root / a).is_dir()):
        for run in json.loads((root / arm / "sweep.json").read_text())["runs"]:
            _, record = read_record(root / arm, GridPoint(run["p"], run["q"], run["seed"]), run["status"])
            out.setdefault((arm, run["p"], run["q"]), {})[run["seed"]] = record
    return out


def comparisons(root: Path) -> list[dict[str, Any]]:
    """One row per (cell, control, metric): ``{arm, p, q, against, metric, **compare(...)}``, in ARMS order."""
    found = cells(root)
    rows = []
    for (arm, p, q), runs in found.items():
        for name, control in CONTROLS.items():
            reference = (arm, p, q) in CONTROLS.values()  # a control is compared with p = 0 only
            if control not in found or control == (arm, p, q) or (reference and control[0] != "p0"):
                continue
            for key in METRICS:
                mine = {s: r[key] for s, r in runs.items() if r.get(key) is not None}
                theirs = {s: r[key] for s, r in found[control].items() if r.get(key) is not None}
                if mine and theirs:
                    rows.append(
                        {"arm": arm, "p": p, "q": q, "against": name, "metric": key, **compare(mine, theirs, key)}
                    )
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table: arm, p, q, against, metric, n, then the statistics and the verdict."""
    lines = ["| arm | p | q | against | metric | n | " + " | ".join(STAT_HEADERS) + " |"]
    lines.append("|---" * (6 + len(STAT_HEADERS)) + "|")
    for r in rows:
        cells = [
            ARMS[r["arm"]],
            f"{r['p']:g}",
            "–" if r["p"] == 0 else f"{r['q']:g}",
            r["against"],
            METRICS[r["metric"]],
        ]
        cells += [str(r["n"]), *stat_cells(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else "docs/results/v2")
    print("\n".join(table(comparisons(root))))


if __name__ == "__main__":
    main(sys.argv[1:])
