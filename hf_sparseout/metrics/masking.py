"""How an attention mask selects the vectors (and features) of an activation tensor that count.

``mask`` is the batch's ``(batch, seq)`` attention mask (non-zero = real token). A tensor ``x``
whose last dimension holds the features is matched against it by shape, in this order:

1. **attention probabilities** ``(batch, heads, q_len, k_len)`` with ``k_len == seq``: padded
   key columns are removed from every vector (they hold exactly 0 after the softmax; counting
   them would make a padded batch look sparser than the same sequences run alone, and change
   ``n`` in Hoyer's measure), and, when ``q_len == seq`` (self-attention), rows of padded query
   positions are dropped. Each vector is then one query's distribution over the real keys,
   exactly as without padding. Causal zeros (future keys) are part of the distribution and
   stay. With a KV cache (``q_len < seq``) or cross-attention, only key columns are masked.
2. **hidden states** ``(batch, seq, ..., features)``: vectors at padded positions are dropped.
3. **flattened tokens** ``(batch * seq, features)``: as 2, with the mask flattened.
4. **pooled vectors** ``(batch, features)`` (e.g. a classifier's dropout on the pooled output): one
   vector per sequence; a sequence whose mask is all zero (a padding sample) does not count.
5. anything else is measured **unmasked** (every vector counts); the monitor counts such calls
   per site and warns once per site.

Rule 1 is tried first, so a ``(batch, seq, heads, head_dim)`` tensor with ``head_dim == seq``
would be read as attention: an ambiguity only for dropout on per-head hidden states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Weights:
    """What counts in one tensor: row weights, key-column mask, features per vector, vectors per token."""

    rows: torch.Tensor | None
    """0/1 float weights broadcastable to ``x.shape[:-1]``; ``None``: every vector counts."""
    cols: torch.Tensor | None
    """0/1 float mask broadcastable to ``x.shape`` over the last dimension; ``None``: every feature counts."""
    n: torch.Tensor | int
    """Features per vector (a tensor broadcastable to ``x.shape[:-1]`` when columns are masked)."""
    group: int
    """Vectors per token (the heads of an attention tensor, 1 for hidden states)."""
    matched: bool
    """Whether the mask applied; ``False`` if a mask was given but the shape did not match it."""


def default_group(shape: torch.Size) -> int:
    """Vectors per token of an unmasked tensor: heads for 4-d (attention layout), else middle dims."""
    if len(shape) == 4:
        return int(shape[1])
    return math.prod(shape[2:-1]) if len(shape) >= 3 else 1


def weights_for(x: torch.Tensor, mask: torch.Tensor | None) -> Weights:
    """Match ``x`` against a ``(batch, seq)`` float 0/1 ``mask`` on ``x``'s device (see the module docstring)."""
    shape = x.shape
    if mask is None:
        return Weights(None, None, int(shape[-1]), default_group(shape), True)
    batch, seq = mask.shape
    if x.dim() == 4 and shape[0] == batch and shape[-1] == seq:
        cols = mask[:, None, None, :]
        rows = mask[:, None, :] if shape[2] == seq else None
        return Weights(rows, cols, mask.sum(-1)[:, None, None], int(shape[1]), True)
    if x.dim() >= 3 and shape[0] == batch and shape[1] == seq:
        rows = mask.reshape(batch, seq, *([1] * (x.dim() - 3)))
        return Weights(rows, None, int(shape[-1]), math.prod(shape[2:-1]), True)
    if x.dim() == 2 and shape[0] == batch * seq:
        return Weights(mask.reshape(-1), None, int(shape[-1]), 1, True)
    if x.dim() == 2 and shape[0] == batch:
        return Weights((mask.sum(-1) > 0).to(mask.dtype), None, int(shape[-1]), 1, True)
    return Weights(None, None, int(shape[-1]), default_group(shape), False)
