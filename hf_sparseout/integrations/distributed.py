"""Launch guards: N launched processes must be one run, and the launch's FSDP / DeepSpeed must be used.

Measured with accelerate 1.15 on a machine without CUDA, ``accelerate launch --config_file
examples/accelerate/fsdp2.yaml --num_processes 2`` (which sets ``ACCELERATE_USE_FSDP=true`` and
``WORLD_SIZE=2``) gives ``Accelerator()`` ``DistributedType.NO`` with 1 process in each of the 2
processes (two independent runs writing the same files), and ``Accelerator(cpu=True)``
``DistributedType.MULTI_CPU`` with 2 processes (plain data parallelism over gloo, FSDP silently
ignored). Both are refused here.
"""

from __future__ import annotations

import os
from typing import Any

from hf_sparseout.training.args import UsageError

_WORLD_SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_REQUESTED = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED"}
_CPU_HINT = (
    "FSDP and DeepSpeed through accelerate need CUDA devices; on CPUs launch data parallelism "
    "(`accelerate launch --config_file examples/accelerate/ddp.yaml ...`, gloo) or run one process without "
    "`accelerate launch`"
)


def launched_world_size(environ: dict[str, str] | None = None) -> int:
    """How many processes the launcher started (torchrun / ``accelerate launch`` / MPI variables), 1 if none."""
    env = os.environ if environ is None else environ
    for name in _WORLD_SIZE_VARS:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _kind(accelerator: Any) -> str:
    kind = accelerator.distributed_type
    return str(getattr(kind, "value", kind))


def check_launch(accelerator: Any, environ: dict[str, str] | None = None) -> None:
    """Raise :class:`UsageError` if ``accelerator`` does not run what the launcher asked for.

    * several processes launched but ``accelerator.num_processes == 1``: each process would train
      alone on all the data and all would write the same output directory;
    * FSDP or DeepSpeed asked for (``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED``, set by
      ``accelerate launch`` from the config) but another distributed type set up.

    Call on every process right after building the ``Accelerator`` (every process raises alike).
    """
    env = os.environ if environ is None else environ
    launched = launched_world_size(env)
    if launched > 1 and accelerator.num_processes == 1:
        raise UsageError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but accelerate set up a single-process "
            f"run (distributed type {_kind(accelerator)}): each process would train alone and all would write "
            "the same output directory",
            _CPU_HINT,
        )
    for kind, variable in _REQUESTED.items():
        asked = env.get(variable, "").strip().lower() in ("1", "true", "yes")
        if asked and _kind(accelerator).upper() != kind:
            raise UsageError(
                f"the launch asked for {kind} ({variable}=true, from the accelerate config) but accelerate set up "
                f"{_kind(accelerator)} with {accelerator.num_processes} process(es): {kind} would be silently ignored",
                _CPU_HINT if not _has_cuda() else f"check the {kind} settings of the accelerate config",
            )


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
