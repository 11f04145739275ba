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

Verdicts: ``pass`` (nothing left, report agrees, dry run clean), ``fail`` (with the reason), ``kept plain``
(only channel or alpha dropout left, which Sparseout does not replace by design, and the report lists it),
``no dropout`` (nothing applied dropout even at p = 0.2), ``not run`` (the tiny model could not
be built or run on token ids: a limitation of this script, not of the patcher).

    python -m bench.coverage                   # every type (a few minutes on 2 CPU cores)
    python -m bench.coverage --types gpt2,bart  # a subset (prints only, unless --write)
    python -m bench.coverage --towers all       # the vision and speech towers only (bench/tiny_towers.py)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

import hf_sparseout
from bench.tiny_models import HEAD_MAPPINGS, build, heads_of, inputs_for, text_model_types
from bench.tiny_towers import TOWERS
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


_ELEMENTWISE = {"dropout", "scaled_dot_product_attention"}
"""The torch functions Sparseout replaces (``F.dropout``/``torch.dropout``, SDPA's ``dropout_p``)."""


def _rng_states() -> tuple[torch.Tensor, Any]:
    return torch.get_rng_state(), np.random.get_state()[1].copy()


def _same_rng(a: tuple[torch.Tensor, Any], b: tuple[torch.Tensor, Any]) -> bool:
    return torch.equal(a[0], b[0]) and bool((a[1] == b[1]).all())


def check(model_type: str, head: str, impl: str, make: Any = None) -> dict[str, Any]:
    """Build, count, dry-run, patch and count again one (type, head, attention implementation).

    ``make(impl) -> (model, inputs)`` replaces the text builder (the towers).
    """
    row: dict[str, Any] = {"type": model_type, "head": head, "impl": impl, "seen": None, "left": None}
    try:
        if make is None:
            model = build(model_type, head, impl)
            inputs = inputs_for(model)
        else:
            model, inputs = make(impl)
        before = hf_sparseout.verify(model, inputs)
    except Exception as err:
        return {**row, "verdict": "not run", "reason": _short(err)}
    row["seen"] = sum(c.calls for c in before.uncovered)
    if row["seen"] == 0:
        return {**row, "verdict": "no dropout", "reason": "no dropout applied in a training forward"}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = _rng_states()
    try:
        report = hf_sparseout.inspect(model, example_inputs=inputs)
    except Exception as err:
        return {**row, "verdict": "fail", "reason": f"inspect: {_short(err)}"}
    changed = [k for k, v in model.state_dict().items() if not torch.equal(state[k], v)]
    if changed or not _same_rng(rng, _rng_states()):
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
    if after.agrees and all(c.place.rsplit(":", 1)[-1] not in _ELEMENTWISE for c in after.uncovered):
        reason = f"channel/alpha dropout kept plain by design (not element-wise), listed in the report: {places}"
        return {**row, "verdict": "kept plain", "reason": reason}
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
            rows.append(_checked_row(model_type, head, impl, functools.partial(check, model_type, head, impl)))
        if on_type is not None:
            on_type(rows)
    return rows


