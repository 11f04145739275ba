"""The loop of ``python -m bench.gpu_check``: run each stage in its own process within the budget, record as it goes.

Run on a CUDA machine (after the README's install, with the ``triton`` extra)::

    python -m bench.gpu_check                       # 480 s, into bench/results/gpu/<UTC date>/
    python -m bench.gpu_check --budget-s 300 --out /tmp/gpu
    python -m bench.gpu_check --dry-run             # any machine: stages, budgets, commands; checks they parse
    python -m bench.gpu_check --ptb /data/ptb       # PTB elsewhere than ../shared/data/ptb

Budget: each stage gets its share of ``--budget-s`` (``stages.shares``) plus whatever earlier stages left
unspent, never more than the time left; a stage whose allowance is under its minimum is skipped (a line says
so). A stage past its allowance is killed (its process group) and recorded as ``timeout``; what it wrote
before stays. After each stage: ``gpu_check.json`` (every stage's status so far) is rewritten atomically and a
line is appended to ``gpu_check.md``, synced to disk. ``--resume`` skips stages already recorded as ``ok`` in
that directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.gpu_check.record import append_line, read_json, write_json
from bench.gpu_check.stages import DEFAULT_BUDGET_S, STAGES, Stage, shares

RESULTS_ROOT = Path(__file__).resolve().parent.parent / "results" / "gpu"
MARGIN_S = 5.0
"""A stage is told to stop starting new cases this long before its allowance ends (writing takes time too)."""


def default_out() -> Path:
    """``bench/results/gpu/<UTC date>/``."""
    return RESULTS_ROOT / dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.gpu_check``."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="wall-clock budget for every stage")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default bench/results/gpu/<date>/)")
    ap.add_argument("--only", default=None, help="comma-separated stage names (default: all, in order)")
    ap.add_argument("--resume", action="store_true", help="skip the stages recorded as ok in --out")
    ap.add_argument("--dry-run", action="store_true", help="list stages, budgets and commands; check they parse")
    ap.add_argument("--ptb", type=Path, default=None, help="PTB directory for the finetune stage (default ../shared)")
    return ap


def select(only: str | None, stages: Sequence[Stage] = STAGES) -> tuple[Stage, ...]:
    """The stages named in ``only`` (in the canonical order), all when ``None``; ``SystemExit`` on a bad name."""
    if not only:
        return tuple(stages)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(names) - {s.name for s in stages})
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; stages: {', '.join(s.name for s in stages)}")
    return tuple(s for s in stages if s.name in names)


def check_stage(stage: Stage, out: Path, time_limit_s: float) -> str | None:
    """``None`` when the stage's module imports and its arguments parse (and its ``dry_check`` passes)."""
    argv = stage.argv(out, time_limit_s)[3:]
    try:
        module = importlib.import_module(stage.module)
        args = module.build_parser().parse_args(argv)
        if hasattr(module, "dry_check"):
            module.dry_check(args)
    except SystemExit as err:  # argparse: a bad argument
        return f"arguments do not parse (exit {err.code})"
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def dry_run(stages: Sequence[Stage], out: Path, budget_s: float, echo: Callable[[str], None] = print) -> int:
    """Print every stage with its budget and command and check it; 0 when all are fine, 1 otherwise."""
    share = shares(budget_s, tuple(stages))
    failures = 0
    echo(f"gpu_check dry run: budget {budget_s:.0f} s, output {out}")
    for stage in stages:
        problem = check_stage(stage, out, share[stage.name] - MARGIN_S)
        failures += problem is not None
        echo(f"- {stage.name}: {stage.title}")
        echo(f"  budget {share[stage.name]:.0f} s (skipped under {stage.min_s:.0f} s)")
        echo(f"  command: {shlex.join(stage.argv(out, share[stage.name] - MARGIN_S))}")
        echo(f"  check: {'ok' if problem is None else 'ERROR ' + problem}")
    return 1 if failures else 0


def _run(argv: list[str], timeout_s: float, log: Path) -> tuple[int | None, float]:
    """Run ``argv`` in its own process group, output to ``log``; ``(rc, wall)``, ``rc`` ``None`` on timeout."""
    start = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(timeout_s, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    return rc, time.monotonic() - start


def md_line(stage: Stage, rec: dict[str, Any]) -> str:
    """One row of ``gpu_check.md``."""
    cells = [stage.name, rec["status"], rec.get("verdict", ""), f"{rec.get('wall_s', 0):.0f}", rec.get("summary", "")]
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def run_stages(
    stages: Sequence[Stage],
    out: Path,
    budget_s: float,
    resume: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, dict[str, Any]]:
    """Run ``stages`` in order within ``budget_s``; return (and write, stage by stage) their records."""
    out.mkdir(parents=True, exist_ok=True)
    md, index = out / "gpu_check.md", out / "gpu_check.json"
    records: dict[str, dict[str, Any]] = (read_json(index) or {}).get("stages", {}) if resume else {}
    if not md.exists() or not resume:
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        header = [f"# GPU check, {started}", "", f"`{shlex.join(['python', '-m', 'bench.gpu_check', *sys.argv[1:]])}`"]
        header += [f"budget {budget_s:.0f} s; each stage's JSON and log are beside this file.", ""]
        header += ["| stage | status | verdict | wall s | summary |", "|---|---|---|---|---|"]
        md.write_text("\n".join(header) + "\n")
    share = shares(budget_s, tuple(stages))
    t0, carry = clock(), 0.0
    for stage in stages:
        if resume and records.get(stage.name, {}).get("status") == "ok":
            continue
        left = budget_s - (clock() - t0)
        allowed = min(left, share[stage.name] + carry)
        if allowed < stage.min_s:
            rec = {"status": "skipped", "summary": f"needs >= {stage.min_s:.0f} s, {max(allowed, 0):.0f} s left"}
            carry += share[stage.name]
        else:
            rc, wall = _run(stage.argv(out, allowed - MARGIN_S), allowed, out / f"{stage.name}.log")
            data = read_json(stage.json_path(out)) or {}
            status = "timeout" if rc is None else ("ok" if rc == 0 else f"error (rc {rc})")
            rec = {"status": status, "wall_s": round(wall, 1), "allowed_s": round(allowed, 1)}
            rec |= {"verdict": data.get("verdict", "none (no record)"), "summary": data.get("summary", "")}
            if rc not in (0, None) and not rec["summary"]:
                rec["summary"] = f"see {stage.name}.log"
            carry = max(allowed - wall, 0.0)
        records[stage.name] = rec
        write_json(index, {"budget_s": budget_s, "stages": records})
        append_line(md, md_line(stage, rec))
        print(md_line(stage, rec), flush=True)
    append_line(md, f"\nfinished in {clock() - t0:.0f} s")
    return records


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit status is 1 when a stage failed its check or verdict (dry run: failed to parse)."""
    args = build_parser().parse_args(argv)
    stages = select(args.only)
    if args.ptb is not None:
        ptb = ("--ptb", str(args.ptb.resolve()))
        stages = tuple(replace(s, args=s.args + ptb) if s.name == "finetune" else s for s in stages)
    out = args.out or default_out()
    if args.dry_run:
        return dry_run(stages, out, args.budget_s)
    records = run_stages(stages, out, args.budget_s, args.resume)
    bad = [n for n, r in records.items() if r["status"].startswith("error") or r.get("verdict") == "FAIL"]
    return 1 if bad else 0
