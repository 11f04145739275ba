"""FSDP2 (``fully_shard`` per transformer block) on 2 CPU processes over gloo, against 1 unsharded process.

Losses are compared step by step. Tolerance: float32 sums in a different order (gradients reduced
across ranks, sharded optimizer steps), 1e-5 relative, over 5 AdamW steps at lr 1e-2.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_sparseout

SCRIPT = Path(__file__).with_name("fsdp2_train_script.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
REL_TOL = 1e-5

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
    ),
    pytest.mark.slow,  # launches 2 processes with torchrun
]


def _run(prefix: list[str], out: Path, *args: str) -> dict:
    proc = subprocess.run([*prefix, str(SCRIPT), *args, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _assert_same_curve(sharded: list[float], reference: list[float]) -> None:
    assert len(sharded) == len(reference) == 5
    for step, (a, b) in enumerate(zip(sharded, reference, strict=True)):
        assert math.isclose(a, b, rel_tol=REL_TOL), f"step {step}: sharded {a} vs reference {b}"
    assert reference[-1] < reference[0]  # it trains


def test_fsdp2_matches_the_unsharded_run_saves_and_reloads(tmp_path):
    ref = _run([sys.executable], tmp_path / "ref.json", "reference", "--save", str(tmp_path / "ref-model"))
    fsdp = _run(TORCHRUN, tmp_path / "fsdp.json", "sharded", "--save", str(tmp_path / "fsdp-model"))
    assert fsdp["world_size"] == 2 and fsdp["blocks"] == ["transformer.h.0", "transformer.h.1"]
    assert fsdp["sharded_params"] > 0
    _assert_same_curve(fsdp["losses"], ref["losses"])

    # The full state dict saved from the shards reloads patched, with the reference's weights.
    config = json.loads((tmp_path / "fsdp-model" / "config.json").read_text())
    assert config["sparseout"]["q"] == 1.5
    reloaded = hf_sparseout.from_pretrained(tmp_path / "fsdp-model")
    reference = hf_sparseout.from_pretrained(tmp_path / "ref-model")
    assert hf_sparseout.is_patched(reloaded)
    assert hf_sparseout.get_report(reloaded).to_dict() == hf_sparseout.get_report(reference).to_dict()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got, want = reloaded.eval()(input_ids=ids).logits, reference.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fsdp2_with_gradient_checkpointing_matches_the_unsharded_run(tmp_path):
    # The reference runs without checkpointing: recomputation must redraw the same Sparseout masks.
    ref = _run([sys.executable], tmp_path / "ref.json", "reference")
    fsdp = _run(TORCHRUN, tmp_path / "fsdp.json", "sharded", "--gradient-checkpointing")
    _assert_same_curve(fsdp["losses"], ref["losses"])
