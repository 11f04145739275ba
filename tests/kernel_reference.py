"""float64 references of the Sparseout kernels and a magnitude-scaled closeness check.

Shared by tests/test_kernel_interpreter.py (Triton's interpreter on the CPU) and tests/test_kernel_gpu.py.
"""

from __future__ import annotations

import torch

MAX_SCALE = 1e4


def ref_forward(x: torch.Tensor, keep: torch.Tensor, p: float, q: float, c: float = 1.0) -> torch.Tensor:
    xd = x.double()
    noise = c * (keep.double() / (1 - p) - 1)
    out = xd + torch.sign(xd) * xd.abs().pow(q / 2) * noise  # sign(0) = 0: zeros stay zero, q = 0 included
    fmax = torch.finfo(x.dtype).max
    return out.clamp(-fmax, fmax)


def ref_grad(grad, x, keep, p, q, gradient, c: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference input gradient and a per-element magnitude bound used for the tolerance (c: matched scale)."""
    coef, expo = (1.0, (q - 2) / 2) if gradient == "reference" else (q / 2, q / 2 - 1)
    coef *= c
    noise = keep.double() / (1 - p) - 1
    # the clamp comes after the coefficient; the exact rule at q = 0 has derivative 1
    scale = (coef * x.double().abs().pow(expo)).clamp(max=MAX_SCALE) if coef else torch.zeros_like(x.double())
    gd = grad.double()
    fmax = torch.finfo(grad.dtype).max
    return (gd * (1 + scale * noise)).clamp(-fmax, fmax), gd.abs() * (1 + scale * noise.abs())


def assert_close_scaled(got, want, magnitude, dtype):
    """``|got - want| <= tol * magnitude + tiny``: the tolerance follows the size of the summed terms.

    float32: the kernel's power is ``exp2(e * log2|x|)`` in float32, relative error up to about
    ``|e * log2|x|| * 2**-23`` (3e-5 at the ends of the float32 range, ~1e-6 for typical activations).
    """
    tol = {torch.float32: 3e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    tiny = {torch.float32: 1e-37, torch.bfloat16: 1e-37, torch.float16: 2**-23}[dtype]
    got = got.double()
    assert not torch.isnan(got).any(), "NaN in kernel output"
    assert torch.isfinite(got).all(), "non-finite kernel output for finite input"
    fmax = torch.finfo(dtype).max
    err = (got - want).abs()
    bound = tol * magnitude.clamp(max=fmax) + tiny
    bad = err > bound
    assert not bad.any(), f"{int(bad.sum())} elements off, worst at {int((err - bound).argmax())}"
