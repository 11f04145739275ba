"""Stage (b) of the GPU check: every test marked ``gpu``, with its pass/fail list (written after each test)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.gpu_check.record import add_stage_args, write_json

ROOT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    """Arguments: ``--out``, ``--time-limit-s``, ``--marker`` (default ``gpu``)."""
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check.tests_stage", description=__doc__)
    add_stage_args(ap)
    ap.add_argument("--marker", default="gpu", help="pytest -m expression")
    return ap


def dry_check(args: argparse.Namespace) -> None:
    """pytest imports and the test directory is there."""
    import pytest  # noqa: F401

    if not (ROOT / "tests").is_dir():
        raise FileNotFoundError(f"{ROOT / 'tests'} is missing")


class Recorder:
    """A pytest plugin writing ``gpu_tests.json`` after every test outcome (a kill keeps what ran)."""

    def __init__(self, path: Path, marker: str) -> None:
        self.path, self.marker = path, marker
        self.results: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        """Record the outcome of each phase; a failure in any phase fails the test."""
        if report.when == "call" or report.outcome != "passed":
            outcome = report.outcome if report.when == "call" or report.outcome == "skipped" else "error"
            if self.results.get(report.nodeid) not in ("failed", "error"):
                self.results[report.nodeid] = outcome
            if report.outcome == "failed":
                self.errors[report.nodeid] = str(report.longrepr)[-2000:]
            self.write()

    def write(self, finished: bool = False) -> None:
        """The record so far."""
        by: dict[str, list[str]] = {}
        for node, outcome in self.results.items():
            by.setdefault(outcome, []).append(node)
        counts = {k: len(v) for k, v in by.items()}
        bad = counts.get("failed", 0) + counts.get("error", 0)
        ok = finished and bad == 0 and counts.get("passed", 0) > 0
        verdict = "FAIL" if bad else ("pass" if ok else "none (unfinished)" if not finished else "FAIL")
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test ran"
        summary += "" if finished else " (cut off)"
        data = {"marker": self.marker, "finished": finished, "counts": counts, "tests": by, "failures": self.errors}
        write_json(self.path, data | {"verdict": verdict, "summary": summary})


def main(argv: list[str] | None = None) -> int:
    """Run ``pytest -m <marker>`` on the repository's tests; the record is ``gpu_tests.json``."""
    import pytest

    args = build_parser().parse_args(argv)
    rec = Recorder(args.out / "gpu_tests.json", args.marker)
    rec.write()
    rc = pytest.main(["-q", "-m", args.marker, "-p", "no:cacheprovider", str(ROOT / "tests")], plugins=[rec])
    rec.write(finished=True)
    return int(rc)


if __name__ == "__main__":
    raise SystemExit(main())
