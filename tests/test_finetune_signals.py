"""Real signals against a running `hf-sparseout finetune`: the checkpoints stay loadable and a resume
continues exactly as the uninterrupted run (same training losses, same final weights).

SIGTERM is handled like Ctrl-C (exit 143, the message says what can be resumed); SIGKILL cannot be
handled, so what it leaves (a staging directory, a half-written ``.tmp-step-N``) must be cleaned up or
ignored by the next run. The signal lands wherever the run is, checkpoint writes included.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from finetune_helpers import FAST, write_text_corpus
from safetensors.torch import load_file

from hf_sparseout.training import checkpoints

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "hf_sparseout_cli", "finetune"]


def _common(data):
    return ["--dataset", str(data), *FAST, "--lr-scheduler", "constant", "--max-steps", "12", "--save-steps", "1"]


def _wait_for_checkpoint(proc, run_dir, step, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = checkpoints.list_checkpoints(run_dir)
        if found and int(found[-1].name.split("-")[1]) >= step:
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_then_resume_equals_the_straight_run(tmp_path, sig):
    data = write_text_corpus(tmp_path / "txt", lines=60)
    straight = subprocess.run(
        [*CLI, "--output-dir", str(tmp_path / "straight"), *_common(data)], capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "cut"
    proc = subprocess.Popen(
        [*CLI, "--output-dir", str(out), *_common(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_checkpoint(proc, out / "checkpoints" / "sparseout", 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err[-3000:]
        assert "--resume-from-checkpoint latest" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    for ckpt in checkpoints.list_checkpoints(out / "checkpoints" / "sparseout"):
        checkpoints.read_state(ckpt)  # every complete checkpoint is loadable

    resumed = subprocess.run(
        [*CLI, "--output-dir", str(out), *_common(data), "--resume-from-checkpoint", "latest"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())["runs"]["sparseout"]
    b = json.loads((out / "metrics.json").read_text())["runs"]["sparseout"]
    # Separate processes on a loaded CPU were seen to differ in the last float32 bit (once, SIGTERM case,
    # 1 ulp at one step); the in-process resume test (test_finetune_e2e) checks bitwise equality.
    assert [s for s, _ in b["train_loss"]] == [s for s, _ in a["train_loss"]]
    assert [v for _, v in b["train_loss"]] == pytest.approx([v for _, v in a["train_loss"]], rel=1e-6)
    assert b["evals"][-1]["perplexity"] == pytest.approx(a["evals"][-1]["perplexity"], rel=1e-6)
    wa, wb = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-7) for k in wa)
    assert not [p for p in tmp_path.iterdir() if ".saving-" in p.name]
