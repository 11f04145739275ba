"""Push a patched checkpoint (or a finetune output directory) to the Hugging Face Hub, with its model card.

Built on ``huggingface_hub``: ``HfApi.create_repo`` (``exist_ok``), ``create_branch`` for a
``revision`` other than ``main``, then ``HfApi.upload_folder``. The token comes from the ``token``
argument, ``HF_TOKEN`` or ``hf auth login`` (``huggingface_hub.get_token()``); it is never printed
or written. Under several processes only the main one pushes (see :func:`is_main_process`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_sparseout.errors import PushError
from hf_sparseout.hub.card import CARD_FILE, is_generated_card, render_model_card
from hf_sparseout.hub.save_load import CheckpointError, read_checkpoint_config
from hf_sparseout.version import __version__

DEFAULT_IGNORE_PATTERNS = [
    "checkpoints/*",  # training state (optimizer, RNG): large and not a model
    "baseline/*",  # the dropout baseline model: its metrics are in the card
    "metrics.json",  # holds the run's options, local paths included
    "report.md",  # likewise
    ".*",
    "*/.*",
    "*.tmp*",
    "__pycache__/*",
]
"""Files of a checkpoint directory never uploaded (fnmatch patterns on the relative path)."""


class InvalidRepoIdError(PushError):
    """The repo id is not ``name`` or ``namespace/name`` in the Hub's alphabet."""


class NotACheckpointError(PushError):
    """The directory is not a checkpoint saved from a patched model."""


class NoTokenError(PushError):
    """No Hugging Face token: neither ``HF_TOKEN`` nor ``hf auth login``."""


class HubUnreachableError(PushError):
    """The Hub could not be reached (network down, offline mode)."""


class HubRequestError(PushError):
    """The Hub answered with an error (bad token, no write access, ...)."""


@dataclass
class PushResult:
    """What :func:`push_checkpoint` did, or would do (``dry_run``)."""

    repo_id: str
    files: list[str]
    card: str
    card_source: str
    dry_run: bool
    pushed: bool = False
    revision: str | None = None
    commit_message: str = ""
    private: bool = False
    commit_url: str | None = None
    repo_url: str | None = None
    skipped: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def is_main_process() -> bool:
    """Whether this process may push: ``RANK``/``LOCAL_RANK`` unset or 0, and accelerate's main process.

    The environment variables set by ``torchrun``/``accelerate launch`` decide first; an
    ``accelerate.PartialState`` is consulted only if one is already initialised (creating one
    could start a process group).
    """
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "").strip()
        if value and value != "0":
            return False
    try:
        from accelerate import PartialState
    except ImportError:
        return True
    if PartialState._shared_state:
        return bool(PartialState().is_main_process)
    return True


