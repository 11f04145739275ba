"""hf_sparseout.ops.backend: choosing between the eager op and the Triton kernel (CPU-only checks)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import hf_sparseout
from hf_sparseout.ops import backend


@pytest.fixture(autouse=True)
def _restore_backend():
    previous = backend.get_backend()
    yield
    backend.set_backend(previous)


def test_default_is_auto():
    assert backend.get_backend() == "auto"


@pytest.mark.parametrize("name", ["auto", "eager", "triton", "compiled"])
def test_set_backend_accepts_valid_names(name):
    backend.set_backend(name)
    assert backend.get_backend() == name


@pytest.mark.parametrize("name", ["", "cuda", "Triton", None, 1])
def test_invalid_names_raise_value_error(name):
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.set_backend(name)
    with pytest.raises(ValueError, match="backend must be one of"), backend.use_backend(name):
        pass
    assert backend.get_backend() == "auto"


def test_use_backend_restores_previous_even_on_error():
    backend.set_backend("eager")
    with pytest.raises(KeyError), backend.use_backend("triton"):
        assert backend.get_backend() == "triton"
        raise KeyError("boom")
    assert backend.get_backend() == "eager"


def test_auto_uses_eager_on_cpu():
    x = torch.randn(64)
    assert not backend.use_triton(x)
    with backend.use_backend("auto"):
        torch.manual_seed(0)
        a = hf_sparseout.sparseout(x, p=0.3, q=1.5)
    with backend.use_backend("eager"):
        torch.manual_seed(0)
        b = hf_sparseout.sparseout(x, p=0.3, q=1.5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_forcing_triton_on_cpu_raises_clear_error():
    x = torch.randn(8, requires_grad=True)
    with backend.use_backend("triton"), pytest.raises(RuntimeError, match="backend 'triton' was forced"):
        hf_sparseout.sparseout(x, p=0.3, q=1.5)


def test_forced_triton_does_not_affect_dropout_route():
    # q == 2 and p == 1 go to F.dropout under every backend, CPU included.
    x = torch.randn(32)
    with backend.use_backend("triton"):
        torch.manual_seed(1)
        a = hf_sparseout.sparseout(x, p=0.3, q=2.0)
        assert torch.equal(hf_sparseout.sparseout(x, p=1.0, q=1.5), torch.zeros_like(x))
    torch.manual_seed(1)
    torch.testing.assert_close(a, torch.nn.functional.dropout(x, 0.3), rtol=0, atol=0)


def test_eval_and_p0_never_reach_a_kernel():
    x = torch.randn(8)
    with backend.use_backend("triton"):
        assert hf_sparseout.sparseout(x, p=0.3, q=1.5, training=False) is x
        assert hf_sparseout.sparseout(x, p=0.0, q=1.5) is x


def test_float64_and_cpu_are_not_triton_inputs():
    assert torch.float64 not in backend.TRITON_DTYPES
    assert not backend.use_triton(torch.randn(4, dtype=torch.float64))


@pytest.mark.slow
def test_import_does_not_import_triton():
    code = "import sys, hf_sparseout, hf_sparseout.ops.backend; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_custom_op_module_imports_without_triton_and_registers_ops():
    code = (
        "import sys, torch, hf_sparseout.kernels.sparseout_op as m\n"
        "assert 'triton' not in sys.modules\n"
        "print(torch.ops.hf_sparseout.sparseout_fwd.default._schema)\n"
        "print(torch.ops.hf_sparseout.sparseout_bwd.default._schema)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "sparseout_fwd(Tensor x, float p, float q, str gradient, Tensor? c=None) -> (Tensor, Tensor)" in out
    assert "sparseout_bwd(Tensor grad, Tensor x, Tensor rng_state" in out


def test_fake_impl_shapes_on_meta():
    from hf_sparseout.kernels import sparseout_op

    x = torch.empty(3, 5, device="meta", dtype=torch.bfloat16)
    out, state = sparseout_op.sparseout_fwd(x, 0.1, 1.5, "reference")
    assert out.shape == x.shape and out.dtype == x.dtype and out.device.type == "meta"
    assert state.shape == (2,) and state.dtype == torch.int64
    gi = sparseout_op.sparseout_bwd(x, x, state, 0.1, 1.5, "exact")
    assert gi.shape == x.shape and gi.dtype == x.dtype


@pytest.mark.slow
def test_dispatch_compiles_without_graph_breaks_on_cpu():
    def f(x):
        return hf_sparseout.sparseout(x, p=0.2, q=1.5) * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    x = torch.randn(16, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()
