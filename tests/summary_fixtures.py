"""Fake finetune results (``RunResult``, ``SparsityCurve``) for the summary table and plot tests."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

from hf_sparseout.metrics.threshold import CurvePoint, SparsityCurve
from hf_sparseout.training.loop import RunResult


def fake_curve(ppl_at: Sequence[float], reference: float = 100.0) -> SparsityCurve:
    """A curve from ``reference`` perplexity at sparsity 0, then ``ppl_at[i]`` at sparsity ``0.1 * (i + 1)``."""
    points = [CurvePoint(0.0, 0.0, 0.0, {"perplexity": reference}, {})]
    points += [CurvePoint(0.1 * (i + 1), 0.1 * (i + 1), 0.1, {"perplexity": v}, {}) for i, v in enumerate(ppl_at)]
    calibration = SimpleNamespace(sites={}, sites_spec="default")
    return SparsityCurve("perplexity", reference, points, calibration=calibration)  # type: ignore[arg-type]


def fake_run(name: str, q: float, ppl: float, curve: SparsityCurve | None = None) -> RunResult:
    """A finished causal-LM run with 5 measured sites, two evaluations and ``curve`` (``--sparsity-curve``)."""
    report = SimpleNamespace(sparseout_sites=[f"s{i}" for i in range(5)])
    sites = {f"transformer.h.{i}.mlp.dropout": {"hoyer": 0.2 + 0.01 * i} for i in range(5)}
    final = {"step": 415, "perplexity": ppl, "eval_loss": 5.95, "hoyer": 0.2123}
    if curve is not None:  # as the runner records them in the final evaluation
        final |= {"sparsity_at_1pct": curve.sparsity_at_1pct, "sparsity_at_5pct": curve.sparsity_at_5pct}
    return RunResult(
        name=name,
        q=q,
        report=report,  # type: ignore[arg-type]
        evals=[{"step": 200, "perplexity": ppl * 1.1, "eval_loss": 6.0, "hoyer": 0.21}, final],
        train_loss=[(1, 8.0), (415, 5.0)],
        sparsity={"sites": sites},
        global_step=415,
        throughput=5805.3,
        init={"hoyer": 0.22021},
        grad_norms=[(1, 1.2345), (2, 0.9997)],
        curve=curve,
    )
