"""Bad input to `hf-sparseout finetune`: a clear message, exit code 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from finetune_helpers import FAST, invoke, write_labelled_csv, write_text_corpus


def _flat(text: str) -> str:
    return " ".join(text.split())


def _fails(tmp_path, *args, expect: str):
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), *args)
    assert result.exit_code == 2, result.output
    assert expect in _flat(result.output), result.output
    assert not out.exists() or not any(out.iterdir()), "nothing may be written on bad input"
    return result


def test_missing_path(tmp_path):
    _fails(tmp_path, "--dataset", str(tmp_path / "nope.txt"), expect="no such file or directory")


def test_unsupported_extension(tmp_path):
    (tmp_path / "data.xml").write_text("<a/>")
    _fails(tmp_path, "--dataset", str(tmp_path / "data.xml"), expect="unsupported data file extension '.xml'")


def test_column_not_found_lists_columns(tmp_path):
    csv = write_labelled_csv(tmp_path / "d.csv")
    result = _fails(
        tmp_path, "--dataset", str(csv), "--text-column", "body", *FAST, expect="text column 'body' not found"
    )
    assert "text, label" in _flat(result.output)


def test_empty_dataset(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    _fails(tmp_path, "--dataset", str(tmp_path / "empty.csv"), *FAST, expect="is empty: it has no rows")
    (tmp_path / "one.csv").write_text("text,label\nonly row,1\n")
    _fails(tmp_path, "--dataset", str(tmp_path / "one.csv"), *FAST, expect="too few to carve an eval split")


def test_classification_without_labels(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    _fails(
        tmp_path,
        "--dataset",
        str(data),
        "--task",
        "classification",
        "--from-config",
        "bert-tiny",
        expect="classification needs labels",
    )


@pytest.mark.parametrize(("args", "expect"), [(["--p", "1.5"], "p=1.5"), (["--q", "-1"], "q=-1.0")])
def test_invalid_p_or_q(tmp_path, args, expect):
    _fails(tmp_path, *args, expect=expect)


def test_pattern_matching_nothing(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    _fails(
        tmp_path, "--dataset", str(data), *FAST, "--targets", "nope", "--max-steps", "1", expect="match no dropout site"
    )


def test_non_empty_output_dir_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    result = invoke("--output-dir", str(out))
    assert (
        result.exit_code == 2 and "is not empty" in _flat(result.output) and "--overwrite-output-dir" in result.output
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_missing_or_corrupt_checkpoint(tmp_path):
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), "--resume-from-checkpoint", "latest")
    assert result.exit_code == 2 and "no checkpoint to resume from" in _flat(result.output)
    bad = out / "checkpoints" / "sparseout" / "step-3"
    bad.mkdir(parents=True)
    (bad / "trainer_state.json").write_text("{not json")
    result = invoke("--output-dir", str(out), "--resume-from-checkpoint", str(bad))
    assert result.exit_code == 2 and "missing or corrupt" in _flat(result.output)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--dataset", "--model"])
def test_hub_names_offline_say_what_to_do(tmp_path, option):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_sparseout_cli",
            "finetune",
            option,
            "some-org/not-here",
            "--output-dir",
            str(tmp_path / "out"),
            "--max-steps",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    message = _flat(out.stderr)
    assert "HF_HUB_OFFLINE" in message and "local" in message
    assert not (tmp_path / "out").exists()


def test_inconsistent_options(tmp_path):
    _fails(tmp_path, "--model", "x", "--from-config", "gpt2-tiny", expect="exclusive")
    _fails(tmp_path, "--push-to-hub", expect="--push-to-hub needs --hub-model-id")


def test_push_to_hub_problems_are_caught_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    _fails(tmp_path, "--push-to-hub", "--hub-model-id", "not a/valid id", expect="not a/valid id")
    _fails(tmp_path, "--push-to-hub", "--hub-model-id", "me/model", expect="needs a Hugging Face token")
