"""The names of a finetune's runs, for what each run is: the same in logs, tables, plots and metrics.json.

``sparseout`` is Sparseout (q != 2, p > 0); ``dropout`` is q = 2 at p > 0 (plain dropout: the
``--baseline dropout`` control, or a run at q = 2); ``p=0`` has every site at p = 0 (the ``--baseline none``
control, or a run at p = 0), where q means nothing (shown as ``–``). metrics.json files written before
these names called the controls ``baseline`` and ``p0`` and every main run ``sparseout``:
:func:`canonical_metrics` maps them on read. The directories keep the old names (``checkpoints/sparseout``
for the main run, ``baseline/`` and ``p0/`` for the controls), so earlier runs still resume.
"""

from __future__ import annotations

from typing import Any

from hf_sparseout.training.args import FinetuneArgs

SPARSEOUT, DROPOUT, P0 = "sparseout", "dropout", "p=0"
LEGACY = {"baseline": DROPOUT, "p0": P0}
"""Run names in metrics.json before these names -> the names now."""
DIRECTORIES = {DROPOUT: "baseline", P0: "p0"}
"""Control run -> its directory (model under the output directory, ``checkpoints/<directory>``)."""
CONTROL_OF = {"dropout": [DROPOUT], "none": [P0], "both": [DROPOUT, P0]}
"""``--baseline`` value -> the control runs it adds."""
NO_Q = "–"
DROPOUT_Q = 2.0


def run_name(q: float, p: float | None) -> str:
    """``p=0`` at p = 0, ``dropout`` at q = 2, else ``sparseout``."""
    if p == 0:
        return P0
    return DROPOUT if q == DROPOUT_Q else SPARSEOUT


def controls(baseline: bool | str | None) -> list[str]:
    """The control runs ``--baseline`` asks for: dropout (or True) -> dropout, none -> p=0, both -> both."""
    if not baseline:
        return []
    return list(CONTROL_OF["dropout" if baseline is True else baseline])


def main_name(args: FinetuneArgs) -> str:
    """The main run's name: :func:`run_name` of its q and p, or ``sparseout`` when a control of that name
    runs beside it (the same run twice)."""
    name = run_name(args.q, args.p)
    return SPARSEOUT if name in controls(args.baseline) else name


def directory(name: str, main: bool) -> str:
    """The directory name of run ``name``: ``sparseout`` for the main run, ``baseline``/``p0`` for a control."""
    return SPARSEOUT if main else DIRECTORIES.get(name, name)


def run_directory(args: FinetuneArgs, name: str) -> str:
    """:func:`directory` of run ``name`` of a finetune with ``args`` (its main run: :func:`main_name`)."""
    return directory(name, main=name == main_name(args))


def q_label(name: str, q: float) -> str:
    """q as shown in tables: ``–`` for the p = 0 run (identity sites), else the number."""
    return NO_Q if name == P0 else f"{q:g}"


def run_label(name: str, q: float) -> str:
    """Legend and progress-bar label: ``sparseout (q=1.5)``; ``dropout`` and ``p=0`` alone."""
    return f"{name} (q={q:g})" if name == SPARSEOUT else name


def canonical_metrics(data: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` with old run names (``baseline``, ``p0``) mapped to today's; other keys untouched."""
    out = dict(data)
    if "summary" in data:
        out["summary"] = [{**row, "run": LEGACY.get(row.get("run"), row.get("run"))} for row in data["summary"]]
    if "runs" in data:
        out["runs"] = {LEGACY.get(k, k): v for k, v in data["runs"].items()}
    return out
