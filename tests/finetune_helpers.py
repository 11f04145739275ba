"""Shared pieces of the finetune tests: small local datasets and a CliRunner wrapper."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from hf_sparseout_cli.main import app

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine and a penny saved is a penny earned",
    "all that glitters is not gold but the early bird catches the worm",
    "curiosity killed the cat while the cat was away the mice did play",
    "practice makes perfect and perfect practice makes the master",
    "when in rome do as the romans do and the romans did as they pleased",
]
FAST = ["--from-config", "gpt2-tiny", "--block-size", "16", "--batch-size", "4", "--learning-rate", "1e-3"]


def write_text_corpus(directory: Path, lines: int = 120) -> Path:
    """A train/valid pair of .txt files (split taken from the file names)."""
    directory.mkdir(parents=True, exist_ok=True)
    body = [SENTENCES[i % len(SENTENCES)] + f" number {i}" for i in range(lines)]
    (directory / "corpus.train.txt").write_text("\n".join(body))
    (directory / "corpus.valid.txt").write_text("\n".join(body[: lines // 4]))
    return directory


def write_labelled_csv(path: Path, rows: int = 80) -> Path:
    """A two-class CSV: sentences about animals (1) or money (0)."""
    animals = ["the cat sat on the mat", "dogs chase the ball", "the bird sings at dawn", "a horse runs fast"]
    money = ["the bank raised interest", "stocks fell sharply today", "save a penny each day", "prices rose again"]
    lines = ["text,label"]
    for i in range(rows):
        lines.append(f"{animals[i % 4]} {i},1" if i % 2 else f"{money[i % 4]} {i},0")
    path.write_text("\n".join(lines))
    return path


def reset_accelerate_state() -> None:
    """Forget accelerate's process state (one in-process run must not configure the next)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def invoke_cli(command: str, *args: str):
    """Run ``hf-sparseout COMMAND ARGS`` in-process, then reset accelerate's state; returns the CliRunner result."""
    try:
        return CliRunner().invoke(app, [command, *args])
    finally:
        reset_accelerate_state()


def invoke(*args: str):
    """Run ``hf-sparseout finetune`` in-process; returns the CliRunner result."""
    return invoke_cli("finetune", *args)


def finetune_ok(out: Path, *args: str):
    """``hf-sparseout finetune --output-dir OUT ARGS`` in-process, which must exit 0; the CliRunner result."""
    result = invoke("--output-dir", str(out), *args)
    assert result.exit_code == 0, result.output[-3000:]
    return result


def read_metrics(out: Path) -> dict:
    """``OUT/metrics.json``."""
    return json.loads((Path(out) / "metrics.json").read_text())


def json_tail(output: str) -> dict:
    """The JSON object printed last by --format json."""
    return json.loads(
        output[output.rindex('\n{"task"') + 1 :] if '\n{"task"' in output else output[output.index("{") :]
    )


# `hf-sparseout finetune` in 2 CPU processes (torchrun + gloo; `--cpu --num_processes 2` would start one),
# and in one process, as subprocesses.
LAUNCH_2 = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
"""`accelerate launch` of 2 CPU processes (torchrun + gloo); append a script, or ``-m module``."""
LAUNCH = [*LAUNCH_2, "-m", "hf_sparseout_cli", "finetune"]
SINGLE = [sys.executable, "-m", "hf_sparseout_cli", "finetune"]


def run_metrics(command: list[str], out: Path, *args: str) -> dict:
    """Run ``command`` (LAUNCH or SINGLE) into ``out``; its metrics.json (the run must succeed)."""
    proc = subprocess.run([*command, "--output-dir", str(out), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "metrics.json").read_text())
