"""What the GPU check's stages share: crash-safe outputs (JSON written atomically, markdown lines appended and
synced), the ``--out`` / ``--time-limit-s`` arguments and the stage deadline."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable (a stage killed before writing it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` and sync it to disk, so it survives the process being killed right after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def verdict(ok: bool | None) -> str:
    """``pass`` / ``FAIL`` / ``info`` (no verdict: figures only)."""
    return "info" if ok is None else ("pass" if ok else "FAIL")


def add_stage_args(ap: argparse.ArgumentParser) -> None:
    """``--out`` (the run's directory) and ``--time-limit-s`` (stop starting new cases past it)."""
    ap.add_argument("--out", type=Path, required=True, help="the gpu_check output directory")
    ap.add_argument("--time-limit-s", type=float, default=600.0, help="start no new case after this many seconds")


class Deadline:
    """``time_left()`` of a stage's ``--time-limit-s``, counted from construction."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def time_left(self) -> float:
        """Seconds until the limit (negative past it)."""
        return self.end - time.monotonic()


def today() -> str:
    """The UTC date, ``YYYY-MM-DD`` (the default output directory and the e2e record's name)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
