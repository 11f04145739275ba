"""The pure diagnostics of finetune: best evaluation, train loss between evals, gradient-norm windows."""

from __future__ import annotations

import math
import statistics

from hf_sparseout.training.diagnostics import best_eval, grad_norm_summary, mean_since


def test_best_eval_is_the_minimum_perplexity_or_maximum_accuracy_earliest_on_ties():
    evals = [{"step": 10, "perplexity": 50.0}, {"step": 20, "perplexity": 41.0}, {"step": 30, "perplexity": 45.0}]
    assert best_eval(evals, "causal-lm") == {"best_eval_perplexity": 41.0, "best_eval_step": 20}
    evals = [{"step": 5, "accuracy": 0.7}, {"step": 10, "accuracy": 0.8}, {"step": 15, "accuracy": 0.8}]
    assert best_eval(evals, "classification") == {"best_eval_accuracy": 0.8, "best_eval_step": 10}
    assert best_eval([{"step": 1, "perplexity": float("nan")}], "causal-lm") == {}
    assert best_eval([], "classification") == {}


def test_mean_since_takes_the_window_between_two_evals():
    losses = [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]
    assert mean_since(losses, 1, 3) == 2.5
    assert mean_since(losses, 0, 4) == 2.5
    assert mean_since(losses, 4, 8) is None


def test_grad_norm_windows_follow_the_logging_interval():
    norms = [(s, float(s)) for s in range(1, 8)] + [(8, math.inf)]
    out = grad_norm_summary(norms, every=3)
    assert out["median"] == statistics.median(range(1, 8)) and out["max"] == 7.0
    assert out["nonfinite"] == 1
    assert out["per_logging_step"] == [
        {"step": 3, "median": 2.0, "max": 3.0},
        {"step": 6, "median": 5.0, "max": 6.0},
        {"step": 7, "median": 7.0, "max": 7.0},  # the last, partial window
    ]
    assert grad_norm_summary([], every=5)["median"] is None
