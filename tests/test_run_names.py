"""Runs named for what they are: sparseout, dropout (q = 2) and p=0, everywhere; old names still read."""

from __future__ import annotations

import json

import pytest

from hf_sparseout.sweep.grid import GridPoint
from hf_sparseout.sweep.run import read_record
from hf_sparseout.training.args import FinetuneArgs
from hf_sparseout.training.run_names import canonical_metrics, directory, main_name, run_label, run_name


@pytest.mark.parametrize(
    ("q", "p", "name"),
    [(1.5, 0.1, "sparseout"), (2.0, 0.1, "dropout"), (2.0, None, "dropout"), (2.0, 0.0, "p=0"), (1.0, 0.0, "p=0")],
)
def test_a_run_is_named_for_its_patch(q, p, name):
    assert run_name(q, p) == name


def test_labels_show_q_only_where_it_means_something():
    assert run_label("sparseout", 1.5) == "sparseout (q=1.5)"
    assert run_label("dropout", 2.0) == "dropout"
    assert run_label("p=0", 2.0) == "p=0"


def test_main_run_takes_its_name_unless_a_control_has_it():
    assert main_name(FinetuneArgs(q=2.0, p=0.1, baseline=False)) == "dropout"
    assert main_name(FinetuneArgs(q=1.5, p=0.0, baseline=False)) == "p=0"
    assert main_name(FinetuneArgs(q=1.5, p=0.1, baseline="both")) == "sparseout"
    # the control of the same name is trained beside it: the main run keeps the generic name
    assert main_name(FinetuneArgs(q=2.0, p=0.1, baseline="dropout")) == "sparseout"
    assert main_name(FinetuneArgs(q=1.0, p=0.0, baseline="none")) == "sparseout"


def test_directories_keep_the_old_layout():
    """Checkpoints and control models stay where earlier runs put them, so those runs resume."""
    assert [directory(n, main=False) for n in ("dropout", "p=0")] == ["baseline", "p0"]
    assert directory("dropout", main=True) == directory("p=0", main=True) == "sparseout"


def test_old_metrics_names_are_mapped_on_read():
    old = {
        "summary": [{"run": "sparseout"}, {"run": "baseline"}, {"run": "p0"}],
        "runs": {"sparseout": {"q": 1.5}, "baseline": {"q": 2.0}, "p0": {"q": 2.0}},
    }
    new = canonical_metrics(old)
    assert [r["run"] for r in new["summary"]] == ["sparseout", "dropout", "p=0"]
    assert list(new["runs"]) == ["sparseout", "dropout", "p=0"]
    assert canonical_metrics(new) == new


def _metrics(name: str, q: float, p: float) -> dict:
    row = {"run": name, "p": p, "q": q, "perplexity": 12.0, "eval_loss": 2.5, "hoyer": 0.2, "steps": 4}
    return {"task": "causal-lm", "summary": [row], "runs": {name: {"q": q, "p": p, "throughput": 10.0}}}


@pytest.mark.parametrize(("name", "q", "p"), [("dropout", 2.0, 0.1), ("p=0", 2.0, 0.0), ("sparseout", 1.5, 0.1)])
def test_sweep_reads_the_main_run_whatever_its_name(tmp_path, name, q, p):
    point = GridPoint(p, q, 0)
    run_dir = tmp_path / point.relative_dir
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(_metrics(name, q, p)))
    _, record = read_record(tmp_path, point, "trained")
    assert record["perplexity"] == 12.0 and record["throughput"] == 10.0


def test_sweep_log_labels_name_the_controls():
    assert GridPoint(0.1, 2.0, 0).label == "dropout p=0.1 seed0"
    assert GridPoint(0.0, 2.0, 1, lq_penalty=1.0).label == "p=0 lq1 seed1"
    assert GridPoint(0.1, 1.5, 0, "matched").label == "p=0.1 noise-matched q=1.5 seed0"