def _checked_row(
    name: str, head: str, impl: str, run: Callable[[], dict[str, Any] | None], extra: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """``run()`` (one ``check``) timed and printed as a row; None when it skips; an exception is a ``fail`` row.

    An exception is a bug of this script or the patcher: still a row, never a crash.
    """
    start = time.perf_counter()
    try:
        row = run()
    except Exception as err:
        row = {"type": name, "head": head, "impl": impl, "verdict": "fail", "reason": _short(err)}
        traceback.print_exc()
    if row is None:
        return None
    row.update(extra or {})
    row["seconds"] = round(time.perf_counter() - start, 2)
    print(f"{name:32s} {impl:5s} {row['verdict']:10s} {row.get('reason', '')}", flush=True)
    return row


def run_towers(names: list[str], on_tower: Any = None) -> list[dict[str, Any]]:
    """The same checks for the vision and speech towers (``bench/tiny_towers.py``), eager and SDPA."""
    rows: list[dict[str, Any]] = []
    for name in names:
        tower = TOWERS[name]
        for impl in ("eager", "sdpa"):

            def run(impl: str = impl, tower: Any = tower, name: str = name) -> dict[str, Any] | None:
                if impl == "sdpa" and not tower.supports_sdpa():
                    return None
                return check(name, tower.head, impl, make=tower.build)

            row = _checked_row(name, tower.head, impl, run, extra={"inputs": tower.inputs})
            if row is not None:
                rows.append(row)
        if on_tower is not None:
            on_tower(rows)
    return rows


def _summary(rows: list[dict[str, Any]], impl: str) -> tuple[int, int, int, int]:
    sel = [r for r in rows if r["impl"] == impl]
    ran = [r for r in sel if r["verdict"] in ("pass", "fail", "kept plain")]
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


def _table(rows: list[dict[str, Any]], inputs: bool = False) -> list[str]:
    head = "| type | head | attention | " + ("inputs | " if inputs else "") + "seen | left | verdict | reason |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        seen = "" if r.get("seen") is None else r["seen"]
        left = "" if r.get("left") is None else r["left"]
        cells = [r["type"], r["head"], r["impl"], *([r.get("inputs", "")] if inputs else []), seen, left]
        lines.append("| " + " | ".join(str(c) for c in [*cells, r["verdict"], r.get("reason", "")]) + " |")
    return lines


def markdown(
    rows: list[dict[str, Any]],
    seconds: float,
    partial: str = "",
    towers: list[dict[str, Any]] | None = None,
    load: str = "",
    rerun: list[str] | None = None,
) -> str:
    """docs/COVERAGE.md (``partial``: a note that the run is not finished; ``load``: the machine's load;
    ``rerun``: types and towers whose rows were replaced afterwards with ``--update``)."""
    lines = [
        "# Patcher coverage",
        "",
        f"Generated by `python -m bench.coverage` with transformers {transformers.__version__} and torch "
        f"{torch.__version__} on CPU ({seconds:.0f} s wall time on 2 CPU cores shared with other jobs{load}). "
        "Every model type with a "
        "causal-LM, seq2seq, masked-LM or sequence-classification head, built tiny and random from its "
        "default config (every dropout probability 0.2, LayerDrop at its default; `bench/tiny_models.py`), "
        "first head in that order. *seen*: dropout applications reaching torch in one training forward "
        "(counted by `hf_sparseout.verify`); *left*: plain dropout still reaching torch after "
        "`hf_sparseout.patch(model, SparseoutConfig(q=1.5))`. `pass` means nothing left, the report agrees "
        "with the counts, and `inspect` changed neither the weights and buffers nor the RNG state (torch's "
        "and NumPy's).",
        *(
            [
                "",
                "Rows re-run after the full run with `--update` (after a change to their tiny config or to the "
                f"patcher): {', '.join(rerun)}.",
            ]
            if rerun
            else []
        ),
        "",
        *([f"**Partial run**: {partial}", ""] if partial else []),
    ]
    for impl in ("eager", "sdpa"):
        passed, ran, none, not_run = _summary(rows, impl)
        kept = sum(r["verdict"] == "kept plain" for r in rows if r["impl"] == impl)
        lines.append(
            f"- **{impl}**: {passed} of {ran} types with dropout pass"
            + (f" ({kept} keeps channel dropout plain by design)" if kept else "")
            + f"; {none} apply no dropout; "
            f"{not_run} could not be built or run on token ids by this script."
        )
    if towers:
        ok = sum(r["verdict"] == "pass" for r in towers)
        lines.append(f"- **towers** (vision and speech): {ok} of {len(towers)} checks pass.")
        lines += [
            "",
            "## Vision and speech towers",
            "",
            "The same checks on towers that take inputs of their own kind (`bench/tiny_towers.py`: the default "
            "config shrunk the same way, images 32 x 32 in patches of 8, 32 log-mel frames, 4000 audio samples); "
            "`example_inputs` carries those inputs to `verify`, `inspect` and `patch`.",
            "",
            *_table(towers, inputs=True),
            "",
            "## Text model types",
        ]
    lines += ["", *_table(rows)]
    return "\n".join(lines) + "\n"


def _update(rows: list[dict[str, Any]], towers: list[dict[str, Any]]) -> tuple[list, list]:
    """Replace the rows of these types and towers in the last full run's results; rewrite both files."""
    old = json.loads(RESULTS.read_text())
    seconds, load = old.get("seconds"), old.get("load")
    if seconds is None:  # a results file written before these fields: the header of the report has them
        found = re.search(r"\((\d+) s wall time on 2 CPU cores shared with other jobs([^)]*)\)", DOC.read_text())
        seconds, load = (int(found.group(1)), found.group(2)) if found else (0, "")

    def merged(before: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = {r["type"] for r in new}
        out = [r for r in before if r["type"] not in names] + new
        order = {name: i for i, name in enumerate(dict.fromkeys(r["type"] for r in before))}
        return sorted(out, key=lambda r: (order.get(r["type"], len(order)), r["type"], r["impl"] != "eager"))

    rows, towers = merged(old["rows"], rows), merged(old.get("towers", []), towers)
    rerun = sorted(set(old.get("rerun", [])) | {r["type"] for r in [*rows, *towers] if r.get("rerun")})
    DOC.write_text(markdown(rows, seconds, "", towers, load, rerun))
    meta = {"seconds": seconds, "load": load, "rerun": rerun}
    RESULTS.write_text(
        json.dumps({"transformers": transformers.__version__, **meta, "rows": rows, "towers": towers}, indent=1)
    )
    return rows, towers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", help="comma-separated model types (default: every text model type)")
    parser.add_argument(
        "--towers", help=f"comma-separated towers, or 'all' ({', '.join(TOWERS)}; default: all, none with --types)"
    )
    parser.add_argument("--write", action="store_true", help="write docs/COVERAGE.md even for --types/--towers")
    parser.add_argument(
        "--update",
        action="store_true",
        help="re-run --types/--towers and replace their rows in the last full run's results and docs/COVERAGE.md",
    )
    args = parser.parse_args(argv)
    types = args.types.split(",") if args.types else ([] if args.towers else text_model_types())
    unknown = [t for t in types if t not in text_model_types()]
    if unknown:
        parser.error(f"unknown or non-text model types {unknown}; e.g. {text_model_types()[:5]}")
    if args.towers in (None, "all"):
        towers = list(TOWERS) if args.towers == "all" or not args.types else []
    else:
        towers = args.towers.split(",")
    if [t for t in towers if t not in TOWERS]:
        parser.error(f"unknown towers {[t for t in towers if t not in TOWERS]}; one of {list(TOWERS)}")
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    write = (args.types is None and args.towers is None) or args.write
    tower_rows: list[dict[str, Any]] = []

    def save(rows: list[dict[str, Any]], partial: str = "") -> None:
        seconds = time.perf_counter() - start
        load = f"; load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        DOC.write_text(markdown(rows, seconds, partial, tower_rows, load))
        meta = {"seconds": round(seconds), "load": load}
        RESULTS.write_text(
            json.dumps({"transformers": transformers.__version__, **meta, "rows": rows, "towers": tower_rows}, indent=1)
        )

    def progress(rows: list[dict[str, Any]]) -> None:
        done = len({r["type"] for r in rows})
        save(rows, f"{done} of {len(types)} types so far (the file is rewritten after each type).")

    tower_rows += run_towers(towers, (lambda _: progress([])) if write else None)
    rows = run(types, progress if write else None)
    for row in [*rows, *tower_rows]:
        row["rerun"] = bool(args.update)
    if args.update:
        rows, tower_rows = _update(rows, tower_rows)
        print(f"updated {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")
    print(summary_line(rows))
    if tower_rows:
        print(f"towers: {sum(r['verdict'] == 'pass' for r in tower_rows)} of {len(tower_rows)} checks pass")
    if write:
        save(rows)
        print(f"wrote {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
