"""Guards for multi-process launches: a launch of N processes must be one run, never N independent runs."""

from __future__ import annotations

import os
from typing import Any

from hf_sparseout.training.args import UsageError

_WORLD_SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched_world_size(environ: dict[str, str] | None = None) -> int:
    """How many processes the launcher started (torchrun / ``accelerate launch`` / MPI variables), 1 if none."""
    env = os.environ if environ is None else environ
    for name in _WORLD_SIZE_VARS:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def check_single_run(accelerator: Any, environ: dict[str, str] | None = None) -> None:
    """Raise :class:`UsageError` if the launcher started several processes but ``accelerator`` runs alone.

    Example: on a machine without CUDA, ``accelerate launch --config_file fsdp.yaml --num_processes 2``
    starts 2 processes, but accelerate resolves FSDP (and DeepSpeed) without a GPU to
    ``DistributedType.NO``: each process would train its own model on all the data and write the same
    output directory. Call on every process right after building the ``Accelerator``.
    """
    launched = launched_world_size(environ)
    if launched <= 1 or accelerator.num_processes > 1:
        return
    kind = getattr(accelerator.distributed_type, "value", accelerator.distributed_type)
    raise UsageError(
        f"{launched} processes were launched (WORLD_SIZE={launched}) but accelerate set up a single-process run "
        f"(distributed type {kind}, no process group): each process would train alone and all would write the "
        "same output directory",
        "FSDP and DeepSpeed configs need CUDA devices; without them launch plain data parallelism "
        "(`accelerate launch --config_file examples/accelerate/ddp.yaml ...` or `--multi_gpu --num_processes N`, "
        "gloo on CPU) or drop `accelerate launch` for one process",
    )
