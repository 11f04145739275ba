"""Datasets for ``finetune``: Hub names or local files via ``datasets.load_dataset``, splits, columns,
tokenisation (causal LM: tokenise then group into blocks; classification: truncate to max length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import ClassLabel, Dataset, DatasetDict

from hf_sparseout.loading import check_hub_reachable, hub_offline, looks_like_path
from hf_sparseout.training.args import FinetuneArgs, UsageError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# extension -> (datasets builder, extra load_dataset kwargs)
BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".txt": ("text", {}),
    ".tokens": ("text", {}),
    ".csv": ("csv", {}),
    # GLUE-style TSVs (SST-2) contain bare quote characters: read them with csv.QUOTE_NONE.
    ".tsv": ("csv", {"delimiter": "\t", "quoting": 3}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
SPLIT_WORDS = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}
TEXT_COLUMNS = ("text", "sentence", "sentence1", "premise", "question", "content", "document")
PAIR_COLUMNS = {"sentence1": "sentence2", "premise": "hypothesis", "question": "sentence"}
LABEL_COLUMNS = ("label", "labels", "class", "target", "category")


@dataclass
class PreparedData:
    """Tokenised splits ready for a DataLoader, plus what the model head needs."""

    train: Dataset
    eval: Dataset
    task: str
    num_labels: int | None = None
    label_names: list[str] | None = None
    source: str = ""
    dataset_names: tuple[str, ...] = ()


def _split_of(path: Path) -> str:
    stem = path.name.lower()
    for split, words in SPLIT_WORDS.items():
        if any(w in stem.replace("-", ".").replace("_", ".").split(".") for w in words):
            return split
    return "train"


def _local_files(path: Path) -> tuple[str, dict[str, Any], dict[str, list[str]]]:
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in BUILDERS)
        if not files:
            raise UsageError(
                f"no data files in directory {str(path)!r}",
                f"supported extensions: {', '.join(BUILDERS)} (split from the file name: train / valid|dev / test)",
            )
    suffixes = {p.suffix.lower() for p in files}
    unsupported = suffixes - set(BUILDERS)
    if unsupported:
        raise UsageError(
            f"unsupported data file extension {sorted(unsupported)[0]!r}", f"use one of {', '.join(BUILDERS)}"
        )
    builders = {BUILDERS[s][0] for s in suffixes}
    if len(builders) > 1:
        raise UsageError(f"{str(path)!r} mixes file types {sorted(suffixes)}", "keep one format per directory")
    builder, kwargs = BUILDERS[sorted(suffixes)[0]]
    data_files: dict[str, list[str]] = {}
    for file in files:
        data_files.setdefault(_split_of(file) if len(files) > 1 else "train", []).append(str(file))
    return builder, kwargs, data_files


def load_raw(args: FinetuneArgs, task: str) -> tuple[DatasetDict, str, tuple[str, ...]]:
    """The raw ``DatasetDict`` named by ``--dataset`` (or the built-in offline corpus)."""
    from datasets import load_dataset

    if args.dataset is None:
        from hf_sparseout.training.corpus import causal_lm_corpus, classification_corpus

        if task == "causal-lm":
            return causal_lm_corpus(seed=args.seed), "built-in corpus: pydoc help topics", ()
        return classification_corpus(seed=args.seed), "built-in corpus: stdlib docstrings by module family", ()
    path = Path(args.dataset).expanduser()
    if _is_local(args.dataset):
        check_dataset_source(args)
        builder, kwargs, data_files = _local_files(path)
        empty = [f for files in data_files.values() for f in files if Path(f).stat().st_size == 0]
        if empty:
            raise UsageError(f"data file {empty[0]!r} is empty", "remove it, or point --dataset at the files with data")
        _check_utf8([f for files in data_files.values() for f in files], builder)
        try:
            raw = load_dataset(builder, data_files=data_files, **kwargs)
        except Exception as err:  # datasets raises many types for unreadable files
            raise _unreadable(args.dataset, builder, err) from err
        return raw, f"local {builder} files: {path.name}", ()
    try:
        check_hub_reachable(args.dataset, kind="dataset")
        raw = load_dataset(args.dataset, args.dataset_config)
    except Exception as err:  # ConnectionError, DatasetNotFoundError, FileNotFoundError, ...
        offline = hub_offline()
        raise UsageError(
            f"could not load dataset {args.dataset!r} ({type(err).__name__}: {str(err)[:200]})",
            "it is not a local path and the Hub "
            + ("is disabled (HF_HUB_OFFLINE=1) and it is not in the cache" if offline else "may be unreachable")
            + ": pass local files or a directory (.txt .csv .tsv .json .jsonl .parquet), or set HF_HUB_OFFLINE=1 "
            "to use a cached copy",
        ) from err
    if not isinstance(raw, DatasetDict):
        raw = DatasetDict({"train": raw})
    return raw, f"Hub dataset {args.dataset}", (args.dataset,)


def _is_local(dataset: str) -> bool:
    path = Path(dataset).expanduser()
    return path.exists() or looks_like_path(dataset) or path.suffix.lower() in BUILDERS


def check_dataset_source(args: FinetuneArgs) -> None:
    """A local ``--dataset`` (or one that looks like a path) must exist: checked before any model is built."""
    if args.dataset is not None and _is_local(args.dataset) and not Path(args.dataset).expanduser().exists():
        raise UsageError(
            f"no such file or directory: {args.dataset!r} (looked in {Path.cwd()})",
            "check the path given to --dataset (a file, or a directory of .txt .csv .tsv .json .jsonl .parquet "
            "files), or give a Hub dataset name",
        )


UTF8_HINT = "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
_TEXT_BUILDERS = {"text", "csv", "json"}


def _check_utf8(files: list[str], builder: str, head: int = 1 << 20) -> None:
    """The first ``head`` bytes of each text file must decode as UTF-8 (datasets' readers fail on other
    encodings with an error that depends on the engine; this one names the file and the byte)."""
    import codecs

    if builder not in _TEXT_BUILDERS:
        return
    for file in files:
        with open(file, "rb") as f:
            data = f.read(head)
        try:
            codecs.getincrementaldecoder("utf-8")().decode(data, final=len(data) < head)
        except UnicodeDecodeError as err:
            raise UsageError(
                f"data file {file!r} is not UTF-8 text ({err.reason} at byte {err.start})", UTF8_HINT
            ) from err


def _unreadable(dataset: str, builder: str, err: Exception) -> UsageError:
    """The root cause of a ``load_dataset`` failure (datasets wraps it in "An error occurred while ...")."""
    cause: BaseException = err
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    if "corresponds to no data" in str(err) or type(cause).__name__ == "EmptyDataError":
        return UsageError(f"the dataset {dataset!r} is empty: it has no rows", "check the files given to --dataset")
    if isinstance(cause, UnicodeDecodeError):
        return UsageError(
            f"could not read {dataset!r}: it is not UTF-8 text ({cause.reason} at byte {cause.start})",
            UTF8_HINT,
        )
    if "utf8" in str(cause).lower().replace("-", ""):  # pyarrow's reader: "ArrowInvalid: Invalid UTF8 sequence"
        return UsageError(f"could not read {dataset!r}: it is not UTF-8 text ({str(cause)[:200]})", UTF8_HINT)
    return UsageError(
        f"could not read {dataset!r} as {builder}: {type(cause).__name__}: {str(cause)[:300]}",
        f"check that the files are valid {builder} ({', '.join(BUILDERS)})",
    )


def pick_splits(raw: DatasetDict, args: FinetuneArgs, task: str | None = None) -> tuple[Dataset, Dataset | None]:
    """The train split and an eval split (named, found, or carved from train).

    A causal-LM train split of one row (a one-line .txt file) with no eval split gives ``None`` for the
    eval split: :func:`prepare` carves it from the token blocks instead (``--validation-split-percentage``).
    """
    splits = list(raw)
    if args.train_split not in raw:
        raise UsageError(f"split {args.train_split!r} not found", f"--train-split is one of: {', '.join(splits)}")
    train = raw[args.train_split]
    column = text_column(train, args)
    check_has_text(train, column, "train")
    if args.eval_split is not None:
        if args.eval_split not in raw:
            raise UsageError(f"split {args.eval_split!r} not found", f"--eval-split is one of: {', '.join(splits)}")
        evaluation = raw[args.eval_split]
    else:
        found = next((s for s in ("validation", "valid", "dev", "test") if s in raw and s != args.train_split), None)
        if found is None:
            if len(train) < 2 and task == "causal-lm":
                return train, None
            if len(train) < 2:
                raise UsageError(
                    f"split {args.train_split!r} has {len(train)} row(s): too few to carve an eval split",
                    "give an eval split: a directory with NAME.train.csv and NAME.valid.csv (any supported "
                    "extension; --dataset DIR), or --eval-split NAME for a split of the dataset; or add rows",
                )
            parts = train.train_test_split(test_size=args.validation_split_percentage / 100, seed=args.seed)
            train, evaluation = parts["train"], parts["test"]
        else:
            evaluation = raw[found]
    for name, split in (("train", train), ("eval", evaluation)):
        if len(split) == 0:
            raise UsageError(f"the {name} split is empty", "check --dataset and the split options")
    check_has_text(evaluation, column, "eval")
    return train, evaluation


def check_has_text(split: Dataset, column: str, name: str) -> None:
    """``UsageError`` when no row of ``split`` has text in ``column`` (every one empty or whitespace)."""
    if not any(isinstance(t, str) and t.strip() for t in split[column]):
        raise UsageError(
            f"the {name} split has no text: all {len(split)} row(s) of column {column!r} are empty or whitespace",
            "point --dataset at files with text (and --text-column at the column that holds it)",
        )


def _string_columns(dataset: Dataset) -> list[str]:
    return [
        name for name, feat in dataset.features.items() if getattr(feat, "dtype", None) in ("string", "large_string")
    ]


def _column(dataset: Dataset, given: str | None, candidates: tuple[str, ...], what: str, option: str) -> str | None:
    columns = list(dataset.column_names)
    if given is not None:
        if given not in columns:
            raise UsageError(f"{what} column {given!r} not found", f"{option} is one of: {', '.join(columns)}")
        return given
    return next((c for c in candidates if c in columns), None)


def infer_task(raw: DatasetDict, args: FinetuneArgs) -> str:
    """``--task`` if given; otherwise classification when a label column exists, else causal LM."""
    if args.task is not None:
        return args.task
    if args.label_column or args.text_pair_column:
        return "classification"
    first = raw[next(iter(raw))]
    return "classification" if any(c in first.column_names for c in LABEL_COLUMNS) else "causal-lm"


def text_column(dataset: Dataset, args: FinetuneArgs) -> str:
    """``--text-column`` (checked), else a conventional name, else the first string column."""
    column = _column(dataset, args.text_column, TEXT_COLUMNS, "text", "--text-column")
    strings = _string_columns(dataset)
    if column is None:
        if not strings:
            raise UsageError("no text column found", f"pass --text-column; columns: {', '.join(dataset.column_names)}")
        column = strings[0]
    if column not in strings:
        dtype = getattr(dataset.features[column], "dtype", type(dataset.features[column]).__name__)
        raise UsageError(
            f"text column {column!r} holds {dtype} values, not text",
            f"pass --text-column with one of the text columns: {', '.join(strings) or '(none)'}",
        )
    return column


def _check_no_empty_text(split: Dataset, column: str, name: str) -> None:
    empty = [i for i, t in enumerate(split[column]) if t is None or not str(t).strip()]
    if empty:
        raise UsageError(
            f"{len(empty)} row(s) of the {name} split have an empty {column!r} (first: row {empty[0]})",
            "drop or fill the empty rows; classification needs a text for every label",
        )


def prepare(
    args: FinetuneArgs, tokenizer: PreTrainedTokenizerBase, task: str, train: Dataset, evaluation: Dataset | None
) -> PreparedData:
    """Tokenise the train and eval splits (from :func:`pick_splits`) for ``task``; a causal-LM eval split of
    ``None`` is carved from the train blocks."""
    text_col = text_column(train, args)
    if task == "causal-lm":
        return _prepare_causal(args, tokenizer, train, evaluation, text_col)
    return _prepare_classification(args, tokenizer, train, evaluation, text_col)


def _prepare_causal(args, tokenizer, train, evaluation, text_col) -> PreparedData:
    block = args.block_size

    def tokenize(batch):
        texts = [t for t in batch[text_col] if t and t.strip()]
        if not texts:  # a batch of blank rows: the tokenizer raises IndexError on an empty list
            return {"input_ids": []}
        return tokenizer(texts, add_special_tokens=False)

    def group(batch):
        ids = [tok for seq in batch["input_ids"] for tok in seq]
        total = (len(ids) // block) * block
        blocks = [ids[i : i + block] for i in range(0, total, block)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    def blocks_of(split: Dataset, name: str) -> Dataset:
        tokens = split.map(tokenize, batched=True, remove_columns=split.column_names, desc="tokenizing")
        tokens = tokens.remove_columns([c for c in tokens.column_names if c != "input_ids"])
        blocks = tokens.map(group, batched=True, batch_size=1000, desc=f"grouping into blocks of {block}")
        if len(blocks) == 0:
            count = sum(len(ids) for ids in tokens["input_ids"])
            raise UsageError(
                f"the {name} split has {count} tokens, fewer than --block-size {block}",
                f"lower --block-size (at most {count}), or give the {name} split more text",
            )
        return blocks

    train_blocks = blocks_of(train, "train")
    if evaluation is not None:
        eval_blocks = blocks_of(evaluation, "eval")
    else:  # one row of text and no eval split: carve the eval blocks from the train blocks
        if len(train_blocks) < 2:
            raise UsageError(
                f"the train split is one row of {len(train_blocks)} block(s) of --block-size {block}: too few "
                "to carve an eval split from",
                "give an eval split (a directory with NAME.train.txt and NAME.valid.txt, or --eval-split), "
                "or lower --block-size",
            )
        parts = train_blocks.train_test_split(test_size=args.validation_split_percentage / 100, seed=args.seed)
        train_blocks, eval_blocks = parts["train"], parts["test"]
    if args.max_train_samples:
        train_blocks = train_blocks.select(range(min(args.max_train_samples, len(train_blocks))))
    if args.max_eval_samples:
        eval_blocks = eval_blocks.select(range(min(args.max_eval_samples, len(eval_blocks))))
    return PreparedData(train_blocks, eval_blocks, "causal-lm")


def _prepare_classification(args, tokenizer, train, evaluation, text_col) -> PreparedData:
    label_col = _column(train, args.label_column, LABEL_COLUMNS, "label", "--label-column")
    if label_col is None or label_col not in evaluation.column_names:
        raise UsageError(
            "classification needs labels: no label column found",
            f"pass --label-column; columns: {', '.join(train.column_names)}",
        )
    pair_col = _column(
        train, args.text_pair_column, (PAIR_COLUMNS.get(text_col, ""),), "text pair", "--text-pair-column"
    )
    for split, name in ((train, "train"), (evaluation, "eval")):
        for column in (text_col, pair_col) if pair_col else (text_col,):
            _check_no_empty_text(split, column, name)
    feature = train.features[label_col]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        to_id = None
    else:
        values = sorted({*train.unique(label_col), *evaluation.unique(label_col)}, key=str)
        if any(v is None for v in values):
            raise UsageError(f"label column {label_col!r} has missing values", "drop unlabelled rows first")
        continuous = [v for v in values if isinstance(v, float) and not float(v).is_integer()]
        if continuous:
            raise UsageError(
                f"label column {label_col!r} holds continuous values (e.g. {continuous[0]!r}, "
                f"{len(values)} distinct): that is regression, which finetune does not do",
                "classification needs integer or string class labels; bin the values into classes first",
            )
        names = [str(v) for v in values]
        to_id = {v: i for i, v in enumerate(values)}
    if len(names) < 2:
        raise UsageError(
            f"label column {label_col!r} has {len(names)} distinct value(s): need at least 2",
            "classification needs two or more classes; pass --label-column, or --task causal-lm for plain text",
        )
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))

    def encode(batch):
        pairs = batch[pair_col] if pair_col else None
        enc = tokenizer(batch[text_col], pairs, truncation=True, max_length=args.max_length)
        enc["labels"] = [to_id[v] for v in batch[label_col]] if to_id else batch[label_col]
        return enc

    cols = lambda ds: ds.column_names  # noqa: E731
    train = train.map(encode, batched=True, remove_columns=cols(train), desc="tokenizing")
    evaluation = evaluation.map(encode, batched=True, remove_columns=cols(evaluation), desc="tokenizing")
    return PreparedData(train, evaluation, "classification", num_labels=len(names), label_names=names)
