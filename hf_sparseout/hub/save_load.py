"""Patched checkpoints: an atomic ``save_pretrained``, ``from_pretrained`` that re-applies the patch.

A full model records its :class:`~hf_sparseout.SparseoutConfig` in ``config.json`` under
``"sparseout"`` (``patch`` puts it on ``model.config``); its weights keep the base model's names,
so plain transformers loads the directory as an ordinary checkpoint. A PEFT adapter directory has
no ``config.json``: :func:`save_pretrained` writes the block to ``sparseout_config.json`` beside
``adapter_config.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from hf_sparseout.errors import CheckpointError, OutputDirError
from hf_sparseout.loading import load_model
from hf_sparseout.optional import PEFT, require
from hf_sparseout.patcher.config import SparseoutConfig
from hf_sparseout.patcher.model import CONFIG_KEY, get_report, is_patched, patch, replaced_config_values
from hf_sparseout.patcher.report import SiteReport

CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
SIDECAR_FILE = "sparseout_config.json"
"""Written beside a PEFT adapter: ``{"sparseout": <config dict>, "applied_to": "peft_model" | "base_model"}``."""
APPLIED_TO = ("peft_model", "base_model")
_WEIGHT_FILE = re.compile(
    r"^(model|pytorch_model|adapter_model|tf_model|flax_model)(-\d{5}-of-\d{5})?\.(safetensors|bin|h5|msgpack)"
    r"(\.index\.json)?$"
)
"""Weight files (and shard indexes) of a save_pretrained layout: stale ones are removed on a new save."""


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT ``PeftModel`` (detected without importing peft)."""
    return type(model).__module__.startswith("peft.") and hasattr(model, "peft_config")


