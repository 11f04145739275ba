"""The Sparseout op inside autograd graphs: bytes saved for backward, ``torch.compile``, activation checkpointing."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from sparseout_oracle import mask_for, out64
from torch.utils.checkpoint import checkpoint

import hf_sparseout

SEED = 99
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


# ------------------------------------------------------------------------------------ memory


class _AuthorsStyleSparseout(torch.autograd.Function):
    """A plain re-implementation of the authors' autograd function, for comparison: the forward builds
    the full multiplicative factor ``1 + (|x| + 1e-12) ** ((q - 2) / 2) * noise`` and keeps it for backward
    (here through ``save_for_backward`` so the hooks can see it), in ``factor_dtype``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, q: float, factor_dtype: torch.dtype) -> torch.Tensor:
        keep = torch.empty(x.shape, dtype=factor_dtype).bernoulli_(1.0 - p)
        noise = keep / (1.0 - p) - 1.0
        factor = (x.to(factor_dtype).abs() + 1e-12) ** ((q - 2.0) / 2.0) * noise + 1.0
        ctx.save_for_backward(factor)
        return (x * factor).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (factor,) = ctx.saved_tensors
        return (grad_out * factor).to(grad_out.dtype), None, None, None


def _saved_for_backward(fn, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    packed: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    return y, packed


def _bytes_per_element(tensors: list[torch.Tensor], numel: int, exclude: torch.Tensor | None = None) -> float:
    """Bytes of the saved tensors per input element; with ``exclude``, only tensors that do not share its
    storage (i.e. memory the op allocated for backward, not the input kept alive)."""
    ptr = None if exclude is None else exclude.untyped_storage().data_ptr()
    total = sum(t.numel() * t.element_size() for t in tensors if t.untyped_storage().data_ptr() != ptr)
    return total / numel


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("q", [0.5, 3.0])
@pytest.mark.parametrize("gradient", ["reference", "exact"])
def test_saved_bytes_per_element(dtype: torch.dtype, q: float, gradient: str) -> None:
    x = torch.randn(64, 128, dtype=dtype, requires_grad=True)
    n, esize = x.numel(), x.element_size()
    y, ours = _saved_for_backward(lambda t: hf_sparseout.sparseout(t, p=0.3, q=q, gradient=gradient), x)
    assert ours, "nothing saved for backward?"
    ours_raw = _bytes_per_element(ours, n)
    ours_new = _bytes_per_element(ours, n, exclude=x)
    assert ours_raw <= esize + 1, (ours_raw, [(t.dtype, t.shape) for t in ours])
    assert ours_new <= 1, "the op allocated more than a 1-byte mask per element for backward"
    y.sum().backward()  # the saved tensors are enough for backward
    assert torch.isfinite(x.grad).all()

    for factor_dtype in {dtype, torch.float32}:
        x2 = x.detach().clone().requires_grad_()
        _, theirs = _saved_for_backward(lambda t, fd=factor_dtype: _AuthorsStyleSparseout.apply(t, 0.3, q, fd), x2)
        theirs_new = _bytes_per_element(theirs, n, exclude=x2)
        assert theirs_new == torch.finfo(factor_dtype).bits // 8  # the comparator saves what it should
        assert ours_new < theirs_new
        if torch.finfo(factor_dtype).bits // 8 > esize + 1:  # a float32 factor for a 16-bit input
            assert ours_raw < _bytes_per_element(theirs, n)
    # Counting the input itself (raw bytes), a float32 input costs 4 + 1 = 5 bytes/element here against 4
    # for a saved float32 factor: the saving over the authors' layout is real only when the input is kept
    # alive anyway (the new-memory comparison above) or for 16-bit inputs.


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_saved_bytes_q2_and_inplace(dtype: torch.dtype) -> None:
    a = torch.randn(64, 128, dtype=dtype, requires_grad=True)
    x = a.detach().clone().requires_grad_()
    n, esize = x.numel(), x.element_size()
    _, saved = _saved_for_backward(lambda t: hf_sparseout.sparseout(t, p=0.3, q=2.0), x)
    # q = 2 is F.dropout: on CUDA native_dropout keeps a 1-byte mask; PyTorch's CPU dropout keeps its scaled
    # noise in the input dtype. Either way within the budget of input element size + 1.
    assert _bytes_per_element(saved, n) <= esize + 1

    def inplace(t: torch.Tensor) -> torch.Tensor:
        return hf_sparseout.sparseout(t * 1.0, p=0.3, q=1.5, inplace=True)

    _, saved = _saved_for_backward(inplace, a)
    assert _bytes_per_element(saved, n) <= esize + 1


# ------------------------------------------------------------------------------ torch.compile


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize(("q", "gradient"), [(1.5, "exact"), (3.0, "reference"), (2.0, "reference")])
def test_compile_explain_forward_no_graph_break(fresh_dynamo, q: float, gradient: str) -> None:
    def fn(t: torch.Tensor) -> torch.Tensor:
        return hf_sparseout.sparseout(torch.tanh(t), p=0.25, q=q, gradient=gradient) * 2.0

    explanation = torch._dynamo.explain(fn)(torch.randn(8, 16, requires_grad=True))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compile_explain_training_step_no_graph_break(fresh_dynamo) -> None:
    """A whole training step (forward, backward, SGD update) traces as one graph."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    layer = hf_sparseout.Sparseout(p=0.25, q=1.5, gradient="exact")

    def step(t: torch.Tensor) -> torch.Tensor:
        loss = layer(lin(t)).pow(2).mean()
        loss.backward()
        with torch.no_grad():
            for w in lin.parameters():
                w -= 0.1 * w.grad
                w.grad = None
        return loss.detach()

    # Tensor.backward() inside a traced function needs this dynamo option (a break without it, op or not)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        explanation = torch._dynamo.explain(step)(torch.randn(4, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("gradient", ["exact"])
def test_compiled_matches_eager_same_seed(fresh_dynamo, gradient: str) -> None:
    """Inductor (fullgraph, eager RNG via fallback_random) draws the same mask as eager: output and input
    gradient equal up to float32 rounding of the fused kernel."""
    p, q = 0.3, 1.5

    def fn(t: torch.Tensor) -> torch.Tensor:
        return hf_sparseout.sparseout(t, p=p, q=q, gradient=gradient)

    x0 = torch.randn(32, 64)
    g = torch.randn(32, 64)
    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(fn, fullgraph=True)
        xc = x0.clone().requires_grad_()
        torch.manual_seed(SEED)
        yc = compiled(xc)
        yc.backward(g)
    xe = x0.clone().requires_grad_()
    torch.manual_seed(SEED)
    ye = fn(xe)
    ye.backward(g)
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
    # the comparison can fail: it is the mask that matches, not just "some" sparseout output
    mask = mask_for(x0, p, SEED)
    torch.testing.assert_close(yc.double(), out64(x0, mask, p, q), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(yc.double(), out64(x0, ~mask, p, q), rtol=1e-3)


# --------------------------------------------------------------------------------- checkpoint


@pytest.mark.parametrize("q", [0.5, 2.0, 3.0])
@pytest.mark.parametrize("gradient", ["reference", "exact"])
def test_checkpoint_recomputes_same_mask(q: float, gradient: str) -> None:
    torch.manual_seed(0)
    lin1, lin2 = torch.nn.Linear(16, 32).double(), torch.nn.Linear(32, 4).double()
    params = [*lin1.parameters(), *lin2.parameters()]
    x = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    calls = []

    def block(h: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return lin2(hf_sparseout.sparseout(torch.tanh(lin1(h)), p=0.4, q=q, gradient=gradient))

    def grads(run) -> list[torch.Tensor]:
        torch.manual_seed(SEED)
        loss = run().pow(2).sum()
        return torch.autograd.grad(loss, [x, *params])

    plain = grads(lambda: block(x))
    calls.clear()
    ckpt = grads(lambda: checkpoint(block, x, use_reentrant=False))
    assert len(calls) == 2, "the block was not recomputed in backward"
    for a, b in zip(plain, ckpt, strict=True):
        assert torch.equal(a, b)
    # control: without restoring the RNG state the recomputation draws another mask, and the test sees it
    other = grads(lambda: checkpoint(block, x, use_reentrant=False, preserve_rng_state=False))
    assert not all(torch.equal(a, b) for a, b in zip(plain, other, strict=True))
