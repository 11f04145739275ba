"""The stages of ``python -m bench.gpu_check``, most important first, with their share of the budget.

Each stage is a module run as ``python -m <module> <args>`` in its own process; every module has
``build_parser()`` (the dry run parses the stage's arguments with it) and writes ``<stage>.json`` into the
output directory itself, case by case where it has several, so a stage cut off keeps what it finished.
``--time-limit-s`` tells the stage how long it has; it stops starting new cases past it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.gpu_check.record import today

DEFAULT_BUDGET_S: float = 480.0
"""``--budget-s`` default: the shares below add up to it."""


@dataclass(frozen=True)
class Stage:
    """One stage: ``share_s`` of the default budget (scaled with ``--budget-s``), skipped below ``min_s``."""

    name: str
    title: str
    module: str
    share_s: float
    min_s: float
    args: tuple[str, ...] = field(default_factory=tuple)
    record: str = ""
    """The record's file name (``{date}``: the UTC date); ``<name>.json`` by default."""

    def json_path(self, out: Path) -> Path:
        """Where the stage writes its record."""
        return out / (self.record.replace("{date}", today()) if self.record else f"{self.name}.json")

    def argv(self, out: Path, time_limit_s: float) -> list[str]:
        """The stage's command line (the interpreter running this one, ``-m module``, its arguments)."""
        return [sys.executable, "-m", self.module, "--out", str(out), "--time-limit-s", f"{time_limit_s:.0f}"] + [
            a.replace("{out}", str(out)) for a in self.args
        ]


STAGES: tuple[Stage, ...] = (
    Stage("env", "(a) environment: GPU, driver, torch, triton, transformers", "bench.gpu_check.env_stage", 15, 5),
    Stage("gpu_tests", "(b) every test marked gpu", "bench.gpu_check.tests_stage", 75, 20),
    Stage(
        "attention_accuracy",
        "(c) flash attention vs explicit path, same mask: fwd and dQ/dK/dV, fp32/bf16/fp16",
        "bench.gpu_check.attention_accuracy",
        60,
        20,
    ),
    Stage(
        "e2e_gpt2_sdpa",
        "(d) GPT-2-small training step, SDPA: flash / explicit / compiled vs dropout",
        "bench.bench_gpt2_e2e",
        140,
        60,
        ("--gpu-check",),
        "e2e_gpt2_sdpa_{date}.json",
    ),
    Stage(
        "attention_bench",
        "(e) attention kernel vs SDPA with dropout, seq 1024-4096",
        "bench.bench_attention",
        60,
        20,
        ("--gpu-check",),
    ),
    Stage(
        "op_bench",
        "(f) element-wise op, bf16/fp32, q in 1, 1.5, 2, 3: time vs dropout, bandwidth",
        "bench.bench_op",
        50,
        20,
        ("--gpu-check",),
    ),
    Stage(
        "finetune",
        "(g) finetune GPT-2-small config on PTB, bf16, 100 steps, a checkpoint and a resume",
        "bench.gpu_check.finetune_stage",
        80,
        45,
    ),
)


def shares(budget_s: float, stages: tuple[Stage, ...] = STAGES) -> dict[str, float]:
    """Each stage's share of ``budget_s``: the default shares scaled to it."""
    total = sum(s.share_s for s in stages)
    return {s.name: budget_s * s.share_s / total for s in stages}
