"""FSDP2 for a (patched) transformers model: ``fully_shard`` per transformer block, full state dict to save.

The same layout accelerate's fsdp2 config builds (``examples/accelerate/fsdp2.yaml``): every module
whose class is in the model's ``_no_split_modules`` (GPT2Block, LlamaDecoderLayer, ...) is one FSDP
unit, the root is the last. Patch first, then shard: Sparseout modules and redirected forwards live
inside the blocks and are untouched by sharding (no parameters of their own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from hf_sparseout.patcher.patterns import abbreviate


def block_classes(model: nn.Module) -> list[str]:
    """The transformer-block class names of ``model`` (its ``_no_split_modules``), as accelerate picks them."""
    names = getattr(model, "_no_split_modules", None) or []
    return list(names)


def shard_blocks(
    model: nn.Module,
    blocks: Sequence[str] | None = None,
    *,
    mesh: Any = None,
    reshard_after_forward: bool = True,
) -> list[str]:
    """Apply ``torch.distributed.fsdp.fully_shard`` to each block of ``model``, then to ``model``; in place.

    ``blocks``: class names of the wrap unit (default :func:`block_classes`). The default process
    group must exist (``torch.distributed.init_process_group``). Returns the names of the sharded
    blocks. Raises ``ValueError`` if no block class is known or none is in the model.
    """
    from torch.distributed.fsdp import fully_shard

    names = list(blocks) if blocks is not None else block_classes(model)
    if not names:
        raise ValueError(
            f"{type(model).__name__} declares no _no_split_modules: pass blocks=[the transformer block class name]"
        )
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__ in names]
    if not found:
        classes = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(f"no module of class {names} in {type(model).__name__}; classes: {abbreviate(classes)}")
    for _, module in found:
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return [n for n, _ in found]


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """The unsharded state dict of an FSDP2 model on the CPU (a collective: call it on every process).

    Pass it to :func:`hf_sparseout.save_pretrained` as ``state_dict=`` with ``is_main_process`` set,
    so the checkpoint is a plain one that ``hf_sparseout.from_pretrained`` reloads patched.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
