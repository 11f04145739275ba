"""Offline default data, built from text that every Python installation carries.

* Causal LM: the help topics of ``pydoc_data.topics`` (the text of ``help("FOR")`` and friends,
  about 465 kB of English prose about Python), one paragraph per example.
* Classification: docstrings of standard-library functions and classes, labelled by the
  family of the module they come from (text, data formats, numbers, system). A real,
  non-trivial task: the classes overlap in vocabulary, and no sentence names its module.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re

from datasets import Dataset, DatasetDict

FAMILIES: dict[str, tuple[str, ...]] = {
    "text": ("string", "re", "textwrap", "difflib", "unicodedata", "html", "html.parser", "codecs", "locale"),
    "data formats": ("json", "csv", "configparser", "pickle", "plistlib", "xml.dom.minidom", "base64", "binascii"),
    "numbers": ("math", "cmath", "statistics", "decimal", "fractions", "random", "numbers", "operator"),
    "system": ("os", "shutil", "subprocess", "threading", "socket", "signal", "tempfile", "pathlib", "io"),
}


def _paragraphs(text: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        block = " ".join(block.split())
        if len(block) >= 40:
            out.append(block)
    return out


def causal_lm_corpus(validation_fraction: float = 0.1, seed: int = 0) -> DatasetDict:
    """Paragraphs of ``pydoc_data.topics`` as a ``text`` dataset with train/validation splits."""
    from pydoc_data.topics import topics

    paragraphs = [p for key in sorted(topics) for p in _paragraphs(topics[key])]
    return _split(Dataset.from_dict({"text": paragraphs}), validation_fraction, seed)


def _split(dataset: Dataset, validation_fraction: float, seed: int, stratify: str | None = None) -> DatasetDict:
    parts = dataset.train_test_split(
        test_size=validation_fraction, seed=seed, shuffle=True, stratify_by_column=stratify
    )
    return DatasetDict({"train": parts["train"], "validation": parts["test"]})


def _docstrings(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    texts = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        first = _paragraphs(doc)[:1]
        if first and not first[0].startswith(name + "("):
            texts.append(re.sub(r"\b" + re.escape(module_name) + r"\b", "", first[0]).strip())
    return texts


def classification_corpus(validation_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """Standard-library docstrings labelled by module family (``text``, ``label`` with class names)."""
    from datasets import ClassLabel, Features, Value

    names = list(FAMILIES)
    rows: dict[str, list] = {"text": [], "label": []}
    for label, family in enumerate(names):
        seen: set[str] = set()
        for module_name in FAMILIES[family]:
            for text in _docstrings(module_name):
                if text not in seen:
                    seen.add(text)
                    rows["text"].append(text)
                    rows["label"].append(label)
    order = list(range(len(rows["text"])))
    random.Random(seed).shuffle(order)
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    dataset = Dataset.from_dict({k: [v[i] for i in order] for k, v in rows.items()}, features=features)
    return _split(dataset, validation_fraction, seed, stratify="label")
