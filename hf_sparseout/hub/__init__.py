"""Patched checkpoints: save/load round trip, model cards, Hub push."""

from hf_sparseout.hub.save_load import (
    AutoSparseoutModel,
    AutoSparseoutModelForCausalLM,
    AutoSparseoutModelForSequenceClassification,
    CheckpointError,
    from_pretrained,
    patch_from_config,
    read_checkpoint_config,
    save_pretrained,
)

__all__ = [
    "AutoSparseoutModel",
    "AutoSparseoutModelForCausalLM",
    "AutoSparseoutModelForSequenceClassification",
    "CheckpointError",
    "from_pretrained",
    "patch_from_config",
    "read_checkpoint_config",
    "save_pretrained",
]
