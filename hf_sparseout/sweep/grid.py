"""The sweep's grid: its axes (p, noise mode, L_q penalty weight, q, seed), parsed and validated.

A :class:`GridPoint` is one finetune run. ``p``, ``noise`` and ``lq_penalty`` are ``None`` when they
are not axes of the sweep: the run then uses the shared finetune option and its directory has no
level for them. Directory of a run::

    [pP/][noise-N/][lqW/]qQ/seedS

q = 2 is plain dropout whatever the noise mode (matched noise is exactly raw noise there), so with a
noise axis the q = 2 run is trained once per (p, penalty, seed), without a ``noise-N/`` level, and
serves as the dropout baseline of every noise mode.

p = 0 is the no-noise control: every site at p = 0, attention probabilities included (``loop.sparseout_config``),
so q and the noise mode mean nothing there; it is trained once per (penalty, seed), as q = 2 with raw noise
(``p0/[lqW/]q2/seedS``, the directory of earlier sweeps' p = 0 runs). The L_q penalty still changes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hf_sparseout.errors import UsageError
from hf_sparseout.training.args import NOISE_MODES, FinetuneArgs

BASELINE_Q = 2.0
DEFAULT_QS = (1.0, 1.5, 2.0, 2.5, 3.0)


@dataclass(frozen=True)
class GridPoint:
    """One run of the sweep (``None``: not an axis; the shared finetune option applies)."""

    p: float | None
    q: float
    seed: int
    noise: str | None = None
    lq_penalty: float | None = None  # 0.0: no penalty (an axis value)

    @property
    def baseline(self) -> bool:
        """The q = 2 run at p > 0 is plain dropout: the baseline for its p, penalty and seed."""
        return self.q == BASELINE_Q and self.p != 0

    @property
    def control(self) -> bool:
        """The p = 0 run: no noise at any site (q and noise mode have no meaning there)."""
        return self.p == 0

    @property
    def relative_dir(self) -> str:
        """``p0.1/noise-matched/lq1/q1.5/seed0``; only the axes the sweep has get a level."""
        parts = [] if self.p is None else [f"p{self.p:g}"]
        parts += [] if self.noise is None else [f"noise-{self.noise}"]
        parts += [] if self.lq_penalty is None else [f"lq{self.lq_penalty:g}"]
        return "/".join([*parts, f"q{self.q:g}", f"seed{self.seed}"])

    @property
    def label(self) -> str:
        """A short name for log lines: ``p=0.1 noise-matched q=1.5 seed0``, ``dropout p=0.1 seed0``, ``p=0 seed0``."""
        parts = ["p=0"] if self.control else ["dropout"] if self.baseline else []
        parts += [] if self.p is None or self.control else [f"p={self.p:g}"]
        parts += [] if self.noise is None else [f"noise-{self.noise}"]
        parts += [] if self.lq_penalty is None else [f"lq{self.lq_penalty:g}"]
        parts += [] if self.baseline or self.control else [f"q={self.q:g}"]
        return " ".join([*parts, f"seed{self.seed}"])


def parse_values(text: str | Iterable[str], name: str) -> list[float]:
    """``"1,1.5, 2"`` (or several such strings) -> ``[1.0, 1.5, 2.0]``; ``UsageError`` for a non-number."""
    values = []
    for item in _items(text):
        try:
            values.append(float(item))
        except ValueError:
            raise UsageError(f"{name}: {item!r} is not a number", f"e.g. {name} 1.0,1.5,2.0") from None
    return values


def parse_seeds(text: str) -> list[int]:
    """``"0,7,42"`` -> ``[0, 7, 42]``."""
    seeds = []
    for item in _items(text):
        try:
            seeds.append(int(item))
        except ValueError:
            raise UsageError(f"--seed-list: {item!r} is not an integer", "e.g. --seed-list 0,1,2") from None
    return seeds


def parse_noise(text: str | Iterable[str]) -> list[str]:
    """``"raw,matched"`` -> ``["raw", "matched"]``; ``UsageError`` for an unknown mode."""
    modes = [item.lower() for item in _items(text)]
    for mode in modes:
        if mode not in NOISE_MODES:
            choices = " or ".join(NOISE_MODES)
            raise UsageError(f"--noise: {mode!r} is not a noise mode", f"give {choices}, e.g. --noise raw,matched")
    return modes


def _items(text: str | Iterable[str]) -> list[str]:
    chunks = [text] if isinstance(text, str) else list(text)
    return [v.strip() for chunk in chunks for v in chunk.split(",")]


def _check_unique(values: Sequence[Any], name: str, fmt: Callable[[Any], str] = str) -> None:
    if not values:
        raise UsageError(f"{name} is empty", f"give at least one value to {name}")
    seen: set[str] = set()
    for v in values:
        if fmt(v) in seen:
            raise UsageError(f"{name} lists {fmt(v)} twice", "give each value once")
        seen.add(fmt(v))


def point_args(args: FinetuneArgs, point: GridPoint) -> FinetuneArgs:
    """``args`` with the point's axis values (q, p, seed, and noise / penalty when they are axes)."""
    changes: dict[str, Any] = {"q": point.q, "p": point.p, "seed": point.seed}
    if point.noise is not None:
        changes["noise"] = point.noise
    if point.q == BASELINE_Q or point.control:  # dropout, or no noise: explicitly the plain op
        changes["noise"] = "raw"
    if point.lq_penalty is not None:
        weight = point.lq_penalty or None  # 0 on the axis: no penalty
        changes.update(lq_penalty=weight, lq_q=args.lq_q if weight else None)
    return dataclasses.replace(args, **changes)


