"""Training checkpoints: ``accelerator.save_state`` written atomically, rotated, found for resume.

A checkpoint is written to ``checkpoints/<run>/.tmp-step-N`` and renamed to ``step-N`` only once
complete (with ``trainer_state.json`` inside), so an interrupt during the write leaves the
previous checkpoint as it was and no half-written ``step-N``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from hf_sparseout.training.args import UsageError
from hf_sparseout.training.diagnostics import EvalRecord

if TYPE_CHECKING:
    from accelerate import Accelerator

    from hf_sparseout.training.best_model import BestRecord

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class _Position(TypedDict):
    global_step: int
    epoch: int
    batch_in_epoch: int


class CheckpointState(_Position, total=False):
    """``trainer_state.json``: where the run was (always there) and its records so far (the pairs read
    back from JSON are lists); ``signature`` is what a resuming run must match."""

    evals: list[EvalRecord]
    train_loss: list[tuple[int, float]]
    learning_rate: list[tuple[int, float]]
    signature: dict[str, str | int | float]
    init: dict[str, float]
    grad_norms: list[tuple[int, float]]
    nonfinite_loss_steps: list[int]
    skipped_steps: int
    best: BestRecord | None


def run_dir(output_dir: str | Path, run: str) -> Path:
    """Where the checkpoints of one run (``sparseout`` or ``baseline``) live."""
    return Path(output_dir) / "checkpoints" / run


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_checkpoint(accelerator: Accelerator, directory: Path, state: CheckpointState, keep: int | None) -> Path:
    """Save model, optimizer, scheduler, RNG and ``state`` to ``directory/step-N``; keep the last ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{state['global_step']}"
    tmp = directory / f".tmp-step-{state['global_step']}"
    if accelerator.is_main_process:  # leftovers of an interrupted write or rotation
        for stale in [tmp, *directory.glob(".trash-step-*")]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            if final.exists():
                _remove(final)
            tmp.rename(final)
    except BaseException:
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            _remove(old)
    return final


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint so that no interruption leaves a half-deleted ``step-N``: rename it first
    (one atomic step, after which it is no longer listed), then delete the renamed directory."""
    trash = checkpoint.with_name(f".trash-{checkpoint.name}")
    shutil.rmtree(trash, ignore_errors=True)
    checkpoint.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def resolve_resume(spec: str, directory: Path) -> Path | None:
    """The checkpoint to resume from: ``latest`` (None if there is none yet) or a path, validated."""
    if spec == "latest":
        found = list_checkpoints(directory)
        if not found:
            return None
        path = found[-1]
    else:
        path = Path(spec)
        if not path.is_dir():
            raise UsageError(
                f"checkpoint {spec!r} does not exist", "pass a checkpoints/<run>/step-N directory or 'latest'"
            )
    read_state(path)
    return path


def read_state(path: Path) -> CheckpointState:
    """The ``trainer_state.json`` of a checkpoint (``UsageError`` if missing or corrupt)."""
    try:
        state: CheckpointState = json.loads((path / STATE_FILE).read_text())
        int(state["global_step"]), int(state["epoch"]), int(state["batch_in_epoch"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"checkpoint {str(path)!r} is missing or corrupt ({type(err).__name__}: {err})",
            "resume from another checkpoint, or start again with --overwrite-output-dir",
        ) from err
    if not any(path.glob("model*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise UsageError(f"checkpoint {str(path)!r} has no model weights", "resume from another checkpoint")
    return state


def load_checkpoint(accelerator: Accelerator, path: Path, signature: dict[str, str | int | float]) -> CheckpointState:
    """Restore ``path`` into the prepared objects and return its state; ``UsageError`` with a hint naming an
    older checkpoint when a file is truncated or corrupt, or when the checkpoint belongs to another model.

    accelerate's ``load_state`` only logs "Could not load random states" for a broken RNG file and would
    resume with other masks and data order, so every process checks its own RNG file first.
    """
    import torch

    state = read_state(path)
    older = [str(p) for p in list_checkpoints(path.parent) if p != path]
    hint = f"resume from an older checkpoint ({older[-1]})" if older else "start again with --overwrite-output-dir"
    stored = state.get("signature")
    if stored is not None and stored != signature:
        raise UsageError(
            f"checkpoint {str(path)!r} was written by another model or setup ({stored}; this run: {signature})",
            "resume with the options the checkpoint was trained with, or start again with --overwrite-output-dir",
        )
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    try:
        torch.load(rng, weights_only=False)["torch_manual_seed"]
        accelerator.load_state(str(path))
    except Exception as err:  # truncated pickle/safetensors, shape mismatch, missing file, ...
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise UsageError(
            f"checkpoint {str(path)!r} cannot be loaded ({type(err).__name__}: {first})",
            hint + "; a checkpoint of another model cannot be resumed",
        ) from err
    return state
