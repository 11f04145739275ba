"""Nothing lost, nothing silent: output checks before training, truthful interrupts, resume faults, bad data.

Each test feeds `hf-sparseout finetune` one fault and checks the exit code, the message and what is left on
disk (issue 13).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
from finetune_helpers import FAST, finetune_ok, invoke, write_labelled_csv, write_text_corpus

from hf_sparseout.training import checkpoints


def _flat(text: str) -> str:
    return " ".join(text.split())


def _fails(out, *args, expect: str, code: int = 2):
    result = invoke("--output-dir", str(out), *args)
    assert result.exit_code == code, result.output[-3000:]
    assert expect in _flat(result.output), result.output[-3000:]
    return result


def _immutable(path):
    """Make ``path`` unwritable even for root (chattr +i); skip where that is not possible."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("cannot make a directory read-only here (needs chattr as root)")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


# -- the output location is checked before any training -------------------------------------------------


def test_unwritable_output_parent_fails_before_training(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    parent = tmp_path / "ro"
    parent.mkdir()
    undo = _immutable(parent)
    try:
        result = _fails(parent / "out", "--dataset", str(data), *FAST, "--max-steps", "2", expect="cannot write")
    finally:
        undo()
    assert "writable --output-dir" in _flat(result.output)
    assert "eval @ step" not in result.output and not (parent / "out").exists()


@pytest.mark.slow
def test_symlinked_output_dir_saves_into_its_target(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    finetune_ok(link, "--dataset", str(data), *FAST, "--max-steps", "2")
    assert link.is_symlink() and (target / "model.safetensors").is_file() and (target / "metrics.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".saving-" in p.name]


@pytest.mark.slow
def test_overwrite_removes_the_previous_runs_baseline_and_stale_staging(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    finetune_ok(out, "--dataset", str(data), *FAST, "--max-steps", "1", "--baseline")
    assert (out / "baseline" / "model.safetensors").is_file()
    stale = tmp_path / ".out.saving-999999999-deadbeef"  # left by a save that was SIGKILLed
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    finetune_ok(out, "--dataset", str(data), *FAST, "--max-steps", "1", "--overwrite-output-dir")
    assert not (out / "baseline").exists() and not stale.exists()
    assert list(json.loads((out / "metrics.json").read_text())["runs"]) == ["sparseout"]


@pytest.mark.slow
def test_non_empty_dir_hint_offers_resume_only_when_there_is_a_checkpoint(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    finetune_ok(out, "--dataset", str(data), *FAST, "--max-steps", "1")
    result = _fails(out, "--dataset", str(data), *FAST, expect="is not empty")
    assert "--resume-from-checkpoint" not in result.output and "--overwrite-output-dir" in result.output


# -- interrupts say what is on disk ---------------------------------------------------------------------


def test_interrupt_without_a_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch):
    from hf_sparseout.training import eval_record

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_record, "evaluate", interrupted)  # the first eval: after training, before any checkpoint
    data = write_text_corpus(tmp_path / "txt")
    result = _fails(
        tmp_path / "out", "--dataset", str(data), *FAST, "--max-steps", "2", expect="nothing to resume", code=130
    )
    assert "--resume-from-checkpoint latest" not in result.output


@pytest.mark.slow
def test_interrupt_during_the_final_save_leaves_no_staging_copy(tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    original = PreTrainedModel.save_pretrained

    def save_then_interrupt(self, directory, *args, **kwargs):
        original(self, directory, *args, **kwargs)  # a full copy is staged ...
        raise KeyboardInterrupt  # ... and SIGTERM / Ctrl-C arrives before the rename

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_interrupt)
    data = write_text_corpus(tmp_path / "txt")
    _fails(tmp_path / "out", "--dataset", str(data), *FAST, "--max-steps", "1", expect="Interrupted", code=130)
    assert not [p for p in tmp_path.iterdir() if ".saving-" in p.name]
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_time_based_checkpoint_by_default(tmp_path):
    """--save-minutes (default 10) checkpoints long runs without --save-steps; a tiny value makes it due every step."""
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    finetune_ok(
        out, "--dataset", str(data), *FAST, "--max-steps", "3", "--save-minutes", "1e-9", "--save-total-limit", "5"
    )
    assert [p.name for p in checkpoints.list_checkpoints(out / "checkpoints" / "sparseout")] == [
        "step-1",
        "step-2",
        "step-3",
    ]
    none = tmp_path / "none"
    finetune_ok(none, "--dataset", str(data), *FAST, "--max-steps", "3", "--save-minutes", "0")
    assert not (none / "checkpoints").exists()


# -- resuming from a damaged or foreign checkpoint --------------------------------------------------------


@pytest.fixture
def checkpointed(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    finetune_ok(out, "--dataset", str(data), *FAST, "--max-steps", "4", "--save-steps", "2", "--save-total-limit", "3")
    return data, out, out / "checkpoints" / "sparseout"


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["random_states_0.pkl", "model.safetensors", "optimizer.bin", "scheduler.bin"])
def test_truncated_checkpoint_file_is_an_error_naming_the_older_checkpoint(checkpointed, damaged):
    data, out, run = checkpointed
    path = run / "step-4" / damaged
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])
    resume = ["--dataset", str(data), *FAST, "--max-steps", "6", "--resume-from-checkpoint", str(run / "step-4")]
    result = _fails(out, *resume, expect="cannot be loaded")
    assert "step-2" in _flat(result.output)


@pytest.mark.slow
def test_resuming_another_models_checkpoint_is_an_error(checkpointed):
    data, out, _ = checkpointed
    other = [a if a != "gpt2-tiny" else "gpt2-mini" for a in FAST]
    resume = ["--dataset", str(data), *other, "--resume-from-checkpoint", "latest", "--max-steps", "6"]
    result = _fails(out, *resume, expect="written by another model or setup")
    assert "gpt2-tiny" in _flat(result.output)


# -- bad data and options: exit 2 with a message, before training -----------------------------------------


def test_continuous_labels_are_refused(tmp_path):
    rows = ["text,label", *(f"sentence number {i},{i / 7:.3f}" for i in range(40))]
    (tmp_path / "reg.csv").write_text("\n".join(rows))
    _fails(
        tmp_path / "out",
        "--dataset",
        str(tmp_path / "reg.csv"),
        "--from-config",
        "bert-tiny",
        expect="continuous values",
    )


def test_numeric_text_column_is_refused(tmp_path):
    csv = write_labelled_csv(tmp_path / "d.csv")
    args = ["--dataset", str(csv), "--text-column", "label", "--from-config", "bert-tiny"]
    _fails(tmp_path / "out", *args, expect="holds int64 values, not text")


def test_empty_text_cells_are_refused(tmp_path):
    lines = write_labelled_csv(tmp_path / "d.csv").read_text().splitlines()
    lines[5] = ",1"
    (tmp_path / "d.csv").write_text("\n".join(lines))
    _fails(
        tmp_path / "out",
        "--dataset",
        str(tmp_path / "d.csv"),
        "--from-config",
        "bert-tiny",
        expect="have an empty 'text'",
    )


def test_empty_and_wrongly_encoded_files_say_so(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.train.txt").write_text("")
    _fails(tmp_path / "o1", "--dataset", str(tmp_path / "e" / "a.train.txt"), *FAST, expect="is empty")
    (tmp_path / "latin.csv").write_bytes(b"text,label\n" + "caf\xe9 cr\xe8me,1\n".encode("latin-1") * 30)
    _fails(tmp_path / "o2", "--dataset", str(tmp_path / "latin.csv"), *FAST, expect="not UTF-8")


def test_block_size_beyond_the_models_positions(tmp_path):
    data = write_text_corpus(tmp_path / "txt", lines=400)
    args = ["--dataset", str(data), "--from-config", "bert-tiny", "--task", "causal-lm", "--block-size", "600"]
    _fails(tmp_path / "out", *args, expect="longer than the model's 512 positions")


def test_invalid_regex_in_targets(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    _fails(tmp_path / "out", "--dataset", str(data), *FAST, "--targets", "re:h.(0", expect="invalid regex")


def test_classification_on_a_model_type_without_that_head(tmp_path):
    config = tmp_path / "codegen.json"
    config.write_text(json.dumps({"model_type": "codegen", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}))
    csv = write_labelled_csv(tmp_path / "d.csv")
    _fails(
        tmp_path / "out",
        "--dataset",
        str(csv),
        "--from-config",
        str(config),
        expect="has no sequence-classification head",
    )


def test_report_to_a_tracker_that_is_not_installed(tmp_path):
    pytest.importorskip("accelerate")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    data = write_text_corpus(tmp_path / "txt")
    _fails(
        tmp_path / "out", "--dataset", str(data), *FAST, "--report-to", "tensorboard", expect="pip install tensorboard"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is real on CUDA")
def test_fp16_on_the_cpu_is_refused(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    _fails(tmp_path / "out", "--dataset", str(data), *FAST, "--mixed-precision", "fp16", expect="needs a CUDA device")
