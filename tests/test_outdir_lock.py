"""One writer per output directory (issue 23.2): a second finetune or sweep is refused, naming the holder."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from finetune_helpers import FAST, LAUNCH, SINGLE, invoke, invoke_cli, write_text_corpus

from hf_sparseout.outdir_lock import LOCK_FILE, OutputDirBusyError, hold_output_dir, holder, refuse_if_held

TINY = [*FAST, "--max-eval-samples", "4"]
HOLD = "import sys\nfrom hf_sparseout.outdir_lock import hold_output_dir\nwith hold_output_dir(sys.argv[1]):\n"
HOLD += "    print('held', flush=True)\n    sys.stdin.read()\n"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextmanager
def another_holder(directory: Path, pid: int = 4242):
    """The OS lock on ``directory`` taken on a descriptor of its own, as another process would (flock is per open)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        record = {"pid": pid, "host": "elsewhere", "command": "hf-sparseout finetune --seed 1", "started": "then"}
        os.write(fd, json.dumps(record).encode())
        yield
    finally:
        os.close(fd)


def _start(command: list[str], log: Path) -> subprocess.Popen:
    """``command`` in the background, its output in ``log``."""
    with log.open("w") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)


def _wait_for_holder(directory: Path, proc: subprocess.Popen) -> None:
    """Until ``proc`` holds ``directory`` (its pid in the lock file); fails if it exits first."""
    while (holder(directory) or {}).get("pid") != proc.pid:
        assert proc.poll() is None, f"exited with {proc.returncode} before holding {directory}"
        time.sleep(0.1)


# ---- in one process (the other holder is a descriptor of its own) ----


def test_a_hold_records_its_process_and_leaves_nothing_it_created(tmp_path):
    where = tmp_path / "a" / "b"
    with hold_output_dir(where) as held:
        record = holder(held)
        assert record["pid"] == os.getpid() and record["host"] and record["started"]
        with hold_output_dir(where), hold_output_dir(where / "q1" / "seed0"):  # re-entrant; runs inside a sweep
            refuse_if_held(where / "q1" / "seed0")
    assert not (tmp_path / "a").exists()


def test_finetune_is_refused_while_another_process_holds_the_directory(tmp_path):
    out = tmp_path / "out"
    with another_holder(out):
        (out / "run_options.json").write_text("{}")
        before = _files(out)
        result = invoke(*TINY, "--max-steps", "1", "--overwrite-output-dir", "--output-dir", str(out))
        assert _files(out) == before
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "being written by another hf-sparseout process (pid 4242 on elsewhere" in flat
    assert "hf-sparseout finetune --seed 1" in flat


def test_finetune_into_a_held_sweep_and_a_sweep_over_a_held_run_are_refused(tmp_path):
    root = tmp_path / "sweep"
    with another_holder(root):
        result = invoke(*TINY, "--max-steps", "1", "--output-dir", str(root / "q1.5" / "seed0"))
        again = invoke_cli("sweep", "--q", "1.5", "--no-baseline", "--seeds", "1", *TINY, "--output-dir", str(root))
    for refused in (result, again):
        assert refused.exit_code == 2, refused.output
        assert "pid 4242" in " ".join(refused.output.split())
    assert "is inside" in " ".join(result.output.split())
    assert [p.name for p in root.iterdir()] == [LOCK_FILE]  # nothing written

    other = tmp_path / "other"
    with another_holder(other / "q1.5" / "seed0"):  # a finetune running in one of the sweep's run directories
        result = invoke_cli("sweep", "--q", "1.5", "--no-baseline", "--seeds", "1", *TINY, "--output-dir", str(other))
    assert result.exit_code == 2 and "pid 4242" in " ".join(result.output.split())
    assert sorted(p.name for p in other.iterdir()) == ["q1.5"]


def test_busy_error_is_a_usage_error():
    from hf_sparseout.errors import HfSparseoutError

    assert issubclass(OutputDirBusyError, HfSparseoutError)


# ---- real processes ----


@pytest.mark.slow
def test_a_killed_holders_lock_file_does_not_block(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert holder(out)["pid"] == proc.pid  # its lock file is left behind
    data = write_text_corpus(tmp_path / "txt")
    result = invoke("--dataset", str(data), *TINY, "--max-steps", "1", "--output-dir", str(out))
    assert result.exit_code == 0, result.output[-3000:]
    assert (out / "metrics.json").is_file() and not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_second_finetune_process_is_refused_and_the_first_completes(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    common = ["--dataset", str(data), *TINY, "--max-steps", "12", "--save-steps", "4", "--output-dir", str(out)]
    first = _start([*SINGLE, *common, "--seed", "1"], tmp_path / "first.log")
    _wait_for_holder(out, first)
    second = invoke(*common, "--seed", "2", "--overwrite-output-dir")
    assert first.poll() is None, "the first run ended before the second started: the race was not exercised"
    flat = " ".join(second.output.split())
    assert second.exit_code == 2, second.output[-3000:]
    assert f"pid {first.pid} " in flat and "--seed 1" in flat

    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["args"]["seed"] == 1 and metrics["summary"]
    steps = sorted((out / "checkpoints" / "sparseout").iterdir())
    assert [p.name for p in steps] == ["step-12", "step-8"]  # the last two (save_total_limit 2), complete
    for step in steps:
        assert {"optimizer.bin", "scheduler.bin"} <= {p.name for p in step.iterdir()}
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_second_sweep_is_refused_and_the_first_trains_every_run(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    root = tmp_path / "sweep"
    common = ["--q", "1.5", "--no-baseline", "--seed-list", "0,1", "--dataset", str(data), *TINY, "--max-steps", "8"]
    command = [sys.executable, "-m", "hf_sparseout_cli", "sweep", *common, "--output-dir", str(root)]
    first = _start(command, tmp_path / "first.log")
    _wait_for_holder(root, first)
    second = invoke_cli("sweep", *common, "--output-dir", str(root))
    by_hand = invoke("--dataset", str(data), *TINY, "--max-steps", "1", "--output-dir", str(root / "q1.5" / "seed1"))
    assert first.poll() is None, "the first sweep ended before the others started: the race was not exercised"
    for refused in (second, by_hand):
        assert refused.exit_code == 2, refused.output[-3000:]
        assert f"pid {first.pid} " in " ".join(refused.output.split())

    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    summary = json.loads((root / "sweep.json").read_text())
    assert {r["seed"]: r["status"] for r in summary["runs"]} == {0: "trained", 1: "trained"}
    assert not list(root.rglob(LOCK_FILE))


@pytest.mark.slow
def test_a_second_accelerate_launch_is_refused(tmp_path):
    """Under accelerate launch only the main process locks; a launch into a held directory is refused by it."""
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    with another_holder(out):
        before = _files(out)
        command = [*LAUNCH, "--dataset", str(data), *TINY, "--max-steps", "1", "--output-dir", str(out)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert _files(out) == before
    assert proc.returncode != 0
    assert "pid 4242" in " ".join((proc.stdout + proc.stderr).split())
