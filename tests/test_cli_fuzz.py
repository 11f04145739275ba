"""Property-based fuzz of `hf-sparseout finetune`'s numeric options, through the real option parsing and
every check made before data is read (``runner.check_args``): each input either passes them or exits 2
with the project's one-line error and a hint, never a traceback. No training: the run stops after the checks
(and the seed and optimizer arguments those checks let through are tried on numpy and AdamW)."""

from __future__ import annotations

import math

import pytest
from finetune_helpers import invoke

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import hf_sparseout.training.runner as runner  # noqa: E402

INT_OPTIONS = (
    "--max-train-samples",
    "--max-eval-samples",
    "--block-size",
    "--max-length",
    "--max-steps",
    "--batch-size",
    "--gradient-accumulation-steps",
    "--seed",
    "--eval-steps",
    "--save-steps",
    "--save-total-limit",
)
FLOAT_OPTIONS = (
    "--p",
    "--q",
    "--lq-penalty",
    "--lq-q",
    "--epochs",
    "--learning-rate",
    "--weight-decay",
    "--warmup-ratio",
    "--max-grad-norm",
    "--save-minutes",
    "--validation-split-percentage",
)
EDGE_INTS = [0, 1, -1, 2, 2**31, 2**32 - 1, 2**32, 2**63, -(2**63), 10**30]
EDGE_FLOATS = [0.0, -0.0, 1.0, 2.0, 0.5, -1.0, 100.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 1e-12]

ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-5, 5), st.integers(-(2**70), 2**70))
floats = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(-10, 10), st.floats(allow_nan=True, allow_infinity=True))
options = st.one_of(
    st.tuples(st.sampled_from(INT_OPTIONS), ints.map(str)),
    st.tuples(st.sampled_from(FLOAT_OPTIONS), floats.map(repr)),
    st.tuples(
        st.just("--sparsity-targets"),
        st.lists(floats, min_size=1, max_size=3).map(lambda xs: ",".join(map(repr, xs))),
    ),
)


class Checked(Exception):
    """Raised by the stand-in runner once every check before the data has passed."""


def _checks_only(args):
    """The checks, then what the run would do first with the numbers that are not checked against data: the
    seed accelerate's ``set_seed`` gives numpy, and AdamW's own argument checks (a ValueError here fails)."""
    import numpy as np
    import torch

    runner.check_args(args)
    np.random.RandomState(args.seed)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=args.learning_rate, weight_decay=args.weight_decay)
    raise Checked


@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chosen=st.lists(options, min_size=1, max_size=4))
def test_numeric_options_pass_or_exit_2_with_a_hint(monkeypatch, tmp_path, chosen):
    monkeypatch.setattr(runner, "finetune", _checks_only)
    argv = ["--output-dir", str(tmp_path / "out")]
    for option, value in chosen:
        argv.append(f"{option}={value}")
    if any(option == "--sparsity-targets" for option, _ in chosen):
        argv.append("--sparsity-curve")
    result = invoke(*argv)
    if isinstance(result.exception, Checked):
        return
    assert result.exit_code == 2, (argv, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), (argv, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("Error: "), (argv, result.output)
    assert any(line.startswith("Hint: ") for line in lines), (argv, result.output)
    assert not (tmp_path / "out").exists()
