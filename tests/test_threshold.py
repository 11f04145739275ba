"""Magnitude thresholding (hf_sparseout.metrics.threshold): quantiles, calibration, hooks, curve, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hf_sparseout
from hf_sparseout.metrics.quantile import MagnitudeSample
from hf_sparseout.metrics.threshold import (
    Calibration,
    CurvePoint,
    ThresholdError,
    apply_thresholds,
    batch_evaluator,
    calibrate,
    sparsity_at,
    sparsity_curve,
)
from hf_sparseout.metrics.threshold_sites import select_sites
from tests.architectures import build
from tests.threshold_helpers import batches, tiny_gpt2

# -- quantiles -------------------------------------------------------------------------------------


def test_exact_quantile_puts_the_target_fraction_below() -> None:
    sample = MagnitudeSample(max_samples=10_000)
    values = torch.randperm(1000).float() + 1.0  # 1..1000, distinct
    sample.add(values[:400])
    sample.add(values[400:])
    assert sample.exact and sample.error_bound() == 0.0
    thresholds = sample.thresholds([0.0, 0.25, 0.5, 0.7])
    assert thresholds[0] == 0.0
    assert [int((values < t).sum()) for t in thresholds[1:]] == [250, 500, 700]


def test_sampled_quantile_stays_within_its_bound_and_memory() -> None:
    g = torch.Generator().manual_seed(1)
    sample = MagnitudeSample(max_samples=2_000, seed=3)
    values = torch.randn(200_000, generator=g).abs()
    for chunk in values.split(7_000):
        sample.add(chunk)
        assert len(sample) <= 2 * 2_000
    assert not sample.exact and sample.seen == values.numel()
    bound = sample.error_bound(1e-3)
    assert 0 < bound < 0.05
    for t, thr in zip([0.1, 0.5, 0.7], sample.thresholds([0.1, 0.5, 0.7]), strict=True):
        reached = float((values < thr).double().mean())
        assert abs(reached - t) <= bound


# -- calibration and hooks -------------------------------------------------------------------------


def test_hook_zeros_exactly_the_small_inputs_in_eval_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4)).eval()
    x = torch.randn(5, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model(x)
    hidden = model[0](x)
    threshold = float(hidden.detach().abs().median())
    expected = model[1](torch.where(hidden.abs() <= threshold, torch.zeros_like(hidden), hidden))
    hooks = apply_thresholds(model, {"1": threshold})
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    reached = hooks.compute()
    assert reached["sites"]["1"] == pytest.approx(float((hidden.abs() <= threshold).double().mean()))
    model.train()
    torch.testing.assert_close(model(x), plain, rtol=0, atol=0)  # training mode: untouched
    model.eval()
    hooks.remove()
    torch.testing.assert_close(model(x), plain, rtol=0, atol=0)  # removed: exactly as before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_first_site_reaches_the_target_on_its_calibration_data() -> None:
    model = tiny_gpt2()
    data = batches(2, pad=6)
    cal = calibrate(model, data, targets=[0.3, 0.6])
    assert next(iter(cal.sites)) == "transformer.h.0.attn.c_attn"
    assert all(site.exact for site in cal.sites.values())
    for target in (0.3, 0.6):
        # One site at a time: its input does not depend on the other sites' thresholds.
        for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"):
            hooks = apply_thresholds(model, {name: cal.at(target)[name]})
            with torch.no_grad():
                for batch in data:
                    model(**batch)
            hooks.remove()
            seen = cal.sites[name].seen
            assert hooks.compute()["sites"][name] == pytest.approx(target, abs=1.5 / seen)


def test_padding_is_excluded_from_calibration_and_counts() -> None:
    model = tiny_gpt2()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 128, (2, 16), generator=g)
    unpadded = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    padded_ids = torch.cat([ids, torch.randint(1, 128, (2, 8), generator=g)], 1)
    mask = torch.cat([torch.ones(2, 16, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long)], 1)
    padded = [{"input_ids": padded_ids, "attention_mask": mask}]
    a = calibrate(model, unpadded, targets=[0.5])
    b = calibrate(model, padded, targets=[0.5])
    for name in a.sites:
        assert b.sites[name].seen == a.sites[name].seen
        assert b.sites[name].thresholds[0] == pytest.approx(a.sites[name].thresholds[0], rel=1e-5)
    reached = []
    for data in (unpadded, padded):
        hooks = apply_thresholds(model, a, target=0.5)
        with torch.no_grad():
            model(**data[0])
        hooks.remove()
        reached.append(hooks.compute())
    assert reached[1]["sparsity"] == pytest.approx(reached[0]["sparsity"], abs=1e-6)


def test_family_defaults_pick_the_weight_matrices() -> None:
    # (arch, head, "family" sites per layer, default ("teal") sites per layer)
    cases = [
        ("gpt2", "causal-lm", 3, 4),
        ("bert", "seq-cls", 5, 6),
        ("llama", "causal-lm", 6, 7),
        ("opt", "causal-lm", 5, 6),
        ("distilbert", "seq-cls", 5, 6),
        ("gpt_neox", "causal-lm", 3, 4),
    ]
    for arch, head, per_layer, teal in cases:
        model = build(arch, head, "sdpa")
        default = select_sites(model)
        assert len(select_sites(model, "family")) == 2 * per_layer, arch
        assert len(default) == len(select_sites(model, "teal")) == 2 * teal, (arch, list(default))
        assert all(m.weight.dim() == 2 for m in default.values()), arch
        ids = torch.randint(3, 90, (2, 10))
        cal = calibrate(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], targets=[0.5])
        # A positive threshold, or 0 where at least half the inputs are exact zeros already (OPT's ReLU).
        assert all(s.seen > 0 and (s.thresholds[0] > 0) != (s.zero_fraction >= 0.5) for s in cal.sites.values()), arch


def test_sparseout_sites_of_a_patched_model() -> None:
    model = tiny_gpt2()
    hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(p=0.1, q=1.5))
    model.eval()
    data = batches(1)
    cal = calibrate(model, data, sites="sparseout", targets=[0.5])
    assert set(cal.sites) and all(isinstance(model.get_submodule(n), hf_sparseout.Sparseout) for n in cal.sites)
    assert cal.meta["skipped_unused_in_eval"] == [f"transformer.h.{i}.attn.attn_dropout" for i in range(2)]
    with torch.no_grad():
        plain = model(**data[0]).logits
        hooks = apply_thresholds(model, cal, target=0.5)
        thresholded = model(**data[0]).logits
        hooks.remove()
    assert not torch.allclose(plain, thresholded)
    assert hooks.compute()["weighting"] == "elements"
    assert 0.3 < hooks.compute()["sparsity"] < 0.7


# -- the curve -------------------------------------------------------------------------------------


def _points(values: list[tuple[float, float]], metric: str = "perplexity") -> list[CurvePoint]:
    return [CurvePoint(s, s, s, {metric: v}, {}) for s, v in values]


def test_headline_is_interpolated_at_the_first_crossing() -> None:
    points = _points([(0.0, 10.0), (0.2, 10.05), (0.4, 10.3), (0.5, 10.05)])
    # limit 10.1: excess -0.05 at 0.2, +0.2 at 0.4 -> 0.2 + 0.2 * 0.05 / 0.25
    assert sparsity_at(points, 10.0, "perplexity", 0.01) == pytest.approx(0.24)
    assert sparsity_at(points, 10.0, "perplexity", 0.05) == pytest.approx(0.5)  # never left: the last point
    acc = _points([(0.0, 0.90), (0.3, 0.895), (0.6, 0.86)], "accuracy")
    # accuracy: at most 1 point lost (>= 0.89): excess -0.005 at 0.3, +0.03 at 0.6
    assert sparsity_at(acc, 0.90, "accuracy", 0.01) == pytest.approx(0.3 + 0.3 * 0.005 / 0.035)
    assert sparsity_at(_points([(0.1, 12.0)]), 10.0, "perplexity", 0.01) is None


def test_curve_on_a_tiny_gpt2_and_thresholds_roundtrip(tmp_path) -> None:
    model = tiny_gpt2()
    calib, evaluation = batches(2, seed=1, pad=4), batches(2, seed=2, pad=4)
    evaluate_fn = batch_evaluator(evaluation)
    plain = evaluate_fn(model, None)
    curve = sparsity_curve(model, calib, evaluate_fn, targets=[0.0, 0.3, 0.6])
    assert [p.target for p in curve.points] == [0.0, 0.3, 0.6]
    assert curve.reference == plain["perplexity"]  # threshold 0 is the unthresholded model
    reached = [p.sparsity for p in curve.points]
    assert reached[0] < 0.01 and reached[0] < reached[1] < reached[2]
    assert abs(reached[1] - 0.3) < 0.1 and abs(reached[2] - 0.6) < 0.1
    assert curve.points[2].metrics["perplexity"] != plain["perplexity"]
    summary = curve.to_dict()
    assert summary["sparsity_at_5pct"] == curve.sparsity_at(0.05)
    # reuse a reference: target 0 is not re-evaluated
    again = sparsity_curve(model, curve.calibration, evaluate_fn, targets=[0.3], reference=plain)
    assert again.points[0].measured_on == "calibration"
    assert again.points[1].metrics == curve.points[1].metrics
    # thresholds saved and reloaded give the same thresholded model
    path = curve.calibration.save(tmp_path / "thresholds.json")
    loaded = Calibration.load(path)
    assert loaded.at(0.6) == curve.calibration.at(0.6)
    hooks = apply_thresholds(model, loaded, target=0.6)
    assert evaluate_fn(model, hooks) == curve.points[2].metrics
    hooks.remove()


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [[1.0], [-0.1, 0.2], [], ["half"]])
def test_bad_targets(targets) -> None:
    with pytest.raises(ThresholdError, match=r"\[0, 1\)|numbers") as info:
        calibrate(tiny_gpt2(), batches(1), targets=targets)
    assert isinstance(info.value, ValueError) and info.value.hint


def test_bad_sites_and_data(tmp_path) -> None:
    model = tiny_gpt2()
    with pytest.raises(ThresholdError, match="match no module") as info:
        calibrate(model, batches(1), sites=["mlp.nothing_here"])
    assert "transformer.h.0.mlp.c_fc" in info.value.hint
    with pytest.raises(ThresholdError, match="calibration set is empty"):
        calibrate(model, [])
    with pytest.raises(ThresholdError, match="no Sparseout modules"):
        calibrate(model, batches(1), sites="sparseout")
    with pytest.raises(ThresholdError, match="no default threshold sites"):
        calibrate(nn.Sequential(nn.Linear(4, 4)), [{"input": torch.randn(2, 4)}])
    with pytest.raises(ThresholdError, match="not modules of"):
        apply_thresholds(model, {"transformer.h.9.mlp.c_fc": 0.1})
    cal = calibrate(model, batches(1), targets=[0.5])
    with pytest.raises(ThresholdError, match="was not calibrated"):
        cal.at(0.4)
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ThresholdError, match="not an hf-sparseout thresholds file"):
        Calibration.load(tmp_path / "x.json")
    assert not math.isnan(cal.sites["transformer.h.0.mlp.c_fc"].thresholds[0])


def test_curve_plot_from_saved_summaries(tmp_path) -> None:
    from hf_sparseout.metrics.threshold_plot import plot_sparsity_curves

    def summary(ppl: list[float]) -> dict:
        points = [{"sparsity": s, "metrics": {"perplexity": v}} for s, v in zip([0.0, 0.3, 0.6], ppl, strict=True)]
        return {"metric": "perplexity", "reference": ppl[0], "points": points, "sparsity_at_1pct": 0.3}

    path = tmp_path / "curve.png"
    fig = plot_sparsity_curves({"sparseout": summary([10, 10.05, 11]), "baseline": summary([9, 9.5, 10])}, path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] == [
        "sparseout: 1% at 30.0%",
        "baseline: 1% at 30.0%",
    ]
    assert len(ax.patches) == 2  # one 1 % band per run
    with pytest.raises(ValueError, match="empty"):
        plot_sparsity_curves({})
