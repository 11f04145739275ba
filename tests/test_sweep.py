"""`hf-sparseout sweep`: grid runs, aggregation, resume, bad input, and a 2-process launch."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from finetune_helpers import FAST, invoke_cli, write_text_corpus

from hf_sparseout.sweep.grid import BASELINE_Q, GridPoint, grid
from hf_sparseout.sweep.report import aggregate
from hf_sparseout.sweep.timing import pair_caveats, steady_state
from hf_sparseout.training.args import FinetuneArgs, UsageError
from hf_sparseout_cli.finetune_cmd import args_from_params, finetune
from hf_sparseout_cli.sweep_cmd import parse_finetune_options

TINY = [*FAST, "--max-steps", "2", "--max-eval-samples", "4"]


def invoke(*args: str):
    """``hf-sparseout sweep ARGS`` in-process."""
    return invoke_cli("sweep", *args)


def _ok(*args: str) -> dict:
    result = invoke("--format", "json", *args)
    assert result.exit_code == 0, result.output[-3000:]
    out = result.stdout
    return json.loads(out[out.index('{\n  "task"') :])


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _headline(run_dir: Path) -> dict:
    (row,) = _metrics(run_dir)["summary"]
    return row


def _mtimes(root: Path, skip: str) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and not str(p.relative_to(root)).startswith(skip) and not p.name.startswith("sweep")
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("sweep-data") / "txt")


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, data):
    """--q 1.0,2.0 --seeds 2: four runs; q=2 doubles as the dropout baseline."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    printed = _ok("--q", "1.0,2.0", "--seeds", "2", "--dataset", str(data), *TINY, "--output-dir", str(out))
    return out, printed


# ---- aggregation and grid (no training) ----


def test_aggregate_hand_made():
    records = [
        {"p": 0.1, "q": 1.5, "seed": 0, "perplexity": 10.0, "hoyer": 0.2, "eval_loss": 2.0},
        {"p": 0.1, "q": 1.5, "seed": 1, "perplexity": 12.0, "hoyer": 0.4, "eval_loss": None},
        {"p": 0.1, "q": 1.5, "seed": 2, "perplexity": 14.0, "hoyer": 0.6, "eval_loss": 3.0},
        {"p": 0.1, "q": 2.0, "seed": 0, "perplexity": 9.0, "hoyer": 0.1, "eval_loss": 1.0},
        {"p": None, "q": 3.0, "seed": 5, "perplexity": 8.0, "hoyer": 0.3},
    ]
    rows = aggregate(records, "perplexity")
    assert [(r["p"], r["q"]) for r in rows] == [(None, 3.0), (0.1, 1.5), (0.1, 2.0)]
    default, sparse, base = rows
    assert sparse["n"] == 3 and sparse["seeds"] == [0, 1, 2] and not sparse["baseline"]
    assert sparse["perplexity_mean"] == pytest.approx(12.0) and sparse["perplexity_std"] == pytest.approx(2.0)
    assert sparse["hoyer_mean"] == pytest.approx(0.4) and sparse["hoyer_std"] == pytest.approx(0.2)
    # a missing value is left out of that statistic only
    assert sparse["eval_loss_mean"] == pytest.approx(2.5) and sparse["eval_loss_std"] == pytest.approx(math.sqrt(0.5))
    assert base["baseline"] and base["n"] == 1 and base["perplexity_mean"] == 9.0 and base["perplexity_std"] is None
    assert default["eval_loss_mean"] is None and default["eval_loss_std"] is None and default["seeds"] == [5]


