"""Paired statistics of a sweep's cells against their controls (dropout at the same p, p = 0), against scipy."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sps

from hf_sparseout.sweep.report import aggregate, write_markdown
from hf_sparseout.sweep.stats import compare, direction_words

RNG = np.random.default_rng(1234)


def _by_seed(values):
    return dict(enumerate(float(v) for v in values))


def test_paired_t_matches_scipy():
    a = RNG.normal(10.0, 1.0, 5)
    b = a - 0.8 + RNG.normal(0.0, 0.3, 5)
    got = compare(_by_seed(a), _by_seed(b), "perplexity")
    ref = sps.ttest_rel(a, b)
    d = a - b
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert got["test"] == "paired-t" and got["n"] == 5 and got["n_against"] == 5
    assert got["mean_diff"] == pytest.approx(d.mean())
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert got["statistic"] == pytest.approx(ref.statistic, rel=1e-9)
    assert got["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], rel=1e-9)


def test_unpaired_seeds_use_welch():
    a = {0: 1.0, 1: 1.4, 2: 0.9}
    b = {5: 2.0, 6: 2.5, 7: 1.7, 8: 2.2}
    got = compare(a, b, "accuracy")
    ref = sps.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert got["test"] == "welch-t" and (got["n"], got["n_against"]) == (3, 4)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert got["ci95"] == pytest.approx([ci.low, ci.high], rel=1e-9)
    assert got["mean_diff"] == pytest.approx(np.mean(list(a.values())) - np.mean(list(b.values())))
    assert got["verdict"] == ("worse" if ref.pvalue < 0.05 else "not distinguishable")


def test_partly_shared_seeds_are_not_paired():
    """Pairs need every seed on both sides: a missing run would silently drop a pair."""
    got = compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 2.5}, "perplexity")
    assert got["test"] == "welch-t"


@pytest.mark.parametrize(
    ("metric", "higher", "lower"),
    [
        ("perplexity", "worse", "better"),
        ("best_eval_perplexity", "worse", "better"),
        ("eval_loss", "worse", "better"),
        ("accuracy", "better", "worse"),
        ("best_eval_accuracy", "better", "worse"),
        ("hoyer", "sparser", "denser"),
        ("sparsity_at_1pct", "more prunable", "less prunable"),
    ],
)
def test_verdict_follows_the_metric_direction(metric, higher, lower):
    assert direction_words(metric) == (higher, lower)
    base = {s: 1.0 + 0.01 * s for s in range(4)}
    up = {s: v + 1.0 + 0.001 * s for s, v in base.items()}
    down = {s: v - 1.0 - 0.001 * s for s, v in base.items()}
    assert compare(up, base, metric)["verdict"] == higher
    assert compare(down, base, metric)["verdict"] == lower


def test_noise_is_not_distinguishable():
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    b = {0: 2.0, 1: 1.0, 2: 3.1}
    got = compare(a, b, "perplexity")
    assert got["p_value"] > 0.05 and got["verdict"] == "not distinguishable"


def test_one_seed_has_no_p_value():
    got = compare({0: 5.0}, {0: 4.0}, "perplexity")
    assert got["verdict"] == "one seed" and got["p_value"] is None and got["ci95"] is None
    assert got["n"] == 1 and got["mean_diff"] == pytest.approx(1.0)
    assert compare({0: 5.0, 1: 6.0}, {3: 4.0}, "perplexity")["verdict"] == "one seed"


def test_zero_variance_differences_do_not_make_nan():
    same = compare({0: 2.0, 1: 3.0, 2: 4.0}, {0: 2.0, 1: 3.0, 2: 4.0}, "perplexity")  # identical runs
    assert same["mean_diff"] == 0.0 and same["p_value"] == 1.0 and same["ci95"] == [0.0, 0.0]
    assert same["verdict"] == "not distinguishable"
    shifted = compare({0: 3.0, 1: 4.0, 2: 5.0}, {0: 2.0, 1: 3.0, 2: 4.0}, "perplexity")  # exactly +1 every seed
    assert shifted["p_value"] == 0.0 and shifted["ci95"] == [1.0, 1.0] and shifted["verdict"] == "worse"
    flat = compare({0: 1.0, 1: 1.0}, {5: 1.0, 6: 1.0}, "hoyer")  # Welch, no variance on either side
    assert flat["p_value"] == 1.0 and flat["verdict"] == "not distinguishable"
    json.dumps([same, shifted, flat], allow_nan=False)


def _rec(p, q, seed, ppl, hoyer, noise=None, lq=None, curve=None):
    return {
        **{"p": p, "q": q, "seed": seed, "noise": noise, "lq_penalty": lq, "perplexity": ppl + 50},
        **{"best_eval_perplexity": ppl, "hoyer": hoyer, "eval_loss": 2.0, "sparsity_at_1pct": curve},
    }


def _grid_records():
    """p = 0 control, dropout at p = 0.1, Sparseout q = 1.5 at p = 0.1; three seeds each."""
    records = []
    for s in range(3):
        records.append(_rec(0.0, 2.0, s, 100.0 + s, 0.20 + 0.001 * s, curve=0.5))
        records.append(_rec(0.1, 2.0, s, 110.0 + s + 0.1 * s * s, 0.21 + 0.001 * s, curve=0.4))
        records.append(_rec(0.1, 1.5, s, 140.0 + 3 * s, 0.30 - 0.002 * s, curve=0.3 + 0.01 * s))
    return records


def test_aggregate_compares_each_cell_with_its_controls():
    rows = {(r["p"], r["q"]): r for r in aggregate(_grid_records(), "perplexity")}
    control, dropout, sparse = rows[0.0, 2.0], rows[0.1, 2.0], rows[0.1, 1.5]
    assert control["comparisons"] == []  # the p = 0 control is compared with nothing
    assert {(c["against"], c["metric"]) for c in dropout["comparisons"]} == {
        ("p=0", m) for m in ("best_eval_perplexity", "hoyer", "sparsity_at_1pct")
    }
    pairs = {(c["against"], c["metric"]): c for c in sparse["comparisons"]}
    metrics = ("best_eval_perplexity", "hoyer", "sparsity_at_1pct")
    assert set(pairs) == {(a, m) for a in ("dropout", "p=0") for m in metrics}
    vs_dropout = pairs["dropout", "best_eval_perplexity"]
    a = [140.0 + 3 * s for s in range(3)]
    b = [110.0 + s + 0.1 * s * s for s in range(3)]
    assert vs_dropout["p_value"] == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-9)
    assert vs_dropout["verdict"] == "worse" and vs_dropout["test"] == "paired-t"
    assert pairs["dropout", "hoyer"]["verdict"] == "sparser"
    assert pairs["p=0", "sparsity_at_1pct"]["verdict"] == "less prunable"
    assert set(vs_dropout) >= {"against", "metric", "n", "mean_diff", "ci95", "p_value", "test", "verdict"}
    json.dumps(list(rows.values()), allow_nan=False)


def test_aggregate_controls_follow_p_and_penalty():
    """Dropout is the q = 2 cell of the same p and penalty; a cell without its control is not compared."""
    records = [_rec(0.3, 1.5, s, 10.0 + s, 0.2) for s in range(2)]  # no dropout at p = 0.3, no p = 0
    records += [_rec(0.1, 1.5, s, 10.0 + s, 0.2, lq=1.0) for s in range(2)]
    records += [_rec(0.1, 2.0, s, 11.0 + s, 0.2, lq=1.0) for s in range(2)]
    records += [_rec(0.1, 2.0, s, 12.0 + s, 0.2, lq=0.0) for s in range(2)]
    rows = aggregate(records, "perplexity")
    by = {(r["p"], r["q"], r["lq_penalty"]): r for r in rows}
    assert by[0.3, 1.5, None]["comparisons"] == []
    lq1 = by[0.1, 1.5, 1.0]["comparisons"]
    assert {c["against"] for c in lq1} == {"dropout"}
    # against the q = 2 run with the same penalty (11 + s), not the unpenalised one (12 + s)
    assert next(c for c in lq1 if c["metric"] == "best_eval_perplexity")["mean_diff"] == pytest.approx(-1.0)


def test_sweep_md_shows_the_verdicts(tmp_path):
    rows = aggregate(_grid_records(), "perplexity")
    result = SimpleNamespace(task="causal-lm", metric="perplexity", summary=rows, runs=[])
    text = write_markdown(tmp_path / "sweep.md", result, {}).read_text()
    assert "## Against the controls" in text
    sparse = next(r for r in rows if r["q"] == 1.5)
    c = next(c for c in sparse["comparisons"] if c["against"] == "dropout" and c["metric"] == "best_eval_perplexity")
    ci = f"[{c['ci95'][0]:+.4g}, {c['ci95'][1]:+.4g}]"
    assert f"| {c['mean_diff']:+.4g} | {ci} | {c['statistic']:.3g} | {c['p_value']:.2g} | paired-t | worse |" in text


def test_cli_summary_prints_the_verdicts(capsys, monkeypatch):
    from hf_sparseout_cli.sweep_cmd import _print_summary

    monkeypatch.setenv("COLUMNS", "250")
    rows = aggregate(_grid_records(), "perplexity")
    _print_summary(SimpleNamespace(task="causal-lm", metric="perplexity", summary=rows))
    out = capsys.readouterr().out
    assert "vs dropout" in out and "vs p=0" in out
    sparse = next(r for r in rows if r["q"] == 1.5)
    c = next(c for c in sparse["comparisons"] if c["against"] == "p=0" and c["metric"] == "best_eval_perplexity")
    line = next(x for x in out.splitlines() if " 1.5 " in x)
    assert f"{c['verdict']} (p {c['p_value']:.2g})" in line
    assert "– (p=0)" in out
