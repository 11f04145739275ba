"""``--load-best-model-at-end`` (issue 24 item 1): the best evaluation's weights are the model a run keeps,
early stopping counts evaluations without improvement, a resume knows the best so far, N processes pick
the same best as one, and ``sweep`` turns it on.

The end-to-end runs pick the best by the *highest* eval loss (``--metric-for-best-model eval_loss
--greater-is-better``): training lowers the loss, so the best is an early evaluation, not the last one, and
the expected best step is computed from the run's own recorded evaluations with Trainer's rule.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from finetune_helpers import (
    FAST,
    LAUNCH,
    SINGLE,
    finetune_ok,
    invoke,
    invoke_cli,
    read_metrics,
    run_metrics,
    write_text_corpus,
)
from model_faults import same_weights, saved_weights

from hf_sparseout.training import best_model

CONSTANT = [*FAST, "--lr-scheduler", "constant", "--save-minutes", "0"]
CURVE = ["--sparsity-curve", "--sparsity-targets", "0,0.5"]
BEST = ["--load-best-model-at-end", "--metric-for-best-model", "eval_loss", "--greater-is-better", "--eval-steps", "2"]


# -- the rules (no training) ------------------------------------------------------------------------------


def test_direction_is_inferred_from_the_metric_unless_given():
    assert [best_model.new_record(m)["greater_is_better"] for m in ("perplexity", "eval_loss")] == [False, False]
    assert all(best_model.new_record(m)["greater_is_better"] for m in ("accuracy", "f1_macro", "hoyer"))
    assert best_model.new_record("eval_loss", greater_is_better=True)["greater_is_better"] is True


def test_update_is_strict_and_counts_evaluations_without_improvement():
    record = best_model.new_record("perplexity")
    steps = [(2, 10.0), (4, 9.0), (6, 9.0), (8, float("nan")), (10, 9.5), (12, 8.0)]
    improved = [best_model.update(record, {"step": s, "perplexity": v}) for s, v in steps]
    assert improved == [True, True, False, False, False, True]  # equal is not better; NaN never is
    assert (record["step"], record["value"], record["evals_without_improvement"]) == (12, 8.0, 0)
    record = best_model.new_record("hoyer")
    for s, v in [(1, 0.2), (2, 0.1), (3, 0.15)]:
        best_model.update(record, {"step": s, "hoyer": v})
    assert (record["step"], record["evals_without_improvement"]) == (1, 2)


def test_the_copy_is_written_atomically_and_loaded_in_place(tmp_path):
    from accelerate import Accelerator
    from transformers import GPT2Config, GPT2LMHeadModel

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)))
    record = best_model.new_record("perplexity")
    best_model.update(record, {"step": 3, "perplexity": 5.0})
    best_model.save_copy(accelerator, model, tmp_path, record)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    best_model.update(record, {"step": 5, "perplexity": 4.0})
    best_model.save_copy(accelerator, model, tmp_path, record)  # replaces the first copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"] and best_model.saved_step(tmp_path) == 5
    assert not best_model.load_copy(accelerator, model, tmp_path, 3)  # the step-3 copy is gone
    params = list(model.parameters())
    with torch.no_grad():
        for param in params:
            param.zero_()
    assert best_model.load_copy(accelerator, model, tmp_path, 5)
    assert all(p is q for p, q in zip(params, model.parameters(), strict=True))  # in place: the optimizer's too
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name] + 1.0), name
    assert model.lm_head.weight is model.transformer.wte.weight  # tied weights stay tied


# -- options -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--early-stopping-patience", "2"], "only used with --load-best-model-at-end"),
        (["--metric-for-best-model", "hoyer"], "only used with --load-best-model-at-end"),
        (["--load-best-model-at-end", "--early-stopping-patience", "0"], "must be >= 1"),
    ],
)
def test_bad_best_model_options_exit_2_before_anything_is_written(tmp_path, args, expect):
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), *FAST, "--max-steps", "1", *args)
    assert result.exit_code == 2, result.output[-2000:]
    assert expect in " ".join(result.output.split()) and not out.exists()


@pytest.mark.slow  # loads data
def test_a_metric_the_task_does_not_measure_is_refused(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    args = ["--dataset", str(data), *FAST, "--max-steps", "1", "--load-best-model-at-end"]
    result = invoke("--output-dir", str(out), *args, "--metric-for-best-model", "accuracy")
    assert result.exit_code == 2 and "not measured for causal-lm" in " ".join(result.output.split())
    assert not (out / "metrics.json").exists()
    result = invoke("--output-dir", str(out), *args, "--early-stopping-patience", "1", "--max-steps", "2")
    assert result.exit_code == 2 and "--eval-steps" in " ".join(result.output.split())
    assert not (out / "metrics.json").exists()


class _Captured(Exception):
    pass


def test_sweep_turns_it_on_unless_told_not_to(tmp_path, monkeypatch):
    from hf_sparseout.training import runner

    seen: list[bool | None] = []

    def capture(args, end_training=True):
        seen.append(args.load_best_model_at_end)
        raise _Captured

    monkeypatch.setattr(runner, "finetune", capture)
    grid = ["--q", "1.5", "--seeds", "1", "--no-baseline", *FAST, "--max-steps", "1"]
    for i, extra in enumerate([[], ["--no-load-best-model-at-end"], ["--load-best-model-at-end"]]):
        result = invoke_cli("sweep", *grid, "--output-dir", str(tmp_path / f"s{i}"), *extra)
        assert isinstance(result.exception, _Captured), result.output[-2000:]
    assert seen == [True, False, True]


# -- end to end --------------------------------------------------------------------------------------------


def _expected(evals, metric="eval_loss", greater=True, patience=None):
    """(best step, stop step) by Trainer's rules over recorded evaluations."""
    record = best_model.new_record(metric, greater)
    for e in evals:
        best_model.update(record, e)
        if patience and record["evals_without_improvement"] >= patience:
            return record["step"], e["step"]
    return record["step"], evals[-1]["step"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_text_corpus(tmp_path_factory.mktemp("best") / "txt")


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("best") / "run"
    finetune_ok(out, "--dataset", str(data), *CONSTANT, *BEST, *CURVE, "--max-steps", "6", "--save-steps", "2")
    return out


@pytest.mark.slow  # two training runs
def test_the_kept_model_is_the_model_of_the_best_step(tmp_path, data, best_run):
    run = read_metrics(best_run)["runs"]["sparseout"]
    best_step, _ = _expected(run["evals"])
    assert best_step < 6, "the test needs a best evaluation before the last"
    assert run["best_step"] == best_step and run["best"]["step"] == best_step
    assert run["last"]["step"] == 6 and run["final"]["step"] == best_step
    at_best = next(e for e in run["evals"] if e["step"] == best_step)
    # the final evaluation is a new pass over the reloaded copy: the same figures as at the best step
    assert run["final"]["eval_loss"] == pytest.approx(at_best["eval_loss"], rel=1e-6)
    assert run["final"]["hoyer"] == pytest.approx(at_best["hoyer"], rel=1e-6)
    assert read_metrics(best_run)["summary"][0]["eval_loss"] == run["final"]["eval_loss"]
    reference = tmp_path / "reference"
    finetune_ok(reference, "--dataset", str(data), *CONSTANT, *CURVE, "--max-steps", str(best_step))
    assert same_weights(saved_weights(best_run), saved_weights(reference))
    # the curve and its thresholds were calibrated on the best model, not on the last one
    assert (best_run / "thresholds.json").read_text() == (reference / "thresholds.json").read_text()
    kept_curve, reference_curve = run["sparsity_curve"], read_metrics(reference)["runs"]["sparseout"]["sparsity_curve"]
    assert kept_curve["points"] == reference_curve["points"]
    card = json.loads((best_run / "hf_sparseout_run.json").read_text())
    assert card["results"]["sparseout"]["eval_loss"] == run["final"]["eval_loss"]
    assert (best_run / "README.md").is_file()
    assert [p.name for p in (best_run / "checkpoints" / "sparseout").glob("*best*")] == ["best"]


@pytest.mark.slow  # one training run
def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path, data):
    out = tmp_path / "out"
    finetune_ok(out, "--dataset", str(data), *CONSTANT, *BEST, "--max-steps", "16", "--early-stopping-patience", "2")
    run = read_metrics(out)["runs"]["sparseout"]
    best_step, stop_step = _expected(run["evals"], patience=2)
    assert stop_step < 16 and read_metrics(out)["summary"][0]["steps"] == stop_step
    assert run["stopped_early"]["step"] == stop_step and "early stopping" in run["stopped_early"]["reason"]
    assert [e["step"] for e in run["evals"]][-1] == stop_step  # no second evaluation at the stop
    assert run["best_step"] == best_step and run["final"]["step"] == best_step