def test_aggregate_time_against_dropout_and_sites():
    """time_vs_dropout pairs each run with the q=2 run of its own p and seed; sites are averaged by name."""
    tok = {"throughput_unit": "tokens/s"}
    records = [
        {"p": 0.1, "q": 2.0, "seed": 0, "throughput": 100.0, **tok, "sites": {"a": 0.2}},
        {"p": 0.1, "q": 2.0, "seed": 1, "throughput": 200.0, **tok, "sites": {"a": 0.4}},
        {"p": 0.1, "q": 1.0, "seed": 0, "throughput": 50.0, **tok, "sites": {"a": 0.3}},
        {"p": 0.1, "q": 1.0, "seed": 1, "throughput": 160.0, **tok, "sites": {"a": 0.5, "b": 0.1}},
        {"p": 0.3, "q": 1.0, "seed": 0, "throughput": 10.0, **tok},  # no q=2 run at p=0.3
    ]
    rows = {(r["p"], r["q"]): r for r in aggregate(records, "perplexity")}
    base, sparse, lonely = rows[0.1, 2.0], rows[0.1, 1.0], rows[0.3, 1.0]
    assert base["time_vs_dropout_mean"] == pytest.approx(1.0) and base["time_vs_dropout_std"] == pytest.approx(0.0)
    # seed 0: 100/50 = 2.0, seed 1: 200/160 = 1.25 (not 150/105: ratios are paired by seed)
    assert sparse["time_vs_dropout_mean"] == pytest.approx(1.625)
    assert sparse["time_vs_dropout_std"] == pytest.approx(statistics.stdev([2.0, 1.25]))
    assert sparse["throughput_mean"] == pytest.approx(105.0) and sparse["throughput_unit"] == "tokens/s"
    assert lonely["time_vs_dropout_mean"] is None and lonely["site_hoyer"] == {}
    assert sparse["site_hoyer"]["a"] == pytest.approx({"mean": 0.4, "std": statistics.stdev([0.3, 0.5])})
    assert sparse["site_hoyer"]["b"] == {"mean": 0.1, "std": None}
    assert base["site_hoyer"]["a"]["mean"] == pytest.approx(0.3)


def test_grid_adds_the_baseline_only_when_q2_is_missing():
    args = FinetuneArgs()
    points = grid(args, [1.0, 2.5], [0.1, 0.2], [0, 1])
    assert points[:3] == [GridPoint(0.1, 1.0, 0), GridPoint(0.1, 2.5, 0), GridPoint(0.1, BASELINE_Q, 0)]
    assert len(points) == 12 and sum(p.baseline for p in points) == 4
    assert GridPoint(0.2, 2.5, 1).relative_dir == "p0.2/q2.5/seed1"
    assert GridPoint(None, 1.0, 3).relative_dir == "q1/seed3"
    with_q2 = grid(args, [2.0, 1.0], [None], [0])
    assert [p.q for p in with_q2] == [2.0, 1.0] and [p.baseline for p in with_q2] == [True, False]
    no_baseline = grid(FinetuneArgs(baseline=False), [1.0], [None], [0, 1])
    assert [p.q for p in no_baseline] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("qs", "ps", "seeds", "expect"),
    [
        ([1.0, 1.0], [None], [0], "--q lists 1 twice"),
        ([], [None], [0], "--q is empty"),
        ([1.0], [0.1, 0.1], [0], "--p lists 0.1 twice"),
        ([1.0], [None], [0, 0], "--seeds lists 0 twice"),
        ([-1.0], [None], [0], "q must be a finite number >= 0"),
        ([1.0], [1.5], [0], "p must be a finite probability"),
        ([float("nan")], [None], [0], "finite"),
        ([1.0], [None], [-1], "seeds must be in"),
    ],
)
def test_grid_rejects_bad_values(qs, ps, seeds, expect):
    with pytest.raises(UsageError, match=expect.replace("+", r"\+")):
        grid(FinetuneArgs(), qs, ps, seeds)


def test_pass_through_options_map_like_finetune():
    """sweep parses finetune's options with finetune's parser and finetune's mapping."""
    import inspect

    assert set(inspect.signature(finetune).parameters) == {f for f in FinetuneArgs.__dataclass_fields__} | {
        "fmt",
        "log_level",
        "no_baseline",  # mapped onto FinetuneArgs.baseline=False by args_from_params
    }
    assert args_from_params(parse_finetune_options([])) == FinetuneArgs()
    args = args_from_params(
        parse_finetune_options(
            [
                "--targets",
                "a,b",
                "--targets",
                "c",
                "--attention",
                "keep",
                "--lr-scheduler",
                "cosine",
                "--max-steps",
                "7",
            ]
        )
    )
    assert (args.targets, args.attention, args.lr_scheduler, args.max_steps) == (["a", "b", "c"], "keep", "cosine", 7)


