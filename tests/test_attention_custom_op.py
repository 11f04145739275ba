"""The flash attention as ``torch.library`` custom ops (issue 26, item 3), checked on the CPU.

On the CPU the ops run their reference implementation (explicit attention with a CPU-generator mask), which is
enough to check the registration: schema, fake (meta) implementation, autograd (``torch.library.opcheck``), a
backward consistent with autograd through the same mask, and a compiled patched model whose graph holds the op
(the GPU tests and ``python -m bench.gpu_check`` run the kernels themselves).
"""

from __future__ import annotations

import pytest
import torch

from hf_sparseout.kernels import attention_custom_op as cop
from hf_sparseout.kernels.sparseout_op import unpack_rng_state


def _inputs(h=4, hkv=2, m=6, n=7, d=16, dtype=torch.float64, grad=True):
    torch.manual_seed(0)
    q = torch.randn(2, h, m, d, dtype=dtype, requires_grad=grad)
    k = torch.randn(2, hkv, n, d, dtype=dtype, requires_grad=grad)
    v = torch.randn(2, hkv, n, d, dtype=dtype, requires_grad=grad)
    mask = torch.ones(2, 1, m, n, dtype=torch.bool)
    mask[1, ..., -2:] = False
    return q, k, v, mask


def test_ops_are_registered_in_the_hf_sparseout_namespace():
    fwd = str(torch.ops.hf_sparseout.flash_attention_fwd.default._schema)
    bwd = str(torch.ops.hf_sparseout.flash_attention_bwd.default._schema)
    assert fwd.startswith("hf_sparseout::flash_attention_fwd(Tensor query, Tensor key, Tensor value, Tensor? attn_mask")
    assert fwd.endswith("-> (Tensor, Tensor, Tensor, Tensor)")
    assert "Tensor rng_state" in bwd and bwd.endswith("-> (Tensor, Tensor, Tensor)")


CASES = [(1.5, "reference", False), (1.5, "exact", True), (2.0, "exact", False)]


@pytest.mark.parametrize(("q", "gradient", "o1"), CASES)
def test_fake_impl_shapes_on_meta(q, gradient, o1):
    query = torch.empty(2, 4, 5, 16, device="meta", dtype=torch.bfloat16)
    key = torch.empty(2, 2, 9, 16, device="meta", dtype=torch.bfloat16)
    out, lse, got_o1, state = cop.flash_attention_fwd(query, key, key, None, True, 0.25, 0.1, q, gradient)
    assert out.shape == query.shape and out.dtype == torch.bfloat16 and out.device.type == "meta"
    assert lse.shape == (2, 4, 5) and lse.dtype == torch.float32
    assert got_o1.shape == (query.shape if o1 else (0,))
    assert state.shape == (2,) and state.dtype == torch.int64


@pytest.mark.slow
def test_opcheck_on_cpu():
    q, k, v, mask = _inputs(dtype=torch.float32)
    q = q.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # strided as a model's query
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(cop.flash_attention_fwd, (q, k, v, mask, True, 0.25, 0.2, 1.5, "exact"), test_utils=utils)
    out, lse, o1, state = cop.flash_attention_fwd(q, k, v, mask, True, 0.25, 0.2, 1.5, "exact")
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), mask, out.detach(), lse, o1.detach(), state)
    torch.library.opcheck(cop.flash_attention_bwd, (*args, True, 0.25, 0.2, 1.5, "exact"), test_utils=utils[:2])


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_backward_is_autograd_through_the_same_mask(causal):
    """The exact rule at q = 3 (no clamp) is the true derivative: compare with autograd of the explicit formula."""
    q, k, v, mask = _inputs()
    p, sq = 0.3, 3.0
    out, _, _, state = cop.flash_attention_fwd(q, k, v, mask, causal, 0.25, p, sq, "exact")
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    seed, ctr = unpack_rng_state(state)
    kk, vv = (t.repeat_interleave(2, dim=1) for t in (k, v))
    s = q @ kk.transpose(-1, -2) * 0.25
    if causal:
        s = s.masked_fill(~torch.ones(6, 7, dtype=torch.bool).tril(), float("-inf"))
    probs = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
    noise = cop.cpu_keep(probs.shape, p, seed, ctr).double() / (1 - p) - 1
    want = (probs + probs ** (sq / 2) * noise) @ vv
    torch.testing.assert_close(out, want)
    for got, exp in zip(grads, torch.autograd.grad(want, (q, k, v), g), strict=True):
        torch.testing.assert_close(got, exp)


@pytest.mark.slow
def test_a_compiled_patched_model_runs_the_custom_op(monkeypatch):
    """Under torch.compile the flash path is taken (it was the explicit one before) as one custom-op node."""
    from architectures import batch, build
    from torch._dynamo.testing import CompileCounterWithBackend

    import hf_sparseout
    from hf_sparseout.kernels import attention_op
    from hf_sparseout.ops import backend

    if not backend.triton_available():
        pytest.skip("triton not installed (the flash path needs it)")
    model = build("gpt2", "causal-lm", "sdpa").train()
    hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=1.5))
    monkeypatch.setattr(attention_op, "_on_cuda", lambda t: True)  # the CPU reference stands in for the kernel
    cnt = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=cnt)
    out = compiled(**batch(model), use_cache=False)
    out.logits.float().square().mean().backward()
    nodes = [str(n.target) for gm in cnt.graphs for n in gm.graph.nodes]
    assert sum("hf_sparseout.flash_attention_fwd" in t for t in nodes) == model.config.n_layer
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    torch._dynamo.reset()
