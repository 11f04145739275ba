"""Patched checkpoints: save/load round trip, model cards, Hub push."""

from hf_sparseout.hub.card import RUN_FILE, render_model_card, write_model_card
from hf_sparseout.hub.push import PushError, PushResult, checkpoint_files, is_main_process, push_checkpoint
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
    "RUN_FILE",
    "AutoSparseoutModel",
    "AutoSparseoutModelForCausalLM",
    "AutoSparseoutModelForSequenceClassification",
    "CheckpointError",
    "PushError",
    "PushResult",
    "checkpoint_files",
    "from_pretrained",
    "is_main_process",
    "patch_from_config",
    "push_checkpoint",
    "read_checkpoint_config",
    "render_model_card",
    "save_pretrained",
    "write_model_card",
]
