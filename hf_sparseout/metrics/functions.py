"""Activation-sparsity measures: pure functions over activation vectors (last dimension = features).

Every function takes a floating-point tensor ``x`` of shape ``(..., n)``, treats each slice
``x[..., :]`` as one activation vector ``a`` of ``n`` features, and returns one value per
vector, shape ``x.shape[:-1]``, as float32 (float64 for float64 input). Sums are accumulated
in float32 or wider whatever the input dtype, so float16/bfloat16 inputs do not lose precision
in the reductions. Average over vectors with ``.mean()``.

Conventions where a measure is undefined (documented per function, chosen so that
``hoyer == (sqrt(n) - l1_l2_ratio) / (sqrt(n) - 1)`` holds for every vector with ``n > 1``):

* the zero vector has ``l1_l2_ratio = 1`` and ``hoyer = 1``: it has no non-zero entry, so it
  is at least as sparse as a one-hot vector (consistent with ``zero_fraction = 1``);
* a single feature (``n == 1``) has ``hoyer = 1``: it has at most one non-zero entry.
"""

from __future__ import annotations

import math

import torch

DEFAULT_NEAR_ZERO_THRESHOLD: float = 1e-3
"""Default ``threshold`` of :func:`near_zero_fraction`.

Activations at the Sparseout sites of a transformer are on a unit scale (LayerNorm'd hidden
states, projections of them) or are attention probabilities averaging ``1 / k_len``. ``1e-3``
is three orders of magnitude below the unit scale (an element that small changes a
unit-scale dot product by less than bfloat16's rounding, ``2 ** -8``), and stays below the
uniform attention weight for key lengths under 1000, so typical attention mass is not counted
as "near zero". It is an absolute threshold: pass your own for activations on other scales.
"""


def _check(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"expected a floating-point tensor of activation vectors, got {got}")
    if x.dim() == 0:
        raise ValueError("expected a tensor of activation vectors (last dimension = features), got a 0-d tensor")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 input, float32 for everything else (float16, bfloat16, float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _abs(x: torch.Tensor) -> torch.Tensor:
    return x.abs().to(accumulation_dtype(x.dtype))


def ratio_from_norms(l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """``l1 / l2`` with the zero-vector convention (``1`` where ``l2 == 0``)."""
    # 0 / 0 (the zero vector) and x / 0 (an l2 that underflowed) both become 1
    return torch.nan_to_num_(l1 / l2, nan=1.0, posinf=1.0)


def hoyer_from_ratio(ratio: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Hoyer's measure from ``l1 / l2`` and the vector length ``n`` (``1`` where ``n <= 1``)."""
    if isinstance(n, int):
        if n <= 1:
            return torch.ones_like(ratio)
        # written as 1 - (ratio - 1) / (sqrt(n) - 1): exactly 1 at ratio == 1 (one-hot, zero vector)
        return (ratio - 1).div_(math.sqrt(n) - 1).neg_().add_(1).clamp_(0.0, 1.0)
    sqrt_n = torch.as_tensor(n, dtype=ratio.dtype, device=ratio.device).sqrt()
    denom = sqrt_n - 1
    value = 1 - (ratio - 1) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, value.clamp(0.0, 1.0), torch.ones_like(value))


def l1_l2_ratio(x: torch.Tensor) -> torch.Tensor:
    """``||a||_1 / ||a||_2`` per vector, in ``[1, sqrt(n)]``: 1 for one-hot, ``sqrt(n)`` for constant.

    The zero vector gets ``1`` (its minimum, as for one-hot). For a vector of i.i.d. Gaussian
    entries it tends to ``sqrt(2 n / pi)`` as ``n`` grows.
    """
    _check(x)
    a = _abs(x)
    return ratio_from_norms(a.sum(-1), torch.linalg.vector_norm(a, dim=-1))


def hoyer(x: torch.Tensor) -> torch.Tensor:
    """Hoyer's sparsity per vector: ``(sqrt(n) - ||a||_1 / ||a||_2) / (sqrt(n) - 1)``, in ``[0, 1]``.

    1 for a one-hot vector (all mass in one feature), 0 for a constant-magnitude vector, higher
    means sparser (Hoyer, 2004). Defined as 1 for the zero vector and for ``n == 1`` (see the
    module docstring). Clamped to ``[0, 1]`` against rounding.
    """
    _check(x)
    return hoyer_from_ratio(l1_l2_ratio(x), x.shape[-1])


def zero_fraction(x: torch.Tensor) -> torch.Tensor:
    """The fraction of entries of each vector that are exactly zero, in ``[0, 1]``."""
    _check(x)
    return (x == 0).sum(-1, dtype=accumulation_dtype(x.dtype)) / max(x.shape[-1], 1)


def near_zero_fraction(x: torch.Tensor, threshold: float = DEFAULT_NEAR_ZERO_THRESHOLD) -> torch.Tensor:
    """The fraction of entries of each vector with ``|a| <= threshold``, in ``[0, 1]``.

    The default ``1e-3`` is explained at :data:`DEFAULT_NEAR_ZERO_THRESHOLD`; ``threshold=0``
    is :func:`zero_fraction`.
    """
    _check(x)
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return (_abs(x) <= threshold).sum(-1, dtype=accumulation_dtype(x.dtype)) / max(x.shape[-1], 1)


DEFAULT_RELATIVE_NEAR_ZERO: float = 0.1
"""Default ``ratio`` of :func:`relative_near_zero_fraction`: ``|a| <= 0.1 * rms(a)``.

Scale-free, unlike :func:`near_zero_fraction`: multiplying a vector by any ``c > 0`` leaves it
unchanged, so it cannot fall just because activations grew. For i.i.d. Gaussian entries it is
``erf(0.1 / sqrt(2)) = 0.0797``; for a vector with ``k`` of ``n`` entries non-zero and equal in
magnitude it is ``1 - k / n``.
"""


def relative_near_zero_fraction(x: torch.Tensor, ratio: float = DEFAULT_RELATIVE_NEAR_ZERO) -> torch.Tensor:
    """The fraction of entries of each vector with ``|a| <= ratio * rms(a)``, in ``[0, 1]``.

    ``rms(a) = ||a||_2 / sqrt(n)``. Scale-invariant per vector (see
    :data:`DEFAULT_RELATIVE_NEAR_ZERO`). The zero vector counts as all near zero (``1``), as in
    :func:`zero_fraction`.
    """
    _check(x)
    if not math.isfinite(ratio) or ratio < 0:
        raise ValueError(f"ratio must be a finite number >= 0, got {ratio!r}")
    a = _abs(x)
    n = max(x.shape[-1], 1)
    threshold = torch.linalg.vector_norm(a, dim=-1, keepdim=True) * (ratio / math.sqrt(n))
    return (a <= threshold).sum(-1, dtype=a.dtype) / n


def mean_abs(x: torch.Tensor) -> torch.Tensor:
    """``||a||_1 / n``, the mean magnitude of each vector's entries."""
    _check(x)
    return _abs(x).sum(-1) / max(x.shape[-1], 1)


__all__ = [
    "DEFAULT_NEAR_ZERO_THRESHOLD",
    "DEFAULT_RELATIVE_NEAR_ZERO",
    "accumulation_dtype",
    "hoyer",
    "l1_l2_ratio",
    "mean_abs",
    "near_zero_fraction",
    "relative_near_zero_fraction",
    "zero_fraction",
]
