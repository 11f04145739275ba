"""A sweep never skips, resumes or aggregates a run trained with options other than the command's (issue 23.1)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from finetune_helpers import FAST, invoke_cli, write_text_corpus

from hf_sparseout.training.args import FinetuneArgs
from hf_sparseout.training.run_options import differing, effective_options, recorded_options, write_run_options
from hf_sparseout_cli.finetune_cmd import args_from_params
from hf_sparseout_cli.sweep_cmd import parse_finetune_options

TINY = [*FAST, "--max-steps", "2", "--max-eval-samples", "4"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _command_args(*options: str) -> FinetuneArgs:
    """The finetune options a sweep command passes on (what its runs would be trained with)."""
    return args_from_params({**parse_finetune_options(list(options)), "lq_q": None})


def _fake_sweep(root: Path, args: FinetuneArgs) -> None:
    """A sweep directory whose sweep_args.json matches ``args`` (so only the runs' own records can differ)."""
    from hf_sparseout.sweep.run import ARGS_FILE, _shared_options

    root.mkdir(parents=True)
    (root / ARGS_FILE).write_text(json.dumps(_shared_options(args), default=str))


def test_spelled_out_defaults_and_unused_options_are_not_differences():
    base = FinetuneArgs(lq_penalty=1.0, max_steps=5, q=1.5, p=0.1)
    same = [
        dataclasses.replace(base, lq_q=1.0),  # the default exponent, spelled out
        dataclasses.replace(base, epochs=3.0),  # ignored with --max-steps
        dataclasses.replace(base, save_steps=1, report_to=["tensorboard"], output_dir="elsewhere"),
    ]
    for args in same:
        assert effective_options(args) == effective_options(base)
    for change in ({"noise": "matched"}, {"lq_q": 2.0}, {"max_steps": 6}, {"seed": 1}, {"p": 0.2}):
        assert effective_options(dataclasses.replace(base, **change)) != effective_options(base), change


def test_an_inferred_task_matches_the_same_task_spelled_out(tmp_path):
    args = FinetuneArgs(max_steps=2)  # --task inferred from the data
    write_run_options(tmp_path / "interrupted", args, task="causal-lm")
    finished = tmp_path / "finished"
    finished.mkdir()
    metrics = {"task": "causal-lm", "args": args.to_dict(), "summary": [{"run": "sparseout"}]}
    (finished / "metrics.json").write_text(json.dumps(metrics, default=str))
    for run in (tmp_path / "interrupted", finished):
        recorded = recorded_options(run)
        assert differing(recorded, effective_options(args)) == []  # inferred again from the same data
        assert differing(recorded, effective_options(dataclasses.replace(args, task="causal-lm"))) == []
        assert differing(recorded, effective_options(dataclasses.replace(args, task="classification"))) == ["task"]


def test_a_finished_run_with_other_options_is_refused_before_anything_runs(tmp_path):
    command = ["--q", "1.5", "--no-baseline", "--seeds", "1", *TINY]
    args = _command_args(*TINY)
    root = tmp_path / "sw"
    _fake_sweep(root, args)
    run = root / "q1.5" / "seed0"
    run.mkdir(parents=True)
    trained = dataclasses.replace(args, q=1.5, seed=0, noise="matched")
    (run / "metrics.json").write_text(
        json.dumps({"task": "causal-lm", "args": trained.to_dict(), "summary": [{"run": "sparseout"}]}, default=str)
    )
    before = _files(root)
    result = invoke_cli("sweep", *command, "--output-dir", str(root))
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "q1.5/seed0 differs in:" in flat and "noise (matched, this command raw)" in flat
    assert "--overwrite-output-dir" in flat
    assert _files(root) == before


def test_an_interrupted_run_is_checked_by_its_run_options(tmp_path):
    args = _command_args(*TINY)
    root = tmp_path / "sw"
    _fake_sweep(root, args)
    run = root / "q1.5" / "seed0"
    (run / "checkpoints" / "sparseout" / "step-1").mkdir(parents=True)  # what a resume would continue
    write_run_options(run, dataclasses.replace(args, q=1.5, seed=0, learning_rate=0.5))
    before = _files(root)
    result = invoke_cli("sweep", "--q", "1.5", "--no-baseline", "--seeds", "1", *TINY, "--output-dir", str(root))
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "q1.5/seed0 differs in: learning_rate (0.5, this command 0.001)" in flat
    assert _files(root) == before


@pytest.mark.slow
def test_the_mixing_sequence_is_refused_and_overwrite_retrains(tmp_path):
    """Issue 23.1: matched q = 1.5, then raw q = 1, then both q in one sweep must not mix the noise modes."""
    data = write_text_corpus(tmp_path / "txt")
    root = tmp_path / "swM"
    common = ["--no-baseline", "--seeds", "1", "--dataset", str(data), *TINY, "--output-dir", str(root)]
    first = invoke_cli("sweep", "--q", "1.5", "--noise", "matched", *common)
    assert first.exit_code == 0, first.output[-3000:]
    assert recorded_options(root / "q1.5" / "seed0")["noise"] == "matched"
    second = invoke_cli("sweep", "--q", "1.0", *common)  # other runs, other noise: nothing is mixed yet
    assert second.exit_code == 0, second.output[-3000:]
    before = _files(root)

    mixed = invoke_cli("sweep", "--q", "1.0,1.5", *common)
    flat = " ".join(mixed.output.split())
    assert mixed.exit_code == 2, mixed.output[-3000:]
    assert "q1.5/seed0 differs in:" in flat and "noise (matched, this command raw)" in flat and "q1/seed0" not in flat
    assert _files(root) == before  # nothing trained, nothing aggregated, sweep_args.json untouched

    retrained = invoke_cli("sweep", "--q", "1.0,1.5", *common, "--overwrite-output-dir", "--format", "json")
    assert retrained.exit_code == 0, retrained.output[-3000:]
    assert recorded_options(root / "q1.5" / "seed0")["noise"] == "raw"
    summary = json.loads((root / "sweep.json").read_text())
    assert {r["q"]: r["status"] for r in summary["runs"]} == {1.0: "trained", 1.5: "trained"}


@pytest.mark.slow
def test_a_default_spelled_out_resumes_the_same_sweep(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    root = tmp_path / "sw"
    common = ["--q", "1.5", "--no-baseline", "--seeds", "1", "--lq-penalty", "0,2", "--dataset", str(data), *TINY]
    first = invoke_cli("sweep", *common, "--output-dir", str(root))
    assert first.exit_code == 0, first.output[-3000:]
    again = invoke_cli("sweep", *common, "--lq-q", "1", "--task", "causal-lm", "--output-dir", str(root))
    assert again.exit_code == 0, again.output[-3000:]
    summary = json.loads((root / "sweep.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["skipped", "skipped"]
