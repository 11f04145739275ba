"""The Triton kernels against a float64 formula, without a GPU: Triton's interpreter on CPU tensors.

``TRITON_INTERPRET=1`` must be set before triton is imported, so the kernels run in a subprocess (this file,
run as a script) that saves its results; the tests compare them here. Skipped when triton is not installed.
The same worker runs on a GPU machine in tests/test_kernel_gpu.py to check that the interpreter and the GPU
draw the same mask.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from kernel_reference import MAX_SCALE, assert_close_scaled, ref_forward, ref_grad

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = [
    pytest.mark.skipif(not HAS_TRITON, reason="triton not installed (pip install 'hf-sparseout[triton]')"),
    pytest.mark.slow,  # the kernels run in a subprocess under TRITON_INTERPRET=1
]

P = 0.3
SEED, CTR = 20190413, 7
N = 3 * 4096 + 123  # four programs, the last one partial
CASES = [(torch.float32, q) for q in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)] + [
    (dt, q) for dt in (torch.bfloat16, torch.float16) for q in (0.5, 1.5, 3.0)
]
MATCHED_CASES = [(torch.float32, 1.5), (torch.float32, 3.0), (torch.bfloat16, 0.5)]
MATCHED_C = 0.37
SPECIALS = {
    torch.float32: [0.0, -0.0, 1e-30, -1e-30, 1e-6, 3e38, -3e38, 1e30, 7.5, -7.5],
    torch.bfloat16: [0.0, -0.0, 1e-30, -1e-30, 1e-6, 3e38, -3e38, 1e30, 7.5, -7.5],
    torch.float16: [0.0, -0.0, 1e-4, -1e-4, 1e-6, 6e4, -6e4, 3e4, 7.5, -7.5],
}


def make_inputs(dtype: torch.dtype, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(int(q * 10) + 100 * SPECIALS[dtype].__len__())
    x = torch.randn(N, generator=g) * torch.logspace(-3, 2, N).flip(0)
    x[: len(SPECIALS[dtype])] = torch.tensor(SPECIALS[dtype])
    grad = torch.randn(N, generator=g)
    return x.to(dtype), grad.to(dtype)


def worker(path: str) -> None:
    """Run the kernels under the interpreter and save everything the tests need."""
    os.environ["TRITON_INTERPRET"] = "1"
    import warnings

    warnings.filterwarnings("ignore")
    from hf_sparseout.kernels import sparseout_triton as K

    res: dict = {"cases": {}}
    for dtype, q in CASES:
        x, grad = make_inputs(dtype, q)
        out = torch.full_like(x, float("nan"))  # poisoned: every element must be written
        K.sparseout_fwd(x, P, q, SEED, CTR, out=out)
        gis = {gm: K.sparseout_bwd(grad, x, P, q, gm, SEED, CTR, max_scale=MAX_SCALE) for gm in ("reference", "exact")}
        res["cases"][(str(dtype), q)] = {"x": x, "grad": grad, "out": out, **gis}
    for dtype, q in MATCHED_CASES:  # noise="matched": the scale c is a 0-d tensor read by the kernel
        x, grad = make_inputs(dtype, q)
        c = torch.tensor(MATCHED_C)
        out = K.sparseout_fwd(x, P, q, SEED, CTR, c=c)
        gis = {
            gm: K.sparseout_bwd(grad, x, P, q, gm, SEED, CTR, max_scale=MAX_SCALE, c=c) for gm in ("reference", "exact")
        }
        res["cases"][("matched", str(dtype), q)] = {"x": x, "grad": grad, "out": out, **gis}
    res["mask"] = K.keep_mask(N, P, SEED, CTR, device="cpu")
    res["mask_tail"] = K.keep_mask(500, P, SEED, CTR, device="cpu", start=N - 500)
    res["mask_ctr8"] = K.keep_mask(N, P, SEED, CTR + 1, device="cpu")
    res["mask_seed2"] = K.keep_mask(N, P, SEED + 1, CTR, device="cpu")
    big_seed, big_ctr = (1 << 64) - 12345, (1 << 40) + 3
    res["mask_big"] = K.keep_mask(4096, 0.5, big_seed, big_ctr, device="cpu")
    res["big"] = (big_seed, big_ctr)
    res["mask_2p31"] = K.keep_mask(3000, P, SEED, CTR, device="cpu", start=2**31 - 1000)  # crosses 2**31
    res["mask_2p32"] = K.keep_mask(3000, P, SEED, CTR, device="cpu", start=2**32 * 1024 - 1000)  # g_hi > 0
    res["rate"] = {p: K.keep_mask(1 << 16, p, 99, 0, device="cpu").double().mean().item() for p in (0.1, 0.5, 0.9)}
    torch.save(res, path)


@pytest.fixture(scope="module")
def interp(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("interp") / "res.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), str(path)], check=True, env=env, timeout=600)
    return torch.load(path, weights_only=False)


# --- a numpy Philox-4x32-10, written from the Salmon et al. spec, for the documented counter layout -------------


def philox4x32_10(key: int, ctr: np.ndarray) -> np.ndarray:
    """``ctr``: (n, 4) uint64 array holding uint32 values; returns (n, 4) uint32 outputs."""
    m = np.uint64(0xFFFFFFFF)
    c = [ctr[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & m, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & m]
        k0 = (k0 + np.uint64(0x9E3779B9)) & m
        k1 = (k1 + np.uint64(0xBB67AE85)) & m
    return np.stack(c, axis=1).astype(np.uint32)


def reference_mask(n: int, p: float, seed: int, ctr: int, sub: int = 1024, start: int = 0) -> torch.Tensor:
    e = np.arange(start, start + n, dtype=np.int64)
    g = e // 4  # the documented layout: four consecutive elements per Philox call (``sub`` does not enter)
    lane = e % 4
    counters = np.stack([np.full(n, ctr & 0xFFFFFFFF), np.full(n, ctr >> 32), g & 0xFFFFFFFF, g >> 32], axis=1).astype(
        np.uint64
    )
    r = philox4x32_10(seed, counters)[np.arange(n), lane]
    thresh = round((1 - p) * 2**24)
    return torch.from_numpy((r >> 8).astype(np.int64) < thresh)


# --- tests -----------------------------------------------------------------------------------------------------


def test_mask_matches_numpy_philox_layout(interp):
    assert torch.equal(interp["mask"], reference_mask(N, P, SEED, CTR))
    seed, ctr = interp["big"]
    assert torch.equal(interp["mask_big"], reference_mask(4096, 0.5, seed, ctr))


def test_mask_slices_past_int32_and_uint32_counters(interp):
    assert torch.equal(interp["mask_2p31"], reference_mask(3000, P, SEED, CTR, start=2**31 - 1000))
    assert torch.equal(interp["mask_2p32"], reference_mask(3000, P, SEED, CTR, start=2**32 * 1024 - 1000))


def test_mask_slice_start_and_streams_differ(interp):
    assert torch.equal(interp["mask_tail"], interp["mask"][-500:])
    assert not torch.equal(interp["mask_ctr8"], interp["mask"])
    assert not torch.equal(interp["mask_seed2"], interp["mask"])
    # Different streams are (statistically) independent: agreement near p^2 + (1-p)^2, not 1.
    agree = (interp["mask_ctr8"] == interp["mask"]).double().mean().item()
    assert abs(agree - (P**2 + (1 - P) ** 2)) < 0.03


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate(interp, p):
    n = 1 << 16
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(interp["rate"][p] - (1 - p)) < 5 * sigma


@pytest.mark.parametrize("dtype,q", CASES, ids=[f"{str(d)[6:]}-q{q}" for d, q in CASES])
def test_forward_matches_float64(interp, dtype, q):
    c = interp["cases"][(str(dtype), q)]
    x, keep = c["x"], interp["mask"]
    want = ref_forward(x, keep, P, q)
    mag = x.double().abs() + x.double().abs().pow(q / 2) * max(1.0, P / (1 - P))
    assert_close_scaled(c["out"], want, mag, dtype)


@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("dtype,q", CASES, ids=[f"{str(d)[6:]}-q{q}" for d, q in CASES])
def test_backward_matches_float64(interp, dtype, q, gradient):
    c = interp["cases"][(str(dtype), q)]
    want, mag = ref_grad(c["grad"], c["x"], interp["mask"], P, q, gradient)
    assert_close_scaled(c[gradient], want, mag, dtype)


@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("dtype,q", MATCHED_CASES, ids=[f"{str(d)[6:]}-q{q}" for d, q in MATCHED_CASES])
def test_matched_noise_scale_in_the_kernel(interp, dtype, q, gradient):
    """c multiplies the noise in forward and the power term (before the clamp) in backward, as the eager op."""
    c = interp["cases"][("matched", str(dtype), q)]
    x, keep = c["x"], interp["mask"]
    mag = x.double().abs() + MATCHED_C * x.double().abs().pow(q / 2) * max(1.0, P / (1 - P))
    assert_close_scaled(c["out"], ref_forward(x, keep, P, q, MATCHED_C), mag, dtype)
    want, gmag = ref_grad(c["grad"], x, keep, P, q, gradient, MATCHED_C)
    assert_close_scaled(c[gradient], want, gmag, dtype)
    # c is really applied: the raw-noise output differs
    raw = interp["cases"].get((str(dtype), q))
    if raw is not None:
        assert not torch.equal(raw["out"], c["out"])


def test_saturation_instead_of_inf(interp):
    # float16 6e4 with q = 3: |x| ** 1.5 ~ 1.5e7 overflows float16; the kernel saturates to +-65504.
    c = interp["cases"][(str(torch.float16), 3.0)]
    out = c["out"][:10].double()
    assert torch.isfinite(out).all()
    assert out.abs().max().item() == torch.finfo(torch.float16).max


def test_q2_kernel_is_inverted_dropout(interp):
    c = interp["cases"][(str(torch.float32), 2.0)]
    keep = interp["mask"]
    fmax = torch.finfo(torch.float32).max
    want = torch.where(keep, c["x"].double() / (1 - P), 0.0).clamp(-fmax, fmax).float()  # saturates, no inf
    torch.testing.assert_close(c["out"], want, rtol=2e-6, atol=1e-30)
    torch.testing.assert_close(c["reference"], torch.where(keep, c["grad"] / (1 - P), 0.0), rtol=2e-6, atol=0)


if __name__ == "__main__":
    worker(sys.argv[1])
