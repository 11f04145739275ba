"""Degenerate data and option values given to `hf-sparseout finetune`: the project's error with a hint
that says what to do (exit code 2), never a raw Python error, and nothing written."""

from __future__ import annotations

import re

import pytest
from datasets import Dataset
from finetune_helpers import FAST, SENTENCES, invoke

from hf_sparseout.errors import UsageError
from hf_sparseout.training.args import FinetuneArgs


def _flat(text: str) -> str:
    return " ".join(text.split())


def _refused(tmp_path, *args: str, expect: str) -> str:
    """``finetune ARGS`` exits 2 with ``expect`` in its error and a hint, writes nothing; returns the output."""
    out = tmp_path / "out"
    result = invoke("--output-dir", str(out), *args)
    text = _flat(result.output)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert expect in text, result.output
    assert "Hint:" in text, f"no hint: {result.output}"
    assert not out.exists() or not any(out.iterdir()), "nothing may be written on bad input"
    return text


@pytest.mark.parametrize(
    "content",
    ["   \n  \n\t\n", "\n\n\n\n", " \n"],
    ids=["whitespace-lines", "empty-lines", "one-blank-line"],
)
def test_a_text_file_without_text_is_refused(tmp_path, content):
    data = tmp_path / "blank.txt"
    data.write_text(content)
    text = _refused(tmp_path, "--dataset", str(data), *FAST, "--max-steps", "1", expect="no text")
    assert "'text'" in text  # names the column it looked in


def test_an_eval_file_without_text_is_refused(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "c.train.txt").write_text("\n".join(SENTENCES * 10))
    (data / "c.valid.txt").write_text("  \n\n \n")
    _refused(tmp_path, "--dataset", str(data), *FAST, "--max-steps", "1", expect="eval split has no text")


def test_a_long_run_of_blank_lines_is_skipped_not_a_crash():
    """datasets tokenises 1,000 rows at a time: a batch of only blank rows must not reach the tokenizer empty."""
    from datasets import Dataset

    from hf_sparseout.training.data import prepare
    from hf_sparseout.training.modeling import train_tokenizer

    body = SENTENCES * 10
    train = Dataset.from_dict({"text": [""] * 1200 + body})
    evaluation = Dataset.from_dict({"text": body})
    tokenizer = train_tokenizer(body, vocab_size=300)
    prepared = prepare(FinetuneArgs(block_size=16), tokenizer, "causal-lm", train, evaluation)
    assert len(prepared.train) == len(prepared.eval) > 0  # the blank rows add no tokens


def test_a_split_shorter_than_one_block_names_its_token_count(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "c.train.txt").write_text("\n".join(SENTENCES * 10))
    (tmp_path / "d" / "c.valid.txt").write_text("a b")
    text = _refused(tmp_path, "--dataset", str(tmp_path / "d"), *FAST, expect="eval split has")
    count = re.search(r"eval split has (\d+) tokens, fewer than --block-size 16", text)
    assert count, text
    assert f"at most {count.group(1)}" in text


def test_a_one_row_labelled_file_gets_a_hint_to_give_an_eval_split(tmp_path):
    (tmp_path / "one.csv").write_text("text,label\nonly row,1\n")
    text = _refused(tmp_path, "--dataset", str(tmp_path / "one.csv"), *FAST, expect="has 1 row")
    assert "valid" in text and "--eval-split" in text


