"""Hub push through huggingface_hub's real HfApi code, its HTTP client replaced by a recording fake.

huggingface_hub 2.x sends every request through one shared ``httpx2.Client`` made by a factory
(``huggingface_hub.set_client_factory``); the fake gives it a ``MockTransport`` that records each
request and answers create-repo, create-branch, preupload and commit as the Hub does. Nothing
leaves the machine.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants, set_client_factory
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook
from test_model_card import write_run_dir

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

TOKEN = "hf_FakeTokenForTests0123456789"
UPLOADED = {
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "hf_sparseout_run.json",
    "sparsity_per_site.png",
    "training_loss.png",
}


class FakeHub:
    """A recording stand-in for the Hub's HTTP API (create repo, branch, preupload, commit)."""

    def __init__(self, user: str = "fake-user") -> None:
        self.user = user
        self.requests: list[httpx2.Request] = []
        self.commits: list[dict] = []
        self.validated: list[str] = []
        self.fail: str | None = None  # "network" or an HTTP status code as a string

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        self.requests.append(request)
        if self.fail == "network":
            raise httpx2.ConnectError("[Errno 111] Connection refused", request=request)
        if self.fail:
            return httpx2.Response(int(self.fail), json={"error": "Invalid credentials in Authorization header"})
        path = request.url.path
        if path == "/api/repos/create":
            body = json.loads(request.content)
            repo_id = f"{body.get('organization') or self.user}/{body['name']}"
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":  # upload_folder checks README.md's metadata first
            self.validated.append(json.loads(request.content)["content"])
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if re.fullmatch(r"/api/models/[^/]+/[^/]+/branch/.+", path):
            return httpx2.Response(200, json={})
        if re.fullmatch(r"/api/models/[^/]+/[^/]+/preupload/.+", path):
            files = json.loads(request.content)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return httpx2.Response(200, json={"files": modes})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
        if match:
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line]
            header = next(item["value"] for item in lines if item["key"] == "header")
            files = {
                item["value"]["path"]: base64.b64decode(item["value"]["content"])
                for item in lines
                if item["key"] == "file"
            }
            self.commits.append({"repo_id": match[1], "revision": match[2], "header": header, "files": files})
            return httpx2.Response(
                200,
                json={"commitUrl": f"https://huggingface.co/{match[1]}/commit/{'a' * 40}", "commitOid": "a" * 40},
            )
        return httpx2.Response(404, json={"error": f"no route {request.method} {path}"})

    def find(self, path: str) -> httpx2.Request:
        """The (first) request to ``path``."""
        return next(r for r in self.requests if r.url.path == path)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub behind huggingface_hub's shared client; a token in HF_TOKEN; no token file."""
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
def run_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("push") / "run"
    write_run_dir(directory)
    return directory


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
    assert create["visibility"] == "private"
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
    assert json.loads(hub.find("/api/repos/create").content).get("visibility") is None  # org/user default


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
