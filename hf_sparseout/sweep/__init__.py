"""``hf-sparseout sweep``'s engine: a grid of finetune runs (grid.py), run and resumed (run.py), summarised (report.py).

Example:
    >>> from hf_sparseout.sweep import sweep
    >>> from hf_sparseout.training.args import FinetuneArgs
    >>> args = FinetuneArgs(max_steps=20)
    >>> result = sweep(args, qs=[1.5], ps=[0.1], seeds=[0, 1], noises=["raw", "matched"])  # doctest: +SKIP
"""

from hf_sparseout.sweep.grid import BASELINE_Q, DEFAULT_QS, GridPoint, grid, parse_noise, parse_seeds, parse_values
from hf_sparseout.sweep.report import aggregate
from hf_sparseout.sweep.run import SweepResult, read_record, sweep

__all__ = [
    "BASELINE_Q",
    "DEFAULT_QS",
    "GridPoint",
    "SweepResult",
    "aggregate",
    "grid",
    "parse_noise",
    "parse_seeds",
    "parse_values",
    "read_record",
    "sweep",
]
