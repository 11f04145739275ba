"""Hub push through huggingface_hub's real HfApi code, its HTTP client replaced by a recording fake.

The ``hub`` fixture (tests/conftest.py, tests/fake_hub.py) records each request and answers create-repo,
create-branch, preupload and commit as the Hub does. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import TOKEN, UPLOADED, requested_visibility
from huggingface_hub import constants
from run_dirs import write_run_dir

from hf_sparseout.hub import push_checkpoint
from hf_sparseout.hub.push import (
    HubRequestError,
    HubUnreachableError,
    InvalidRepoIdError,
    NotACheckpointError,
    NoTokenError,
    checkpoint_files,
    is_main_process,
)


def test_dry_run_lists_the_files_and_the_card_without_network(hub, run_dir):
    result = push_checkpoint(run_dir, "my-user/gpt2-sparseout", dry_run=True)
    assert set(result.files) == UPLOADED
    assert not any(f.startswith(("checkpoints/", "baseline/")) for f in result.files)
    assert result.card_source == "generated"
    assert 'hf_sparseout.from_pretrained("my-user/gpt2-sparseout"' in result.card
    assert result.dry_run and not result.pushed
    assert hub.requests == []
    assert not (run_dir / "README.md").exists()  # a dry run writes nothing
    assert set(checkpoint_files(run_dir)) == UPLOADED - {"README.md"}


def test_push_sends_repo_files_revision_and_message(hub, tmp_path):
    directory = tmp_path / "run"
    write_run_dir(directory)
    planned = push_checkpoint(directory, "my-org/gpt2-sparseout", dry_run=True).files
    result = push_checkpoint(
        directory, "my-org/gpt2-sparseout", private=True, revision="q1.5-exp", commit_message="Sparseout q=1.5 run"
    )
    assert result.pushed and result.repo_id == "my-org/gpt2-sparseout"
    create = json.loads(hub.find("/api/repos/create").content)
    assert create["name"] == "gpt2-sparseout" and create["organization"] == "my-org"
    assert requested_visibility(create) == "private"
    assert "POST /api/models/my-org/gpt2-sparseout/branch/q1.5-exp" in hub.paths()
    assert "POST /api/models/my-org/gpt2-sparseout/preupload/q1.5-exp" in hub.paths()
    [commit] = hub.commits
    assert commit["repo_id"] == "my-org/gpt2-sparseout"
    assert commit["revision"] == "q1.5-exp"
    assert commit["header"]["summary"] == "Sparseout q=1.5 run"
    assert sorted(commit["files"]) == sorted(planned) == sorted(result.files)
    config = json.loads(commit["files"]["config.json"])
    assert config["sparseout"]["q"] == pytest.approx(1.5)
    readme = commit["files"]["README.md"].decode()
    assert readme == (directory / "README.md").read_text() == result.card == hub.validated[0]
    assert 'from_pretrained("my-org/gpt2-sparseout"' in readme
    repo_calls = [r for r in hub.requests if r.url.path.startswith(("/api/repos/", "/api/models/"))]
    assert len(repo_calls) == 4 and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in repo_calls)
    assert result.commit_url.endswith("/commit/" + "a" * 40)
    # the token is sent, never printed or written
    assert TOKEN not in json.dumps(result.to_dict())
    assert not any(TOKEN.encode() in p.read_bytes() for p in directory.rglob("*") if p.is_file())


def test_push_to_main_in_the_users_namespace(hub, tmp_path):
    directory = tmp_path / "run"
    write_run_dir(directory)
    result = push_checkpoint(directory, "tiny-sparseout")
    assert result.repo_id == "fake-user/tiny-sparseout"  # the namespace the Hub answered with
    assert not any("/branch/" in p for p in hub.paths())
    [commit] = hub.commits
    assert commit["repo_id"] == "fake-user/tiny-sparseout" and commit["revision"] == "main"
    assert commit["header"]["summary"].startswith("Upload Sparseout checkpoint (q=1.5)")
    assert requested_visibility(json.loads(hub.find("/api/repos/create").content)) is None  # org/user default


def test_a_hand_written_card_is_kept(hub, tmp_path):
    directory = tmp_path / "run"
    write_run_dir(directory)
    (directory / "README.md").write_text("# My own card\n")
    result = push_checkpoint(directory, "me/model")
    assert result.card_source == "existing"
    assert hub.commits[0]["files"]["README.md"] == b"# My own card\n"


@pytest.mark.parametrize("repo_id", ["a/b/c", "bad--name", "name with space", "x" * 97, ""])
def test_invalid_repo_id_fails_before_any_network(hub, run_dir, repo_id):
    with pytest.raises(InvalidRepoIdError) as info:
        push_checkpoint(run_dir, repo_id)
    assert info.value.hint and "namespace/name" in info.value.hint
    assert hub.requests == []


def test_not_a_patched_checkpoint(hub, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACheckpointError, match=r"no config\.json") as info:
        push_checkpoint(tmp_path / "empty", "me/model")
    assert "save_pretrained" in info.value.hint
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(NotACheckpointError, match="no 'sparseout' block"):
        push_checkpoint(tmp_path / "plain", "me/model")
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "gpt2", "sparseout": [1]}))
    with pytest.raises(NotACheckpointError, match="not a valid Sparseout configuration"):
        push_checkpoint(tmp_path / "plain", "me/model")
    assert hub.requests == []


def test_no_token(hub, run_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(NoTokenError) as info:
        push_checkpoint(run_dir, "me/model")
    assert "HF_TOKEN" in info.value.hint and "hf auth login" in info.value.hint
    assert hub.requests == []


def test_hub_unreachable(hub, tmp_path):
    directory = tmp_path / "run"
    write_run_dir(directory)
    hub.fail = "network"
    with pytest.raises(HubUnreachableError, match="cannot reach the Hugging Face Hub") as info:
        push_checkpoint(directory, "me/model")
    assert "--dry-run" in info.value.hint
    assert TOKEN not in str(info.value)


def test_offline_mode(hub, tmp_path, monkeypatch):
    directory = tmp_path / "run"
    write_run_dir(directory)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match="offline") as info:
        push_checkpoint(directory, "me/model")
    assert "HF_HUB_OFFLINE" in info.value.hint
    assert hub.requests == []


def test_bad_token_is_a_hub_error_with_a_hint(hub, tmp_path):
    directory = tmp_path / "run"
    write_run_dir(directory)
    hub.fail = "401"
    with pytest.raises(HubRequestError, match="401") as info:
        push_checkpoint(directory, "me/model")
    assert "settings/tokens" in info.value.hint
    assert TOKEN not in str(info.value)


def test_only_the_main_process_pushes(hub, run_dir, monkeypatch):
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    result = push_checkpoint(run_dir, "me/model")
    assert not result.pushed and "main process" in result.skipped
    assert hub.requests == []
    assert not (run_dir / "README.md").exists()


def test_peft_adapter_directory_pushes(hub, tmp_path):
    peft = pytest.importorskip("peft", reason="peft is an optional extra")
    from architectures import build

    import hf_sparseout
    from hf_sparseout.hub import save_pretrained

    model = peft.get_peft_model(build("gpt2", "causal-lm", "eager"), peft.LoraConfig(target_modules=["c_attn"], r=4))
    hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=1.0))
    save_pretrained(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "README.md").exists()  # PEFT's placeholder card is not kept
    result = push_checkpoint(tmp_path / "adapter", "me/lora-sparseout")
    assert result.card_source == "generated"
    files = set(hub.commits[0]["files"])
    assert {"adapter_config.json", "adapter_model.safetensors", "sparseout_config.json", "README.md"} <= files
    assert "library_name: peft" in result.card
    assert Path(tmp_path / "adapter" / "README.md").read_text() == result.card


@pytest.mark.slow
def test_example_script_runs_offline(tmp_path):
    """examples/push_patched_checkpoint.py: patch, train, save, reload, card, dry-run push; no network."""
    script = Path(__file__).resolve().parents[1] / "examples" / "push_patched_checkpoint.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # any request would fail
    env.pop("HF_TOKEN", None)
    args = [sys.executable, str(script), "--steps", "2", "--output-dir", str(tmp_path / "ckpt"), "--repo-id", "me/t"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=script.parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "same report: True, same eval outputs: True" in out.stdout
    assert "would push" in out.stdout and "model.safetensors" in out.stdout
    assert "me/t" in (tmp_path / "ckpt" / "README.md").read_text()
