"""hf-sparseout: Sparseout (Khan & Stavness, 2019) for Hugging Face transformers models."""

from hf_sparseout.layers import Sparseout
from hf_sparseout.ops.sparseout import MAX_SCALE, sparseout
from hf_sparseout.patcher import Site, SiteReport, SparseoutConfig, get_report, inspect, is_patched, patch, unpatch
from hf_sparseout.version import __version__

__all__ = [
    "MAX_SCALE",
    "Site",
    "SiteReport",
    "Sparseout",
    "SparseoutConfig",
    "__version__",
    "get_report",
    "inspect",
    "is_patched",
    "patch",
    "sparseout",
    "unpatch",
]
