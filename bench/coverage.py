"""Patcher coverage over every text model type of the installed transformers: writes docs/COVERAGE.md.

For each model type with a causal-LM, seq2seq, masked-LM or sequence-classification head, a tiny
random model (``bench/tiny_models.py``: every dropout probability 0.2) is built with eager
attention and, where the class supports it, SDPA, then:

1. ``hf_sparseout.verify`` on the plain model counts the dropout applications that reach torch
   in one training forward (*seen*);
2. ``hf_sparseout.inspect`` must change nothing (state_dict values, global RNG state);
3. ``hf_sparseout.patch`` with ``SparseoutConfig(q=1.5)``, then ``verify`` again: *left* is the
   plain dropout applications still reaching torch, and the report must agree (every Sparseout
   site applied as often as it says, no more plain places than its plain-site count).

Verdicts: ``pass`` (nothing left, report agrees, dry run clean), ``fail`` (with the reason),
``no dropout`` (nothing applied dropout even at p = 0.2), ``not run`` (the tiny model could not
be built or run on token ids: a limitation of this script, not of the patcher).

    python -m bench.coverage                   # every type (a few minutes on 2 CPU cores)
    python -m bench.coverage --types gpt2,bart  # a subset (prints only, unless --write)
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers

import hf_sparseout
from bench.tiny_models import HEAD_MAPPINGS, build, heads_of, inputs_for, text_model_types
from hf_sparseout import SparseoutConfig

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "COVERAGE.md"
RESULTS = ROOT / "bench" / "results" / "coverage_cpu.json"


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= 160 else text[:157] + "..."


def _supports_sdpa(model_type: str, head: str) -> bool:
    import transformers as tf

    auto = getattr(tf, HEAD_MAPPINGS[head][0])
    try:
        model_class = auto._model_mapping[tf.AutoConfig.for_model(model_type).__class__]
    except Exception:  # a default config that does not validate: build() reports it under eager
        return False
    return bool(getattr(model_class, "_supports_sdpa", False))


def check(model_type: str, head: str, impl: str) -> dict[str, Any]:
    """Build, count, dry-run, patch and count again one (type, head, attention implementation)."""
    row: dict[str, Any] = {"type": model_type, "head": head, "impl": impl, "seen": None, "left": None}
    try:
        model = build(model_type, head, impl)
        inputs = inputs_for(model)
        before = hf_sparseout.verify(model, inputs)
    except Exception as err:
        return {**row, "verdict": "not run", "reason": _short(err)}
    row["seen"] = sum(c.calls for c in before.uncovered)
    if row["seen"] == 0:
        return {**row, "verdict": "no dropout", "reason": "no dropout applied in a training forward"}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    try:
        report = hf_sparseout.inspect(model, example_inputs=inputs)
    except Exception as err:
        return {**row, "verdict": "fail", "reason": f"inspect: {_short(err)}"}
    changed = [k for k, v in model.state_dict().items() if not torch.equal(state[k], v)]
    if changed or not torch.equal(rng, torch.get_rng_state()):
        return {**row, "verdict": "fail", "reason": f"dry run changed {changed[:3] or 'the RNG state'}"}
    try:
        report = hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
        after = hf_sparseout.verify(model, inputs)
    except Exception as err:
        return {**row, "verdict": "fail", "reason": f"patch: {_short(err)}"}
    row["left"] = sum(c.calls for c in after.uncovered)
    row["sites"] = len(report.sites)
    row["report_plain"] = len(report.plain_sites)
    if after.ok:
        return {**row, "verdict": "pass", "reason": ""}
    places = ", ".join(f"{c.place} ({c.calls})" for c in after.uncovered[:3])
    reasons = [f"plain dropout left at {places}"] if after.uncovered else []
    reasons += after.disagreements[:2]
    return {**row, "verdict": "fail", "reason": "; ".join(reasons)}


def run(types: list[str], on_type: Any = None) -> list[dict[str, Any]]:
    """Every check for ``types``: one row per (type, attention implementation); ``on_type(rows)`` after each type."""
    rows: list[dict[str, Any]] = []
    for model_type in types:
        heads = heads_of(model_type)
        if not heads:
            continue
        head = heads[0]
        for impl in ("eager", "sdpa"):
            if impl == "sdpa" and not _supports_sdpa(model_type, head):
                continue
            start = time.perf_counter()
            try:
                row = check(model_type, head, impl)
            except Exception as err:  # a bug of this script or the patcher: still a row, never a crash
                row = {"type": model_type, "head": head, "impl": impl, "verdict": "fail", "reason": _short(err)}
                traceback.print_exc()
            row["seconds"] = round(time.perf_counter() - start, 2)
            print(f"{model_type:32s} {impl:5s} {row['verdict']:10s} {row.get('reason', '')}", flush=True)
            rows.append(row)
        if on_type is not None:
            on_type(rows)
    return rows


def _summary(rows: list[dict[str, Any]], impl: str) -> tuple[int, int, int, int]:
    sel = [r for r in rows if r["impl"] == impl]
    ran = [r for r in sel if r["verdict"] in ("pass", "fail")]
    return (
        sum(r["verdict"] == "pass" for r in ran),
        len(ran),
        sum(r["verdict"] == "no dropout" for r in sel),
        sum(r["verdict"] == "not run" for r in sel),
    )


def summary_line(rows: list[dict[str, Any]]) -> str:
    """One line for the README."""
    parts = []
    for impl in ("eager", "sdpa"):
        passed, ran, _, _ = _summary(rows, impl)
        parts.append(f"{passed} of {ran} types with dropout pass with {impl} attention")
    return "; ".join(parts)


def markdown(rows: list[dict[str, Any]], seconds: float, partial: str = "") -> str:
    """docs/COVERAGE.md (``partial``: a note that the run is not finished)."""
    lines = [
        "# Patcher coverage",
        "",
        f"Generated by `python -m bench.coverage` with transformers {transformers.__version__} and torch "
        f"{torch.__version__} on CPU ({seconds:.0f} s on 2 shared CPU cores). Every model type with a "
        "causal-LM, seq2seq, masked-LM or sequence-classification head, built tiny and random from its "
        "default config (every dropout probability 0.2, LayerDrop at its default; `bench/tiny_models.py`), "
        "first head in that order. *seen*: dropout applications reaching torch in one training forward "
        "(counted by `hf_sparseout.verify`); *left*: plain dropout still reaching torch after "
        "`hf_sparseout.patch(model, SparseoutConfig(q=1.5))`. `pass` means nothing left, the report agrees "
        "with the counts, and `inspect` changed neither the weights and buffers nor the RNG state.",
        "",
        *([f"**Partial run**: {partial}", ""] if partial else []),
    ]
    for impl in ("eager", "sdpa"):
        passed, ran, none, not_run = _summary(rows, impl)
        lines.append(
            f"- **{impl}**: {passed} of {ran} types with dropout pass; {none} apply no dropout; "
            f"{not_run} could not be built or run on token ids by this script."
        )
    lines += ["", "| type | head | attention | seen | left | verdict | reason |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        seen = "" if r.get("seen") is None else r["seen"]
        left = "" if r.get("left") is None else r["left"]
        lines.append(
            f"| {r['type']} | {r['head']} | {r['impl']} | {seen} | {left} | {r['verdict']} | {r.get('reason', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", help="comma-separated model types (default: every text model type)")
    parser.add_argument("--write", action="store_true", help="write docs/COVERAGE.md even for --types")
    args = parser.parse_args(argv)
    types = args.types.split(",") if args.types else text_model_types()
    unknown = [t for t in types if t not in text_model_types()]
    if unknown:
        parser.error(f"unknown or non-text model types {unknown}; e.g. {text_model_types()[:5]}")
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    start = time.perf_counter()
    write = args.types is None or args.write

    def save(rows: list[dict[str, Any]], partial: str = "") -> None:
        DOC.write_text(markdown(rows, time.perf_counter() - start, partial))
        RESULTS.write_text(json.dumps({"transformers": transformers.__version__, "rows": rows}, indent=1))

    def progress(rows: list[dict[str, Any]]) -> None:
        done = len({r["type"] for r in rows})
        save(rows, f"{done} of {len(types)} types so far (the file is rewritten after each type).")

    rows = run(types, progress if write else None)
    print(summary_line(rows))
    if write:
        save(rows)
        print(f"wrote {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
