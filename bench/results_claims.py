"""Paired and Welch tests between the arms of docs/RESULTS.md's v2 grid, from the kept per-run metrics.

    python -m bench.results_claims [docs/results/v2]

Every arm ran seeds 0, 1, 2 with the same data order and initialisation per seed, so arms are compared
per seed (paired t-test on the differences, two-sided) and, for reference, as independent samples
(Welch's t-test). With 3 seeds a paired test has 2 degrees of freedom: read p-values as rough.
Needs scipy (``pip install scipy``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scipy import stats

ARMS = {  # label -> directory of its runs under the v2 root
    "p0": "p0/p0/q2",
    "dropout 0.1": "dropout/p0.1/q2",
    "dropout 0.3": "dropout/p0.3/q2",
    "raw q=1": "raw/p0.1/q1",
    "raw q=1.5": "raw/p0.1/q1.5",
    "raw q=3": "raw/p0.1/q3",
    "matched q=1": "matched/p0.1/q1",
    "matched q=1.5": "matched/p0.1/q1.5",
    "matched q=3": "matched/p0.1/q3",
    "lq w=1": "lq_1/p0/q2",
    "lq w=10": "lq_10/p0/q2",
}
MINILM = {  # label -> directory (accuracy, seeds 0, 1, 42)
    "keep raw": "minilm_keep/noise-raw/q1.5",
    "keep matched": "minilm_keep/noise-matched/q1.5",
    "sparseout raw": "minilm_sparseout/noise-raw/q1.5",
    "sparseout matched": "minilm_sparseout/noise-matched/q1.5",
}


def _run(path: Path) -> dict:
    data = json.loads(path.read_text())
    (run,) = data["runs"].values()
    return run


def measures(run: dict) -> dict[str, float]:
    """The per-run figures the report compares."""
    final = run["evals"][-1]
    overall = run["sparsity"]["overall"]
    sites = run["sparsity"]["sites"]
    curve = run.get("sparsity_curve") or {}
    return {
        "best_ppl": run.get("best_eval_perplexity", float("nan")),
        "best_step": run.get("best_eval_step", float("nan")),
        "final_ppl": final.get("perplexity", float("nan")),
        "accuracy": final.get("accuracy", float("nan")),
        "hoyer": overall["hoyer"],
        "mean_abs": overall["mean_abs"],
        "mean_abs_site_min": min(s["mean_abs"] for s in sites.values()),
        "mean_abs_site_max": max(s["mean_abs"] for s in sites.values()),
        "grad_norm": run["grad_norm"]["median"],
        "sp1": curve.get("sparsity_at_1pct", float("nan")),
    }


def load(root: Path, arms: dict[str, str]) -> dict[str, dict[str, dict[str, float]]]:
    """Arm -> seed directory name -> measures."""
    out = {}
    for label, rel in arms.items():
        seeds = sorted((root / rel).glob("seed*/metrics.json"))
        if seeds:
            out[label] = {p.parent.name: measures(_run(p)) for p in seeds}
    return out


def compare(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], key: str) -> dict[str, object]:
    """``a - b`` on ``key``: per-seed differences, mean, paired and Welch p-values."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s][key] - b[s][key] for s in seeds]
    paired = stats.ttest_rel([a[s][key] for s in seeds], [b[s][key] for s in seeds])
    welch = stats.ttest_ind([v[key] for v in a.values()], [v[key] for v in b.values()], equal_var=False)
    return {
        "seeds": seeds,
        "diffs": diffs,
        "mean": sum(diffs) / len(diffs),
        "paired_t": float(paired.statistic),
        "paired_p": float(paired.pvalue),
        "welch_p": float(welch.pvalue),
    }


def _line(name: str, c: dict[str, object], digits: int) -> str:
    diffs = ", ".join(f"{d:+.{digits}f}" for d in c["diffs"])  # type: ignore[union-attr]
    return (
        f"{name}: per seed {diffs}; mean {c['mean']:+.{digits}f}; paired t = {c['paired_t']:.2f}, "
        f"p = {c['paired_p']:.3f}; Welch p = {c['welch_p']:.3f}"
    )


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else "docs/results/v2")
    grid = load(root, ARMS)
    for key, digits in (("best_ppl", 1), ("final_ppl", 1), ("hoyer", 4), ("sp1", 3), ("grad_norm", 2)):
        print(f"\n## {key}")
        for base in ("p0", "dropout 0.1"):
            for arm in grid:
                if arm != base:
                    print(_line(f"{arm} - {base}", compare(grid[arm], grid[base], key), digits))
    print("\n## per-run figures")
    for arm, seeds in grid.items():
        for seed, m in seeds.items():
            print(arm, seed, {k: round(v, 4) for k, v in m.items() if v == v})
    minilm = load(root, MINILM)
    if minilm:
        print("\n## MiniLM accuracy")
        pairs = (("keep raw", "sparseout raw"), ("keep matched", "sparseout matched"), ("keep matched", "keep raw"))
        for a, b in pairs:
            print(_line(f"{a} - {b}", compare(minilm[a], minilm[b], "accuracy"), 3))


if __name__ == "__main__":
    main(sys.argv[1:])
