"""hf-sparseout: Sparseout (Khan & Stavness, 2019) for Hugging Face transformers models."""

from hf_sparseout.hub import (
    AutoSparseoutModel,
    AutoSparseoutModelForCausalLM,
    AutoSparseoutModelForSequenceClassification,
    from_pretrained,
    patch_from_config,
    push_checkpoint,
    save_pretrained,
    write_model_card,
)
from hf_sparseout.layers import Sparseout
from hf_sparseout.metrics import SparsityMonitor, hoyer, plot_sparsity
from hf_sparseout.ops.sparseout import MAX_SCALE, sparseout
from hf_sparseout.patcher import (
    Site,
    SiteReport,
    SparseoutConfig,
    VerifyReport,
    get_report,
    inspect,
    is_patched,
    patch,
    unpatch,
    verify,
)
from hf_sparseout.regularizers import LqPenalty
from hf_sparseout.version import __version__


def __getattr__(name: str):
    # SparsityCallback subclasses transformers.TrainerCallback: imported on first use, so that
    # `import hf_sparseout` does not import transformers' Trainer machinery.
    if name == "SparsityCallback":
        from hf_sparseout.integrations.trainer import SparsityCallback

        return SparsityCallback
    raise AttributeError(f"module 'hf_sparseout' has no attribute {name!r}")


__all__ = [
    "MAX_SCALE",
    "AutoSparseoutModel",
    "AutoSparseoutModelForCausalLM",
    "AutoSparseoutModelForSequenceClassification",
    "LqPenalty",
    "Site",
    "SiteReport",
    "Sparseout",
    "SparseoutConfig",
    "SparsityCallback",
    "SparsityMonitor",
    "VerifyReport",
    "__version__",
    "from_pretrained",
    "get_report",
    "hoyer",
    "inspect",
    "is_patched",
    "patch",
    "patch_from_config",
    "plot_sparsity",
    "push_checkpoint",
    "save_pretrained",
    "sparseout",
    "unpatch",
    "verify",
    "write_model_card",
]
