"""Fail soft (issue 26): a Triton kernel that cannot compile or launch falls back, warns once, and says so.

The failure is injected into the kernel launchers on the CPU (the flash path is forced on CPU tensors by
replacing its device check, as the interpreter tests do); the fallback must give what the explicit path / the
eager op gives for the same seed, log one warning per cause, and name the cause in ``attention_path`` and in
the report's ``path``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from architectures import batch, build

import hf_sparseout
from hf_sparseout import SparseoutConfig
from hf_sparseout.kernels import fallback
from hf_sparseout.ops import backend

pytestmark = pytest.mark.skipif(not backend.triton_available(), reason="triton not installed")

MESSAGE = "injected launch failure"


@pytest.fixture(autouse=True)
def _fresh_fallback():
    fallback.reset()
    yield
    fallback.reset()


def _raise(*args, **kwargs):
    raise RuntimeError(f"{MESSAGE}\nsecond line of the driver's message")


def _zeros_forward(q, k, v, mask, causal, scale, p, sq, seed, ctr, store_o1=False):
    return torch.zeros_like(q), torch.zeros(q.shape[:-1]), (torch.zeros_like(q) if store_o1 else None)


def _warnings(caplog: pytest.LogCaptureFixture, kernel: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"the {kernel} Triton kernel failed" in r.getMessage()]


def _step(model: torch.nn.Module, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(seed)
    out = model(**batch(model), use_cache=False)
    out.logits.float().square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return out.logits.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize("where", ["attention_fwd", "attention_bwd"])
def test_a_failing_flash_kernel_falls_back_to_the_explicit_path(monkeypatch, caplog, where):
    from hf_sparseout.kernels import attention_op, attention_triton

    model = build("gpt2", "causal-lm", "sdpa").train()
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5))
    sites = [s for s in report.sites if s.kind == "attention"]
    hf_sparseout.kernels.attention_op.set_flash_enabled(False)
    try:
        want_logits, want_grads = _step(model)
    finally:
        hf_sparseout.kernels.attention_op.set_flash_enabled(True)
    monkeypatch.setattr(attention_op, "_on_cuda", lambda t: True)
    monkeypatch.setattr(attention_op, "predicted_path", lambda *a, **k: "flash")
    for s in sites:  # as the report of a CUDA model says before any step
        s.path = "flash"
    monkeypatch.setattr(attention_triton, where, _raise)
    if where == "attention_bwd":  # a forward that runs (a stand-in: no GPU here), a backward that cannot compile
        monkeypatch.setattr(attention_triton, "attention_fwd", _zeros_forward)
    with caplog.at_level(logging.WARNING, logger="hf_sparseout"):
        logits, grads = _step(model)
        _step(model, seed=1)
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=0)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert len(_warnings(caplog, "flash attention")) == 1  # once per cause, not per call or per site
    expected = f"explicit (flash failed: RuntimeError: {MESSAGE})"
    assert {model.get_submodule(s.module).attention_path for s in sites} == {expected}
    assert {s.path for s in hf_sparseout.get_report(model).sites if s.kind == "attention"} == {expected}
    assert list(fallback.failures().values()) == [f"RuntimeError: {MESSAGE}"]


def test_out_of_memory_is_not_hidden(monkeypatch):
    from hf_sparseout.kernels import attention_op, attention_triton

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("injected")

    model = build("gpt2", "causal-lm", "sdpa").train()
    hf_sparseout.patch(model, SparseoutConfig(q=1.5))
    monkeypatch.setattr(attention_op, "_on_cuda", lambda t: True)
    monkeypatch.setattr(attention_triton, "attention_fwd", oom)
    with pytest.raises(torch.OutOfMemoryError):
        model(**batch(model), use_cache=False)
    assert fallback.failures() == {}


def test_a_failing_elementwise_kernel_falls_back_to_the_eager_op(monkeypatch, caplog):
    from hf_sparseout.kernels import sparseout_triton

    x = torch.randn(4, 33, requires_grad=True)
    torch.manual_seed(0)
    with backend.use_backend("eager"):
        want = hf_sparseout.sparseout(x, 0.2, 1.5)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    monkeypatch.setattr(backend, "use_triton", lambda t: True)
    monkeypatch.setattr(sparseout_triton, "sparseout_fwd", lambda x, *a, **k: x.clone())  # runs (stand-in)
    monkeypatch.setattr(sparseout_triton, "sparseout_bwd", _raise)  # a backward kernel that cannot compile
    with caplog.at_level(logging.WARNING, logger="hf_sparseout"):
        torch.manual_seed(0)
        out = hf_sparseout.sparseout(x, 0.2, 1.5)
        hf_sparseout.sparseout(x, 0.2, 1.5)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
    assert len(_warnings(caplog, "element-wise Sparseout")) == 1
    assert list(fallback.failures().values()) == [f"RuntimeError: {MESSAGE}"]


def test_a_forced_triton_backend_raises_instead(monkeypatch):
    from hf_sparseout.kernels import sparseout_triton

    monkeypatch.setattr(backend, "use_triton", lambda t: True)
    monkeypatch.setattr(sparseout_triton, "sparseout_fwd", _raise)
    with backend.use_backend("triton"), pytest.raises(Exception):  # noqa: B017 (the launch's own error)
        hf_sparseout.sparseout(torch.randn(8), 0.2, 1.5)
    assert fallback.failures() == {}


def test_no_probe_under_inference_mode():
    calls = []
    with torch.inference_mode():
        assert fallback.probe("k", 1, lambda: calls.append(1)) is None
    assert calls == []
    assert fallback.probe("k", 1, lambda: calls.append(1)) is None and calls == [1]
    assert fallback.probe("k", 1, lambda: calls.append(1)) is None and calls == [1]  # once per signature
