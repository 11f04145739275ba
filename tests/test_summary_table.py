"""finetune's terminal summary: readable at 100 columns, short distinct headers, lower bounds marked."""

from __future__ import annotations

import pytest
from summary_fixtures import fake_curve as _curve
from summary_fixtures import fake_run as _run

from hf_sparseout.training.reporting import print_summary


def _headers(out: str) -> list[str]:
    header = next(line for line in out.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in header.strip("┃").split("┃")]


def test_default_columns_fit_100_columns_with_distinct_headers(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    print_summary([_run("sparseout", 1.5, 385.21), _run("baseline", 2.0, 1290.84)], "causal-lm")
    out = capsys.readouterr().out
    assert "…" not in out
    headers = _headers(out)
    assert len(headers) == len(set(headers)) >= 10
    assert {"run", "q", "ppl", "best", "hoyer", "h@init", "gnorm"} <= set(headers)
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "sparseout" in out and "baseline" in out and "385.2" in out


@pytest.mark.parametrize("width", [100, 150])
def test_curve_columns_distinct_and_lower_bound_marked(capsys, monkeypatch, width: int) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    bounded = _curve([100.5, 102.0, 104.0, 110.0])  # leaves +1 % between 0.1 and 0.2, +5 % between 0.3 and 0.4
    unbounded = _curve([100.5, 102.0, 103.0, 104.0])  # never leaves +5 %: 0.4 is a lower bound
    print_summary([_run("sparseout", 1.5, 385.2, bounded), _run("baseline", 2.0, 290.8, unbounded)], "causal-lm")
    out = capsys.readouterr().out
    assert "…" not in out
    headers = _headers(out)
    assert len(headers) == len(set(headers))
    assert "sp@1%" in headers and "sp@5%" in headers
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert ">=" not in rows["sparseout"]
    assert ">=0.400" in rows["baseline"]
    assert rows["baseline"].count(">=") == 1  # the 1 % figure is interpolated, not a bound
    assert ">=: a lower bound" in " ".join(out.split())


def test_columns_that_do_not_fit_are_named_not_truncated(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "70")
    print_summary([_run("sparseout", 1.5, 385.2, _curve([101.0, 110.0]))], "causal-lm")
    out = capsys.readouterr().out
    assert "…" not in out
    assert "not shown:" in out and "tok/s" in " ".join(out.split())
    assert {"run", "q", "ppl", "best"} <= set(_headers(out))
