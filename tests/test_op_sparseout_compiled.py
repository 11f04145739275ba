"""The ``"compiled"`` backend (torch.compile'd element-wise math) against the eager op and the float64 oracle.

One ``q`` and dtype only: each (q, dtype, gradient) compiles once (seconds on a 2-core machine).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from sparseout_oracle import factor64, mask_for, out64

import hf_sparseout
from hf_sparseout.ops import backend

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="no C++ compiler")
SEED = 99


def test_compiled_backend_matches_eager_and_oracle_for_two_shapes():
    p, q = 0.3, 1.5
    for shape in ((64, 33), (5, 7, 11)):  # the second shape reuses the graph (dynamic sizes)
        x0 = torch.randn(shape, dtype=torch.float32)
        g = torch.randn(shape, dtype=torch.float32)
        res = {}
        for name in ("compiled", "eager"):
            x = x0.clone().requires_grad_()
            with backend.use_backend(name):
                torch.manual_seed(SEED)
                y = hf_sparseout.sparseout(x, p=p, q=q)
                y.backward(g)
            res[name] = (y.detach(), x.grad)
        torch.testing.assert_close(res["compiled"][0], res["eager"][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res["compiled"][1], res["eager"][1], rtol=1e-5, atol=1e-6)
        mask = mask_for(x0, p, SEED)
        torch.testing.assert_close(res["compiled"][0].double(), out64(x0, mask, p, q), rtol=1e-5, atol=1e-6)
        want = g.double() * factor64(x0, mask, p, q, "reference")
        torch.testing.assert_close(res["compiled"][1].double(), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(res["compiled"][0].double(), out64(x0, ~mask, p, q), rtol=1e-3)


def test_compiled_backend_never_takes_the_triton_path():
    with backend.use_backend("compiled"):
        assert backend.use_triton(torch.randn(3)) is False
        fwd, bwd = backend.cpu_math()
        assert isinstance(fwd, backend._Compiled) and isinstance(bwd, backend._Compiled)
    fwd, _ = backend.cpu_math()
    assert not isinstance(fwd, backend._Compiled)


def test_past_the_recompile_limit_the_eager_math_runs_with_a_warning(monkeypatch):
    monkeypatch.setattr(backend._Compiled, "RECOMPILE_LIMIT", 1)
    monkeypatch.setattr(backend, "_COMPILED", None)  # fresh wrappers (the warning is once per wrapper)
    x0 = torch.randn(50)
    with backend.use_backend("compiled"), pytest.warns(UserWarning, match="running the eager math"):
        for q in (1.5, 0.5, 3.0):  # at most one graph each (the cache is per function): a later q hits the limit
            x = x0.clone().requires_grad_()
            torch.manual_seed(SEED)
            y = hf_sparseout.sparseout(x, p=0.3, q=q)
            y.sum().backward()
            want = out64(x0, mask_for(x0, 0.3, SEED), 0.3, q)
            torch.testing.assert_close(y.detach().double(), want, rtol=1e-5, atol=1e-6)
