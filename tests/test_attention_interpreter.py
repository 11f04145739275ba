"""The flash Sparseout-attention kernels against a float64 reference with the same mask, in Triton's interpreter.

As in tests/test_kernel_interpreter.py, ``TRITON_INTERPRET=1`` must be set before triton is imported, so the
kernels run in a subprocess (this file as a script) on CPU tensors and save their outputs and gradients; the
tests compare them with a float64 autograd computation (explicit softmax, Sparseout on the probabilities with
the documented backward rules, matmul) that uses the keep mask of the element-wise kernel's stream, which
tests/test_kernel_interpreter.py checks against an independent numpy Philox. Skipped without triton.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed (pip install 'hf-sparseout[triton]')")

SEED, CTR = 987654321, 11
MAX_SCALE = 1e4

# name: (dtype, B, H, HKV, M, N, D, causal, mask kind, p, q)
CASES = {
    "fp32-causal-q1.5": (torch.float32, 1, 2, 2, 37, 37, 32, True, None, 0.3, 1.5),
    "fp32-padding-bool-q0.5": (torch.float32, 2, 2, 2, 21, 29, 32, False, "bool", 0.2, 0.5),
    "fp32-alibi-gqa-causal-q3": (torch.float32, 1, 4, 2, 33, 33, 64, True, "alibi", 0.4, 3.0),
    "fp32-q2-dropout-d96": (torch.float32, 1, 2, 1, 19, 40, 96, False, None, 0.25, 2.0),
    "bf16-causal-padding-q1": (torch.bfloat16, 2, 2, 2, 24, 24, 32, True, "bool", 0.3, 1.0),
    "fp16-float-mask-gqa-q1.5": (torch.float16, 1, 4, 1, 20, 20, 64, False, "float", 0.3, 1.5),
}


def make_case(name: str) -> dict:
    dtype, B, H, HKV, M, N, D, causal, kind, p, q = CASES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    qkv = [torch.randn(B, h, n, D, generator=g) for h, n in ((H, M), (HKV, N), (HKV, N))]
    mask = None
    if kind == "bool":  # padding: the last keys of batch 1 are padding; one query row of batch 1 sees nothing
        mask = torch.ones(B, 1, M, N, dtype=torch.bool)
        mask[-1, :, :, N - 5 :] = False
        mask[-1, :, 3, :] = False
    elif kind == "alibi":  # ALiBi-style bias: -slope_h * (i - j), one slope per head
        slopes = 2.0 ** (-torch.arange(1, H + 1, dtype=torch.float32))
        dist = torch.arange(M)[:, None] - torch.arange(N)[None, :]
        mask = (-slopes[:, None, None] * dist.abs()).unsqueeze(0)
    elif kind == "float":  # additive padding mask as transformers builds it: 0 or the dtype's min
        mask = torch.zeros(B, 1, M, N)
        mask[..., N - 4 :] = torch.finfo(dtype).min
        mask = mask.to(dtype)
    grad = torch.randn(B, H, M, D, generator=g)
    return {
        "q": qkv[0].to(dtype),
        "k": qkv[1].to(dtype),
        "v": qkv[2].to(dtype),
        "mask": mask,
        "grad": grad.to(dtype),
        "causal": causal,
        "p": p,
        "sq": q,
    }


def worker(path: str) -> None:
    """Run the kernels under the interpreter; save outputs, gradients and the keep mask."""
    os.environ["TRITON_INTERPRET"] = "1"
    import warnings

    warnings.filterwarnings("ignore")
    from hf_sparseout.kernels import sparseout_triton as K
    from hf_sparseout.kernels.attention_op import sparseout_attention

    res = {}
    for name in CASES:
        c = make_case(name)
        B, H, M, _ = c["q"].shape
        N = c["k"].size(2)
        res[name] = {"keep": K.keep_mask(B * H * M * N, c["p"], SEED, CTR, device="cpu").view(B, H, M, N)}
        for gradient in ("reference", "exact"):
            q, k, v = (c[t].clone().requires_grad_() for t in "qkv")
            out = sparseout_attention(q, k, v, c["mask"], c["causal"], None, c["p"], c["sq"], gradient, rng=(SEED, CTR))
            out.backward(c["grad"])
            res[name][gradient] = {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
    torch.save(res, path)


@pytest.fixture(scope="module")
def interp(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("attn") / "res.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), str(path)], check=True, env=env, timeout=600)
    return torch.load(path, weights_only=False)


# --- float64 reference ------------------------------------------------------------------------------------------


class _ProbSparseout(torch.autograd.Function):
    """P + P**h * noise (0 where P = 0), backward grad * (1 + min(coef * P**(h-1), MAX_SCALE) * noise)."""

    @staticmethod
    def forward(ctx, probs, noise, h, coef):
        ctx.save_for_backward(probs, noise)
        ctx.h, ctx.coef = h, coef
        return probs + torch.where(probs > 0, probs.pow(h), 0.0) * noise

    @staticmethod
    def backward(ctx, grad):
        probs, noise = ctx.saved_tensors
        power = (ctx.coef * probs.pow(ctx.h - 1)).clamp(max=MAX_SCALE)
        return grad * (1 + power * noise), None, None, None


def reference(c: dict, keep: torch.Tensor, gradient: str, sq: float | None = None) -> dict:
    sq = c["sq"] if sq is None else sq
    q, k, v = (c[t].double().requires_grad_() for t in "qkv")
    group = q.size(1) // k.size(1)
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ kr.transpose(-1, -2) / q.size(-1) ** 0.5
    M, N = s.shape[-2:]
    if c["causal"]:
        s = s.masked_fill(~torch.ones(M, N, dtype=torch.bool).tril(), float("-inf"))
    if c["mask"] is not None:
        m = c["mask"]
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.double()
    probs = torch.softmax(s, -1).nan_to_num(0.0)
    noise = keep.double() / (1 - c["p"]) - 1
    h = sq / 2
    coef = 1.0 if gradient == "reference" else h
    out = _ProbSparseout.apply(probs, noise, h, coef) @ vr
    out.backward(c["grad"].double())
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad, "probs": probs.detach()}


TOL = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2, torch.float16: 2e-3}  # measured: 3e-7, 7e-3, 3e-4


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm().clamp(min=1e-30))


@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_float64(interp, name, gradient):
    c = make_case(name)
    keep = interp[name]["keep"]
    want = reference(c, keep, gradient)
    got = interp[name][gradient]
    tol = TOL[c["q"].dtype]
    for t in ("out", "dq", "dk", "dv"):
        assert got[t].dtype == c["q"].dtype and got[t].shape == want[t].shape
        assert torch.isfinite(got[t]).all(), t
        assert rel_err(got[t], want[t]) <= tol, (t, rel_err(got[t], want[t]))


@pytest.mark.parametrize("name", ["fp32-causal-q1.5", "fp32-alibi-gqa-causal-q3"])
def test_the_mask_is_the_element_wise_stream(interp, name):
    """Another mask (the next counter's) does not explain the output: the comparison has teeth."""
    c = make_case(name)
    keep = interp[name]["keep"]
    other = torch.roll(keep, 1, dims=-1)
    assert not torch.equal(other, keep)
    assert rel_err(interp[name]["reference"]["out"], reference(c, other, "reference")["out"]) > 100 * TOL[torch.float32]
    assert abs(keep.double().mean().item() - (1 - c["p"])) < 0.05


def test_q2_is_dropout_on_the_probabilities(interp):
    """q = 2: O = (P * m / (1 - p)) V, inverted dropout on the probabilities (SDPA's dropout in distribution)."""
    name = "fp32-q2-dropout-d96"
    c = make_case(name)
    keep = interp[name]["keep"]
    probs = reference(c, keep, "reference")["probs"]
    vr = c["v"].double().repeat_interleave(c["q"].size(1) // c["v"].size(1), 1)
    want = (probs * keep.double() / (1 - c["p"])) @ vr
    assert rel_err(interp[name]["reference"]["out"], want) <= TOL[torch.float32]
    assert torch.equal(interp[name]["reference"]["dq"], interp[name]["exact"]["dq"])  # one rule at q = 2


def test_fully_masked_rows_give_zero_output_and_gradient(interp):
    got = interp["bf16-causal-padding-q1"]["reference"]
    assert torch.equal(got["out"][-1, :, 3], torch.zeros_like(got["out"][-1, :, 3]))
    assert torch.equal(got["dq"][-1, :, 3], torch.zeros_like(got["dq"][-1, :, 3]))
    # padded keys get no gradient
    assert torch.equal(got["dk"][-1, :, -5:], torch.zeros_like(got["dk"][-1, :, -5:]))


if __name__ == "__main__":
    worker(sys.argv[1])
