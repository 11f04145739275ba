"""`hf-sparseout push`, invoked through the real app (whose group prints errors, exit 2)."""

from __future__ import annotations

import json

import pytest
from fake_hub import TOKEN, UPLOADED
from run_dirs import write_run_dir
from typer.testing import CliRunner

from hf_sparseout_cli.main import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["push", *args])


def test_dry_run_text(hub, run_dir):
    result = invoke(str(run_dir), "--repo-id", "me/gpt2-sparseout", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Dry run: would push 7 file(s) to me/gpt2-sparseout" in result.output
    listed = {line.split()[0] for line in result.output.splitlines() if line.startswith("  ")}
    assert listed >= UPLOADED
    assert "checkpoints/" not in result.output and "metrics.json" not in result.output
    assert "README.md  (generated)" in result.output
    assert "library_name: transformers" in result.output  # the card follows the list
    assert hub.requests == []


def test_dry_run_json(hub, run_dir):
    result = invoke(str(run_dir), "--repo-id", "me/m", "--dry-run", "--revision", "dev", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["files"]) == UPLOADED
    assert data["dry_run"] is True and data["pushed"] is False and data["revision"] == "dev"
    assert data["card"].startswith("---\n")
    assert hub.requests == []


def test_push(hub, tmp_path):
    write_run_dir(tmp_path / "run")
    result = invoke(
        str(tmp_path / "run"), "--repo-id", "org/m", "--private", "--revision", "v1", "--commit-message", "first"
    )
    assert result.exit_code == 0, result.output
    assert "Pushed 7 file(s) to org/m (revision v1)" in result.output
    assert "Commit: https://huggingface.co/org/m/commit/" in result.output
    [commit] = hub.commits
    assert (commit["repo_id"], commit["revision"], commit["header"]["summary"]) == ("org/m", "v1", "first")
    assert set(commit["files"]) == UPLOADED
    assert TOKEN not in result.output


@pytest.mark.parametrize(
    ("setup", "args", "message", "hint"),
    [
        (None, ["--repo-id", "bad//id"], "invalid repo id", "namespace/name"),
        ("plain", ["--repo-id", "me/m"], "no 'sparseout' block", "save_pretrained"),
        ("no-token", ["--repo-id", "me/m"], "no Hugging Face token", "hf auth login"),
        ("network", ["--repo-id", "me/m"], "cannot reach the Hugging Face Hub", "--dry-run"),
    ],
)
def test_errors_exit_2_with_a_hint(hub, run_dir, tmp_path, monkeypatch, setup, args, message, hint):
    directory = run_dir
    if setup == "plain":
        directory = tmp_path / "plain"
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    elif setup == "no-token":
        monkeypatch.delenv("HF_TOKEN")
    elif setup == "network":
        hub.fail = "network"
    result = invoke(str(directory), *args)
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output and message in result.output
    assert "Hint:" in result.output and hint in result.output
    assert TOKEN not in result.output


def test_repo_id_is_required(hub, run_dir):
    result = invoke(str(run_dir))
    assert result.exit_code == 2
    assert "--repo-id" in result.output
