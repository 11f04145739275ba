"""Functional ops: one op per file (eager PyTorch here, fused kernels beside it)."""

from hf_sparseout.ops.sparseout import MAX_SCALE, sparseout

__all__ = ["MAX_SCALE", "sparseout"]
