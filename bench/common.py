"""Shared helpers for the benchmarks: timing, device naming, JSON + markdown results.

Every benchmark reports ratios against a baseline measured in the same run; absolute
numbers are recorded for context only. Results go to ``bench/results/<name>_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def tiny_gpt2(layers: int, hidden: int, heads: int, seq: int) -> torch.nn.Module:
    """A tiny GPT-2 LM from a config (vocabulary 256), randomly initialised with seed 0."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=256, n_positions=seq, n_embd=hidden, n_layer=layers, n_head=heads, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def add_tiny_gpt2_args(ap: argparse.ArgumentParser) -> None:
    """``--layers --hidden --heads --batch --seq``: the shape of :func:`tiny_gpt2` and of its batches."""
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)


def device_name(device: str | torch.device) -> str:
    """A human-readable device name: the GPU model, or the CPU with its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "CUDA (not available)"
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def device_slug(device: str | torch.device) -> str:
    """A file-name-safe device tag, e.g. ``cpu`` or ``cuda-nvidia-h100-80gb-hbm3``."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def median_seconds(fn: Callable[[], Any], min_run_time: float = 1.0) -> float:
    """Median wall time of ``fn()`` in seconds, via ``torch.utils.benchmark`` (CUDA-synchronised)."""
    fn()  # warm-up (allocations, lazy init, autotuning)
    return Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def environment(device: str | torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import transformers

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render ``rows`` as a GitHub markdown table with the given column order."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(
    name: str,
    device: str | torch.device,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    notes: str = "",
    out_dir: Path = RESULTS_DIR,
) -> tuple[Path, Path]:
    """Write ``<name>_<device>.json`` (environment + rows) and ``.md`` (a table); return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{name}_{device_slug(device)}"
    env = environment(device)
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "notes": notes, "rows": list(rows)}, indent=2))
    header = f"# {name} on {env['device']}\n\n"
    header += f"torch {env['torch']}, transformers {env['transformers']}, {env['date']}\n\n"
    body = markdown_table(rows, columns) + ("\n\n" + notes if notes else "") + "\n"
    stem.with_suffix(".md").write_text(header + body)
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def add_check_args(ap: argparse.ArgumentParser) -> None:
    """``--gpu-check`` (the preset ``python -m bench.gpu_check`` runs), ``--out`` and ``--time-limit-s``.

    With ``--out`` the results go to that directory (not ``bench/results/``) and the stage record (JSON with a
    verdict and a one-line summary) is rewritten after every case; past ``--time-limit-s`` no case starts.
    """
    ap.add_argument("--gpu-check", action="store_true", help="the preset of python -m bench.gpu_check")
    ap.add_argument("--out", type=Path, default=None, help="results directory (and the gpu_check stage record)")
    ap.add_argument("--time-limit-s", type=float, default=float("inf"), help="start no new case after this")


def write_stage_record(
    path: Path, device: str | torch.device, rows: Sequence[dict[str, Any]], verdict: str, summary: str, **extra: Any
) -> Path:
    """The gpu_check record of a benchmark stage: environment, rows, ``verdict``, ``summary`` (atomic write)."""
    from bench.gpu_check.record import write_json

    data = {"environment": environment(device), "rows": list(rows), "verdict": verdict, "summary": summary}
    return write_json(path, data | extra)
