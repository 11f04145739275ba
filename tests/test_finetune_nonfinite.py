"""A run's end cannot lose what it trained (issue 23 item 3): non-finite losses (``--nan-policy``) and an
optional end-of-run analysis (``--sparsity-curve``) that fails.

The non-finite loss is injected at one training forward; the run that stops (or skips) there is compared,
weight for weight, with a run that simply ends before that step (constant learning rate, same seed).
"""

from __future__ import annotations

import math

import pytest
from finetune_helpers import FAST, finetune_ok, invoke, read_metrics, write_text_corpus
from model_faults import nan_weight, nonfinite_loss_at, same_weights, saved_weights, wrap_build_model

CONSTANT = [*FAST, "--lr-scheduler", "constant", "--save-minutes", "0"]


@pytest.fixture
def data(tmp_path):
    return write_text_corpus(tmp_path / "txt")


@pytest.mark.slow  # three short training runs
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_is_not_applied_and_the_run_is_saved(tmp_path, data, monkeypatch, policy):
    reference = tmp_path / "two-steps"
    finetune_ok(reference, "--dataset", str(data), *CONSTANT, "--max-steps", "2")
    wrap_build_model(monkeypatch, nonfinite_loss_at([3]))
    out = tmp_path / policy
    result = finetune_ok(out, "--dataset", str(data), *CONSTANT, "--max-steps", "3", "--nan-policy", policy)
    # the step with the NaN loss changed nothing: the saved model is the 2-step run's
    assert same_weights(saved_weights(out), saved_weights(reference))
    run = read_metrics(out)["runs"]["sparseout"]
    assert math.isfinite(run["evals"][-1]["eval_loss"])
    assert run["nonfinite_loss_steps"] == [3]
    assert (out / "README.md").is_file() and (out / "report.md").is_file()
    if policy == "stop":
        assert run["stopped_early"]["step"] == 3 and "non-finite" in run["stopped_early"]["reason"]
        assert read_metrics(out)["summary"][0]["steps"] == 2 and run["skipped_steps"] == 0
        assert "non-finite" in " ".join(result.output.split())
    else:
        assert run["stopped_early"] is None and run["skipped_steps"] == 1
        assert read_metrics(out)["summary"][0]["steps"] == 3


@pytest.mark.slow  # two short training runs
def test_skip_trains_on_after_a_nonfinite_step(tmp_path, data, monkeypatch):
    wrap_build_model(monkeypatch, nonfinite_loss_at([2]))
    out = tmp_path / "skip"
    finetune_ok(out, "--dataset", str(data), *CONSTANT, "--max-steps", "4", "--eval-steps", "2", "--nan-policy", "skip")
    run = read_metrics(out)["runs"]["sparseout"]
    assert run["skipped_steps"] == 1 and run["nonfinite_loss_steps"] == [2]
    assert [s for s, _ in run["train_loss"]] == [1, 2, 3, 4]
    assert all(math.isfinite(e["eval_loss"]) for e in run["evals"])
    # the eval's train_loss is the mean of the finite losses since the previous eval
    losses = dict((s, v) for s, v in run["train_loss"])
    assert run["evals"][0]["train_loss"] == pytest.approx(losses[1])


@pytest.mark.slow  # one short training run
def test_a_nonfinite_penalty_term_is_not_applied_either(tmp_path, data, monkeypatch):
    from hf_sparseout.regularizers import LqPenalty

    original, calls = LqPenalty.__call__, {"n": 0}

    def inf_at_2(self):
        calls["n"] += 1
        term = original(self)
        return term * float("inf") if calls["n"] == 2 else term

    monkeypatch.setattr(LqPenalty, "__call__", inf_at_2)
    out = tmp_path / "out"
    args = ["--max-steps", "3", "--lq-penalty", "1e-3", "--nan-policy", "skip"]
    result = finetune_ok(out, "--dataset", str(data), *CONSTANT, *args)
    run = read_metrics(out)["runs"]["sparseout"]
    assert run["nonfinite_loss_steps"] == [2] and run["skipped_steps"] == 1
    assert all(math.isfinite(loss) for _, loss in run["train_loss"])  # the model's loss itself was finite
    assert all(bool(t.isfinite().all()) for t in saved_weights(out).values())
    assert "L_q penalty" in " ".join(result.output.split())


@pytest.mark.slow  # trains end to end
def test_nan_weight_stops_at_the_first_step_and_saves_everything(tmp_path, data, monkeypatch):
    """The issue's case: a NaN weight, --sparsity-curve; the curve cannot run on NaN, the run still exits 0."""
    wrap_build_model(monkeypatch, nan_weight)
    out = tmp_path / "out"
    result = finetune_ok(out, "--dataset", str(data), *CONSTANT, "--max-steps", "3", "--sparsity-curve")
    run = read_metrics(out)["runs"]["sparseout"]
    assert run["stopped_early"]["step"] == 1
    assert "sparsity_curve" in run["analysis_errors"] and "sparsity_curve" not in run
    for name in ("model.safetensors", "metrics.json", "README.md", "report.md"):
        assert (out / name).is_file(), name
    flat = " ".join(result.output.split())
    assert "sparsity curve" in flat.lower() and "non-finite" in flat


@pytest.mark.slow  # trains end to end
def test_a_failing_curve_is_recorded_and_the_run_exits_0(tmp_path, data, monkeypatch):
    from hf_sparseout.training import threshold_curve

    seen: dict[str, bool] = {}

    def broken(ctx):
        out = tmp_path / "out"
        seen["saved_before"] = all((out / f).is_file() for f in ("model.safetensors", "metrics.json", "README.md"))
        raise RuntimeError("injected curve failure")

    monkeypatch.setattr(threshold_curve, "final_curve", broken)
    out = tmp_path / "out"
    result = finetune_ok(out, "--dataset", str(data), *CONSTANT, "--max-steps", "2", "--sparsity-curve")
    assert seen == {"saved_before": True}  # model, metrics and card were on disk before the analysis ran
    data_ = read_metrics(out)
    assert "injected curve failure" in data_["runs"]["sparseout"]["analysis_errors"]["sparsity_curve"]
    assert "injected curve failure" in (out / "report.md").read_text()
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert not (out / "thresholds.json").exists()
    assert "injected curve failure" in " ".join(result.output.split())


@pytest.mark.slow  # trains end to end
def test_a_curve_refused_for_its_options_exits_2_after_saving(tmp_path, data, monkeypatch):
    from hf_sparseout.metrics.threshold_sites import ThresholdError
    from hf_sparseout.training import threshold_curve

    def refused(ctx):
        raise ThresholdError("saw no activation in eval mode at x", "choose sites that eval reaches")

    monkeypatch.setattr(threshold_curve, "final_curve", refused)
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), "--dataset", str(data), *CONSTANT, "--max-steps", "2", "--sparsity-curve")
    assert result.exit_code == 2, result.output[-3000:]
    flat = " ".join(result.output.split())
    assert "saw no activation" in flat and "choose sites that eval reaches" in flat
    assert "Traceback" not in result.output
    assert "saw no activation" in read_metrics(out)["runs"]["sparseout"]["analysis_errors"]["sparsity_curve"]
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_nan_policy_is_checked(tmp_path, data):
    result = invoke("--output-dir", str(tmp_path / "o"), "--dataset", str(data), *FAST, "--nan-policy", "ignore")
    assert result.exit_code == 2 and not (tmp_path / "o").exists()
    assert "'stop'" in result.output and "'skip'" in result.output  # the choices, not an unknown option
