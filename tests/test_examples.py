"""The examples run offline, end to end, as a user would run them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the example scripts as processes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=EXAMPLES.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_patch_in_python_trains_and_unpatches():
    stdout = _run(str(EXAMPLES / "patch_in_python.py"), "--steps", "10", "--q", "1.0")
    assert "patched 7 sites" in stdout
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", stdout)]
    assert len(losses) >= 2 and losses[-1] < losses[0], stdout
    assert "is_patched=False" in stdout


def test_lora_example_patches_lora_dropout_and_reloads(tmp_path):
    pytest.importorskip("peft", reason="peft is an optional extra")
    stdout = _run(str(EXAMPLES / "lora_sparseout.py"), "--steps", "3", "--output-dir", str(tmp_path))
    assert "2 of them LoRA dropout" in stdout
    assert "reloaded outputs match: True" in stdout
    assert (tmp_path / "adapter_model.safetensors").is_file()


def _eval_lines(stdout: str) -> list[tuple[int, float]]:
    return [(int(s), float(h)) for s, h in re.findall(r"eval @ step (\d+): eval_loss=\S+ hoyer=(\d+\.\d+)", stdout)]


def test_trainer_example_logs_sparsity_at_each_eval_and_reloads(tmp_path):
    stdout = _run(str(EXAMPLES / "trainer_sparseout.py"), "--steps", "4", "--output-dir", str(tmp_path))
    assert "patched 7 sites" in stdout
    evals = _eval_lines(stdout)
    assert [s for s, _ in evals] == [2, 4] and all(0 < h < 1 for _, h in evals), stdout
    assert "per-site figures for 5 sites" in stdout  # attention-probability sites run in training only
    assert "reloaded patched: True; outputs match: True" in stdout
    assert json.loads((tmp_path / "config.json").read_text())["sparseout"]["q"] == 1.5


def test_trl_sft_example_logs_sparsity_and_reloads(tmp_path):
    pytest.importorskip("trl", reason="trl is an optional extra (pip install 'hf-sparseout[trl]')")
    stdout = _run(str(EXAMPLES / "trl_sft_sparseout.py"), "--steps", "2", "--output-dir", str(tmp_path))
    evals = _eval_lines(stdout)
    assert [s for s, _ in evals] == [1, 2] and all(0 < h < 1 for _, h in evals), stdout
    assert "reloaded patched: True; outputs match: True" in stdout
