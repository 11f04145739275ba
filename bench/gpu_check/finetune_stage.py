"""Stage (g) of the GPU check: ``finetune`` of a GPT-2-small config on PTB in bf16, a checkpoint and a resume.

Run ``full``: 100 steps with a checkpoint at step 50. Run ``resumed``: the same command in another directory,
resumed from ``full``'s step-50 checkpoint. Recorded: both commands' exit status, wall time, their
``metrics.json`` summaries (tokens/s, peak memory, eval loss) and the relative difference of the final eval
loss (resume must continue the same run: ``pass`` within ``--resume-rtol``). PTB comes from ``--ptb``
(default: ``../shared/data/ptb`` or ``shared/data/ptb`` beside the repository).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu_check.record import Deadline, add_stage_args, read_json, write_json

ROOT = Path(__file__).resolve().parents[2]
PTB_CANDIDATES = (ROOT.parent / "shared" / "data" / "ptb", ROOT / "shared" / "data" / "ptb")


def default_ptb() -> Path | None:
    """The first PTB directory found beside the repository, or ``None``."""
    return next((p for p in PTB_CANDIDATES if (p / "ptb.train.txt").is_file()), None)


def build_parser() -> argparse.ArgumentParser:
    """Arguments: ``--out``, ``--time-limit-s``, ``--ptb``, ``--steps``, ``--q``, ``--resume-rtol``."""
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check.finetune_stage", description=__doc__)
    add_stage_args(ap)
    ap.add_argument("--ptb", type=Path, default=None, help="directory with ptb.{train,valid,test}.txt")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--q", type=float, default=1.5)
    ap.add_argument("--resume-rtol", type=float, default=0.01, help="allowed relative eval-loss difference")
    ap.add_argument("--from-config", default="gpt2-small", help="model preset (a smaller one: a CPU smoke run)")
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--mixed-precision", default="bf16")
    return ap


def finetune_args(ptb: Path, out_dir: Path, args: argparse.Namespace) -> list[str]:
    """The ``hf-sparseout finetune`` options of both runs (without ``--resume-from-checkpoint``)."""
    steps = args.steps
    return [
        "finetune", "--dataset", str(ptb), "--from-config", args.from_config, "--mixed-precision",
        args.mixed_precision, "--block-size", str(args.block_size), "--batch-size", "8", "--max-steps", str(steps),
        "--save-steps", str(steps // 2), "--save-minutes", "0", "--eval-steps", str(steps),
        "--max-eval-samples", "32", "--q", str(args.q), "--learning-rate", "6e-4",
        "--warmup-ratio", "0.05", "--output-dir", str(out_dir), "--overwrite-output-dir",
    ]  # fmt: skip


def dry_check(args: argparse.Namespace) -> None:
    """The finetune command's options parse (Click's parser, nothing run)."""
    import typer

    from hf_sparseout_cli.main import app

    group = typer.main.get_command(app)
    argv = finetune_args(args.ptb or Path("ptb"), args.out / "finetune" / "full", args)
    ctx = group.make_context("hf-sparseout", list(argv), resilient_parsing=False)
    command = group.get_command(ctx, argv[0])
    command.make_context(argv[0], [*argv[1:], "--resume-from-checkpoint", "latest"], parent=ctx)


def _run(argv: list[str], log: Path, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    cmd = [sys.executable, "-m", "hf_sparseout_cli", *argv]
    with log.open("w") as f:
        try:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
            rc: int | None = done.returncode
        except subprocess.TimeoutExpired:
            rc = None
    return {"command": cmd[1:], "rc": rc, "wall_s": round(time.monotonic() - start, 1), "log": log.name}


def _summary(out_dir: Path) -> dict[str, Any] | None:
    data = read_json(out_dir / "metrics.json") or {}
    rows = data.get("summary") or []
    return rows[0] if rows else None


def main(argv: list[str] | None = None) -> None:
    """Run ``full`` then ``resumed``; write ``finetune.json`` after each."""
    args = build_parser().parse_args(argv)
    deadline = Deadline(args.time_limit_s)
    path = args.out / "finetune.json"
    ptb = args.ptb or default_ptb()
    if ptb is None:
        write_json(path, {"verdict": "FAIL", "summary": f"PTB not found in {[str(p) for p in PTB_CANDIDATES]}"})
        return
    base = args.out / "finetune"
    base.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"ptb": str(ptb), "steps": args.steps, "q": args.q}
    full = finetune_args(ptb, base / "full", args)
    record["full"] = _run(full, args.out / "finetune_full.log", max(deadline.time_left(), 1))
    record["full"]["summary"] = _summary(base / "full")
    write_json(path, record | {"verdict": "none (unfinished)", "summary": f"full run rc {record['full']['rc']}"})
    ckpt = base / "full" / "checkpoints" / "sparseout" / f"step-{args.steps // 2}"
    resumed = [*finetune_args(ptb, base / "resumed", args), "--resume-from-checkpoint", str(ckpt)]
    if record["full"]["rc"] == 0 and deadline.time_left() > 0:
        record["resumed"] = _run(resumed, args.out / "finetune_resumed.log", max(deadline.time_left(), 1))
        record["resumed"]["summary"] = _summary(base / "resumed")
    a, b = record["full"].get("summary"), (record.get("resumed") or {}).get("summary")
    if a and b:
        diff = abs(a["eval_loss"] - b["eval_loss"]) / abs(a["eval_loss"])
        record["resume_rel_diff"] = diff
        verdict = "pass" if diff <= args.resume_rtol else "FAIL"
        summary = f"eval loss {a['eval_loss']:.4f} (full) vs {b['eval_loss']:.4f} (resumed), rel diff {diff:.1e}; "
        peak = a.get("peak_memory_mb")
        summary += f"{a.get('tokens/s')} tokens/s, peak " + (f"{peak:.0f} MiB" if peak is not None else "n/a")
    else:
        failed = record["full"]["rc"] != 0 or (record.get("resumed") or {}).get("rc") not in (0, None)
        verdict = "FAIL" if failed else "none (unfinished)"
        summary = f"full rc {record['full']['rc']}, resumed rc {(record.get('resumed') or {}).get('rc')}"
    write_json(path, record | {"verdict": verdict, "summary": summary})
    print(summary)


if __name__ == "__main__":
    main()
