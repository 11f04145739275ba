"""``python -m bench.gpu_check``: the dry run (every stage imports and parses) and the time-boxed runner.

The runner is exercised with stub stages (tiny Python modules written by the test), so nothing here needs a
GPU; the real stages are only parsed (``--dry-run``), never run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.gpu_check import runner
from bench.gpu_check.stages import DEFAULT_BUDGET_S, STAGES, Stage, shares

STUB = """
import argparse, json, pathlib, time


def build_parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=pathlib.Path)
    ap.add_argument("--time-limit-s", type=float)
    ap.add_argument("--name")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--verdict", default="pass")
    return ap


if __name__ == "__main__":
    a = build_parser().parse_args()
    md = (a.out / "gpu_check.md").read_text()
    record = {"verdict": a.verdict, "summary": f"md had {md.count(chr(10))} lines"}
    (a.out / f"{a.name}.json").write_text(json.dumps(record))
    time.sleep(a.sleep)
"""


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A stage module ``gpu_check_stub`` importable by the runner's child processes and by this process."""
    (tmp_path / "gpu_check_stub.py").write_text(STUB)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "gpu_check_stub"


def stage(name: str, module: str, share: float, min_s: float = 0.0, *extra: str) -> Stage:
    return Stage(name, name, module, share, min_s, ("--name", name, *extra))


def test_shares_split_the_budget_in_proportion() -> None:
    got = shares(240.0)
    assert sum(got.values()) == pytest.approx(240.0)
    assert [s.name for s in STAGES][:2] == ["env", "gpu_tests"]  # most important first
    assert got["e2e_gpt2_sdpa"] == pytest.approx(240.0 * 140 / DEFAULT_BUDGET_S)


def test_dry_run_lists_and_checks_every_stage(tmp_path: Path) -> None:
    lines: list[str] = []
    assert runner.dry_run(STAGES, tmp_path / "out", 300.0, echo=lines.append) == 0
    text = "\n".join(lines)
    for s in STAGES:
        assert f"- {s.name}:" in text
    assert text.count("check: ok") == len(STAGES)
    assert text.count("--time-limit-s") == len(STAGES)
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_reports_a_stage_that_does_not_parse_or_import(tmp_path: Path) -> None:
    bad = (
        Stage("badarg", "bad arguments", "bench.gpu_check.env_stage", 10, 1, ("--no-such-option",)),
        Stage("badmod", "bad module", "bench.gpu_check.no_such_stage", 10, 1),
    )
    lines: list[str] = []
    assert runner.dry_run(bad, tmp_path, 20.0, echo=lines.append) == 1
    text = "\n".join(lines)
    assert "ERROR arguments do not parse" in text
    assert "ERROR ModuleNotFoundError" in text


