"""`finetune --sparsity-curve` on a prepared run: its own capped eval set, held-out calibration blocks,
the cost estimate, one progress bar, TEAL's fixed-sparsity figures (training/threshold_curve.py)."""

from __future__ import annotations

import logging

import pytest
import torch
from curve_helpers import EVAL_BASE, run_context

from hf_sparseout.training import threshold_curve


class _Rows:
    """Eval-mode forwards of a model: the first token of every row (which block of which set it is)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.passes: list[list[int]] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            self.passes.append(kwargs["input_ids"][:, 0].tolist())

    def rows(self, eval_set: bool) -> list[int]:
        return [r for batch in self.passes for r in batch if (r >= EVAL_BASE) == eval_set]


def test_curve_evaluates_at_most_the_cap_on_its_own_eval_set():
    ctx = run_context(train=40, evaluation=40, sparsity_eval_samples=5)
    rows = _Rows(ctx.accelerator.unwrap_model(ctx.model))
    curve = threshold_curve.final_curve(ctx)
    rows.handle.remove()
    targets = [p.target for p in curve.points]
    assert {0.25, 0.4, 0.5} <= set(targets)  # the fixed sparsities are measured, not extrapolated
    # every target (the unthresholded reference included) is one pass over the first 5 eval blocks
    seen = rows.rows(eval_set=True)
    assert sorted(seen) == sorted(list(range(EVAL_BASE, EVAL_BASE + 5)) * len(targets))
    assert all(p.measured_on == "evaluation" for p in curve.points)
    summary = curve.to_dict()
    assert summary["eval"]["samples"] == 5 and summary["eval"]["of"] == 40
    assert summary["eval"]["tokens"] == 5 * 16
    assert summary["eval"]["passes"] == len(targets)


def test_calibration_uses_only_held_out_training_blocks(tmp_path):
    ctx = run_context(train=40, evaluation=4, sparsity_targets=[0.5])
    trained_on = {row[0] for row in ctx.inputs.train_set["input_ids"]}
    held_out = {row[0] for row in ctx.inputs.calibration_set["input_ids"]}
    assert held_out and not held_out & trained_on  # the run never trains on the calibration blocks
    assert len(held_out) + len(trained_on) == 40
    rows = _Rows(ctx.accelerator.unwrap_model(ctx.model))
    curve = threshold_curve.final_curve(ctx)
    rows.handle.remove()
    assert set(rows.rows(eval_set=False)) == held_out
    calibration = curve.to_dict()["calibration"]
    assert calibration["samples"] == len(held_out) and calibration["tokens"] == 16 * len(held_out)
    saved = threshold_curve.save_thresholds(curve, tmp_path).read_text()
    loaded = type(curve.calibration).load(tmp_path / "thresholds.json")
    assert loaded.meta["calibration"] == calibration and '"tokens"' in saved


def test_held_out_share_is_capped():
    from curve_helpers import blocks

    from hf_sparseout.training.args import FinetuneArgs

    args = FinetuneArgs(sparsity_curve=True)
    big = threshold_curve.split_calibration(blocks(2000, 4, 1, 64, 0), args)
    small = threshold_curve.split_calibration(blocks(30, 4, 1, 64, 0), args)
    assert [len(big[0]), len(big[1])] == [
        2000 - threshold_curve.CALIBRATION_SAMPLES,
        threshold_curve.CALIBRATION_SAMPLES,
    ]
    assert [len(small[0]), len(small[1])] == [27, 3]  # at most a tenth of a small training set
    assert threshold_curve.split_calibration(blocks(30, 4, 1, 64, 0), FinetuneArgs())[1] is None


def test_one_progress_bar_for_the_whole_curve(monkeypatch):
    import tqdm.auto

    bars = []
    real = tqdm.auto.tqdm

    class Recorder(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            self.recorded_total, self.updates = kwargs.get("total"), 0
            bars.append(self)

        def update(self, n=1):
            self.updates += n
            return super().update(n)

    ctx = run_context(train=40, evaluation=30, sparsity_eval_samples=10, sparsity_targets=[0.5])  # 3 batches of 4
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    curve = threshold_curve.final_curve(ctx)
    (bar,) = bars
    assert bar.recorded_total == len(curve.points) * 3 == bar.updates


def test_cost_estimate_is_logged_before_the_curve(caplog):
    # eval: 10 batches; curve: 2 per pass
    ctx = run_context(train=40, evaluation=40, sparsity_eval_samples=8, sparsity_targets=[0.5])
    ctx.last_eval_seconds = 20.0  # 2 s per batch
    calibration_batches = -(-len(ctx.inputs.calibration_set) // 4)
    with caplog.at_level(logging.INFO, logger="hf_sparseout"):
        curve = threshold_curve.final_curve(ctx)
    passes = len(curve.points)
    expected = 2.0 * (passes * 2 + calibration_batches)
    (line,) = [r.getMessage() for r in caplog.records if "estimated" in r.getMessage()]
    assert f"about {expected:.0f} s" in line and f"{passes} passes" in line and "8 of 40" in line
    assert curve.to_dict()["estimated_seconds"] == pytest.approx(expected)


def test_metric_at_fixed_sparsity_is_interpolated_between_measured_points():
    from hf_sparseout.metrics.threshold import CurvePoint
    from hf_sparseout.metrics.threshold_quality import metric_at_sparsity

    def point(s: float, v: float) -> CurvePoint:
        return CurvePoint(s, s, s, {"perplexity": v}, {})

    points = [point(0.0, 10.0), point(0.24, 10.2), point(0.42, 10.8), point(0.52, 12.0)]
    values = metric_at_sparsity(points, 10.0, "perplexity", (0.25, 0.4, 0.5, 0.6))
    # 0.25 lies between 0.24 (10.2) and 0.42 (10.8): 10.2 + 0.6 * 0.01 / 0.18
    assert values["0.25"] == pytest.approx((10.2 + 0.6 / 18) / 10.0 - 1)
    assert values["0.4"] == pytest.approx((10.2 + 0.6 * 0.16 / 0.18) / 10.0 - 1)
    assert values["0.5"] == pytest.approx((10.8 + 1.2 * 0.8) / 10.0 - 1)
    assert values["0.6"] is None  # beyond the last measured point: never extrapolated
    accuracy = [CurvePoint(s, s, s, {"accuracy": v}, {}) for s, v in [(0.0, 0.8), (0.5, 0.6)]]
    assert metric_at_sparsity(accuracy, 0.8, "accuracy", (0.25,))["0.25"] == pytest.approx(-0.125)


def test_run_curve_reports_metric_at_sparsity_of_its_points():
    from hf_sparseout.metrics.threshold_quality import FIXED_SPARSITIES, metric_at_sparsity

    ctx = run_context(train=40, evaluation=4, sparsity_targets=[0.2, 0.3, 0.45, 0.6])
    curve = threshold_curve.final_curve(ctx)
    summary = curve.to_dict()
    assert set(summary["metric_at_sparsity"]) == {"0.25", "0.4", "0.5"}
    assert all(v is not None for v in summary["metric_at_sparsity"].values())
    assert summary["metric_at_sparsity"] == metric_at_sparsity(
        curve.points, curve.reference, "perplexity", FIXED_SPARSITIES
    )
    assert summary["reference"] == curve.points[0].metrics["perplexity"]
