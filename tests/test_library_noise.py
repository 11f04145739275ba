"""Known-benign transformers/accelerate messages: off the default output of finetune, on its debug log."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from finetune_helpers import FAST, write_labelled_csv, write_text_corpus

from hf_sparseout import logs
from hf_sparseout.library_noise import new_head_keys, quiet_known_library_messages

LOSS_TYPE = "`loss_type=None` was set in the config but it is unrecognized. Using the default loss: `ForCausalLMLoss`."
SHARED = "Removed shared tensor {'lm_head.weight'} while saving. This should be OK, but check by verifying that you"
REPORT = (
    "\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: ./ckpt\n"
    "Key               | Status  | \n------------------+---------+-\n"
    "classifier.bias   | MISSING | \nclassifier.weight | MISSING | \n\nNotes:\n- MISSING:\tthose params were newly ..."
)
NOISE = ("loss_type=None", "Removed shared tensor", "LOAD REPORT", "| MISSING")


@pytest.fixture
def project_log():
    """The project's log lines at debug level, in a string."""
    stream = io.StringIO()
    logs.configure("debug", stream)
    yield stream
    logs.configure("info")


def _emit(name: str, message: str) -> list[str]:
    """Log ``message`` as a warning on library logger ``name``; what reached that logger's own handlers."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        logger.warning(message)
    finally:
        logger.removeHandler(handler)
    return seen


def test_known_messages_go_to_the_debug_log_inside_the_block(project_log) -> None:
    with quiet_known_library_messages():
        assert _emit("transformers.modeling_utils", LOSS_TYPE) == []
        assert _emit("accelerate.utils.other", SHARED) == []
        assert _emit("transformers.modeling_utils", REPORT) == []
        assert _emit("transformers.modeling_utils", REPORT) == []
        other = "Some weights of the checkpoint were not used"
        assert _emit("transformers.modeling_utils", other) == [other]  # anything else passes
    log = project_log.getvalue()
    assert "[transformers.modeling_utils] `loss_type=None`" in log
    assert "[accelerate.utils.other] Removed shared tensor" in log
    assert log.count("New classification head: classifier.bias, classifier.weight") == 1
    assert log.count("LOAD REPORT") == 2 and "\x1b[" not in log
    assert _emit("accelerate.utils.other", SHARED) == [SHARED]  # outside the block: the library's own output


def test_a_load_report_with_other_keys_stays_a_warning() -> None:
    assert new_head_keys(REPORT) == ["classifier.bias", "classifier.weight"]
    encoder = REPORT.replace("classifier.bias  ", "bert.pooler.dense")
    assert new_head_keys(encoder) is None
    assert new_head_keys(REPORT.replace("MISSING | \nclassifier.weight", "UNEXPECTED | \nclassifier.weight")) is None
    assert new_head_keys("no report here") is None


def _finetune(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100"}
    command = [sys.executable, "-m", "hf_sparseout_cli", *args[:1], "--output-dir", str(out), *args[1:]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_causal_lm_with_checkpoints_prints_no_library_noise(tmp_path) -> None:
    data = write_text_corpus(tmp_path / "data")
    common = ["finetune", "--dataset", str(data), *FAST, "--max-steps", "2", "--save-steps", "1"]
    quiet = _finetune(tmp_path / "quiet", *common)
    output = quiet.stdout + quiet.stderr
    assert (tmp_path / "quiet" / "checkpoints").is_dir()
    assert not [n for n in NOISE if n in output], output[-3000:]
    loud = _finetune(tmp_path / "loud", *common, "--log-level", "debug")
    assert "loss_type=None" in loud.stdout and "Removed shared tensor" in loud.stdout


@pytest.mark.slow
def test_classification_says_the_new_head_once_in_its_own_words(tmp_path) -> None:
    from transformers import BertConfig, BertModel

    from hf_sparseout.training.modeling import PRESETS

    data = write_labelled_csv(tmp_path / "train.csv")
    preset = {k: v for k, v in PRESETS["bert-tiny"].items() if k != "model_type"}
    checkpoint = tmp_path / "encoder"
    BertModel(BertConfig(vocab_size=512, **preset)).save_pretrained(checkpoint)
    from transformers import PreTrainedTokenizerFast

    from hf_sparseout.training.modeling import train_tokenizer

    tokenizer: PreTrainedTokenizerFast = train_tokenizer(["the cat sat on the mat", "prices rose"], vocab_size=512)
    tokenizer.save_pretrained(checkpoint)
    common = ["finetune", "--dataset", str(data), "--task", "classification", "--max-steps", "2", "--batch-size", "8"]
    for name, extra in (("from_config", ["--from-config", "bert-tiny"]), ("head", ["--model", str(checkpoint)])):
        done = _finetune(tmp_path / name, *common, *extra)
        output = done.stdout + done.stderr
        assert not [n for n in NOISE if n in output], output[-3000:]
        said = output.count("New classification head: classifier.bias, classifier.weight")
        assert said == (1 if name == "head" else 0)  # main run and baseline both build it: said once
    loud = _finetune(tmp_path / "loud", *common, "--model", str(checkpoint), "--log-level", "debug")
    assert "LOAD REPORT" in loud.stdout and "classifier.weight | MISSING" in loud.stdout