@pytest.mark.slow
def test_runner_kills_a_stage_past_its_allowance_and_keeps_what_it_wrote(tmp_path: Path, stub: str) -> None:
    stages = (
        stage("first", stub, 3.0),
        stage("slow", stub, 3.0, 0.0, "--sleep", "60", "--verdict", "info"),
        stage("last", stub, 3.0, 100.0),  # can never fit: skipped, with a line
    )
    records = runner.run_stages(stages, tmp_path, budget_s=9.0)
    assert [records[s.name]["status"] for s in stages] == ["ok", "timeout", "skipped"]
    assert records["slow"]["verdict"] == "info"  # written before the kill, kept
    assert records["slow"]["wall_s"] < 30
    index = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(index["stages"]) == ["first", "slow", "last"]
    rows = [ln for ln in (tmp_path / "gpu_check.md").read_text().splitlines() if ln.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["first", "slow", "last"]
    assert "needs >= 100 s" in rows[-1]


def test_each_md_line_is_written_when_its_stage_ends(tmp_path: Path, stub: str) -> None:
    records = runner.run_stages((stage("a", stub, 20.0), stage("b", stub, 20.0)), tmp_path, budget_s=40.0)
    before_a = int(records["a"]["summary"].split()[2])
    assert int(records["b"]["summary"].split()[2]) == before_a + 1  # a's line was on disk when b started


def test_resume_skips_the_stages_recorded_ok(tmp_path: Path, stub: str) -> None:
    stages = (stage("a", stub, 20.0), stage("b", stub, 20.0, 0.0, "--verdict", "FAIL"))
    runner.run_stages(stages, tmp_path, budget_s=40.0)
    (tmp_path / "a.json").unlink()
    records = runner.run_stages(stages, tmp_path, budget_s=40.0, resume=True)
    assert not (tmp_path / "a.json").exists()  # a (ok) did not run again
    assert records["b"]["verdict"] == "FAIL" and records["a"]["status"] == "ok"


def test_main_exit_status_is_1_on_a_failed_verdict(tmp_path: Path, stub: str, monkeypatch) -> None:
    monkeypatch.setattr(runner, "STAGES", (stage("a", stub, 20.0, 0.0, "--verdict", "FAIL"),))
    monkeypatch.setattr(runner, "select", lambda only, stages=None: runner.STAGES)
    assert runner.main(["--out", str(tmp_path), "--budget-s", "20"]) == 1


def test_ptb_option_reaches_the_finetune_stage_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[str] = []
    real = runner.dry_run
    monkeypatch.setattr(runner, "dry_run", lambda st, out, budget: real(st, out, budget, echo=captured.append))
    assert runner.main(["--dry-run", "--only", "env,finetune", "--ptb", str(tmp_path)]) == 0
    commands = [ln for ln in captured if "command:" in ln]
    assert len(commands) == 2 and "--ptb" not in commands[0] and f"--ptb {tmp_path}" in commands[1]


def test_e2e_record_is_where_the_runner_reads_it_with_ratios_and_verdict(tmp_path: Path) -> None:
    """bench_gpt2_e2e's stage record: the file the e2e stage names, ratios over dropout, the 1.10x/1.05x target."""
    from types import SimpleNamespace

    from bench import bench_gpt2_e2e as e2e

    args = e2e.build_parser().parse_args(["--gpu-check", "--out", str(tmp_path)])
    model = SimpleNamespace(modules=lambda: [])
    runners = {
        name: SimpleNamespace(peak=peak * 2**30, how="", model=model)
        for name, peak in (("dropout", 10.0), ("sparseout", 10.4), ("sparseout-explicit", 14.0))
    }
    times = {"dropout": [0.100, 0.102, 0.098], "sparseout": [0.108, 0.109, 0.2], "sparseout-explicit": [0.15] * 3}
    e2e.stage_record(args, e2e.rows_of(runners, times, args), {}, final=True)
    stage = next(s for s in STAGES if s.name == "e2e_gpt2_sdpa")
    record = json.loads(stage.json_path(tmp_path).read_text())
    rows = {r["variant"]: r for r in record["rows"]}
    assert rows["sparseout"]["x_time"] == pytest.approx(0.109 / 0.100)  # medians over rounds
    assert rows["sparseout"]["x_memory"] == pytest.approx(1.04)
    assert rows["sparseout"]["meets_target"] and not rows["sparseout-explicit"]["meets_target"]
    assert record["verdict"] == "pass" and record["targets"]["x_time"] == 1.10
    times["sparseout"] = [0.12] * 3
    e2e.stage_record(args, e2e.rows_of(runners, times, args), {}, final=True)
    assert json.loads(stage.json_path(tmp_path).read_text())["verdict"] == "FAIL"


@pytest.mark.slow
def test_finetune_stage_resumes_to_the_same_run_on_cpu(tmp_path: Path) -> None:
    """Stage (g) end to end with a tiny preset on a generated PTB-like corpus: both runs finish and agree."""
    from bench.gpu_check import finetune_stage

    ptb = tmp_path / "ptb"
    ptb.mkdir()
    words = [f"w{i}" for i in range(50)]
    for split, n in (("train", 600), ("valid", 60), ("test", 60)):
        lines = (" ".join(words[(i * 7 + j * 3) % 50] for j in range(12)) for i in range(n))
        (ptb / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["--out", str(out), "--ptb", str(ptb), "--steps", "4", "--from-config", "gpt2-tiny"]
    finetune_stage.main([*argv, "--block-size", "32", "--mixed-precision", "no"])
    record = json.loads((out / "finetune.json").read_text())
    assert record["full"]["rc"] == 0 and record["resumed"]["rc"] == 0, record
    assert record["resumed"]["command"][-1].endswith("step-2")  # resumed from the full run's checkpoint
    assert record["verdict"] == "pass" and record["resume_rel_diff"] <= 0.01


def test_attention_accuracy_verdict_fails_on_a_mismatch_or_an_error() -> None:
    """Stage (c): a numerical mismatch past the dtype's tolerance is a FAIL, as is a kernel that did not run."""
    import torch

    from bench.gpu_check import attention_accuracy as acc

    want = torch.randn(64, dtype=torch.float64)
    norm, top = acc.rel_err(want + 1e-3 * want.abs().max(), want)
    assert top == pytest.approx(1e-3) and norm > 0
    assert acc.rel_err(torch.full((3,), float("nan")), torch.ones(3)) == (float("inf"), float("inf"))

    def row(dtype: str, err: float) -> dict:
        tol = acc.TOLERANCE[dtype]
        return {"dtype": dtype, "worst_rel_err": err, "max_rel_err": {"out": err}, "tolerance": tol, "ok": err <= tol}

    fine = [row("float32", 0.5 * acc.TOLERANCE["float32"]), row("bfloat16", 0.9 * acc.TOLERANCE["bfloat16"])]
    assert acc.summarise(fine, 2)[0] == "pass"
    assert acc.summarise(fine, 3)[0] == "none (unfinished)"
    assert acc.summarise([*fine, row("float16", 2 * acc.TOLERANCE["float16"])], 3)[0] == "FAIL"
    verdict, summary = acc.summarise([*fine, {"dtype": "float16", "ok": False, "error": "x"}], 3)
    assert verdict == "FAIL" and "1 errors" in summary
