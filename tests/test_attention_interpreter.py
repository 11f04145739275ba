"""The flash Sparseout-attention kernels against a float64 reference with the same mask, in Triton's interpreter.

As in tests/test_kernel_interpreter.py, ``TRITON_INTERPRET=1`` must be set before triton is imported, so the
kernels run in a subprocess (this file as a script) on CPU tensors and save their outputs and gradients; the
tests compare them with a float64 autograd computation (tests/attention_reference.py: explicit softmax,
Sparseout on the probabilities with the documented backward rules, matmul) that uses the keep mask of the
element-wise kernel's stream, which tests/test_kernel_interpreter.py checks against an independent numpy
Philox. Skipped without triton.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attention_reference import CASES, TOL, make_case, reference, rel_err

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = [
    pytest.mark.skipif(not HAS_TRITON, reason="triton not installed (pip install 'hf-sparseout[triton]')"),
    pytest.mark.slow,  # the kernels run in a subprocess under TRITON_INTERPRET=1
]

SEED, CTR = 987654321, 11


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
