"""A recording stand-in for the Hub's HTTP API, behind huggingface_hub's real HfApi code.

huggingface_hub sends every request through one shared client made by a factory
(``huggingface_hub.set_client_factory``): an ``httpx2.Client`` in huggingface_hub 2.x, an ``httpx.Client``
in 1.x (the lowest versions CI tests, .ci/lowest_versions). The ``hub`` fixture (tests/conftest.py) gives
it a ``MockTransport`` whose handler is :class:`FakeHub`. Nothing leaves the machine.
"""

from __future__ import annotations

import base64
import json
import re

from huggingface_hub.utils import _http

# the HTTP library huggingface_hub itself uses: httpx2 (2.x) or httpx (1.x)
httpx2 = _http.httpx2 if hasattr(_http, "httpx2") else _http.httpx

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


def requested_visibility(create: dict) -> str | None:
    """The visibility a create-repo request body asked for ("private"/"public"), None for the default.

    huggingface_hub 2.x sends ``visibility``, 1.x a boolean ``private``.
    """
    if "visibility" in create:
        return create["visibility"]
    private = create.get("private")
    return None if private is None else ("private" if private else "public")