def grid(
    args: FinetuneArgs,
    qs: Sequence[float],
    ps: Sequence[float | None],
    seeds: Sequence[int],
    noises: Sequence[str] | None = None,
    lq_penalties: Sequence[float] | None = None,
) -> list[GridPoint]:
    """Validate the grid and list its runs (seed-major within each p and penalty: early seeds finish first).

    Adds a q = 2 run per (p, penalty, seed) when 2 is not in ``qs`` and ``args.baseline`` is not False;
    p = 0 is one run per (penalty, seed) (module docstring).
    ``noises`` / ``lq_penalties`` None: not axes (the shared ``args.noise`` / ``args.lq_penalty`` apply).
    Every run's options are validated here, before anything is trained.
    """
    from hf_sparseout.training.loop import sparseout_config

    _check_unique(list(qs), "--q", lambda v: f"{v:g}")
    _check_unique(list(ps), "--p", lambda v: "default" if v is None else f"{v:g}")
    _check_unique(list(seeds), "--seeds")
    if noises is not None:
        _check_unique(list(noises), "--noise")
        parse_noise(noises)
        if all(q == BASELINE_Q for q in qs):
            raise UsageError(
                "--noise has no effect at q = 2 (it is plain dropout in every noise mode)", "add a q other than 2"
            )
        if all(p == 0 for p in ps):
            raise UsageError("--noise has no effect at p = 0 (no site draws noise)", "add a p above 0 to --p")
    if lq_penalties is not None:
        _check_unique(list(lq_penalties), "--lq-penalty", lambda v: f"{v:g}")
        for w in lq_penalties:
            if not (math.isfinite(w) and w >= 0):
                raise UsageError(f"--lq-penalty weights must be finite and >= 0 (0: no penalty), got {w:g}")
    for v in [*qs, *(p for p in ps if p is not None)]:
        if not math.isfinite(v):
            raise UsageError(f"grid values must be finite numbers, got {v}")
    for s in seeds:
        if not 0 <= s < 2**32:
            raise UsageError(f"seeds must be in [0, 2**32), got {s}")
    all_qs = list(qs) + ([BASELINE_Q] if BASELINE_Q not in qs and args.baseline is not False else [])
    points: dict[GridPoint, None] = {}  # ordered, without duplicates (q = 2 is shared by the noise modes)
    for p in ps:
        for weight in [None] if lq_penalties is None else lq_penalties:
            for seed in seeds:
                if p == 0:  # the no-noise control: one run whatever the q and noise axes
                    points[GridPoint(0.0, BASELINE_Q, seed, None, weight)] = None
                    continue
                for noise in [None] if noises is None else noises:
                    for q in all_qs:
                        points[GridPoint(p, q, seed, None if q == BASELINE_Q else noise, weight)] = None
    if noises is None and args.noise == "matched" and all(point_args(args, pt).noise != "matched" for pt in points):
        raise UsageError(
            "--noise matched has no effect: every run of this grid is plain dropout (q = 2) or has p = 0",
            "add a q other than 2 (and a p > 0), or drop --noise matched",
        )
    for point in points:
        run_args = point_args(args, point)
        run_args.validate()
        try:
            sparseout_config(run_args, point.q)
        except ValueError as err:
            raise UsageError(str(err), "q must be >= 0 and p a probability in [0, 1]") from err
    return list(points)