def parse_sparseout_block(data: Any, source: str) -> SparseoutConfig:
    """A :class:`SparseoutConfig` from a stored ``sparseout`` block; :class:`CheckpointError` if it is corrupted.

    Unknown keys (a newer library wrote them) are dropped with a warning, as
    :meth:`SparseoutConfig.from_dict` does; a newer ``format_version`` raises with an upgrade hint.
    """
    try:
        return SparseoutConfig.from_dict(data)
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"{source}: the {CONFIG_KEY!r} block is not a valid Sparseout configuration: {err}. "
            "Re-save the model with hf_sparseout.save_pretrained, or remove the block and patch by hand."
        ) from err


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (``CheckpointError`` if unreadable or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read as JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def read_checkpoint_config(directory: str | Path) -> tuple[SparseoutConfig, str]:
    """The Sparseout configuration stored in a checkpoint directory, and what it was applied to.

    Returns ``(config, applied_to)``: ``"model"`` for a full checkpoint (``config.json`` with a
    ``sparseout`` block), ``"peft_model"`` or ``"base_model"`` for a PEFT adapter directory
    (``sparseout_config.json``). Raises :class:`CheckpointError` when there is none or it is corrupted.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory")
    sidecar = directory / SIDECAR_FILE
    if sidecar.is_file():
        data = read_json(sidecar)
        applied_to = data.get("applied_to", "peft_model")
        if applied_to not in APPLIED_TO:
            raise CheckpointError(f"{sidecar}: 'applied_to' must be one of {APPLIED_TO}, got {applied_to!r}")
        if CONFIG_KEY not in data:
            raise CheckpointError(f"{sidecar} has no {CONFIG_KEY!r} block")
        return parse_sparseout_block(data[CONFIG_KEY], str(sidecar)), applied_to
    config_file = directory / CONFIG_FILE
    if not config_file.is_file():
        if (directory / ADAPTER_CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{directory} is a PEFT adapter without {SIDECAR_FILE}: it was not saved with "
                "hf_sparseout.save_pretrained from a patched model"
            )
        raise CheckpointError(f"{directory} has no {CONFIG_FILE}: it is not a save_pretrained checkpoint")
    data = read_json(config_file)
    if CONFIG_KEY not in data:
        raise CheckpointError(
            f"{config_file} has no {CONFIG_KEY!r} block: the model was not patched when it was saved "
            "(patch it with hf_sparseout.patch, then save it again)"
        )
    return parse_sparseout_block(data[CONFIG_KEY], str(config_file)), "model"


def _patched_modules(model: nn.Module) -> list[nn.Module]:
    """``model`` and, for a PEFT model, its base model: whichever carry a patch."""
    found = [model] if is_patched(model) else []
    if is_peft_model(model):
        base = model.get_base_model()
        if is_patched(base):
            found.append(base)
    return found


@contextlib.contextmanager
def original_config_values(model: nn.Module) -> Iterator[None]:
    """While active, ``model.config`` attributes that the patch replaced hold their original values.

    Some models (Falcon) read a dropout probability from ``model.config`` at run time, so the patch
    puts a marker carrying the new ``p`` there; config.json must keep the value the model was
    built with, or a reload would see the patched ``p`` as the site's own.
    """
    swapped: list[tuple[Any, str, Any]] = []
    try:
        for patched in _patched_modules(model):
            for owner, name, original in replaced_config_values(patched):
                swapped.append((owner, name, getattr(owner, name)))
                setattr(owner, name, original)
        yield
    finally:
        for owner, name, current in reversed(swapped):
            setattr(owner, name, current)


def _sidecar(model: nn.Module) -> dict[str, Any] | None:
    """The ``sparseout_config.json`` content of a patched PEFT model (``None`` if not PEFT or not patched)."""
    if not is_peft_model(model):
        return None
    if is_patched(model):
        return {CONFIG_KEY: get_report(model).config, "applied_to": "peft_model"}
    base = model.get_base_model()
    if is_patched(base):
        return {CONFIG_KEY: get_report(base).config, "applied_to": "base_model"}
    return None


def _is_weight_file(name: str) -> bool:
    return _WEIGHT_FILE.match(name) is not None


def _move_into(staged: Path, target: Path) -> None:
    """Move ``staged``'s entries into the existing ``target``: the config file goes first out, last in.

    The old config file is removed before anything else moves and the new one is moved in last,
    so an interruption leaves a directory that loads as nothing (no config), never as a mix of
    old and new files. Stale weight files of an earlier save (other shards) are removed.
    """
    names = {p.name for p in staged.iterdir()}
    last = [n for n in (ADAPTER_CONFIG_FILE, CONFIG_FILE) if n in names]
    for name in last:
        (target / name).unlink(missing_ok=True)
    for old in target.iterdir():
        if old.is_file() and _is_weight_file(old.name) and old.name not in names:
            old.unlink()
    for name in sorted(names - set(last)) + last:
        dest = target / name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(staged / name, dest)


_STAGING = re.compile(r"^\.(?P<name>.+)\.saving-(?P<pid>\d+)-[0-9a-f]+$")


def _staging_parent(out: Path) -> Path:
    """Where a save of ``out`` is staged: beside it, or inside it when only the directory is writable."""
    return out.parent if os.access(out.parent, os.W_OK) or not out.is_dir() else out


def check_writable(output_dir: str | Path) -> Path:
    """Check, creating nothing, that :func:`save_pretrained` can write ``output_dir``.

    An existing directory (and its parent, where a save is staged, unless only the directory itself is
    writable) must take a file; a missing one needs a writable nearest existing ancestor. Raises
    :class:`OutputDirError` (a ``ValueError``) with a hint, before any work that a failed save would
    lose. Returns the directory with symlinks resolved.
    """
    out = Path(output_dir).expanduser().resolve()
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory", str(existing))
        for where in {existing, _staging_parent(out)} if existing == out else {existing}:
            with tempfile.TemporaryFile(dir=where):
                pass
    except OSError as err:
        raise OutputDirError(
            f"cannot write to the output directory {str(out)!r}: {err.strerror or err}",
            "choose a writable --output-dir (check its permissions and free space)",
        ) from err
    return out


def remove_stale_staging(output_dir: str | Path) -> list[Path]:
    """Remove staging directories of ``output_dir`` left by a killed save (their process is gone)."""
    out = Path(output_dir).expanduser().resolve()
    removed = []
    for where in {out.parent, out} if out.is_dir() else {out.parent}:
        if not where.is_dir():
            continue
        for entry in where.iterdir():
            m = _STAGING.match(entry.name)
            if m and entry.is_dir() and m["name"] == out.name and not _pid_alive(int(m["pid"])):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not saving while it checks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_pretrained(
    model: nn.Module,
    output_dir: str | Path,
    tokenizer: Any = None,
    *,
    is_main_process: bool = True,
    **save_kwargs: Any,
) -> Path:
    """Save ``model`` (and ``tokenizer``) in ``save_pretrained`` layout, atomically; return the directory.

    Everything is written to a temporary sibling directory first. A new (or empty) ``output_dir``
    is then created by one rename, so an interrupted save leaves nothing. An existing directory
    with other content (a finetune output holding ``checkpoints/`` and metrics) receives the files
    by rename, ``config.json`` last, after the old one is removed: it is never loadable as a mix.

    A patched model's config.json carries the ``sparseout`` block with the config attributes the
    patch replaced restored to their original values (see :func:`original_config_values`). A
    PEFT model writes its adapter plus ``sparseout_config.json`` (not PEFT's placeholder README.md;
    :func:`~hf_sparseout.hub.write_model_card` writes the card). ``save_kwargs`` go to the
    model's ``save_pretrained`` (e.g. ``save_function=accelerator.save``); with
    ``is_main_process=False`` nothing is written (call it on every process, as accelerate does).
    """
    out = Path(output_dir).expanduser().resolve()  # a symlinked directory: save into its target
    if not is_main_process:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = _staging_parent(out) / f".{out.name}.saving-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with original_config_values(model):
            model.save_pretrained(staged, **save_kwargs)
        sidecar = _sidecar(model)
        if sidecar is not None:
            (staged / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
            # PEFT's placeholder card ("[More Information Needed]"): write_model_card writes a real one
            (staged / "README.md").unlink(missing_ok=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staged)
        if out.is_dir() and any(e != staged for e in out.iterdir()):
            _move_into(staged, out)
        else:
            if out.is_dir():
                out.rmdir()
            os.replace(staged, out)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return out


def patch_from_config(model: nn.Module, path: str | Path | None = None) -> SiteReport:
    """Re-apply a stored Sparseout patch to a model loaded another way; return the report.

    Without ``path`` the configuration comes from ``model.config.sparseout`` (a model loaded
    from a patched checkpoint with plain transformers). With ``path`` it comes from that
    checkpoint or PEFT adapter directory; for an adapter saved as ``applied_to="base_model"``,
    ``model`` must be the base model, before ``PeftModel.from_pretrained``. Raises
    :class:`CheckpointError` if there is no configuration or it is corrupted, ``ValueError`` if it
    does not fit the model.
    """
    if path is not None:
        config, applied_to = read_checkpoint_config(path)
        if applied_to == "base_model" and is_peft_model(model):
            raise ValueError(
                f"{path}: this adapter was trained on a base model patched before get_peft_model; patching it "
                "now would also patch the LoRA dropout inside it. Patch the base model first, then wrap it: "
                "patch_from_config(base, path); PeftModel.from_pretrained(base, path) (or hf_sparseout.from_pretrained)"
            )
        return patch(model, config)
    return _patch_from_model_config(
        model,
        f"{type(model).__name__}.config",
        "it was not loaded from a patched checkpoint. Pass the checkpoint or adapter directory "
        "(patch_from_config(model, path)), or use hf_sparseout.patch(model, SparseoutConfig(...))",
    )


def _patch_from_model_config(model: nn.Module, source: str, missing_hint: str) -> SiteReport:
    model_config = getattr(model, "config", None)
    block = getattr(model_config, CONFIG_KEY, None) if model_config is not None else None
    if block is None:
        raise CheckpointError(f"{source} has no {CONFIG_KEY!r} block: {missing_hint}")
    return patch(model, parse_sparseout_block(block, source))


def _load_adapter(
    directory: Path,
    task: str,
    base_model: nn.Module | str | None,
    is_trainable: bool,
    config: SparseoutConfig,
    applied_to: str,
    **kwargs: Any,
) -> nn.Module:
    PeftModel = require("peft", feature="loading a PEFT adapter checkpoint", install=PEFT).PeftModel

    if base_model is None:
        base_model = read_json(directory / ADAPTER_CONFIG_FILE).get("base_model_name_or_path")
        if not base_model:
            raise CheckpointError(
                f"{directory / ADAPTER_CONFIG_FILE} names no base model: pass base_model=<model or name>"
            )
    if not isinstance(base_model, nn.Module):
        base_model = load_model(base_model, task=task, **kwargs)
    if applied_to == "base_model":  # patched before get_peft_model, as it was trained
        patch(base_model, config)
    model = PeftModel.from_pretrained(base_model, str(directory), is_trainable=is_trainable)
    if applied_to == "peft_model":
        patch(model, config)
    return model


def from_pretrained(
    path_or_repo: str | Path,
    task: str = "auto",
    *,
    attn_implementation: str | None = None,
    sparseout_config: SparseoutConfig | None = None,
    base_model: nn.Module | str | None = None,
    is_trainable: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Load a checkpoint saved from a patched model and re-apply its patch (the same site report).

    ``path_or_repo`` is a local ``save_pretrained`` directory or a Hub id; ``task`` is ``auto``,
    ``causal-lm``, ``classification`` or ``base`` (as :func:`hf_sparseout.loading.load_model`).
    ``sparseout_config`` replaces the stored configuration (e.g. to patch a plain checkpoint).
    A local PEFT adapter directory (``adapter_config.json``) is loaded onto ``base_model`` (a
    model, a name, or by default the adapter's ``base_model_name_or_path``) with
    ``PeftModel.from_pretrained`` and patched as it was saved. ``kwargs`` go to
    ``from_pretrained`` of the model class (e.g. ``torch_dtype``).

    Raises:
        CheckpointError: no stored configuration (and none given), or a corrupted one.
        hf_sparseout.loading.ModelNotAvailableError: not a local directory and not on the Hub.
        hf_sparseout.errors.MissingDependencyError: a PEFT adapter directory and ``peft`` is not installed.
    """
    directory = Path(path_or_repo)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if directory.is_dir() and (directory / ADAPTER_CONFIG_FILE).is_file():
        stored, applied_to = (sparseout_config, "peft_model") if sparseout_config else read_checkpoint_config(directory)
        return _load_adapter(directory, task, base_model, is_trainable, stored, applied_to, **extra, **kwargs)
    model = load_model(path_or_repo, task=task, **extra, **kwargs)
    if sparseout_config is not None:
        patch(model, sparseout_config)
    else:
        _patch_from_model_config(
            model,
            f"{path_or_repo}/{CONFIG_FILE}",
            "the model was not patched when it was saved; pass sparseout_config=SparseoutConfig(...) to patch it now",
        )
    return model


class _AutoSparseoutModel:
    """``from_pretrained`` for one task: load, then re-apply the stored patch."""

    task = "auto"

    def __init__(self) -> None:
        raise OSError(f"{type(self).__name__} is not instantiated: use {type(self).__name__}.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, **kwargs: Any) -> nn.Module:
        """Load ``path_or_repo`` with this task's head and re-apply its patch (see :func:`from_pretrained`)."""
        return from_pretrained(path_or_repo, task=cls.task, **kwargs)


class AutoSparseoutModelForCausalLM(_AutoSparseoutModel):
    """``AutoModelForCausalLM.from_pretrained`` plus the checkpoint's Sparseout patch."""

    task = "causal-lm"


class AutoSparseoutModelForSequenceClassification(_AutoSparseoutModel):
    """``AutoModelForSequenceClassification.from_pretrained`` plus the checkpoint's Sparseout patch."""

    task = "classification"


class AutoSparseoutModel(_AutoSparseoutModel):
    """``AutoModel.from_pretrained`` (no head) plus the checkpoint's Sparseout patch."""

    task = "base"


__all__ = [
    "ADAPTER_CONFIG_FILE",
    "CONFIG_FILE",
    "SIDECAR_FILE",
    "AutoSparseoutModel",
    "AutoSparseoutModelForCausalLM",
    "AutoSparseoutModelForSequenceClassification",
    "CheckpointError",
    "from_pretrained",
    "is_peft_model",
    "original_config_values",
    "parse_sparseout_block",
    "patch_from_config",
    "read_checkpoint_config",
    "save_pretrained",
]
