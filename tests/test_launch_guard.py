"""The accelerate configs in examples/accelerate/ load, and a launch never silently becomes something else.

Measured here (2 CPU cores, no CUDA, accelerate 1.15) before the guard: finetune under the fsdp2
config ran plain data parallelism over gloo and exited 0; a script building ``Accelerator()`` under the
same launch ran as two independent single-process runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from finetune_helpers import FAST, write_text_corpus

from hf_sparseout.integrations.distributed import check_launch, launched_world_size
from hf_sparseout.training.args import UsageError

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


def test_every_shipped_config_loads_with_accelerates_loader():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["ddp.yaml", "deepspeed_zero3.yaml", "fsdp2.yaml"]
    ddp = load_config_from_file(str(CONFIGS / "ddp.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and ddp.num_processes == 2
    fsdp = load_config_from_file(str(CONFIGS / "fsdp2.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP
    assert fsdp.fsdp_config["fsdp_version"] == 2
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp.fsdp_config  # accelerate takes _no_split_modules
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    zero3 = load_config_from_file(str(CONFIGS / "deepspeed_zero3.yaml"))
    assert zero3.distributed_type == DistributedType.DEEPSPEED
    assert zero3.deepspeed_config["zero_stage"] == 3 and zero3.deepspeed_config["zero3_save_16bit_model"]


def _accelerator(kind: DistributedType, n: int) -> SimpleNamespace:
    return SimpleNamespace(distributed_type=kind, num_processes=n)


def test_check_launch_accepts_what_was_asked_and_refuses_the_rest():
    check_launch(_accelerator(DistributedType.NO, 1), {})
    check_launch(_accelerator(DistributedType.MULTI_CPU, 2), {"WORLD_SIZE": "2"})
    check_launch(_accelerator(DistributedType.FSDP, 2), {"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"})
    assert launched_world_size({"WORLD_SIZE": "4"}) == 4 and launched_world_size({}) == 1
    with pytest.raises(UsageError, match="2 processes were launched") as err:
        check_launch(_accelerator(DistributedType.NO, 1), {"WORLD_SIZE": "2"})
    assert "ddp.yaml" in err.value.hint
    with pytest.raises(UsageError, match="asked for DEEPSPEED"):
        check_launch(_accelerator(DistributedType.MULTI_GPU, 2), {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "1"})


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs for real where there is CUDA")
def test_finetune_under_the_fsdp_config_without_cuda_is_refused_and_writes_nothing(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    command = [*LAUNCH, "--config_file", str(CONFIGS / "fsdp2.yaml"), "--num_processes", "2", "-m", "hf_sparseout_cli"]
    proc = subprocess.run(
        [*command, "finetune", "--dataset", str(data), *FAST, "--max-steps", "1", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Each process exits 2 (a usage error); torchrun's agent reports a failed launch as 1.
    assert proc.returncode == 1 and "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]
    assert "asked for FSDP" in proc.stderr and "ddp.yaml" in proc.stderr
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()


GUARDED = """
from accelerate import Accelerator
from hf_sparseout.integrations.distributed import check_launch
check_launch(Accelerator())  # no cpu=True: without CUDA each launched process runs alone
print("not refused")
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_two_launched_processes_running_alone_are_refused(tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED)
    proc = subprocess.run(
        [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "not refused" not in proc.stdout
    assert "2 processes were launched (WORLD_SIZE=2) but accelerate set up a single-process run" in proc.stderr
