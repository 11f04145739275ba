"""Integrations with the training stacks users already run: ``transformers.Trainer`` / TRL, FSDP, DeepSpeed.

``trainer.py``: ``SparsityCallback`` (imported on first use: it needs transformers' Trainer classes);
``distributed.py``: the launch guard ``finetune`` runs after building its ``Accelerator``;
``fsdp.py``: FSDP2 ``fully_shard`` per transformer block and the full state dict to save.
"""

from typing import Any

__all__ = ["SparsityCallback"]


def __getattr__(name: str) -> Any:
    if name == "SparsityCallback":
        from hf_sparseout.integrations.trainer import SparsityCallback

        return SparsityCallback
    raise AttributeError(f"module 'hf_sparseout.integrations' has no attribute {name!r}")
