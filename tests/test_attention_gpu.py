"""The flash Sparseout-attention kernel on a CUDA device (skipped without CUDA and triton; never run in this CI).

The same checks as the interpreter tests, compiled: the kernel against the float64 reference with the same mask
(``keep_mask`` of the element-wise kernel's stream), and a patched model's training step through the flash path
against the explicit path with the CUDA generator re-seeded (both draw their masks from the same Philox
stream), plus checkpoint recomputation.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from attention_reference import CASES, TOL, make_case, reference, rel_err, tiny_attention_models

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton"),
]

SEED, CTR = 12345, 3


@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_float64_on_gpu(name, gradient):
    from hf_sparseout.kernels import sparseout_triton as K
    from hf_sparseout.kernels.attention_op import sparseout_attention

    c = make_case(name)
    B, H, M, _ = c["q"].shape
    N = c["k"].size(2)
    keep = K.keep_mask(B * H * M * N, c["p"], SEED, CTR, device="cuda").view(B, H, M, N).cpu()
    q, k, v = (c[t].cuda().requires_grad_() for t in "qkv")
    mask = None if c["mask"] is None else c["mask"].cuda()
    out = sparseout_attention(q, k, v, mask, c["causal"], None, c["p"], c["sq"], gradient, rng=(SEED, CTR))
    out.backward(c["grad"].cuda())
    want = reference(c, keep, gradient)
    tol = 2 * TOL[c["q"].dtype]  # the GPU's bf16/fp16 dot and exp differ from the interpreter's in rounding
    for t, got in (("out", out), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert rel_err(got.detach().cpu(), want[t]) <= tol, (t, rel_err(got.detach().cpu(), want[t]))


def _step(model, inputs, flash: bool):
    from hf_sparseout.kernels.attention_op import set_flash_enabled

    set_flash_enabled(flash)
    try:
        torch.manual_seed(7)
        model.zero_grad()
        out = model(**inputs)
        out.loss.backward()
    finally:
        set_flash_enabled(True)
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_patched_model_flash_equals_explicit_on_gpu():
    import hf_sparseout

    for name, (model, inputs) in tiny_attention_models().items():
        model = model.cuda().train()
        inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        report = hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=1.5))
        assert any(s.path == "flash" for s in report.sites), name
        loss_f, grads_f = _step(model, inputs, True)
        loss_e, grads_e = _step(model, inputs, False)
        torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-5)
        for n, g in grads_f.items():
            torch.testing.assert_close(g, grads_e[n], rtol=1e-3, atol=1e-5, msg=n)


def test_checkpoint_recomputes_the_same_mask():
    from torch.utils.checkpoint import checkpoint

    from hf_sparseout.kernels.attention_op import sparseout_attention

    q, k, v = (torch.randn(2, 4, 128, 64, device="cuda", requires_grad=True) for _ in range(3))
    g = torch.randn(2, 4, 128, 64, device="cuda")

    def f(q, k, v):
        return sparseout_attention(q, k, v, None, True, None, 0.2, 1.5)

    torch.manual_seed(1)
    grads_plain = torch.autograd.grad(f(q, k, v), (q, k, v), g)
    torch.manual_seed(1)
    grads_ckpt = torch.autograd.grad(checkpoint(f, q, k, v, use_reentrant=False), (q, k, v), g)
    for a, b in zip(grads_plain, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b)


def test_custom_op_and_eager_paths_draw_the_same_mask_on_gpu():
    """``hf_sparseout::flash_attention_fwd`` (compiled graphs) and the eager autograd function agree exactly."""
    from hf_sparseout.kernels.attention_custom_op import flash_attention_fwd
    from hf_sparseout.kernels.attention_op import sparseout_attention

    q, k, v = (torch.randn(2, 4, 96, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    torch.cuda.manual_seed(11)
    a = sparseout_attention(q, k, v, None, True, None, 0.2, 1.5, "exact")
    ga = torch.autograd.grad(a, (q, k, v), g)
    torch.cuda.manual_seed(11)
    b = flash_attention_fwd(q, k, v, None, True, 0.125, 0.2, 1.5, "exact")[0]
    gb = torch.autograd.grad(b, (q, k, v), g)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb, strict=True))


def test_opcheck_on_gpu():
    from hf_sparseout.kernels.attention_custom_op import flash_attention_fwd

    q, k, v = (torch.randn(1, 2, 40, 32, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(flash_attention_fwd, (q, k, v, None, True, 0.2, 0.1, 1.5, "reference"), test_utils=utils)


def test_compiled_patched_model_uses_the_flash_custom_op_on_gpu():
    from torch._dynamo.testing import CompileCounterWithBackend

    import hf_sparseout

    model, inputs = tiny_attention_models()["llama-gqa"]
    model = model.cuda().train()
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=1.5))
    cnt = CompileCounterWithBackend("inductor")
    torch._dynamo.reset()
    torch.compile(model, backend=cnt)(**inputs).loss.backward()
    assert any("flash_attention_fwd" in str(n.target) for gm in cnt.graphs for n in gm.graph.nodes)
    torch._dynamo.reset()
