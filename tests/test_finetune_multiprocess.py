"""Two CPU processes (`accelerate launch --multi_gpu`, i.e. torchrun + gloo) against the 1-process run.

Note: in accelerate 1.x, `accelerate launch --cpu --num_processes 2` starts a single process (multi-CPU
needs MPI there), so the test launches through torchrun and asserts that two processes really ran.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from finetune_helpers import FAST, write_text_corpus

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "-m",
    "hf_sparseout_cli",
    "finetune",
]
SINGLE = [sys.executable, "-m", "hf_sparseout_cli", "finetune"]


def _run(command, out, *args) -> dict:
    proc = subprocess.run([*command, "--output-dir", str(out), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_processes_give_the_one_process_eval_and_train(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    # 7 eval blocks in batches of 2: the last batch is uneven across 2 processes (gather_for_metrics must drop pads).
    common = ["--dataset", str(data), *FAST, "--max-eval-samples", "7", "--batch-size", "2", "--q", "1.5"]
    one = _run(SINGLE, tmp_path / "one", *common, "--max-steps", "0")
    two = _run(LAUNCH, tmp_path / "two", *common, "--max-steps", "0")
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    e1, e2 = one["runs"]["sparseout"]["evals"][-1], two["runs"]["sparseout"]["evals"][-1]
    assert e1["eval_tokens"] == e2["eval_tokens"] == 7 * 15  # 7 blocks of 16 tokens, 15 predicted each
    assert math.isclose(e1["perplexity"], e2["perplexity"], rel_tol=1e-6)
    assert math.isclose(e1["hoyer"], e2["hoyer"], rel_tol=1e-6)

    trained = _run(LAUNCH, tmp_path / "train2", *common, "--max-steps", "3", "--save-steps", "3")
    assert trained["num_processes"] == 2
    run = trained["runs"]["sparseout"]
    assert [s for s, _ in run["train_loss"]] == [1, 2, 3] and math.isfinite(run["evals"][-1]["perplexity"])
    assert (tmp_path / "train2" / "checkpoints" / "sparseout" / "step-3" / "trainer_state.json").is_file()
    assert (tmp_path / "train2" / "model.safetensors").is_file()