def _one_line_corpus(words: int) -> tuple:
    """A causal-LM split of one row (a one-line .txt file) and a tokenizer for it."""
    from datasets import DatasetDict

    from hf_sparseout.training.modeling import train_tokenizer

    line = " ".join((" ".join(SENTENCES)).split()[:words] * (1 + words // 60))
    raw = DatasetDict({"train": Dataset.from_dict({"text": [line]})})
    return raw, train_tokenizer([line], vocab_size=300)


def test_a_one_line_corpus_is_split_by_tokens():
    """A 1 MB single-line file is one row: its eval split is carved from the token blocks, not refused."""
    from hf_sparseout.training.data import pick_splits, prepare

    raw, tokenizer = _one_line_corpus(2000)
    args = FinetuneArgs(block_size=16, validation_split_percentage=20)
    train, evaluation = pick_splits(raw, args, "causal-lm")
    prepared = prepare(args, tokenizer, "causal-lm", train, evaluation)
    whole = prepare(args, tokenizer, "causal-lm", train, train)  # every block of the row, once
    assert len(prepared.eval) > 0 and len(prepared.train) > len(prepared.eval)
    assert len(prepared.train) + len(prepared.eval) == len(whole.train)
    seen = sorted(map(tuple, [*prepared.train["input_ids"], *prepared.eval["input_ids"]]))
    assert seen == sorted(map(tuple, whole.train["input_ids"]))  # disjoint, and nothing lost


def test_a_one_line_corpus_of_one_block_is_refused_with_a_hint():
    from hf_sparseout.training.data import pick_splits, prepare

    raw, tokenizer = _one_line_corpus(12)
    tokens = len(tokenizer(raw["train"]["text"][0], add_special_tokens=False)["input_ids"])
    args = FinetuneArgs(block_size=tokens)  # the row is exactly one block
    train, evaluation = pick_splits(raw, args, "causal-lm")
    with pytest.raises(UsageError, match="too few to carve") as err:
        prepare(args, tokenizer, "causal-lm", train, evaluation)
    assert "--eval-split" in err.value.hint


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-train-samples", "0"),
        ("--max-eval-samples", "-1"),
        ("--batch-size", "0"),
        ("--eval-steps", "0"),
        ("--save-steps", "0"),
        ("--block-size", "0"),
        ("--gradient-accumulation-steps", "0"),
        ("--max-steps", "-1"),
        ("--epochs", "0"),
        ("--learning-rate", "0"),
        ("--warmup-ratio", "1"),
        ("--validation-split-percentage", "100"),
        ("--save-minutes", "-1"),
    ],
)
def test_every_bad_number_has_a_hint(tmp_path, option, value):
    _refused(tmp_path, option, value, expect=option)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--seed", "-1"),
        ("--seed", str(2**32)),
        ("--weight-decay", "-0.1"),
        ("--weight-decay", "nan"),
        ("--max-grad-norm", "-1"),
        ("--max-grad-norm", "nan"),
    ],
)
def test_numbers_no_run_could_use_are_refused_before_training(tmp_path, option, value):
    _refused(tmp_path, option, value, expect=option)


def test_p_1_is_refused_for_training(tmp_path):
    text = _refused(tmp_path, "--p", "1", expect="--p 1")
    assert "p < 1" in text or "below 1" in text


def test_p_1_is_refused_by_the_args_too():
    with pytest.raises(UsageError) as err:
        FinetuneArgs(p=1.0).validate()
    assert err.value.hint


@pytest.mark.parametrize(
    ("option", "value", "expect"),
    [
        ("--sparsity-sites", "", "--sparsity-sites is empty"),
        ("--sparsity-sites", " , ", "--sparsity-sites is empty"),
        ("--sparsity-sites", "re:[", "invalid regex"),
        ("--targets", "", "--targets is empty"),
        ("--exclude", ",", "--exclude is empty"),
        ("--insert", "", "--insert is empty"),
        ("--targets", "re:(", "invalid regex"),
    ],
)
def test_empty_or_invalid_site_patterns_are_refused_at_validation(tmp_path, monkeypatch, option, value, expect):
    import hf_sparseout.training.runner as runner

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the options were checked")

    monkeypatch.setattr(runner, "load_raw", no_data)
    curve = ["--sparsity-curve"] if option == "--sparsity-sites" else []
    _refused(tmp_path, *curve, option, value, expect=expect)


def test_a_single_class_label_column_has_a_hint(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"{s},1\n" for s in SENTENCES * 4))
    _refused(
        tmp_path,
        "--dataset",
        str(tmp_path / "d.csv"),
        "--from-config",
        "bert-tiny",
        "--max-steps",
        "1",
        expect="1 distinct value",
    )
