"""The flash attention kernels give the same result for every block shape (issue 26: autotuned block sizes).

The keep mask is a function of the element index alone, so an autotuner may pick any ``(BLOCK_M, BLOCK_N)``;
this runs the forward and both backward kernels with square and non-square blocks (which move the causal
loop bounds) in Triton's interpreter, in a subprocess as the other interpreter tests, and compares them.
Skipped without triton.
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
pytestmark = [pytest.mark.skipif(not HAS_TRITON, reason="triton not installed"), pytest.mark.slow]

BLOCKS = ((16, 16), (32, 16), (16, 32))


def worker(path: str) -> None:
    """Run fwd + bwd with each block shape on one causal, padded GQA case; save the results."""
    os.environ["TRITON_INTERPRET"] = "1"
    import warnings

    warnings.filterwarnings("ignore")
    from hf_sparseout.kernels import attention_triton as A

    torch.manual_seed(0)
    q = torch.randn(1, 4, 40, 16)
    k, v = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    mask = torch.ones(1, 1, 40, 40, dtype=torch.bool)
    mask[..., 33:] = False
    do = torch.randn_like(q)
    res = {}
    for blocks in BLOCKS:
        args = (mask, True, 0.25, 0.3, 1.5)
        out, lse, o1 = A.attention_fwd(q, k, v, *args, 77, 5, store_o1=True, blocks=blocks)
        grads = A.attention_bwd(do, q, k, v, *args, "exact", 77, 5, out, lse, o1, 1e4, blocks=blocks)
        res[blocks] = (out, *grads)
    torch.save(res, path)


def test_every_block_shape_gives_the_same_result(tmp_path):
    path = tmp_path / "res.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), str(path)], check=True, env=env, timeout=600)
    res = torch.load(path, weights_only=False)
    base = res[BLOCKS[0]]
    assert base[0].abs().max() > 0
    for blocks in BLOCKS[1:]:
        for name, got, want in zip(("out", "dq", "dk", "dv"), res[blocks], base, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name} with blocks {blocks}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    worker(sys.argv[1])
