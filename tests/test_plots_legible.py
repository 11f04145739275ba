"""Every plot the project writes, drawn from small synthetic data: titles inside, plain ticks, legends off the data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.figure import Figure
from plot_checks import legibility_problems
from summary_fixtures import fake_curve, fake_run

from hf_sparseout.metrics.plotting import plot_sparsity
from hf_sparseout.sweep.report import write_plot, write_site_plot
from hf_sparseout.training.reporting import write_plots

pytestmark = pytest.mark.slow  # drawing and measuring a dozen figures: several seconds on 2 busy cores


@pytest.fixture
def saved(monkeypatch) -> dict[str, Figure]:
    """Every figure saved while the test runs, by file name."""
    figures: dict[str, Figure] = {}
    original = Figure.savefig

    def record(self: Figure, fname, *args, **kwargs):
        figures[Path(fname).name] = self
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def _assert_legible(figures: dict[str, Figure], expected: set[str]) -> None:
    assert expected <= set(figures)
    problems = {name: legibility_problems(fig) for name, fig in figures.items()}
    assert not {name: p for name, p in problems.items() if p}


def test_finetune_plots(tmp_path, saved) -> None:
    # perplexities around 1000 within one decade: the case that printed 1.07×10^3 ticks
    curve = fake_curve([1075.0, 1090.0, 1120.0, 1300.0], reference=1070.0)
    runs = [fake_run("sparseout", 1.5, 1070.0, curve), fake_run("baseline", 2.0, 290.8, fake_curve([101, 103, 110]))]
    rng = np.random.default_rng(0)
    for r in runs:
        r.train_loss = [(i, 8 - 2 * np.log1p(i / 50) + rng.normal(0, 0.1)) for i in range(1, 200)]
    write_plots(tmp_path, runs, "causal-lm")
    _assert_legible(saved, {"training_loss.png", "eval_metric.png", "sparsity_per_site.png", "sparsity_curve.png"})


def test_plot_sparsity(tmp_path, saved) -> None:
    rng = np.random.default_rng(0)
    sites = [f"bert.encoder.layer.{i}.output.dropout" for i in range(6)]
    edges = list(np.logspace(-4, 1, 41))

    def monitor() -> dict:
        hist = {s: {"edges": edges, "counts": [10, 5, *rng.integers(0, 1000, 40).tolist(), 3]} for s in sites[:4]}
        per_site = {s: {"hoyer": 0.2 + 0.05 * rng.random()} for s in sites}
        return {"overall": {"hoyer": 0.3}, "sites": per_site, "histograms": hist}

    long_title = "Activation sparsity of all-MiniLM-L6-v2 fine-tuned on SST-2, every site, eval split, q=1.5 vs dropout"
    plot_sparsity({"Sparseout q=1.5": monitor(), "dropout": monitor()}, tmp_path / "s.png", title=long_title)
    _assert_legible(saved, {"s.png"})


def test_sweep_plots(tmp_path, saved) -> None:
    rows = []
    for q, ppl, hoyer in ((1.0, 1020.0, 0.2335), (1.5, 754.0, 0.2292), (2.0, 825.0, 0.2242), (3.0, 829.0, 0.2199)):
        rows.append(
            {"p": 0.1, "q": q, "baseline": q == 2.0, "n": 3, "perplexity_mean": ppl, "perplexity_std": 20.0,
             "hoyer_mean": hoyer, "hoyer_std": 0.002,
             "site_hoyer": {f"transformer.h.{i}.mlp.dropout": {"mean": hoyer + 0.01 * i, "std": 0.001}
                            for i in range(4)}}
        )  # fmt: skip
    result = SimpleNamespace(task="causal-lm", metric="perplexity", summary=rows)
    write_plot(tmp_path / "sweep.png", result)
    write_site_plot(tmp_path / "sweep_sites.png", result)
    _assert_legible(saved, {"sweep.png", "sweep_sites.png"})
