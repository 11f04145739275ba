"""Fixtures shared by the test modules (pytest finds them here; never import this file).

- ``hub``: the fake Hub (tests/fake_hub.py) behind huggingface_hub's shared HTTP client, a token in
  ``HF_TOKEN`` and no token file; nothing leaves the machine.
- ``run_dir``: one finetune-like run directory per module (tests/run_dirs.py), for tests that only read it.
- accelerate's process state is reset after every test (autouse), so a test that builds an
  ``Accelerator`` or runs ``finetune``/``sweep`` in-process leaves nothing behind for the next one;
  so is the ``hf_sparseout`` logger (``logs.reset``: the CLI's ``logs.configure`` leaves a handler on the
  test's closed output and stops the logger propagating, which hid later tests' records from ``caplog``).

Plain helpers (data writers, the in-process CLI runner, float64 references) live in the small
modules next to this file (``finetune_helpers``, ``run_dirs``, ``fake_hub``, ``kernel_reference``, ...).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _fresh_project_logger() -> Iterator[None]:
    """Undo the CLI's ``logs.configure`` after the test: its handler wrote to the test's (now closed)
    output, and it stops the ``hf_sparseout`` logger propagating, which hides records from ``caplog``."""
    yield
    from hf_sparseout import logs

    logs.reset()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    """Reset accelerate's shared state after the test, if the test (or an earlier one) imported accelerate."""
    yield
    if "accelerate.state" in sys.modules:
        from finetune_helpers import reset_accelerate_state

        reset_accelerate_state()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The fake Hub behind huggingface_hub's shared client; a token in HF_TOKEN; no token file."""
    from fake_hub import TOKEN, FakeHub, httpx2
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for var in ("RANK", "LOCAL_RANK", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    set_client_factory(
        lambda: httpx2.Client(
            transport=httpx2.MockTransport(fake.handle),
            event_hooks={"request": [hf_request_event_hook]},
            follow_redirects=True,
        )
    )
    yield fake
    set_client_factory(default_client_factory)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finetune-like run directory (patched tiny GPT-2, run file, plots, training state), one per module."""
    from run_dirs import write_run_dir

    directory = tmp_path_factory.mktemp("run-dir") / "run"
    write_run_dir(directory)
    return directory
