"""``MagnitudeSample``: a memory-bounded sample of ``|x|`` from which magnitude quantiles are read.

Exact while the number of values seen is at most ``2 * max_samples``; beyond that, a Bernoulli
sample: every value is kept with the same probability ``rate`` (halved, with each kept value
surviving a fair coin, whenever more than ``2 * max_samples`` are held), so memory stays below
``2 * max_samples`` float32 values (8 bytes each at most twice that, during a compaction) and the
kept values are an i.i.d.-style uniform sample of everything seen.

Error of a sampled quantile (Dvoretzky-Kiefer-Wolfowitz): with ``n`` kept values, the empirical
distribution function is within ``eps = sqrt(ln(2 / alpha) / (2 n))`` of the true one everywhere
with probability at least ``1 - alpha``. So a threshold read at fraction ``t`` of the sample zeros
a fraction within ``t ± eps`` of the calibration values: ``n = 2**20`` gives ``eps = 0.0019`` at
``alpha = 0.001`` (0.19 percentage points of sparsity). :meth:`MagnitudeSample.error_bound` returns
this bound (0 when exact).
"""

from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_MAX_SAMPLES: int = 2**20
"""Values kept per site before sampling starts (4 MiB of float32; up to twice that is held)."""


class MagnitudeSample:
    """Streaming, memory-bounded sample of non-negative magnitudes (float32, on the CPU)."""

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0) -> None:
        if not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"max_samples must be an integer >= 1, got {max_samples!r}")
        self.max_samples = max_samples
        self.rate = 1.0
        self.seen = 0
        self.zeros = 0
        self.nonfinite = 0
        """Values seen that were NaN or infinite (kept out of the sample: a caller should refuse them)."""
        self._chunks: list[torch.Tensor] = []
        self._held = 0
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def exact(self) -> bool:
        """Whether every value seen is held (quantiles are exact)."""
        return self.rate == 1.0

    def __len__(self) -> int:
        return self._held

    def add(self, values: torch.Tensor) -> None:
        """Add a 1-d tensor of magnitudes (any device/float dtype); kept with probability ``rate``.

        NaN and infinite values are counted in :attr:`nonfinite` and otherwise ignored.
        """
        values = values.detach().reshape(-1).to("cpu", torch.float32)
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            self.nonfinite += values.numel() - int(finite.sum())
            values = values[finite]
        self.seen += values.numel()
        self.zeros += values.numel() - int(torch.count_nonzero(values))
        if self.rate < 1.0:
            values = values[torch.rand(values.numel(), generator=self._generator) < self.rate]
        self._chunks.append(values)
        self._held += values.numel()
        while self._held > 2 * self.max_samples:
            held = torch.cat(self._chunks)
            held = held[torch.rand(held.numel(), generator=self._generator) < 0.5]
            self._chunks, self._held, self.rate = [held], held.numel(), self.rate / 2

    def sorted(self) -> torch.Tensor:
        """The held values, sorted ascending."""
        if not self._chunks:
            return torch.empty(0)
        held = torch.cat(self._chunks)
        self._chunks = [held]
        return held.sort().values

    def thresholds(self, fractions: list[float]) -> list[float]:
        """Per fraction ``t``: a value ``thr`` with (about) a fraction ``t`` of the sample strictly below it.

        ``t = 0`` gives 0 (nothing is zeroed). Otherwise ``thr`` is the midpoint of the ``k``-th and
        ``(k+1)``-th smallest values, ``k = round(t * n)``: exactly ``k`` values lie below it when
        they are distinct (ties, e.g. exact zeros, can only put fewer below).
        """
        n = self._held
        if n == 0:
            raise ValueError("no values were sampled")
        held = torch.cat(self._chunks).numpy()
        self._chunks = [torch.from_numpy(held)]
        ks = [min(round(t * n), n) if t > 0 else 0 for t in fractions]
        # One multi-kth introselect (numpy.partition) gives every order statistic needed: O(n), no full sort.
        needed = sorted({i for k in ks if 0 < k < n for i in (k - 1, k)} | ({n - 1} if n in ks else set()))
        part = np.partition(held, needed) if needed else held
        out = []
        for k in ks:
            if k == 0:
                out.append(0.0)
            elif k >= n:
                out.append(math.nextafter(float(part[n - 1]), math.inf))
            else:
                out.append((float(part[k - 1]) + float(part[k])) / 2)
        return out

    def error_bound(self, alpha: float = 1e-3) -> float:
        """DKW bound on the error of a quantile's fraction at confidence ``1 - alpha`` (0 when exact)."""
        if self.exact or self._held == 0:
            return 0.0
        return math.sqrt(math.log(2 / alpha) / (2 * self._held))