def validate_repo_id(repo_id: str) -> str:
    """``repo_id`` checked locally (no network) with ``huggingface_hub.utils.validate_repo_id``."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    try:
        hub_validate(repo_id)
    except HFValidationError as err:
        raise InvalidRepoIdError(
            f"invalid repo id {repo_id!r}: {err}",
            "use 'name' or 'namespace/name' with letters, digits, '-', '_', '.' (no '--' or '..', at most 96 chars)",
        ) from err
    return repo_id


def checkpoint_files(checkpoint_dir: str | Path, ignore_patterns: list[str] | None = None) -> list[str]:
    """The files of ``checkpoint_dir`` that a push uploads (relative POSIX paths, sorted)."""
    from huggingface_hub.utils import filter_repo_objects

    directory = Path(checkpoint_dir)
    patterns = DEFAULT_IGNORE_PATTERNS + list(ignore_patterns or [])
    paths = [p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(paths, ignore_patterns=patterns))


def _card(directory: Path, repo_id: str) -> tuple[str, str]:
    """(card text, source): an existing hand-written README.md is kept, a generated one is regenerated."""
    existing = directory / CARD_FILE
    if existing.is_file():
        text = existing.read_text(encoding="utf-8")
        if not is_generated_card(text):
            return text, "existing"
    return render_model_card(directory, repo_id), "generated"


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(__import__(module).TransportError)
    try:
        import requests

        errors.append(requests.ConnectionError)
    except ImportError:
        pass
    return tuple(errors)


def _http_hint(status: int | None) -> str:
    return {
        401: "the token is invalid or expired: create one with write access at https://huggingface.co/settings/tokens",
        403: "the token cannot write to this namespace: use your user name or an organisation you can write to",
        404: "the repository or revision was not found: check --repo-id and --revision",
    }.get(status or 0, "check the repo id, your token's permissions, and https://status.huggingface.co")


def push_checkpoint(
    checkpoint_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
    ignore_patterns: list[str] | None = None,
) -> PushResult:
    """Upload a patched checkpoint directory to the Hub repo ``repo_id``, with a generated model card.

    Checks run before any network: the repo id, the directory (``config.json`` with a valid
    ``sparseout`` block, or a PEFT adapter with ``sparseout_config.json``). The card is generated
    (``README.md``, written into the directory on a real push) unless the directory already has a
    hand-written README.md (one without the hf-sparseout marker line), which is kept.
    ``dry_run`` returns the files and the card and touches nothing. On a process other than the
    main one nothing is pushed and ``result.skipped`` says why.

    Raises:
        PushError: ``InvalidRepoIdError``, ``NotACheckpointError``, ``NoTokenError``,
            ``HubUnreachableError`` or ``HubRequestError``, each with a ``hint``.
    """
    validate_repo_id(repo_id)
    directory = Path(checkpoint_dir)
    try:
        config, _ = read_checkpoint_config(directory)
    except CheckpointError as err:
        raise NotACheckpointError(
            str(err), "push a directory written by hf_sparseout.save_pretrained or hf-sparseout finetune"
        ) from err
    card, card_source = _card(directory, repo_id)
    files = checkpoint_files(directory, ignore_patterns)
    if CARD_FILE not in files:
        files = sorted([*files, CARD_FILE])
    message = commit_message or f"Upload Sparseout checkpoint (q={config.q:g}) with hf-sparseout {__version__}"
    sizes = {f: (directory / f).stat().st_size for f in files if (directory / f).is_file()}
    result = PushResult(repo_id, files, card, card_source, dry_run, False, revision, message, private, sizes=sizes)
    if dry_run:
        return result
    if not is_main_process():
        result.skipped = "not the main process (RANK/LOCAL_RANK > 0): only the main process pushes"
        return result
    return _upload(result, directory, token, ignore_patterns)


def _upload(result: PushResult, directory: Path, token: str | None, ignore_patterns: list[str] | None) -> PushResult:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = token or get_token()
    if not token:
        raise NoTokenError(
            "no Hugging Face token found",
            "set HF_TOKEN to a token with write access, or run `hf auth login` once",
        )
    api = HfApi(token=token)
    try:
        url = api.create_repo(result.repo_id, private=True if result.private else None, exist_ok=True)
        full_id = url.repo_id or result.repo_id
        if result.revision and result.revision != "main":
            api.create_branch(full_id, branch=result.revision, exist_ok=True)
        if result.card_source == "generated":
            (directory / CARD_FILE).write_text(result.card, encoding="utf-8")
        info = api.upload_folder(
            repo_id=full_id,
            folder_path=str(directory),
            revision=result.revision,
            commit_message=result.commit_message,
            ignore_patterns=DEFAULT_IGNORE_PATTERNS + list(ignore_patterns or []),
        )
    except OfflineModeIsEnabled as err:
        raise HubUnreachableError(f"cannot push: {err}", "unset HF_HUB_OFFLINE to push") from err
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        detail = (getattr(err, "server_message", None) or str(err).splitlines()[0]).strip()
        raise HubRequestError(f"the Hub refused the push ({status}): {detail}", _http_hint(status)) from err
    except ValueError as err:  # huggingface_hub: "Invalid metadata in README.md" (the Hub's YAML check)
        raise HubRequestError(
            f"the Hub refused the push: {err}", "fix the YAML metadata of README.md, or delete it to regenerate"
        ) from err
    except _network_errors() as err:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face Hub: {type(err).__name__}: {err}",
            "check the network (and HF_ENDPOINT / proxy settings), or use --dry-run to check the upload offline",
        ) from err
    result.repo_id = full_id
    result.repo_url = str(url)
    result.commit_url = getattr(info, "commit_url", None)
    result.pushed = True
    return result


__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "HubRequestError",
    "HubUnreachableError",
    "InvalidRepoIdError",
    "NoTokenError",
    "NotACheckpointError",
    "PushError",
    "PushResult",
    "checkpoint_files",
    "is_main_process",
    "push_checkpoint",
    "validate_repo_id",
]