@pytest.mark.slow  # two training runs (one interrupted), against the uninterrupted one
def test_an_interrupted_run_resumes_with_the_best_so_far(tmp_path, data, best_run, monkeypatch):
    from hf_sparseout.training import steps

    original = steps.record_step

    def interrupt_at_5(ctx, step):
        if ctx.result.global_step == 4:  # after the step-4 checkpoint, with the best copy written earlier
            raise KeyboardInterrupt
        original(ctx, step)

    out = tmp_path / "out"
    # the curve's options as in best_run: --sparsity-curve holds calibration examples out of training
    args = ["--dataset", str(data), *CONSTANT, *BEST, *CURVE, "--max-steps", "6", "--save-steps", "2"]
    with monkeypatch.context() as patch:
        patch.setattr(steps, "record_step", interrupt_at_5)
        assert invoke("--output-dir", str(out), *args).exit_code == 130
    finetune_ok(out, *args, "--resume-from-checkpoint", "latest")
    resumed, whole = read_metrics(out)["runs"]["sparseout"], read_metrics(best_run)["runs"]["sparseout"]
    assert resumed["best"] == whole["best"] and resumed["final"]["step"] == whole["final"]["step"]
    assert same_weights(saved_weights(out), saved_weights(best_run))


@pytest.mark.slow  # launches 2 processes
def test_two_processes_pick_the_one_process_best(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    common = ["--dataset", str(data), *FAST[:4], "--learning-rate", "1e-3", "--p", "1e-9", "--q", "1.5"]
    common += ["--attention", "sparseout", "--lr-scheduler", "constant", "--max-steps", "6", *BEST]
    one = run_metrics(SINGLE, tmp_path / "one", *common, "--batch-size", "4")["runs"]["sparseout"]
    two_all = run_metrics(LAUNCH, tmp_path / "two", *common, "--batch-size", "2")
    assert two_all["num_processes"] == 2
    two = two_all["runs"]["sparseout"]
    for e1, e2 in zip(one["evals"], two["evals"], strict=True):
        assert e1["step"] == e2["step"] and e1["eval_loss"] == pytest.approx(e2["eval_loss"], rel=1e-4)
    assert one["best_step"] == two["best_step"] == _expected(one["evals"])[0]
    assert two["best"]["value"] == pytest.approx(one["best"]["value"], rel=1e-4)
    assert two["final"]["eval_loss"] == pytest.approx(one["final"]["eval_loss"], rel=1e-4)
    assert math.isfinite(two["final"]["eval_loss"])
