"""The patcher: turns every dropout site of a transformers model into Sparseout."""

from hf_sparseout.patcher.config import SparseoutConfig
from hf_sparseout.patcher.model import get_report, inspect, is_patched, patch, unpatch
from hf_sparseout.patcher.report import Site, SiteReport
from hf_sparseout.patcher.verify import VerifyCall, VerifyReport, verify

__all__ = [
    "Site",
    "SiteReport",
    "SparseoutConfig",
    "VerifyCall",
    "VerifyReport",
    "get_report",
    "inspect",
    "is_patched",
    "patch",
    "unpatch",
    "verify",
]
