"""Two CPU processes (`accelerate launch --multi_gpu`, i.e. torchrun + gloo) against the 1-process run.

Note: in accelerate 1.x, `accelerate launch --cpu --num_processes 2` starts a single process (multi-CPU
needs MPI there), so the test launches through torchrun and asserts that two processes really ran.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from finetune_helpers import FAST, LAUNCH, SINGLE, write_text_corpus
from finetune_helpers import run_metrics as _run

pytestmark = pytest.mark.slow  # launches 2 processes


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


def test_two_processes_follow_the_one_process_schedule_step_by_step(tmp_path):
    """The learning rate, and the training loss, of a 2-process run equal the 1-process run's at every step.

    The 1-process run uses the 2-process global batch (2 x 2 = 4); with p = 1e-9 at every site the dropout
    noise is negligible (below float32 resolution), so the two runs see the same samples and the same gradients.
    accelerate's prepared scheduler steps once per process: sized in optimizer steps it would reach 0
    halfway through a 2-process run.
    """
    data = write_text_corpus(tmp_path / "txt")
    common = ["--dataset", str(data), *FAST[:4], "--learning-rate", "1e-3", "--p", "1e-9", "--q", "1.5"]
    common += ["--attention", "sparseout"]  # p = 1e-9 at the attention probabilities too (kept plain by default)
    common += ["--max-steps", "6", "--eval-steps", "3", "--warmup-ratio", "0.34", "--lr-scheduler", "linear"]
    one = _run(SINGLE, tmp_path / "one", *common, "--batch-size", "4")
    proc = subprocess.run(
        [*LAUNCH, "--output-dir", str(tmp_path / "two"), *common, "--batch-size", "2", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["num_processes"] == 2
    r1, r2 = one["runs"]["sparseout"], two["runs"]["sparseout"]
    lr1, lr2 = [lr for _, lr in r1["learning_rate"]], [lr for _, lr in r2["learning_rate"]]
    assert [s for s, _ in r2["learning_rate"]] == [1, 2, 3, 4, 5, 6]
    assert lr1 == pytest.approx(lr2, rel=1e-12, abs=0) and lr2[-1] > 0 and lr2[2] == max(lr2)
    for (s1, l1), (s2, l2) in zip(r1["train_loss"], r2["train_loss"], strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-4), (s1, l1, l2)
    for e1, e2 in zip(r1["evals"], r2["evals"], strict=True):
        assert e1["step"] == e2["step"] and e1["perplexity"] == pytest.approx(e2["perplexity"], rel=1e-4)
    # every line once: the summary (stdout, --format json) and each eval line (stderr, main process only)
    assert proc.stdout.count('"task"') == 1
    assert proc.stderr.count("[sparseout] eval @ step 3") == 1 and proc.stderr.count("[sparseout] eval @ step 6") == 1
