"""Print the tables of docs/RESULTS.md's v2 grid from the kept sweep summaries.

    python -m bench.results_tables [docs/results/v2]

Each arm of the grid is one ``hf-sparseout sweep`` output directory (its ``sweep.json`` and every run's
``metrics.json`` copied under ``docs/results/v2/<arm>/``). The rows printed here are the ones
``tests/test_results_report.py`` looks for in ``docs/RESULTS.md``, which formats them independently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ARMS = {  # directory -> label, in the report's order
    "p0": "p = 0 (control)",
    "dropout": "dropout",
    "raw": "raw Sparseout",
    "matched": "matched Sparseout",
    "lq_1": "L_q penalty w = 1",
    "lq_10": "L_q penalty w = 10",
}


def _ms(row: dict, key: str, digits: int, signed: bool = False) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None:
        return ""
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def rows(root: Path) -> dict[str, list[dict]]:
    """Arm -> its summary rows (``sweep.json``), for the arms present under ``root``."""
    present = [arm for arm in ARMS if (root / arm).is_dir()]
    return {arm: json.loads((root / arm / "sweep.json").read_text())["summary"] for arm in present}


def quality_line(arm: str, row: dict) -> str:
    """``| arm | p | q | best perplexity | best step | gap | final perplexity | grad norm |``."""
    cells = [ARMS[arm], f"{row['p']:g}", f"{row['q']:g}", _ms(row, "best_eval_perplexity", 1)]
    cells += [_ms(row, "best_step", 0), _ms(row, "gap_at_best", 2), _ms(row, "perplexity", 1)]
    cells += [_ms(row, "grad_norm_median", 2)]
    return "| " + " | ".join(cells) + " |"


def sparsity_line(arm: str, row: dict) -> str:
    """``| arm | p | q | Hoyer at best | Hoyer | change from init | mean abs | rel. near-zero | at 1% | at 5% |``."""
    cells = [ARMS[arm], f"{row['p']:g}", f"{row['q']:g}", _ms(row, "hoyer_at_best", 4), _ms(row, "hoyer", 4)]
    cells += [_ms(row, "hoyer_change", 4, True), _ms(row, "mean_abs", 3), _ms(row, "relative_near_zero_fraction", 4)]
    cells += [_ms(row, "sparsity_at_1pct", 3)]
    cells += [_ms(row, "sparsity_at_5pct", 3)]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else "docs/results/v2")
    arms = rows(root)
    print("| arm | p | q | best perplexity | best step | gap (nats) | final perplexity | grad norm |")
    print("|---|---|---|---|---|---|---|---|")
    for arm, summary in arms.items():
        for row in summary:
            print(quality_line(arm, row))
    print()
    print("| arm | p | q | Hoyer at best step | final Hoyer | final − init | mean abs(x) | rel. near-zero | ", end="")
    print("sparsity at +1 % | sparsity at +5 % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arm, summary in arms.items():
        for row in summary:
            print(sparsity_line(arm, row))


if __name__ == "__main__":
    main(sys.argv[1:])