# ---- the command ----


@pytest.mark.slow
def test_tiny_grid_writes_every_run_and_the_summaries(tiny_sweep):
    out, printed = tiny_sweep
    runs = {(q, s): out / f"q{q:g}" / f"seed{s}" for q in (1.0, 2.0) for s in (0, 1)}
    for (q, s), run_dir in runs.items():
        metrics = _metrics(run_dir)
        assert (metrics["args"]["q"], metrics["args"]["seed"], metrics["args"]["baseline"]) == (q, s, False)
        # the baseline is the q=2 run, not extra, and is called what it is
        assert [r["run"] for r in metrics["summary"]] == ["dropout" if q == 2 else "sparseout"]
        assert (run_dir / "model.safetensors").is_file() and (run_dir / "report.md").is_file()
    assert not any(out.rglob("baseline"))
    # seeds matter: same q, different seed -> a different training curve
    assert (
        _metrics(runs[1.0, 0])["runs"]["sparseout"]["train_loss"]
        != _metrics(runs[1.0, 1])["runs"]["sparseout"]["train_loss"]
    )

    stored = json.loads((out / "sweep.json").read_text())
    assert stored["metric"] == "perplexity" and stored["grid"]["q"] == [1.0, 2.0] and stored["grid"]["seeds"] == [0, 1]
    assert stored["summary"] == printed["summary"]
    rows = {r["q"]: r for r in stored["summary"]}
    assert set(rows) == {1.0, 2.0} and rows[2.0]["baseline"] and not rows[1.0]["baseline"]
    for q, row in rows.items():
        values = [_headline(runs[q, s]) for s in (0, 1)]
        assert row["n"] == 2 and row["p"] is None
        for key in ("perplexity", "hoyer", "eval_loss"):
            got = [v[key] for v in values]
            assert row[f"{key}_mean"] == pytest.approx(statistics.fmean(got), rel=1e-12)
            assert row[f"{key}_std"] == pytest.approx(statistics.stdev(got), rel=1e-12)
    assert {(r["q"], r["seed"], r["status"]) for r in stored["runs"]} == {
        (q, s, "trained") for q in (1.0, 2.0) for s in (0, 1)
    }

    md = (out / "sweep.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| 2 (dropout baseline) | 2 |"))
    assert f"{rows[2.0]['perplexity_mean']:.4g} ± {rows[2.0]['perplexity_std']:.2g}" in line
    assert "![sweep](sweep.png)" in md and "[q1/seed1](q1/seed1/report.md)" in md
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tiny_grid_summarises_sites_and_time_against_dropout(tiny_sweep):
    out, _ = tiny_sweep
    stored = json.loads((out / "sweep.json").read_text())
    rows = {r["q"]: r for r in stored["summary"]}
    names = {1.0: "sparseout", 2.0: "dropout"}
    per_run = {(q, s): _metrics(out / f"q{q:g}" / f"seed{s}")["runs"][names[q]] for q in (1.0, 2.0) for s in (0, 1)}
    sites = set(per_run[1.0, 0]["sparsity"]["sites"])
    assert len(sites) >= 3 and set(rows[1.0]["site_hoyer"]) == sites
    for site in sites:
        got = [per_run[1.0, s]["sparsity"]["sites"][site]["hoyer"] for s in (0, 1)]
        assert rows[1.0]["site_hoyer"][site]["mean"] == pytest.approx(statistics.fmean(got), rel=1e-12)
    # every optimizer step timed, under recorded conditions; time vs dropout from the steady step times
    for run in per_run.values():
        assert all(t > 0 for t in run["step_seconds"]) and len(run["step_seconds"]) == 2
        assert {"host", "device", "processes", "threads", "load_start", "load_end"} <= set(run["conditions"])
    kept = [s for s in (0, 1) if not pair_caveats(*(dict(per_run[q, s], seed=s) for q in (1.0, 2.0)))]
    ratios = [
        steady_state(per_run[1.0, s]["step_seconds"])["median"]
        / steady_state(per_run[2.0, s]["step_seconds"])["median"]
        for s in kept
    ]
    assert rows[1.0]["time_vs_dropout_n"] == len(kept) and len(rows[1.0]["time_vs_dropout_caveats"]) >= 2 - len(kept)
    if ratios:
        assert rows[1.0]["time_vs_dropout_mean"] == pytest.approx(statistics.fmean(ratios), rel=1e-9)
    assert rows[1.0]["throughput_unit"] == "tokens/s"

    md = (out / "sweep.md").read_text()
    site = sorted(sites)[0]
    line = next(x for x in md.splitlines() if x.startswith(f"| `{site}` |"))
    assert line.count("|") == 4  # site + one column per q
    assert "![per-site Hoyer](sweep_sites.png)" in md and "time vs dropout" in md
    assert stored["files"]["site_plot"].endswith("sweep_sites.png")
    assert (out / "sweep_sites.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_retrains_only_the_unfinished_run(tiny_sweep, data, tmp_path):
    source, _ = tiny_sweep
    out = tmp_path / "out"
    shutil.copytree(source, out)  # copy2: modification times are kept
    before = _headline(out / "q1" / "seed1")
    (out / "q1" / "seed1" / "metrics.json").unlink()
    untouched = _mtimes(out, skip="q1/seed1")
    printed = _ok("--q", "1.0,2.0", "--seeds", "2", "--dataset", str(data), *TINY, "--output-dir", str(out))
    assert _mtimes(out, skip="q1/seed1") == untouched
    status = {(r["q"], r["seed"]): r["status"] for r in printed["runs"]}
    assert status == {(1.0, 0): "skipped", (2.0, 0): "skipped", (1.0, 1): "trained", (2.0, 1): "skipped"}
    after = _headline(out / "q1" / "seed1")
    assert after["perplexity"] == pytest.approx(before["perplexity"], rel=1e-6)  # same seed, same run
    assert json.loads((out / "sweep.json").read_text())["summary"] == printed["summary"]

    # grow the sweep: one more seed trains only the two new runs
    printed = _ok("--q", "1.0,2.0", "--seeds", "3", "--dataset", str(data), *TINY, "--output-dir", str(out))
    assert sorted((r["q"], r["seed"]) for r in printed["runs"] if r["status"] == "trained") == [(1.0, 2), (2.0, 2)]
    assert {r["n"] for r in printed["summary"]} == {3}

    # other shared options on finished runs: refused before anything runs
    result = invoke(
        "--q",
        "1.0,2.0",
        "--seeds",
        "2",
        "--dataset",
        str(data),
        *FAST,
        "--max-steps",
        "3",
        "--max-eval-samples",
        "4",
        "--output-dir",
        str(out),
    )
    assert result.exit_code == 2 and "differs in: max_steps" in result.output


@pytest.mark.slow
def test_interrupted_sweep_resumes_from_the_checkpoint(data, tmp_path, monkeypatch):
    from hf_sparseout.training import checkpoints

    out = tmp_path / "out"
    common = ["--q", "1.5", "--seed-list", "3,4", "--no-baseline", "--dataset", str(data), *FAST]
    common += ["--max-steps", "2", "--save-steps", "1", "--max-eval-samples", "4", "--output-dir", str(out)]
    reference = _ok(*common, "--overwrite-output-dir")
    first = {r["seed"]: r["perplexity"] for r in reference["runs"]}

    # the same sweep stopped by Ctrl-C right after seed 4 wrote its step-1 checkpoint
    shutil.rmtree(out)
    original = checkpoints.save_checkpoint

    def save_then_interrupt(accelerator, directory, state, keep):
        path = original(accelerator, directory, state, keep)
        if "seed4" in str(directory):
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_interrupt)
    result = invoke(*common)
    monkeypatch.setattr(checkpoints, "save_checkpoint", original)
    assert result.exit_code == 130 and "rerun the same command" in result.output
    assert (out / "q1.5" / "seed3" / "metrics.json").is_file()
    assert not (out / "q1.5" / "seed4" / "metrics.json").exists()
    assert [p.name for p in (out / "q1.5" / "seed4" / "checkpoints" / "sparseout").iterdir()] == ["step-1"]

    resumed = invoke("--format", "json", *common)
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert "resumed from" in resumed.output and "at step 1" in resumed.output
    printed = json.loads(resumed.stdout[resumed.stdout.index('{\n  "task"') :])
    assert {r["seed"]: r["status"] for r in printed["runs"]} == {3: "skipped", 4: "resumed"}
    # resuming reproduces the straight run
    assert {r["seed"]: r["perplexity"] for r in printed["runs"]} == pytest.approx(first, rel=1e-6)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--q", "1,abc"], "--q: 'abc' is not a number"),
        (["--q", "1,1.0"], "--q lists 1 twice"),
        (["--q", "-0.5"], "q must be a finite number >= 0"),
        (["--p", "0.1,1.5"], "p must be a finite probability"),
        (["--q", "inf"], "finite"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--seeds", "2", "--seed-list", "0,1"], "--seeds and --seed-list are exclusive"),
        (["--seed-list", "0,x"], "'x' is not an integer"),
        (["--seed-list", "1,1"], "--seeds lists 1 twice"),
        (
            ["--max-stesp", "2"],
            "no such option for a sweep: --max-stesp (did you mean --eval-steps, --max-steps, --save-steps?)",
        ),
        (["--frobnicate"], "no such option for a sweep: --frobnicate"),
        (["--max-steps", "many"], "Invalid value for '--max-steps'"),
        (["--seed", "3"], "--seed cannot be passed to a sweep"),
        (["--resume-from-checkpoint", "latest"], "--resume-from-checkpoint cannot be passed"),
        (["--push-to-hub"], "--push-to-hub cannot be passed"),
        (["stray"], "unexpected extra argument(s) (stray)"),
        (["--lr-scheduler", "cosine", "--max-steps", "-1"], "--max-steps must be >= 0"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, expect):
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), "--from-config", "gpt2-tiny", *args)
    assert result.exit_code == 2, result.output
    assert expect in " ".join(result.output.split()), result.output
    assert not out.exists()
    if "no such option" in expect:  # the hint lists what a sweep does pass on
        flat = " ".join(result.output.split())
        assert (
            "--dataset" in flat
            and "--max-steps" in flat
            and "--save-steps" in flat
            and "--seed," not in flat
            and "completion" not in flat
        )


def test_a_non_sweep_directory_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = invoke("--output-dir", str(tmp_path / "out"), "--q", "1.5", *FAST)
    assert result.exit_code == 2 and "holds no sweep" in " ".join(result.output.split())
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_two_processes_run_every_run_and_write_the_summary_once(tmp_path, data):
    """`accelerate launch --multi_gpu --num_processes 2` (torchrun + gloo on CPU; see test_finetune_multiprocess)."""
    entry = ["-m", "hf_sparseout_cli"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *entry, "sweep"]
    out = tmp_path / "out"
    grid_args = ["--q", "1.0,2.0", "--seed-list", "0", "--dataset", str(data), *TINY, "--output-dir", str(out)]
    proc = subprocess.run([*launch, *grid_args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("Wrote ") == 1  # only the main process prints (and writes) the summary
    for q in ("q1", "q2"):
        metrics = _metrics(out / q / "seed0")
        assert metrics["num_processes"] == 2 and math.isfinite(metrics["summary"][0]["perplexity"])
    stored = json.loads((out / "sweep.json").read_text())
    assert [(r["q"], r["n"]) for r in stored["summary"]] == [(1.0, 1), (2.0, 1)]
    assert (out / "sweep.md").is_file() and (out / "sweep.png").is_file()
