"""The Triton Sparseout op on a CUDA device: numerics, dispatch, RNG, checkpoint, torch.compile, 64-bit indexing.

Marked ``gpu``: skipped without CUDA or without triton (CI has neither; see tests/test_kernel_interpreter.py
for the interpreter-mode checks that run there).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import hf_sparseout
from hf_sparseout.ops import backend

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton"),
]

from kernel_reference import assert_close_scaled, ref_forward, ref_grad  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _ops():
    from hf_sparseout.kernels import sparseout_op, sparseout_triton

    return sparseout_op, sparseout_triton


def _inputs(n, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, device="cuda", generator=g) * torch.logspace(-3, 2, n, device="cuda")
    x[:6] = torch.tensor([0.0, -0.0, 1e-4, -1e-4, 6e4, -6e4])
    return x.to(dtype)


def _mask_of(state, n, p, device="cuda", start=0):
    op, tk = _ops()
    seed, ctr = op.unpack_rng_state(state)
    return tk.keep_mask(n, p, seed, ctr, device=device, start=start)


@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("q", [0.5, 1.0, 1.5, 3.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_custom_op_forward_backward_match_float64(dtype, q, gradient):
    op, _ = _ops()
    n, p = (1 << 20) + 7, 0.3
    x = _inputs(n, dtype).requires_grad_()
    out, state = op.sparseout_fwd(x, p, q, gradient)
    keep = _mask_of(state, n, p)
    assert abs(keep.double().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    mag = x.detach().double().abs() + x.detach().double().abs().pow(q / 2) * max(1.0, p / (1 - p))
    assert_close_scaled(out.detach().cpu(), ref_forward(x.detach(), keep, p, q).cpu(), mag.cpu(), dtype)
    grad = torch.randn(n, device="cuda").to(dtype)
    out.backward(grad)
    want, gmag = ref_grad(grad, x.detach(), keep, p, q, gradient)
    assert_close_scaled(x.grad.cpu(), want.cpu(), gmag.cpu(), dtype)


def _saved(fn):
    saved = []

    def pack(t):
        saved.append((t.dtype, t.device.type, t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


def test_auto_dispatches_cuda_to_triton_and_saves_only_input():
    x = torch.randn(4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with backend.use_backend("auto"):
        saved = _saved(lambda: hf_sparseout.sparseout(x, 0.1, 1.5))
    assert saved == [(torch.bfloat16, "cuda", 4096)]  # the input only: the mask is regenerated
    with backend.use_backend("eager"):
        saved = _saved(lambda: hf_sparseout.sparseout(x, 0.1, 1.5))
    assert (torch.bool, "cuda", 4096) in saved
    # float64 on CUDA: eager under auto, an error when triton is forced.
    x64 = torch.randn(16, device="cuda", dtype=torch.float64)
    assert not backend.use_triton(x64)
    with backend.use_backend("triton"), pytest.raises(RuntimeError, match="dtype"):
        hf_sparseout.sparseout(x64, 0.1, 1.5)


def test_generator_seed_reproduces_and_calls_differ():
    x = torch.randn(10000, device="cuda")
    gen = torch.cuda.default_generators[x.device.index]
    torch.cuda.manual_seed(123)
    off0 = gen.get_offset()
    a = hf_sparseout.sparseout(x, 0.5, 1.5)
    assert gen.get_offset() == off0 + 4
    b = hf_sparseout.sparseout(x, 0.5, 1.5)
    torch.cuda.manual_seed(123)
    a2 = hf_sparseout.sparseout(x, 0.5, 1.5)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_replays_the_same_mask(use_reentrant):
    lin = torch.nn.Linear(256, 256, device="cuda")
    x = torch.randn(64, 256, device="cuda", requires_grad=True)

    def block(t):
        return hf_sparseout.sparseout(lin(t), 0.3, 1.5, gradient="exact").square()

    torch.cuda.manual_seed(7)
    block(x).sum().backward()
    g_plain, w_plain = x.grad.clone(), lin.weight.grad.clone()
    x.grad = None
    lin.weight.grad = None
    torch.cuda.manual_seed(7)
    checkpoint(block, x, use_reentrant=use_reentrant).sum().backward()
    assert torch.equal(x.grad, g_plain)
    assert torch.equal(lin.weight.grad, w_plain)


def test_torch_compile_fullgraph_matches_eager_kernel():
    def f(t):
        return hf_sparseout.sparseout(t * 2.0, 0.2, 1.5) * 3.0

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    x = torch.randn(3, 5000, device="cuda", requires_grad=True)
    torch.cuda.manual_seed(3)
    y_eager = f(x)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    compiled(x)  # compile (consumes one draw), then compare on the same seed
    torch.cuda.manual_seed(3)
    y_comp = compiled(x)
    (g_comp,) = torch.autograd.grad(y_comp.sum(), x)
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-6, atol=1e-6)


def test_torch_compile_graph_has_the_custom_op():
    from torch._dynamo.testing import CompileCounterWithBackend

    cnt = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    f = torch.compile(lambda t: hf_sparseout.sparseout(t, 0.2, 1.5) + 1, backend=cnt, fullgraph=True)
    f(torch.randn(64, device="cuda"))
    assert cnt.frame_count == 1
    assert any("hf_sparseout.sparseout_fwd" in str(n.target) for g in cnt.graphs for n in g.graph.nodes)


def test_custom_op_saves_input_and_rng_state_only():
    op, _ = _ops()
    x = torch.randn(4096, device="cuda", dtype=torch.float16, requires_grad=True)
    saved = _saved(lambda: op.sparseout_fwd(x, 0.1, 1.5, "exact"))
    assert saved == [(torch.float16, "cuda", 4096), (torch.int64, "cpu", 2)]


def test_eager_and_custom_op_paths_draw_the_same_mask():
    op, _ = _ops()
    x = torch.randn(5000, device="cuda", requires_grad=True)
    g = torch.randn_like(x)
    torch.cuda.manual_seed(5)
    a = hf_sparseout.sparseout(x, 0.3, 0.5, gradient="exact")
    (ga,) = torch.autograd.grad(a, x, g)
    torch.cuda.manual_seed(5)
    b, _ = op.sparseout_fwd(x, 0.3, 0.5, "exact")
    (gb,) = torch.autograd.grad(b, x, g)
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_opcheck():
    op, _ = _ops()
    x = torch.randn(33, 65, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.library.opcheck(
        op.sparseout_fwd,
        (x, 0.3, 1.5, "reference"),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


def test_half_saturates_and_grads_stay_finite():
    x = torch.tensor([6e4, -6e4, 0.0, 1e-7] * 1024, device="cuda", dtype=torch.float16, requires_grad=True)
    for gradient in ("reference", "exact"):
        x.grad = None
        out = hf_sparseout.sparseout(x, 0.5, 3.0, gradient=gradient)
        assert torch.isfinite(out).all()
        out.backward(torch.ones_like(out))
        assert torch.isfinite(x.grad).all()
        x.grad = None
        hf_sparseout.sparseout(x, 0.5, 0.5, gradient=gradient).backward(torch.ones_like(x))
        assert torch.isfinite(x.grad).all()


def test_inplace_and_non_contiguous_inputs():
    base = torch.randn(300, 200, device="cuda")
    torch.cuda.manual_seed(11)
    want = hf_sparseout.sparseout(base.t().contiguous(), 0.3, 1.5)
    torch.cuda.manual_seed(11)
    got = hf_sparseout.sparseout(base.t(), 0.3, 1.5)  # non-contiguous view
    assert torch.equal(got, want)
    y = base.clone().requires_grad_()
    z = y * 1.0
    torch.cuda.manual_seed(11)
    r = hf_sparseout.sparseout(z, 0.3, 1.5, inplace=True)
    assert r is z
    torch.cuda.manual_seed(11)
    assert torch.equal(r, hf_sparseout.sparseout(base, 0.3, 1.5))
    r.sum().backward()  # expanded (stride-0) grad_out
    assert torch.isfinite(y.grad).all() and y.grad.shape == y.shape


def test_interpreter_draws_the_same_mask_as_the_gpu(tmp_path):
    _, tk = _ops()
    code = (
        "import os, sys, torch; os.environ['TRITON_INTERPRET'] = '1'\n"
        "from hf_sparseout.kernels import sparseout_triton as K\n"
        "torch.save(K.keep_mask(20000, 0.3, 2**63 + 5, 2**33 + 1, device='cpu'), sys.argv[1])\n"
    )
    path = tmp_path / "m.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, cwd=Path(__file__).parents[1])
    cpu_mask = torch.load(path)
    gpu_mask = tk.keep_mask(20000, 0.3, 2**63 + 5, 2**33 + 1, device="cuda").cpu()
    assert torch.equal(cpu_mask, gpu_mask)


def test_more_than_2_pow_31_elements():
    if torch.cuda.mem_get_info()[0] < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    op, tk = _ops()
    n = 2**31 + 3 * 4096 + 5
    x = torch.empty(n, device="cuda", dtype=torch.bfloat16).uniform_(-2, 2)
    p, q = 0.4, 1.5
    out, state = op.sparseout_fwd(x, p, q, "reference")
    seed, ctr = op.unpack_rng_state(state)
    for start in (0, 2**31 - 10000, n - 20000):
        sl = slice(start, start + 20000)
        keep = tk.keep_mask(20000, p, seed, ctr, device="cuda", start=start)
        xs = x[sl]
        mag = xs.double().abs() + xs.double().abs().pow(q / 2) * max(1.0, p / (1 - p))
        assert_close_scaled(out[sl].cpu(), ref_forward(xs, keep, p, q).cpu(), mag.cpu(), torch.bfloat16)
    del out
    gi = op.sparseout_bwd(x, x, state, p, q, "exact")  # grad_out = x, to save memory
    sl = slice(n - 20000, n)
    keep = tk.keep_mask(20000, p, seed, ctr, device="cuda", start=n - 20000)
    want, gmag = ref_grad(x[sl], x[sl], keep, p, q, "exact")
    assert_close_scaled(gi[sl].cpu(), want.cpu(), gmag.cpu(), torch.bfloat16)
